"""Experiment-tracking set-up that never blocks a batch job."""
from __future__ import annotations

import logging
import netrc
import os
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def wandb_offline_unless_logged_in() -> None:
    """Sets ``WANDB_MODE=offline`` when no W&B credentials are present.

    Without credentials wandb asks for an API key on a terminal and fails without one; a job on a
    cluster must do neither. The offline run directory can be uploaded later with ``wandb sync``.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        logged_in = netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        log.warning("no W&B credentials (WANDB_API_KEY or ~/.netrc): logging offline; upload later with `wandb sync`")
        os.environ["WANDB_MODE"] = "offline"
