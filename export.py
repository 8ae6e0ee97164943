"""Export a trained checkpoint as a FAISS index artifact: python export.py checkpoint=<ckpt or run dir> [index=ivf_pq] output_dir=<dir>."""
import hydra
from omegaconf import DictConfig

from twotower.exporting import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> str:
    path = export(cfg)
    print(f"artifact: {path}")
    return str(path)


if __name__ == "__main__":
    main()
