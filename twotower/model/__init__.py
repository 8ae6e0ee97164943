"""Towers: feature encoders -> MLP -> unit vectors."""
from twotower.model.towers import Tower
from twotower.model.two_tower import TwoTower, build_two_tower

__all__ = ["Tower", "TwoTower", "build_two_tower"]
