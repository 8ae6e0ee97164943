"""train -> export -> load -> recommend, against brute force; the portable snippet; faults refused."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from tests.export_fixtures import compose_config, export_config, trained_and_exported
from twotower import Retriever
from twotower.artifact import INDEX, MANIFEST, MAX_ID_CHARS, ArtifactError, sha256_of
from twotower.data.tables import ITEM, TIME, USER
from twotower.exporting import export, find_checkpoint, load_checkpoint
from twotower.task.retrieval import rank
from twotower.training import train

ROOT = Path(__file__).resolve().parents[1]

# The README's serving snippet: faiss + numpy + onnxruntime only (the test runs it with torch and twotower unimportable).
SNIPPET = """
import faiss, numpy as np, onnxruntime
art = ARTIFACT
index = faiss.read_index(f"{art}/index.faiss")
item_ids, user_ids = np.load(f"{art}/item_ids.npy"), np.load(f"{art}/user_ids.npy")
features = np.load(f"{art}/user_features.npz")  # known users' query-tower inputs, already encoded
tower = onnxruntime.InferenceSession(f"{art}/query_tower/model.onnx")
rows = [int(np.flatnonzero(user_ids == u)[0]) for u in ["1", "2", "3"]]
(queries,) = tower.run(None, {i.name: features[i.name][rows] for i in tower.get_inputs()})
scores, found = index.search(queries, 10)
print(item_ids[found].tolist())
"""


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return trained_and_exported(tmp_path_factory.mktemp("export"))


def brute_force_top_k(model, datamodule, users: list[str], k: int):
    """Every item scored for each user from the tables directly; seen items removed."""
    tables, pre = datamodule.prepared.tables, datamodule.prepared.preprocessor
    with torch.no_grad():
        items = model.encode_candidate(pre.transform("candidate", tables.items, "items"))  # (n_items, D)
        frame = tables.users.set_index(USER).loc[users].reset_index()
        features = pre.transform("query", frame, "users")
        log = tables.interactions.sort_values(TIME, ascending=False, kind="stable")
        max_len = pre.query["history"].max_len
        histories = [log.loc[log[USER] == u, ITEM].tolist() for u in users]
        # History: item-vocabulary indices, most recent first (unknown items dropped, as the vocabulary does).
        features["history"] = torch.from_numpy(pre.item_ids.lookup_lists(histories, max_len))
        item_ids = tables.items[ITEM].tolist()
        seen = torch.tensor([(row, item_ids.index(i)) for row, history in enumerate(histories) for i in history]).T  # (2, nnz)
        top = rank(model.encode_query(features), items, k, exclude=seen)
    return top.values.numpy(), np.asarray(item_ids)[top.indices.numpy()]


def test_train_export_load_recommend_matches_brute_force(exported):
    run_dir, artifact, objects = exported
    retriever = Retriever.load(artifact)
    model, _, _ = load_checkpoint(find_checkpoint(run_dir))
    users = ["0", "1", "7", "42", "299"]
    expected_scores, expected_ids = brute_force_top_k(model, objects["datamodule"], users, 10)
    got = retriever.recommend(users, k=10)
    np.testing.assert_allclose(got.scores, expected_scores, atol=1e-5)
    for row in range(len(users)):
        # Ties tolerated: only items scoring strictly above the 10th must agree.
        sure = expected_scores[row] > expected_scores[row, -1] + 1e-5
        assert set(expected_ids[row][sure]) <= set(got.item_ids[row]), users[row]


def test_manifest_and_index_infos_describe_the_artifact(exported):
    run_dir, artifact, objects = exported
    manifest = json.loads((artifact / MANIFEST).read_text())
    infos = json.loads((artifact / "index_infos.json").read_text())
    assert manifest["counts"] == {"items": 200, "users": 300, "interactions": 300 * 20, "indexed": 200}
    assert manifest["dim"] == infos["dim"] == 64 and manifest["metric"] == infos["metric"] == "inner_product"
    training = manifest["training"]
    assert training["monitor"] == "val/recall@20" and 0 < training["best_score"] <= 1
    # The logged validation metrics are those of the exported (best) checkpoint's epoch.
    assert training["val/recall@20"] == pytest.approx(training["best_score"])
    assert manifest["config"]["run"]["data"]["source"]["n_items"] == 200
    assert {"torch", "faiss", "numpy", "safetensors"} <= set(manifest["libraries"])
    assert infos["key"] == "Flat" and infos["recall@10"] == infos["recall@100"] == 1.0 and infos["ntotal"] == 200
    assert infos["latency_ms"]["p99"] >= infos["latency_ms"]["p50"] > 0
    assert (artifact / "index_recall_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, record in manifest["files"].items():
        assert sha256_of(artifact / name) == record["sha256"], name


def test_portable_snippet_gives_the_retrievers_top_k(exported):
    _, artifact, _ = exported
    blocked = "import sys; sys.modules['twotower'] = sys.modules['torch'] = None\n"  # any twotower or torch import would fail
    code = blocked + SNIPPET.replace("ARTIFACT", repr(str(artifact)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=artifact.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = Retriever.load(artifact).recommend(["1", "2", "3"], k=10, exclude_seen=False)
    assert json.loads(done.stdout.strip().replace("'", '"')) == expected.item_ids.tolist()


def test_find_checkpoint_takes_the_best_of_a_run_directory(exported, tmp_path):
    run_dir, _, objects = exported
    best = Path(objects["best_checkpoint"])
    assert find_checkpoint(run_dir) == run_dir / "checkpoints" / best.name
    assert find_checkpoint(best) == best
    with pytest.raises(FileNotFoundError, match="no best checkpoint found"):
        find_checkpoint(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="plain.ckpt has no 'twotower' metadata"):
        load_checkpoint(tmp_path / "plain.ckpt")


def _copy(artifact: Path, target: Path) -> Path:
    shutil.copytree(artifact, target)
    return target


def _rewrite_checksum(path: Path, name: str) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_of(path / name), "bytes": (path / name).stat().st_size}
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_a_truncated_index_is_refused(exported, tmp_path):
    path = _copy(exported[1], tmp_path / "art")
    size = (path / INDEX).stat().st_size
    with open(path / INDEX, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ArtifactError, match=f"index.faiss has {size // 2} bytes, manifest.json records {size}"):
        Retriever.load(path)


def test_an_index_of_another_dim_is_refused_even_with_a_matching_checksum(exported, tmp_path):
    path = _copy(exported[1], tmp_path / "art")
    other = faiss.IndexFlatIP(65)
    other.add(np.zeros((200, 65), dtype=np.float32))
    faiss.write_index(other, str(path / INDEX))
    _rewrite_checksum(path, INDEX)
    with pytest.raises(ArtifactError, match="query_tower/config.json: the query tower outputs dim 64, but index.faiss has dim 65"):
        Retriever.load(path)


def test_a_changed_weight_file_is_refused(exported, tmp_path):
    path = _copy(exported[1], tmp_path / "art")
    weights = path / "candidate_tower" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"candidate_tower/model.safetensors has sha256 [0-9a-f]{64}, manifest.json records [0-9a-f]{64}"):
        Retriever.load(path)


def test_killing_export_leaves_no_artifact_that_loads(exported, tmp_path):
    run_dir, _, _ = exported
    target = tmp_path / "art"
    command = [sys.executable, "export.py", f"checkpoint={run_dir}", f"output_dir={target}", "index=flat"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not (staging := list(tmp_path.glob("art.partial-*"))) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert staging, "export finished (or never started writing) before it could be killed mid-write"
    partial = staging[0]
    assert not target.exists()
    with pytest.raises(ArtifactError):
        Retriever.load(target)
    with pytest.raises(ArtifactError):
        Retriever.load(partial)


def test_an_id_longer_than_an_artifact_holds_is_refused_before_the_work(compose_cfg, tmp_path):
    long_id = "i" * (MAX_ID_CHARS + 1)
    rows = [(f"u{u}", long_id if (u, k) == (0, 0) else f"i{(u * 7 + k) % 40}", k) for u in range(60) for k in range(12)]
    clicks = tmp_path / "clicks.csv"
    pd.DataFrame(rows, columns=["uid", "iid", "ts"]).to_csv(clicks, index=False)
    ids_only = ["data.features.query=[{name: user_id, kind: id}]", "data.features.candidate=[{name: item_id, kind: id}]"]
    train(compose_cfg("data=tables", f"data.source.interactions={clicks}", "data.batch_size=64", *ids_only, "logger=none",
                      "trainer.max_epochs=1", "test=false", "trainer.enable_progress_bar=false"))
    with pytest.raises(ValueError, match=rf"the items table has an id of {MAX_ID_CHARS + 1} characters \('iiii"):
        export(export_config(tmp_path, tmp_path / "artifact"))
    assert not (tmp_path / "artifact").exists()


@pytest.fixture(scope="module")
def ids_only_untimed(tmp_path_factory):
    """An artifact of id towers trained on interactions without timestamps."""
    root = tmp_path_factory.mktemp("ids-only-untimed")
    rows = [(f"u{u}", f"i{(u * 7 + k) % 40}") for u in range(60) for k in range(12)]
    clicks = root / "clicks.csv"
    pd.DataFrame(rows, columns=["uid", "iid"]).to_csv(clicks, index=False)
    ids_only = ["data.features.query=[{name: user_id, kind: id}]", "data.features.candidate=[{name: item_id, kind: id}]"]
    train(compose_config("train", [f"paths.output_dir={root}", "data=tables", f"data.source.interactions={clicks}", "data.source.timestamp=null",
                                   "data.batch_size=64", *ids_only, "logger=none", "trainer.max_epochs=1", "test=false", "trainer.enable_progress_bar=false"]))
    return export(export_config(root, root / "artifact"))


def test_an_artifact_without_timestamps_refuses_what_needs_them(ids_only_untimed):
    """Interactions without timestamps were exported with every event at time 0: trending(half_life=1)
    gave popular's list, max_age=1 dropped nothing and freshness_boost raised every score alike."""
    retriever = Retriever.load(ids_only_untimed)
    assert json.loads((ids_only_untimed / MANIFEST).read_text())["timestamps"] is False
    why = r"the artifact's interactions have no timestamps \(trained without data.source.timestamp\)"
    with pytest.raises(ValueError, match=rf"trending: {why}, so no item is more recent than another: use popular"):
        retriever.trending(5, half_life=1.0)
    for knob in ({"max_age": 1.0}, {"freshness_boost": 0.5}):
        with pytest.raises(ValueError, match=rf"{next(iter(knob))}={next(iter(knob.values()))}: {why}, so items have no age"):
            retriever.recommend(["u1"], k=5, **knob)
        with pytest.raises(ValueError, match=rf"{next(iter(knob))}=.*{why}"):
            retriever.recommend_from_history(["i1"], k=5, **knob)
    assert retriever.recommend(["u1"], k=5).item_ids.shape == (1, 5)  # what needs no time still serves
    assert retriever.popular(3).item_ids.shape == (1, 3)


