"""twotower: two-tower retrieval recommenders with PyTorch Lightning, Hydra and FAISS."""
import logging

__version__ = "0.1.0"

# faiss logs each instruction-set build it tries at INFO ("Could not load library with AVX512
# support..."); faiss >= 1.8 picks the build itself, so the lines say nothing, and Hydra's INFO root
# logger printed eight of them on every export. Warnings and errors still show.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

__all__ = ["Retriever"]


def __getattr__(name: str):
    # Lazy, so `import twotower` stays light for training jobs that never serve.
    if name == "Retriever":
        from twotower.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'twotower' has no attribute {name!r}")
