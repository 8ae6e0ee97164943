"""Train a two-tower model: python train.py [overrides]; see README."""
import hydra
from omegaconf import DictConfig

from twotower.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    # A sweeper maximises what this returns.
    return metrics.get(cfg.monitor.metric)


if __name__ == "__main__":
    main()
