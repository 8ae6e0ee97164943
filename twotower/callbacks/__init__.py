"""Lightning callbacks of a training run besides checkpointing: plots, sample recommendations, epoch log, early stopping."""
from twotower.callbacks.early_stopping import EarlyStopping
from twotower.callbacks.epoch_log import EpochLog
from twotower.callbacks.run_plots import RunPlots
from twotower.callbacks.sample_recommendations import SampleRecommendations

__all__ = ["EarlyStopping", "EpochLog", "RunPlots", "SampleRecommendations"]
