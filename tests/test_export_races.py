"""Exports that race or die: two exports into one directory, and a kill at every step of publishing.

Whatever happens, ``output_dir`` holds one whole artifact (its files from one export) that loads,
and the next export leaves nothing behind but the artifact and its lock file.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export_fixtures import export_config, trained_and_exported
from twotower import Retriever
from twotower.artifact import MANIFEST, Artifact, ArtifactWriter
from twotower.exporting import encode, export, load_checkpoint

MEET_S = 3.0  # how long each export waits, mid-write, for the other to get there too


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return trained_and_exported(tmp_path_factory.mktemp("export"))


def perturbed_copy(checkpoint: Path, path: Path) -> Path:
    """The checkpoint with noise on every weight: a second model whose vectors differ from the first's."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    state["state_dict"] = {k: v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, path)
    return path


def catalogue_vectors(checkpoint: Path, datamodule) -> np.ndarray:
    model, _, _ = load_checkpoint(checkpoint)
    return encode(model.candidate_tower, len(datamodule.prepared.items), datamodule.prepared.items.gather, torch.device("cpu"), 1024)


def test_two_exports_into_one_directory_publish_one_whole_artifact(exported, tmp_path, monkeypatch, caplog):
    run_dir, _, objects = exported
    checkpoints = [Path(objects["best_checkpoint"]), perturbed_copy(Path(objects["best_checkpoint"]), tmp_path / "other.ckpt")]
    target = tmp_path / "art"
    # torchscript=false: torch.jit.trace is not thread-safe, and threads here stand in for two processes.
    configs = [export_config(checkpoint, target, overrides=("torchscript=false",)) for checkpoint in checkpoints]
    (tmp_path / "art.partial").mkdir()  # not an export's: it must survive both
    (tmp_path / "art.partial" / "draft.txt").write_text("mine")

    # Each export, once it has begun writing, waits for the other to begin writing too, so that
    # their writing overlaps if nothing keeps them apart (here: the lock makes the second wait).
    from twotower import exporting

    plot, arrived, meeting = exporting.plot_recall_vs_latency, [], threading.Condition()

    def meet_then_plot(*args, **kwargs):
        with meeting:
            arrived.append(threading.get_ident())
            meeting.notify_all()
            meeting.wait_for(lambda: len(arrived) == 2, timeout=MEET_S)
        return plot(*args, **kwargs)

    monkeypatch.setattr(exporting, "plot_recall_vs_latency", meet_then_plot)
    results: list = [None, None]

    def run(i: int) -> None:
        try:
            results[i] = export(configs[i])
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == [target, target], results
    assert "is in use by pid" in caplog.text, "the second export did not wait for the first"

    retriever = Retriever.load(target)  # every checksum checked
    winner = Path(retriever.artifact.manifest["checkpoint"])
    assert winner in checkpoints
    expected = catalogue_vectors(winner, objects["datamodule"])
    other = catalogue_vectors(checkpoints[1 - checkpoints.index(winner)], objects["datamodule"])
    assert not np.allclose(expected, other, atol=1e-3), "the two checkpoints give the same vectors: the test would not see a mix"
    np.testing.assert_allclose(retriever.item_vectors, expected, atol=1e-5)
    np.testing.assert_allclose(retriever.index.reconstruct_n(0, retriever.index.ntotal), expected, atol=1e-5)
    weights = load_checkpoint(winner)[0].candidate_tower.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in retriever.candidate_tower.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("art")) == ["art", "art.lock", "art.partial", "art.v2"]
    assert (tmp_path / "art.partial" / "draft.txt").read_text() == "mine"


def publish_copy(source: Path, target: Path, version: str, kill_at: int | None = None) -> bool:
    """Writes source's files as an artifact at target tagged ``version``; True when the writer was killed.

    With ``kill_at``, the writer is a forked child that SIGKILLs itself just before the kill_at-th
    change its commit makes to the filesystem (a rename, link, replace, unlink or rmdir).
    """
    pid = os.fork() if kill_at is not None else 0
    if pid:
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, "the writer failed (its traceback is above)"
        return os.WIFSIGNALED(status)
    try:
        artifact = Artifact.open(source)
        with ArtifactWriter(target) as out:
            for name in artifact.manifest["files"]:
                shutil.copyfile(artifact.file(name), out.file(name))
            if kill_at is not None:
                _die_before_change(kill_at)
            out.commit({k: v for k, v in artifact.manifest.items() if k not in ("files", "format", "format_version")} | {"version": version})
    except BaseException:
        if kill_at is None:
            raise
        traceback.print_exc()
        os._exit(1)
    if kill_at is not None:
        os._exit(0)
    return False


def _die_before_change(n: int) -> None:
    changes = 0

    def counted(change):
        def run(*args, **kwargs):
            nonlocal changes
            if changes == n:
                os.kill(os.getpid(), signal.SIGKILL)
            changes += 1
            return change(*args, **kwargs)

        return run

    for name in ("rename", "replace", "symlink", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))


@pytest.mark.parametrize("before", ["an artifact", "an artifact of a twotower before versions (a real directory)"])
def test_a_kill_at_any_step_of_publishing_leaves_a_loadable_artifact(exported, tmp_path, before):
    source = exported[1]
    step = killed = 0
    while True:
        root = tmp_path / str(step)
        target = root / "art"
        root.mkdir()
        if before == "an artifact":
            publish_copy(source, target, "old")
        else:
            shutil.copytree(source, target)
        was_killed = publish_copy(source, target, "new", kill_at=step)
        assert Retriever.load(target).artifact.manifest.get("version") in ("old", None, "new"), f"killed before change {step}"
        publish_copy(source, target, "next")  # cleans up after the killed export
        left = {p.name for p in root.iterdir()} - {"art", "art.lock", target.resolve().name}
        assert not left, f"killed before change {step}: left {left} next to the artifact"
        assert Retriever.load(target).artifact.manifest["version"] == "next"
        if not was_killed:
            break
        killed, step = killed + 1, step + 1
    assert killed >= 4, f"the commit made only {killed} changes: the kill points do not cover publishing"


def test_export_refuses_someone_elses_manifest_before_any_work(exported, tmp_path):
    run_dir = exported[0]
    site = tmp_path / "site"
    site.mkdir()
    (site / MANIFEST).write_text('{"name": "My web app", "start_url": "/"}')
    (site / "index.html").write_text("<html></html>")
    (tmp_path / "site.partial").mkdir()
    (tmp_path / "site.partial" / "draft.html").write_text("<html>draft</html>")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=f"{site} is not a twotower artifact: its manifest.json has format None"):
        export(export_config(run_dir, site))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "site.partial"]
