"""Console scripts: ``twotower-train``/``twotower-export`` are train.py/export.py with the same configs, from a checkout and from a wheel."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONF
from twotower.cli import CONF_DIR

ROOT = CONF.parent
# What the installed console script runs: `twotower-train` calls twotower.cli:train_main with sys.argv.
SCRIPT = "import sys; from twotower.cli import train_main; sys.argv = ['twotower-train', *sys.argv[1:]]; train_main()"


def test_package_configs_are_the_repository_configs():
    assert Path(CONF_DIR).resolve() == CONF.resolve()


def test_console_scripts_train_then_export(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["data=synthetic", "data.source.n_users=200", "trainer.max_epochs=1", "test=false", "logger=csv", f"hydra.run.dir={run_dir}"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Output to a pipe, as in a batch job: no bar, one line per epoch with throughput, without any override.
    assert re.search(r"epoch 1/1  train/loss \d+\.\d{4} .*[\d,]+ samples/s  elapsed", done.stdout + done.stderr)
    assert "epoch 1/1  train/loss" in (run_dir / "train.log").read_text()
    assert "- data.source.n_users=200" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert (run_dir / "plots" / "learning_curves.png").exists() and list((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert "val   @20" in done.stdout  # the metrics table train.py prints
    for noise in ("Seed set to", "GPU available", "litlogger", "LeafSpec", "`IterableDataset` has `__len__`", "Restoring states"):
        assert noise not in done.stdout + done.stderr, noise  # twotower.quiet

    export = ["-c", SCRIPT.replace("train_main", "export_main").replace("twotower-train", "twotower-export"), f"checkpoint={run_dir}", f"output_dir={tmp_path / 'artifact'}"]
    done = subprocess.run([sys.executable, *export], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"artifact: {tmp_path / 'artifact'}" in done.stdout and (tmp_path / "artifact" / "manifest.json").exists()
    assert "faiss.loader" not in done.stdout + done.stderr and "Could not load library" not in done.stdout + done.stderr


def test_a_ddp_run_prints_no_third_party_noise(tmp_path):
    # train.py, not the console-script stand-in: DDP starts its other process by re-running the script.
    overrides = ["data=synthetic", "data.source.n_users=100", "trainer=ddp_cpu", "trainer.max_epochs=1", "test=false", "logger=none", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    for noise in ("sync_dist", "FutureWarning", "Initializing distributed", "Seed set to", "site-packages"):
        assert noise not in output, noise
    assert "epoch 1/1  train/loss" in output


def test_verbose_shows_what_is_silenced_by_default(tmp_path):
    overrides = ["-v", "data=synthetic", "data.source.n_users=100", "trainer.max_epochs=1", "test=false", "logger=none", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Seed set to 42" in done.stdout + done.stderr and "GPU available" in done.stdout + done.stderr
    assert "verbose: true" in (tmp_path / ".hydra" / "config.yaml").read_text()


def test_train_console_script_refuses_an_unknown_group_option(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, "model=transformer", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Could not find 'model/transformer'" in done.stderr


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_whose_commands_train_and_export_with_the_packaged_configs(tmp_path):
    # Built with `python -m build` from a copy of the checkout's files (setuptools writes build/ next to the sources).
    source = tmp_path / "source"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        if (ROOT / name).exists():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("twotower-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    shipped = {name.removeprefix("twotower/conf/") for name in names if name.startswith("twotower/conf/")}
    assert shipped == {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert "twotower/py.typed" in names and any(name.endswith(".dist-info/licenses/LICENSE") for name in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={_installed('torch').split('+')[0]}"], check=True, capture_output=True, timeout=900)  # the CPU build this one uses
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=900)
    # Core dependencies only: the cluster, tracking and notebook extras stay out of a plain install.
    present = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout.lower()
    for extra in ("tensorboard", "submitit", "optuna", "sqlalchemy", "jupyterlab"):
        assert f"\n{extra}" not in "\n" + present, extra

    # From a folder outside the checkout: the installed commands, with the configs inside the wheel.
    work = tmp_path / "work"
    work.mkdir()
    train = [str(venv / "bin" / "twotower-train"), "data=synthetic", "data.source.n_users=200", "trainer.max_epochs=1", "test=false", "hydra.run.dir=run"]
    done = subprocess.run(train, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val   @20" in done.stdout
    export = [str(venv / "bin" / "twotower-export"), "checkpoint=run", "output_dir=artifact"]
    done = subprocess.run(export, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "artifact" / "manifest.json").exists() and (work / "artifact" / "index.faiss").exists()
    # An extra that is not installed is named with the install command that brings it.
    done = subprocess.run([*train, "logger=tensorboard", "hydra.run.dir=run_tb"], cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "pip install 'twotower[tracking]'" in done.stdout + done.stderr


def _installed(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@pytest.mark.parametrize("entry, groups", [
    ("train.py", ["data", "data/split", "model", "loss", "trainer", "logger", "callbacks", "table_optimizer", "protocol", "experiment",
                  "hparams_search", "hydra/launcher"]),
    ("export.py", ["index"]),
])
def test_help_shows_the_entry_points_own_groups_with_every_option(entry, groups):
    done = subprocess.run([sys.executable, entry, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) < 50, f"{entry} --help is {len(lines)} lines"
    listed = {}
    for line in lines[lines.index("Groups (group=option):") + 1 :]:
        if not line.strip():
            break
        name, options = line.split(maxsplit=1)
        listed[name] = {o.split(" (")[0].strip() for o in re.sub(r"\((default: none|for -m sweeps)\)", "", options).split(",")}
    assert list(listed) == groups
    for name, options in listed.items():
        assert options == {p.stem for p in (CONF / name).glob("*.yaml")}, name
    assert "Keys" in done.stdout and "=" in done.stdout.split("Keys", 1)[1]
