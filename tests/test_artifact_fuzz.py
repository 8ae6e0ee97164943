"""Fuzzing the artifact loader: random truncations, byte flips and JSON edits of a real exported artifact.

Two outcomes are allowed, and each case is counted as one of them: ``Retriever.load`` refuses with
an ``ArtifactError``, or it loads and serves correct results, judged against brute force over what
it loaded (every item vector scored, seen items removed). A load that raises anything else, or a
retriever that then fails or answers wrongly, is a failure. Seeded, so every run fuzzes the same cases.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export_fixtures import trained_and_exported
from tests.tamper import redigest, resign
from twotower import Retriever
from twotower.artifact import CANDIDATE_TOWER, MANIFEST, QUERY_TOWER, ArtifactError

SEED = 15
CASES = 160
USERS = ["0", "1", "7", "42", "299"]
ITEMS = ["0", "5", "199"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return Path(trained_and_exported(tmp_path_factory.getbasetemp() / "export-shared")[1]).resolve()


def files_of(artifact: Path) -> list[str]:
    return sorted([MANIFEST, *json.loads((artifact / MANIFEST).read_text())["files"]])


def random_json(rng: random.Random):
    return rng.choice([None, True, -1, 0, 2**63, 1e308, float("nan"), "", "x" * 300, [], {}, [1, "a"], {"k": None}])


def edit_json_randomly(data, rng: random.Random):
    """Replace, delete or add one value somewhere in a JSON tree; returns a description."""
    path, node = [], data
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        path.append(key)
        node = node[key]
    if not isinstance(node, (dict, list)) or not node:
        return random_json(rng), f"{path}: the whole value replaced"
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    action = rng.choice(["replace", "delete", "add"])
    if action == "replace":
        node[key] = random_json(rng)
    elif action == "delete":
        del node[key]
    elif isinstance(node, dict):
        node["unexpected"] = random_json(rng)
    else:
        node.append(random_json(rng))
    return data, f"{path + [key]}: {action}"


def edit_array_randomly(array: np.ndarray, rng: random.Random) -> tuple[np.ndarray, str]:
    """A well-formed array with one plausible wrong thing: a value, a dtype, a row too few, an order, a shape."""
    action = rng.choice(["value", "value", "dtype", "drop row", "shuffle", "reshape"])
    if action == "value" and array.size:
        array = array.copy()
        flat = array.reshape(-1)
        at = rng.randrange(flat.size)
        if array.dtype.kind == "U":
            flat[at] = rng.choice(["", flat[0], "x" * 3])
        else:
            flat[at] = rng.choice([-1, 10**6, array.size, 0] if array.dtype.kind in "iu" else [np.nan, np.inf, -1e30, 0.0, 1.0])
        return array, f"element {at} replaced"
    if action == "dtype" and array.dtype.kind in "iuf":
        return array.astype(rng.choice([np.int32, np.float64, np.float32, np.int64])), "dtype changed"
    if action == "drop row" and len(array):
        return array[:-1], "last row dropped"
    if action == "shuffle" and len(array) > 1:
        return array[np.random.default_rng(rng.randrange(2**32)).permutation(len(array))], "rows shuffled"
    return array.reshape(-1), "flattened"


def mutate(artifact: Path, rng: random.Random) -> str:
    """One random change to one random file of ``artifact`` (re-signed most of the time); returns what was done."""
    name = rng.choice(files_of(artifact))
    path = artifact / name
    data = bytearray(path.read_bytes())
    kinds = {".json": ["truncate", "flip", "flip", "json"], ".npy": ["truncate", "flip", "flip", "array"], ".npz": ["truncate", "flip", "flip", "array"]}
    kind = rng.choice(kinds.get(path.suffix, ["truncate", "flip", "flip", "flip"]))
    if kind == "array":
        if path.suffix == ".npy":
            changed, what = edit_array_randomly(np.load(path, allow_pickle=False), rng)
            np.save(path, changed, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
            member = rng.choice(sorted(arrays))
            arrays[member], what = edit_array_randomly(arrays[member], rng)
            np.savez(path, **arrays)
            what = f"'{member}': {what}"
        what = f"{name} {what}"
    elif kind == "truncate":
        at = rng.randrange(len(data))
        path.write_bytes(bytes(data[:at]))
        what = f"{name} truncated to {at} of {len(data)} bytes"
    elif kind == "flip":
        # Headers are where a flip is most likely to mislead a reader: favour the first bytes.
        at = rng.randrange(min(len(data), 256)) if rng.random() < 0.5 else rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        what = f"{name} byte {at} flipped"
    else:
        edited, where = edit_json_randomly(json.loads(data), rng)
        path.write_text(json.dumps(edited))
        what = f"{name} edited at {where}"
    if name.startswith((QUERY_TOWER, CANDIDATE_TOWER)) and rng.random() < 0.5:
        try:
            redigest(artifact)  # so that what checks a tower's files past its digest is fuzzed too
            what += ", tower digests recorded anew"
        except Exception:  # noqa: BLE001 - the change left a file the digest cannot be computed from; the old digest stays
            pass
    if rng.random() < 0.85 and name != MANIFEST:
        resign(artifact)
        what += ", re-signed"
    elif name == MANIFEST and kind == "json" and rng.random() < 0.85:
        try:
            resign(artifact)
            what += ", re-signed"
        except Exception:  # noqa: BLE001 - the edit broke the manifest beyond re-signing; it stays as edited
            pass
    return what


def serves_correctly(retriever: Retriever) -> str | None:
    """Why ``retriever``'s answers are wrong for what it loaded, or None: brute force over its own vectors is the truth."""
    vectors = np.asarray(retriever.item_vectors, dtype=np.float32)
    n = len(vectors)
    users = [u for u in USERS if u in retriever._user_row]
    rows = [retriever._user_row[u] for u in users]
    queries = retriever.encode_queries({name: torch.from_numpy(array[rows]) for name, array in retriever.user_features.items()})
    got = retriever.recommend(users, k=10)
    for q, row in enumerate(rows):
        scores = vectors @ queries[q]  # (n,)
        scores[retriever._seen_of(row)] = -np.inf
        expected = np.sort(scores)[::-1][: min(10, n)]
        if not np.allclose(got.scores[q], expected, atol=1e-4) or set(got.item_ids[q][np.isfinite(got.scores[q])]) != set(
                retriever.item_ids[np.argsort(-scores, kind="stable")][: int(np.isfinite(got.scores[q]).sum())]) and not _ties(scores, got.scores[q]):
            return f"recommend({users[q]!r}) gave {got.scores[q][:3]}..., brute force {expected[:3]}..."
    for item in [i for i in ITEMS if i in retriever._item_row]:
        row = retriever._item_row[item]
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        similar = retriever.similar_items([item], k=5)
        if not np.allclose(similar.scores[0], np.sort(scores)[::-1][: min(5, n)], atol=1e-4):
            return f"similar_items({item!r}) gave {similar.scores[0]}, brute force {np.sort(scores)[::-1][:5]}"
    counts = np.bincount(retriever._events["items"], minlength=n)
    if retriever.popular(5).scores[0].tolist() != sorted(counts.tolist(), reverse=True)[:5]:
        return "popular(5) is not the five largest interaction counts"
    history = retriever.recommend_from_history([["5", "7"], ["not-an-item"]], k=5)
    if history.item_ids.shape != (2, min(5, n)) or not np.isfinite(history.scores[:, 0]).all():
        return f"recommend_from_history gave {history.item_ids}"
    return None


