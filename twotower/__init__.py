"""twotower: two-tower retrieval recommenders with PyTorch Lightning, Hydra and FAISS."""
__version__ = "0.1.0"

__all__ = ["Retriever"]


def __getattr__(name: str):
    # Lazy, so `import twotower` stays light for training jobs that never serve.
    if name == "Retriever":
        from twotower.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'twotower' has no attribute {name!r}")
