"""MovieLens-100K: ratings as implicit interactions, user demographics, movie genres and titles."""
from twotower.datasets.movielens.source import MovieLens100K

__all__ = ["MovieLens100K"]