def test_a_raw_row_whose_user_id_is_a_list_or_dict_is_named(ids_only_untimed):
    """With an id feature, such a row stopped in the id lookup with a bare "unhashable type: 'dict'"."""
    retriever = Retriever.load(ids_only_untimed)
    for value, shown in (({"a": 1}, r"dict \{'a': 1\}"), (["u1"], r"list \['u1'\]")):
        with pytest.raises(TypeError, match=rf"users\['user_id'\]\[1\] is {shown}; an id is a string or a number"):
            retriever.recommend(pd.DataFrame({"user_id": ["u1", value]}), k=3)
    assert retriever.recommend(pd.DataFrame({"user_id": ["u1"]}), k=3).item_ids.tolist() == retriever.recommend(["u1"], k=3).item_ids.tolist()


@pytest.mark.parametrize("index, override, named", [
    ("hnsw", "index.target_recall=2", r"index.target_recall=2: must be in \(0, 1\]"),
    ("ivf_flat", "index.nlist=0", r"index.nlist=0: must be at least 1"),
    # auto's large index (the default above 100k items) was never checked: a target of 2 was accepted and never met.
    ("auto", "index.large.target_recall=2", r"index.large.target_recall=2: must be in \(0, 1\]"),
    ("auto", "+index.large.nprob=4", r"index.large.nprob: IndexSpec takes no argument 'nprob'"),
    ("flat", "chunk_size=0", r"chunk_size=0: must be at least 1"),
    ("flat", "eval_queries=-1", r"eval_queries=-1: must be at least 1"),
    ("flat", "device=tpu", r"device='tpu' is not a device"),
    pytest.param("flat", "device=cuda", r"device='cuda', but this machine has no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
])
def test_export_settings_that_cannot_apply_are_refused_before_the_work(exported, tmp_path, index, override, named):
    """A recall target past 1 was accepted and never met, a chunk of 0 rows died inside the encoding and a
    negative query sample silently measured one query less; now each is named before anything is read."""
    from twotower.config_check import ConfigError

    run_dir, _, _ = exported
    with pytest.raises(ConfigError, match=named):
        export(export_config(run_dir, tmp_path / "artifact", index=index, overrides=(override,)))
    assert not (tmp_path / "artifact").exists()


@pytest.mark.parametrize("override", ["+index.target_recall=0.99", "+index.nlist=64", "+index.fetch_factor=10"])
def test_a_setting_auto_does_not_read_is_refused_before_the_work(exported, tmp_path, override):
    """index=auto builds Flat, or above 100k items the index of index.large: a top-level recall target, nlist or
    fetch factor was accepted and silently not applied to either."""
    run_dir, _, _ = exported
    name = override.removeprefix("+").split("=")[0].removeprefix("index.")
    with pytest.raises(ValueError, match=rf"index.{name} is not read by index=auto: set index.large.{name} \(the index built above 100000 items\)"):
        export(export_config(run_dir, tmp_path / "artifact", index="auto", overrides=(override,)))
    assert not (tmp_path / "artifact").exists()


def test_a_compressed_index_serves_the_exact_ranking_through_its_fetch_factor(exported, tmp_path):
    run_dir, artifact, _ = exported
    compressed = export(export_config(run_dir, tmp_path / "sq", "ivf_sq", ("index.nlist=8", "index.fetch_factor=20", "index.target_recall=1.0")))
    manifest = json.loads((compressed / MANIFEST).read_text())
    assert manifest["index"]["key"] == "IVF8,SQ6" and manifest["index"]["fetch_factor"] == 20
    served, exact = Retriever.load(compressed), Retriever.load(artifact)  # the same towers over Flat
    assert served.fetch_factor == 20 and exact.fetch_factor == 1
    users = [str(u) for u in range(0, 300, 7)]
    got, want = served.recommend(users, k=10), exact.recommend(users, k=10)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)  # exact scores, in exact order

    infos = json.loads((compressed / "index_infos.json").read_text())
    infos["fetch_factor"] = 0
    (compressed / "index_infos.json").write_text(json.dumps(infos))
    with pytest.raises(ArtifactError, match=r"index_infos.json"):  # its checksum first; a crafted manifest is refused too
        Retriever.load(compressed)


def test_a_rerank_over_a_compressed_index_picks_from_the_exact_best(exported, tmp_path):
    """Retriever re-scores what a compressed index fetches exactly, but a re-ranker was handed the first rerank.fetch
    of them in the index's approximate order: MMR at trade_off=1 (relevance only) then differed from plain recommend."""
    from twotower.rerank import Rerank

    run_dir, artifact, _ = exported
    coarse = export(export_config(run_dir, tmp_path / "sq4", "ivf_sq", ("index.key='IVF{nlist},SQ4'", "index.nlist=8", "index.fetch_factor=20",
                                                                           "index.target_recall=1.0")))
    served, exact = Retriever.load(coarse), Retriever.load(artifact)
    users = [str(u) for u in range(300)]
    want = exact.recommend(users, k=10)
    np.testing.assert_allclose(served.recommend(users, k=10).scores, want.scores, atol=1e-5)
    np.testing.assert_allclose(served.recommend(users, k=10, rerank=Rerank("mmr", fetch=10, trade_off=1.0)).scores, want.scores, atol=1e-5)
