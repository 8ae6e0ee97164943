"""Every command in README.md's ```bash blocks runs, on small data, or is listed as skipped with why.

Each command runs as a reader would type it, in a working directory with ``train.py`` and
``export.py``, with overrides appended that shorten it (one epoch of a few batches, outputs inside
the directory). Paths the README points at (``/data/...``, ``/tmp/mind``, ``clicks.csv``) are
small files with the same columns (tests/readme_data.py), and MovieLens-100K is a synthetic copy in
the official layout, so nothing is downloaded. A command that is neither run nor skipped fails,
so the README cannot grow a command this file does not know.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests import readme_data
from tests.test_export import SNIPPET

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def code_blocks(text: str, language: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of every fenced block in ``language``, under the nearest heading above it."""
    blocks, heading, fence, body = [], "", None, []
    for line in text.splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            if fence == language:
                blocks.append((heading, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        elif line.startswith("#"):  # outside a block only: a shell comment is no heading
            heading = line.lstrip("#").strip()
    return blocks


def commands(text: str) -> list[str]:
    """The shell commands of the README's bash blocks, in order, each once: continuation lines
    joined, comments dropped, whitespace runs made one space."""
    found = []
    for _, body in code_blocks(text, "bash"):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if command and command not in found:
                found.append(command)
    return found


README_TEXT = README.read_text()
COMMANDS = commands(README_TEXT)

# ------------------------------------------------------------------------------------------ skipped
BENCHMARK = "a benchmark, minutes to hours"
SKIPPED = {
    "make demo": "its three steps (train.py, export.py, show_recommendations) are README commands run here",
    "make test": "the test suite itself, this file included",
    ". .venv/bin/activate": "changes the reader's shell only; these tests run the virtual environment's python",
    "python -m pytest -m slow": "the slow test set: minutes of real-data training, run by CI (.ci/run)",
    "python train.py trainer=gpu data.batch_size=8192": "needs a CUDA GPU",
    "python train.py trainer=ddp trainer.devices=4": "needs 4 GPUs; trainer=ddp_cpu runs the same DDP path here",
    "python train.py data=shards ... trainer=ddp trainer.devices=8": "needs 8 GPUs ('...' stands for the line above)",
    "mkdir -p /data/MINDsmall": "the MIND download steps need Microsoft's zip files; the MIND lines run on generated data",
    "unzip MINDsmall_train.zip -d /data/MINDsmall/train": "needs Microsoft's MINDsmall_train.zip (licence accepted by hand)",
    "unzip MINDsmall_dev.zip -d /data/MINDsmall/dev": "needs Microsoft's MINDsmall_dev.zip (licence accepted by hand)",
    "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=4 "
    "hydra.launcher.tasks_per_node=4 hydra.launcher.cpus_per_task=8 hydra.launcher.mem_gb=64 hydra.launcher.timeout_min=240 "
    "trainer=ddp trainer.devices=4 optimizer.lr=0.001,0.003": "a SLURM cluster with GPUs; tests/test_slurm.py runs a one-node cluster (slow set)",
    "python train.py -m hparams_search=ml100k_optuna hydra/launcher=submitit_slurm hydra.launcher.partition=gpu":
        "a SLURM cluster; the same sweep runs locally here, and tests/test_slurm.py runs a one-node cluster (slow set)",
    "python benchmarks/quality.py": BENCHMARK + " (10 min on the dev box)",
    "python benchmarks/index.py --items 1000000 --users 1000 --epochs 2": BENCHMARK + " (1M items)",
    "python -m benchmarks.throughput --size cpu --device cpu --threads 1 --repeats 3":
        BENCHMARK + "; its quick form runs in tests/test_throughput_benchmark.py",
    "benchmarks/gpu_throughput.sh": BENCHMARK + " on a GPU; its quick form runs in tests/test_throughput_benchmark.py",
}


# ----------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class Run:
    """What a command must do: exit 0, print a match of ``expect``, leave ``files`` (globs under the
    working directory; ``{run}`` is its run directory) and, for training, resolve ``config`` (dotted
    key -> value) in its run's config.

    ``needs``: README commands that must have run first in the same directory (their outputs are
    this one's input); ``data``: writes the files the command reads into the directory.
    """

    expect: str
    files: tuple[str, ...] = ()
    config: dict | None = None
    needs: tuple[str, ...] = ()
    data: Callable[[Path], object] | None = None


METRICS = r"test  @20 +0\.\d{4}"  # the metrics table train.py prints after testing
CHECKPOINT = "{run}/checkpoints/last.ckpt"  # {run}: the training run's directory, see run_dir()
TRAIN_DEMO = "python train.py hydra.run.dir=outputs/demo"
EXPORT_DEMO = "python export.py checkpoint=outputs/demo output_dir=artifacts/demo"
MIND_GENERATOR = "python -m twotower.datasets.mind.generator /tmp/mind --users 5000 --news 8000"
TABLES = "python train.py data=tables data.source.interactions=clicks.csv data.source.users=users.csv data.source.items=items.csv"
SPLITS = "twotower.data.splits."

RUN = {
    # make demo's steps; the export and serving lines read what they leave.
    TRAIN_DEMO: Run(METRICS, ("outputs/demo/checkpoints/last.ckpt", "outputs/demo/plots/learning_curves.png")),
    EXPORT_DEMO: Run(r"artifact: \S*artifacts/demo", ("artifacts/demo/manifest.json", "artifacts/demo/index.faiss"), needs=(TRAIN_DEMO,)),
    "python -m twotower.show_recommendations artifacts/demo --users 1 2 3": Run(r"(?s)1\..*10\.", needs=(EXPORT_DEMO,)),
    "python export.py checkpoint=outputs/demo/checkpoints/last.ckpt index=ivf_pq output_dir=artifacts/pq":
        Run(r"index IVF\d+,PQ\d+x4fs,RFlat", ("artifacts/pq/manifest.json",), needs=(TRAIN_DEMO,)),
    # After set-up.
    "python train.py model.output_dim=32 loss.temperature=0.1 trainer.max_epochs=5":
        Run(METRICS, (CHECKPOINT,), {"model.output_dim": 32, "loss.temperature": 0.1}),
    "python train.py -m loss.temperature=0.05,0.1 model.embedding_dim=32,64":
        Run(METRICS, tuple(f"multirun/{job}/checkpoints/last.ckpt" for job in range(4))),
    # Configuration examples.
    "python train.py data.use_ids=false": Run(METRICS, (CHECKPOINT,), {"data.use_ids": False}),
    "python train.py data/split=temporal": Run(METRICS, (CHECKPOINT,), {"data.split._target_": SPLITS + "TemporalSplit"}),
    "python train.py data/split=leave_last_out": Run(METRICS, (CHECKPOINT,), {"data.split._target_": SPLITS + "LeaveLastOut"}),
    "python train.py model.history.pooling=attention model.history.dropout=0.2": Run(METRICS, (CHECKPOINT,)),
    "python train.py loss.learn_temperature=true loss.logq_weight=0.5": Run(METRICS, (CHECKPOINT,)),
    "python train.py monitor.metric=val/ndcg@10 module.ks=[5,10,20]": Run(r"test  @5 +0\.\d{4}", (CHECKPOINT,)),
    # Own tables.
    TABLES: Run(METRICS, (CHECKPOINT,), data=readme_data.write_own_tables),
    "python train.py data=tables data.source.interactions=clicks.csv data.source.users=users.csv "
    "data.source.items=items.csv data.source.split=split data/split=predefined":
        Run(METRICS, (CHECKPOINT,), {"data.split._target_": SPLITS + "PredefinedSplit"},
            data=lambda root: readme_data.write_own_tables(root, split="column")),
    "python train.py data=tables data.source.interactions=null data.source.train=train.csv data.source.val=val.csv "
    "data.source.test=test.csv data.source.users=users.csv data.source.items=items.csv data/split=predefined":
        Run(METRICS, (CHECKPOINT,), {"data.split._target_": SPLITS + "PredefinedSplit"},
            data=lambda root: readme_data.write_own_tables(root, split="files")),
    # Evaluation protocols.
    # A baseline as the model: fitted and scored, no checkpoint; the same metrics table and metrics.json.
    "python train.py model=ease": Run(METRICS, ("{run}/metrics.json",), {"model._target_": "twotower.baselines.EASE"}),
    "python train.py protocol=cold_items":
        Run(METRICS, (CHECKPOINT,), {"data.split._target_": SPLITS + "ColdStartItems", "data.candidates": "heldout"}),
    # MIND: the generator's output stands in for /data/MINDsmall too.
    MIND_GENERATOR: Run(r"users=5000 news=8000", ("mind/train/behaviors.tsv", "mind/dev/news.tsv")),
    "python train.py data=mind data.source.path=/tmp/mind": Run(r"test  impressions  auc=0\.\d{4}", (CHECKPOINT,), needs=(MIND_GENERATOR,)),
    "python train.py data=mind data.source.path=/data/MINDsmall": Run(r"test  impressions  auc=0\.\d{4}", (CHECKPOINT,), needs=(MIND_GENERATOR,)),
    "python train.py experiment=mind_text data.source.path=/data/MINDsmall":
        Run(r"test  impressions  auc=0\.\d{4}", (CHECKPOINT,), {"monitor.metric": "val/impression_auc"}, needs=(MIND_GENERATOR,)),
    # Cluster paths that run on one CPU machine.
    "python train.py trainer=ddp_cpu": Run(METRICS, (CHECKPOINT,), {"trainer.devices": 2}),
    "python train.py hydra.run.dir=outputs/my-run": Run(METRICS, ("{run}/checkpoints/resume-epoch.ckpt",)),
    "python train.py -m hparams_search=ml100k_optuna": Run(r"Best value", ("multirun/optimization_results.yaml", "multirun/1/checkpoints/last.ckpt")),
    "python train.py data=shards data.source.interactions=/data/clicks/ data.source.users=/data/users.parquet "
    "data.source.items=/data/items.parquet data.source.user_id=uid data.source.item_id=iid data.source.timestamp=ts":
        Run(METRICS, (CHECKPOINT,), data=lambda root: readme_data.write_shards(root / "data")),
    # Quiet mode: one line per epoch.
    "python train.py trainer.enable_progress_bar=false": Run(r"epoch 1/1 +train/loss \d+\.\d{4} +val/recall@20 0\.\d{4} .*[\d,]+ samples/s", (CHECKPOINT,)),
}
NEEDED = {need for run in RUN.values() for need in run.needs}

# README commands that fail today because of a library bug: {command: reason}; strict, so a fix shows.
XFAIL: dict[str, str] = {}


def run_dir(command: str) -> str:
    """A training command's run directory: its own ``hydra.run.dir``, else one of its own, so that
    commands sharing a working directory never resume each other's checkpoints."""
    given = [a.split("=", 1)[1] for a in shlex.split(command) if a.startswith("hydra.run.dir=")]
    return given[0] if given else f"outputs/run-{hashlib.sha1(command.encode()).hexdigest()[:8]}"


def shortened(command: str, root: Path) -> list[str]:
    """The command's argv as run here: README paths pointed into ``root``, the virtual environment's
    python, and, for training, overrides appended that make it seconds long and keep its outputs in ``root``."""
    local = command
    for readme_path, path in (("/data/MINDsmall", root / "mind"), ("/tmp/mind", root / "mind"), ("/data/", f"{root}/data/")):
        local = local.replace(readme_path, str(path))
    argv = shlex.split(local)
    if argv[0] == "python":
        argv[0] = sys.executable
    if argv[1:2] != ["train.py"]:
        return argv
    # Later overrides win in Hydra, so the command's own epochs give way to one.
    argv += ["trainer.max_epochs=1", "++trainer.limit_train_batches=5"]
    if "-m" not in argv:
        argv.append(f"hydra.run.dir={run_dir(command)}")  # the command's own, or one of its own
    elif not any(a.startswith("hydra.sweep.dir=") for a in argv):
        argv.append("hydra.sweep.dir=multirun")
    if "hparams_search=ml100k_optuna" in argv:
        argv += ["hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1"]
    return argv


class Workspace:
    """A working directory laid out like a checkout: README commands run in it, each at most once,
    one at a time (one may read what another wrote)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.done = root, env, {}
        self.lock = threading.RLock()  # re-entered when a command first runs what it needs
        root.mkdir(parents=True, exist_ok=True)
        for name in ("train.py", "export.py"):
            (root / name).symlink_to(ROOT / name)

    def run(self, command: str) -> subprocess.CompletedProcess:
        with self.lock:
            if command not in self.done:
                spec = RUN[command]
                for need in spec.needs:
                    done = self.run(need)
                    assert done.returncode == 0, f"precondition `{need}` failed:\n{done.stderr[-3000:]}"
                if spec.data:
                    spec.data(self.root)
                self.done[command] = subprocess.run(shortened(command, self.root), cwd=self.root, env=self.env,
                                                    capture_output=True, text=True, timeout=600)
            return self.done[command]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment the commands run in: a MovieLens-100K stand-in in the cache, so none is fetched."""
    cache = tmp_path_factory.mktemp("cache")
    readme_data.write_movielens(cache / "ml-100k")
    return {**os.environ, "TWOTOWER_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, env) -> Workspace:
    """The directory where commands that read another command's outputs run, after it."""
    return Workspace(tmp_path_factory.mktemp("shared"), env)


@pytest.fixture(scope="module")
def started(request, tmp_path_factory, env, shared) -> dict[str, Future]:
    """``(working dir, finished process)`` of every selected command, started in the background two
    at a time: each spends most of its seconds importing torch and Lightning on one core, so two
    overlap well even on a 2-core machine. The shared directory's commands go in one lane, in order."""
    selected = [item.callspec.params["command"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_readme_command" and item.callspec.params["command"] in RUN]
    in_shared = [c for c in selected if RUN[c].needs or c in NEEDED]
    futures = {c: Future() for c in in_shared}
    stop = threading.Event()

    def shared_lane() -> None:
        for command in in_shared:
            if stop.is_set():  # the session ended early (-x, Ctrl-C): start nothing more
                futures[command].cancel()
                continue
            try:
                futures[command].set_result((shared.root, shared.run(command)))
            except BaseException as err:  # the test of that command reports it
                futures[command].set_exception(err)

    def alone(command: str) -> tuple[Path, subprocess.CompletedProcess]:
        workspace = Workspace(tmp_path_factory.mktemp("run"), env)
        return workspace.root, workspace.run(command)

    with ThreadPoolExecutor(max_workers=2) as pool:
        pool.submit(shared_lane)
        futures.update({c: pool.submit(alone, c) for c in selected if c not in futures})
        yield futures
        stop.set()
        pool.shutdown(cancel_futures=True)


def short_id(command: str) -> str:
    text = command.removeprefix("python ")
    return text if len(text) <= 70 else f"{text[:42]}...{text[-25:]}"


def check(spec: Run, done: subprocess.CompletedProcess, root: Path, command: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-4000:]}"
    assert re.search(spec.expect, output), f"`{command}` printed no match of {spec.expect!r}:\n{output[-4000:]}"
    for pattern in spec.files:
        pattern = pattern.format(run=run_dir(command))
        assert list(root.glob(pattern)), f"`{command}` left no {pattern} in {root}"
    if spec.config:
        cfg = OmegaConf.load(root / run_dir(command) / ".hydra" / "config.yaml")
        for key, value in spec.config.items():
            assert OmegaConf.select(cfg, key) == value, f"`{command}`: {key} is {OmegaConf.select(cfg, key)!r}, expected {value!r}"


@pytest.mark.parametrize("command", [
    pytest.param(c, id=short_id(c), marks=[pytest.mark.xfail(strict=True, reason=XFAIL[c])] if c in XFAIL else [])
    for c in COMMANDS
])
def test_readme_command(command, started):
    if command in SKIPPED:
        pytest.skip(SKIPPED[command])
    assert command in RUN, f"README command `{command}` is neither run nor skipped: add it to RUN or SKIPPED in {Path(__file__).name}"
    root, done = started[command].result()
    check(RUN[command], done, root, command)


def test_every_listed_command_is_in_the_readme():
    """The other direction: a command dropped from the README (or edited) leaves no stale entry here."""
    listed = set(RUN) | set(SKIPPED) | set(XFAIL)
    assert not listed - set(COMMANDS), f"listed here but not in README.md: {sorted(listed - set(COMMANDS))}"
    assert not set(RUN) & set(SKIPPED), "a command is both run and skipped"


# --------------------------------------------------------------------------------------- python blocks
RETRIEVER_CHECK = '\nprint("last item:", r.item_ids[-1], "index size:", r.index.ntotal, "ids:", len(r.item_ids))\n'


def test_readme_python_blocks_are_run_or_covered(shared):
    blocks = dict(code_blocks(README_TEXT, "python"))
    assert set(blocks) == {"The Retriever", "Serving without twotower"}, f"python blocks under new headings: {sorted(blocks)}"
    # tests/test_export.py::test_portable_snippet_gives_the_retrievers_top_k runs this snippet; it must be the README's text.
    assert blocks["Serving without twotower"].strip() == SNIPPET.replace("ARTIFACT", '"artifacts/demo"').strip()
    done = shared.run(EXPORT_DEMO)
    assert done.returncode == 0, done.stderr[-3000:]
    code = blocks["The Retriever"] + RETRIEVER_CHECK
    ran = subprocess.run([sys.executable, "-c", code], cwd=shared.root, env=shared.env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-4000:]
    # add_items put the new movie last, in the index and in the ids alike.
    assert re.search(r"last item: m1 index size: (\d+) ids: \1", ran.stdout), ran.stdout
