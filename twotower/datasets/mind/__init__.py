"""MIND (Microsoft News Dataset): news clicks with impressions, click histories and news text."""
from twotower.datasets.mind.source import MindSource

__all__ = ["MindSource"]
