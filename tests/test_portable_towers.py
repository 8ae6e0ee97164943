"""Serving outside twotower: the exported ONNX and torch.export query towers equal the eager one, and a client
built from the manifest's serving_signature alone, with only onnxruntime, faiss and numpy, returns the Retriever's top K."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.export_fixtures import trained_and_exported
from twotower.artifact import QUERY_ONNX, QUERY_PROGRAM
from twotower.retriever import Retriever

K = 10
# The client a serving team writes from the README and the manifest: no torch, no twotower (both made
# unimportable), raw user rows in, item ids out.
CLIENT = r'''
import json, sys
sys.modules["torch"] = None
sys.modules["twotower"] = None
import faiss, numpy as np, onnxruntime

artifact, k = sys.argv[1], int(sys.argv[2])
rows = json.loads(sys.stdin.read())  # raw user rows: the users table's columns, plus "history" (item ids, most recent first)
manifest = json.load(open(f"{artifact}/manifest.json"))
files = {}

def lookup(vocabulary):
    if vocabulary["file"] not in files:
        files[vocabulary["file"]] = json.load(open(f"{artifact}/{vocabulary['file']}"))
    table = files[vocabulary["file"]]
    for key in vocabulary["key"].split("."):
        table = table[key]
    return {value: position + 1 for position, value in enumerate(table)}  # 1 + position; 0 = unknown

feeds = {}
for spec in manifest["serving_signature"]["inputs"]:
    name, raw = spec["name"], [row.get(spec["name"]) for row in rows]
    if spec["dtype"] == "float32":  # a number goes in raw, NaN when missing: the tower standardises it
        feeds[name] = np.asarray([np.nan if v is None else v for v in raw], dtype=np.float32)
    elif spec["shape"][1:] == ["history_len"]:
        index = lookup(spec["vocabulary"])
        ids = [[index.get(str(item), 0) for item in (value or [])] for value in raw]
        width = max(1, max(len(i) for i in ids))
        feeds[name] = np.asarray([i + [0] * (width - len(i)) for i in ids], dtype=spec["dtype"])
    else:
        index = lookup(spec["vocabulary"])
        feeds[name] = np.asarray([index.get(str(v), 0) for v in raw], dtype=spec["dtype"])
session = onnxruntime.InferenceSession(f"{artifact}/query_tower/model.onnx")
(queries,) = session.run([manifest["serving_signature"]["output"]["name"]], feeds)
index = faiss.read_index(f"{artifact}/index.faiss")
scores, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
item_ids = np.load(f"{artifact}/item_ids.npy", allow_pickle=False)
print(json.dumps({"item_ids": item_ids[found].tolist(), "scores": scores.tolist()}))
'''


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    _, path, objects = trained_and_exported(tmp_path_factory.mktemp("portable"))
    return path, objects


def _inputs(retriever: Retriever, rows: np.ndarray, history_len: int | None = None) -> dict[str, torch.Tensor]:
    table = {k: torch.from_numpy(v[rows]) for k, v in retriever.user_features.items()}
    histories = {k: torch.from_numpy(v[rows, :history_len]) for k, v in retriever.histories.items()}
    return retriever._query_inputs(table, histories)


@pytest.mark.parametrize("batch, history_len", [(1, None), (7, 5), (64, 1)])
def test_onnx_and_torch_export_programs_equal_the_eager_tower(artifact, batch, history_len):
    import onnxruntime

    path, _ = artifact
    retriever = Retriever.load(path)
    inputs = _inputs(retriever, np.arange(batch), history_len)  # batch and history length other than the export example's
    with torch.no_grad():
        expected = retriever.query_tower.eval()(inputs).numpy()
    session = onnxruntime.InferenceSession(str(path / QUERY_ONNX))
    assert [i.name for i in session.get_inputs()] == list(inputs)
    (onnx_out,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    np.testing.assert_allclose(onnx_out, expected, atol=1e-5)
    program = torch.export.load(str(path / QUERY_PROGRAM)).module()
    np.testing.assert_allclose(program(*inputs.values()).detach().numpy(), expected, atol=1e-5)


def test_the_signature_documents_every_input_of_the_onnx_tower(artifact):
    import onnxruntime

    path, _ = artifact
    signature = json.loads((path / "manifest.json").read_text())["serving_signature"]
    session = onnxruntime.InferenceSession(str(path / QUERY_ONNX))
    onnx_types = {"tensor(int64)": "int64", "tensor(float)": "float32", "tensor(bool)": "bool"}
    assert [(i.name, onnx_types[i.type], i.shape) for i in session.get_inputs()] == [(s["name"], s["dtype"], s["shape"]) for s in signature["inputs"]]
    assert all(s.get("vocabulary") or s.get("in_tower") or "." in s["name"] for s in signature["inputs"]), "each input says how raw values become it"


def test_a_client_with_only_onnxruntime_faiss_and_numpy_returns_the_retrievers_top_k(artifact):
    path, objects = artifact
    retriever = Retriever.load(path)
    tables = objects["datamodule"].prepared.tables
    users = tables.users.head(6).copy()
    # Known users as raw rows with their stored histories, and new users: unseen values, no history, a raw history of their own.
    stored = retriever.histories[retriever.history_name][[retriever._user_row[str(u)] for u in users["user_id"]]]
    users["history"] = [[str(retriever.item_ids[r - 1]) for r in row if r > 0] for row in stored]
    new = users.head(3).copy()
    new["user_id"] = ["new-1", "new-2", "new-3"]
    new.iloc[0, new.columns.get_loc("segment")] = "a segment never seen"
    new.iloc[1, new.columns.get_loc("age")] = 1e4  # far outside the training range: the tower clips it, client or not
    new["history"] = [[], [str(i) for i in retriever.item_ids[:4]], ["not an item", str(retriever.item_ids[5])]]
    frame = pd.concat([users, new], ignore_index=True)
    expected = retriever.recommend(frame, k=K, exclude_seen=False)

    records = json.loads(frame.to_json(orient="records"))
    done = subprocess.run([sys.executable, "-I", "-c", CLIENT, str(path), str(K)], input=json.dumps(records), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout)
    np.testing.assert_allclose(served["scores"], expected.scores, atol=1e-5)
    for row, (got, want) in enumerate(zip(served["item_ids"], expected.item_ids)):
        assert [str(i) for i in got] == [str(i) for i in want], row
