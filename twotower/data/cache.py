"""Where downloaded data sets and computed vectors are cached."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$TWOTOWER_CACHE``, or ``~/.cache/twotower``."""
    return Path(os.environ.get("TWOTOWER_CACHE", Path.home() / ".cache" / "twotower"))
