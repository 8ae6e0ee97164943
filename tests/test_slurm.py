"""A real one-node SLURM cluster on this machine: a sweep through submitit, and a requeued job resuming.

Needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them) and root (the daemons run as
root with ``SlurmUser=root``). The cluster uses its own config, ports and spool directories, so it
leaves any other SLURM on the machine alone; it stops the daemons it started.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_resume import DATA as RESUME_DATA
from tests.test_resume import steps_per_epoch

ROOT = Path(__file__).resolve().parents[1]
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
DATA = [*RESUME_DATA, "logger=csv"]

pytestmark = pytest.mark.slow

SLURM_CONF = """\
ClusterName=twotower-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _wait(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _start_munged() -> int | None:
    """Starts munged unless one is running; returns the pid to stop, or None when it was already running."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    _wait(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, 20, "munged")
    return int((MUNGE_SOCKET_DIR / "munged.pid").read_text())


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """munged, slurmctld and slurmd, started in that order; yields the environment that reaches them."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM binaries {missing} not installed (apt-get install slurm-wlm munge; .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root (SlurmUser=root)")
    directory = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (directory / sub).mkdir()
    conf = directory / "slurm.conf"
    host = socket.gethostname()
    conf.write_text(SLURM_CONF.format(host=host, dir=directory, cpus=os.cpu_count(), ctld_port=_free_port(), slurmd_port=_free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[int] = []
    try:
        munged = _start_munged()
        if munged:
            started.append(munged)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon], env=env, check=True)
            started.append(int(_wait(lambda: _read(directory / f"{daemon}.pid"), 20, f"{daemon} pid file")))
        _wait(lambda: "idle" in _run(env, "sinfo", "-h", "-o", "%t"), 60, f"node {host} idle (see {directory}/slurmd.log)")
        yield env
    finally:
        for pid in reversed(started):
            _stop(pid)


def _read(path: Path) -> str | None:
    return path.read_text().strip() or None if path.exists() else None


def _run(env: dict[str, str], *command: str) -> str:
    return subprocess.run(command, env=env, capture_output=True, text=True).stdout


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "train.py", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}", *DATA, *overrides,
    ]  # fmt: skip


def job_results(sweep_dir: Path) -> list[tuple[str, object]]:
    return [pickle.loads(p.read_bytes()) for p in sorted(sweep_dir.glob(".submitit/*/*_result.pkl"))]


def test_sweep_runs_as_slurm_jobs(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(sweep_command(sweep_dir, "trainer.max_epochs=1", "seed=1,2"), cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = job_results(sweep_dir)
    assert [outcome for outcome, _ in results] == ["success", "success"], results
    # Each job returned the sweep's objective and wrote its own metrics, test split included.
    assert all(0.0 < job.return_value <= 1.0 for _, job in results)
    for job in ("0", "1"):
        header = (sweep_dir / job / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"val/recall@20", "test/recall@20"} <= set(header)


def test_requeue_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "0"
    epochs = 3
    launcher = subprocess.Popen(
        sweep_command(sweep_dir, f"trainer.max_epochs={epochs}", "callbacks.step_checkpoint.every_n_train_steps=5", "test=false"),
        cwd=ROOT, env=slurm, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Training has started (so Lightning's handler is set) once the first resume point exists.
        _wait(lambda: (run_dir / "checkpoints" / "resume-step.ckpt").exists() or launcher.poll() is not None, 300, "training to start")
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
        job = _run(slurm, "squeue", "-h", "-o", "%i").split()[0]
        subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)

        hpc = run_dir / "hpc_ckpt_1.ckpt"
        _wait(lambda: "PENDING" in _run(slurm, "squeue", "-h", "-o", "%T"), 120, f"job {job} to be requeued")
        assert hpc.exists()
        # A requeued job waits out a begin-time delay; an operator (root) may start it at once.
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=slurm, check=True)
        stderr = launcher.communicate(timeout=600)[1]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            subprocess.run(["scancel", "--full", *_run(slurm, "squeue", "-h", "-o", "%i").split()], env=slurm)
    assert launcher.returncode == 0, stderr[-3000:]
    assert [outcome for outcome, _ in job_results(sweep_dir)] == ["success"]

    log = (run_dir / "train.log").read_text()
    # The requeued job resumes from the newest checkpoint: hpc_ckpt, or a step resume point written
    # after it (Lightning bypasses SLURM's SIGTERM, so training goes on until the job is stopped).
    resumed_from = re.search(r"resuming from (\S+)", log)
    assert resumed_from and resumed_from[1] in {str(hpc), str(run_dir / "checkpoints" / "resume-step.ckpt"), str(run_dir / "checkpoints" / "resume-epoch.ckpt")}, log[-3000:]
    signalled_at = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    final = torch.load(run_dir / "checkpoints" / "resume-epoch.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == epochs * steps_per_epoch()
    assert 0 < signalled_at < final["global_step"]
    # The optimizer state came back: a fresh optimizer would count only the second run's steps.
    # Lightning saves hpc_ckpt from inside the signal handler, which can land between two
    # parameters' updates of one optimizer step, so some parameters may count one step more.
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps <= {final["global_step"], final["global_step"] + 1} and final["global_step"] in adam_steps