def _ties(scores: np.ndarray, got: np.ndarray) -> bool:
    """Different ids but only among items tied at the last returned score."""
    finite = got[np.isfinite(got)]
    return len(finite) > 0 and np.isclose(np.sort(scores)[::-1][len(finite) - 1], finite[-1], atol=1e-5)


def test_a_damaged_artifact_is_refused_or_serves_correct_results(pristine, tmp_path):
    rng = random.Random(SEED)
    outcomes = {"refused": 0, "loaded and correct": 0}
    failures = []
    for case in range(CASES):
        artifact = tmp_path / f"case-{case}"
        shutil.copytree(pristine, artifact)
        what = mutate(artifact, rng)
        try:
            retriever = Retriever.load(artifact)
        except ArtifactError:
            outcomes["refused"] += 1
        except Exception as err:  # noqa: BLE001 - anything but ArtifactError is what the test looks for
            failures.append(f"case {case}, {what}: load raised {type(err).__name__}: {err}")
        else:
            try:
                wrong = serves_correctly(retriever)
            except Exception as err:  # noqa: BLE001 - a retriever that loaded must serve
                wrong = f"serving raised {type(err).__name__}: {err}"
            if wrong:
                failures.append(f"case {case}, {what}: loaded, but {wrong}")
            else:
                outcomes["loaded and correct"] += 1
        shutil.rmtree(artifact)
    assert not failures, f"{len(failures)} of {CASES} cases failed ({outcomes}):\n" + "\n".join(failures[:10])
    assert outcomes["refused"] > CASES // 2 and outcomes["loaded and correct"] > 0, outcomes  # the fuzz reaches both outcomes
