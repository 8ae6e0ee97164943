"""Lightning callbacks of a training run besides checkpointing: plots, sample recommendations."""
from twotower.callbacks.run_plots import RunPlots
from twotower.callbacks.sample_recommendations import SampleRecommendations

__all__ = ["RunPlots", "SampleRecommendations"]
