"""twotower: two-tower retrieval recommenders with PyTorch Lightning, Hydra and FAISS."""
__version__ = "0.1.0"
