"""One small trained run and its exported artifact, shared by the export and retriever tests.

Content-only towers (``use_ids=false``): a new item's vector then comes wholly from its content,
which the item cold-start test relies on.

Built once per session (training is the slow part), through the same ``train`` and ``export``
functions the command lines call, with configs composed from the worktree's ``conf/``.
"""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parents[1] / "conf")
_built: dict[str, tuple] = {}


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=False)


def train_config(run_dir: Path):
    return compose_config("train", [
        "data=synthetic", "data.use_ids=false", "data.source.n_users=300", "data.source.n_items=200", "logger=csv", "trainer.max_epochs=2", "test=false", "callbacks=default",
        "callbacks.early_stopping.patience=10", f"paths.output_dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ])


def export_config(checkpoint: Path | str, output_dir: Path, index: str = "flat", overrides: tuple[str, ...] = ()):
    return compose_config("export", [f"checkpoint={checkpoint}", f"output_dir={output_dir}", f"index={index}", *overrides])


def trained_and_exported(root: Path) -> tuple[Path, Path, dict]:
    """(run dir, artifact dir, train objects), trained and exported once per session."""
    if "run" not in _built:
        from twotower.exporting import export
        from twotower.training import train

        run_dir, artifact = root / "run", root / "artifact"
        _, objects = train(train_config(run_dir))
        export(export_config(run_dir, artifact))
        _built["run"] = (run_dir, artifact, objects)
    return _built["run"]
