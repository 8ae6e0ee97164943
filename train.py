"""Train a two-tower model: python train.py [overrides]; the same as the installed ``twotower-train`` (see README)."""
from twotower.cli import train_main

if __name__ == "__main__":
    train_main()
