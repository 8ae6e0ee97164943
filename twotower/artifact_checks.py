"""What checksums cannot tell: that an artifact's files agree with each other and hold values serving can use.

A manifest's sha256s prove the files are the ones it lists, not that they make sense together: the
manifest may have been re-signed after files were mixed from two exports, or written by someone else
entirely. ``Retriever.load`` runs these checks once, in O(catalogue); queries then trust what was
loaded. Each raises ``ArtifactError`` naming the file and both values, so a bad artifact is refused
at load time, never by an IndexError or a faiss crash at query time.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import torch

from twotower.artifact import (
    CANDIDATE_TOWER,
    INDEX,
    INDEX_INFOS,
    ITEM_EVENTS,
    ITEM_FEATURES,
    ITEM_IDS,
    ITEM_VECTORS,
    ITEMS,
    MANIFEST,
    MAX_ID_CHARS,
    QUERY_TOWER,
    TOWER_CONFIG,
    TOWER_VOCAB,
    TOWER_WEIGHTS,
    USER_FEATURES,
    USER_HISTORIES,
    USER_IDS,
    USER_SEEN,
    ArtifactError,
    _plain,
    _short,
)
from twotower.data.tables import ITEM
from twotower.data.vocab import Vocabulary, _key
from twotower.features import FittedFeature, Preprocessor
from twotower.index import factory_key, holds_exact_vectors
from twotower.model.saving import tower_class
from twotower.task.popularity_prior import PopularityPrior

COUNTS = ("items", "users", "interactions", "indexed")
#: Search parameters an artifact may set, with their largest value: each bounds the work (and memory) of every query.
SEARCH_PARAM_LIMITS = {"nprobe": 1 << 16, "efSearch": 1 << 16, "k_factor_rf": 1 << 10}
MAX_FETCH_FACTOR = 1 << 10
SPOT_CHECK_ROWS = 32  # item vectors searched in the index at load
SPOT_CHECK_SHARE = 0.9  # of them must find themselves (or an item as close): approximate indexes may miss a few
VECTOR_TOLERANCE = 1e-4  # an item re-encoded at load against its exported vector (batch sizes change the float sums)
CHUNK_ROWS = 65_536  # item vectors compared per step, so the checks of a memory-mapped catalogue stay bounded


def tower_digest(config: Any, vocab: Any, weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a tower's config, its vocabulary file and its weights (names, dtypes, shapes, bytes).

    Export records it in the manifest under ``towers``; load recomputes it from what it read, so a
    tower directory copied from another export (its file checksums re-signed) is refused.
    """
    digest = hashlib.sha256(json.dumps([config, vocab], sort_keys=True, default=_plain).encode())
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """The fields load relies on: dim, metric, counts, the index key, the tower digests."""
    where = root / MANIFEST
    dim = manifest.get("dim")
    if type(dim) is not int or dim < 1:
        raise ArtifactError(f"{where}: dim is {_short(dim)}, expected a positive integer")
    if manifest.get("metric") != "inner_product":
        raise ArtifactError(f"{where}: metric is {_short(manifest.get('metric'))}, twotower serves 'inner_product'")
    counts = manifest.get("counts")
    if not isinstance(counts, dict) or any(type(counts.get(name)) is not int or counts[name] < 0 for name in COUNTS):
        raise ArtifactError(f"{where}: counts is {_short(counts)}, expected non-negative integers {list(COUNTS)}")
    index = manifest.get("index")
    if not isinstance(index, dict) or not isinstance(index.get("key"), str):
        raise ArtifactError(f"{where}: index is {_short(index)}, expected an object with the index's factory 'key'")
    if type(manifest.get("timestamps", True)) is not bool:  # absent in artifacts written before it was recorded: they had times
        raise ArtifactError(f"{where}: timestamps is {_short(manifest['timestamps'])}, expected true or false")
    towers = manifest.get("towers")
    if not isinstance(towers, dict) or any(not isinstance(towers.get(name), str) for name in (QUERY_TOWER, CANDIDATE_TOWER)):
        raise ArtifactError(f"{where}: towers is {_short(towers)}, expected the digest of '{QUERY_TOWER}' and '{CANDIDATE_TOWER}'")


def check_tower(root: Path, manifest: Mapping[str, Any], name: str, tower: torch.nn.Module, config: Any, vocab: Any,
                weights: Mapping[str, torch.Tensor]) -> None:
    """A tower built from its config and weights: every tensor set and finite, its output the manifest's dim, its digest the manifest's."""
    unset = [n for n, t in [*tower.named_parameters(), *tower.named_buffers()] if t.is_meta]
    infinite = [n for n, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if unset or infinite:
        raise ArtifactError(f"{root / name / TOWER_WEIGHTS}: tensor(s) {unset} the config needs are not in it, tensor(s) {infinite} hold NaN or inf")
    _expect(root / name / TOWER_CONFIG, f"the {_side(name)} tower outputs dim", tower.output_dim, f"{MANIFEST} records dim", manifest["dim"])
    found, recorded = tower_digest(config, vocab, weights), manifest["towers"][name]
    if found != recorded:
        raise ArtifactError(f"{root / name}: {TOWER_CONFIG}, {TOWER_VOCAB} and {TOWER_WEIGHTS} have digest {found}, {MANIFEST} records "
                            f"{recorded} for {name} (a tower of another model, or one changed since export)")


def parse_vocab(root: Path, name: str, vocab: Any) -> tuple[dict[str, FittedFeature], Vocabulary]:
    """A tower's ``vocab.json`` as its fitted features and id vocabulary."""
    where = root / name / TOWER_VOCAB
    if not isinstance(vocab, dict) or not isinstance(vocab.get("features"), dict) or not _strings(vocab.get("ids")):
        raise ArtifactError(f"{where} is {_short(vocab)}, expected an object with 'features' (an object) and 'ids' (a list of strings)")
    try:
        features = {feature: FittedFeature.from_json(data) for feature, data in vocab["features"].items()}
        ids = Vocabulary.from_json(vocab["ids"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ArtifactError(f"{where} does not describe fitted features: {err!r}") from None
    for feature, fitted in features.items():
        bad = _bad_fitted(fitted)
        if bad:
            raise ArtifactError(f"{where}: feature '{feature}' {bad}")
    return features, ids


def _bad_fitted(fitted: FittedFeature) -> str | None:
    """Why a fitted feature cannot transform values the way training did, or None."""
    if fitted.vocab is not None and not _strings(fitted.vocab.values):
        return "has a vocabulary that is not a list of strings"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (fitted.mean, fitted.std, fitted.dim, fitted.max_len)):
        return f"has mean {fitted.mean!r}, std {fitted.std!r}, dim {fitted.dim!r}, max_len {fitted.max_len!r}: expected numbers"
    if not (np.isfinite(fitted.mean) and np.isfinite(fitted.std) and fitted.std > 0):
        return f"has mean {fitted.mean} and std {fitted.std}: expected finite numbers, std > 0"
    if type(fitted.dim) is not int or type(fitted.max_len) is not int or fitted.dim < 1 or fitted.max_len < 1:
        return f"has dim {fitted.dim} and max_len {fitted.max_len}: expected positive integers"
    spec = fitted.spec
    if not all(v is None or isinstance(v, str) for v in (spec.column, spec.separator)):
        return f"has column {spec.column!r} and separator {spec.separator!r}: expected strings or null"
    if not all(v is None or (type(v) is int and v >= 1) for v in (spec.prefix, spec.hash_buckets)):
        return f"has prefix {spec.prefix!r} and hash_buckets {spec.hash_buckets!r}: expected positive integers or null"
    return None


def check_preprocessor_fits_towers(root: Path, preprocessor: Preprocessor, configs: Mapping[str, Any]) -> None:
    """Every feature a tower reads is one the vocabulary makes, of the same kind, within the tower's embedding tables."""
    for name, side in ((QUERY_TOWER, preprocessor.query), (CANDIDATE_TOWER, preprocessor.candidate)):
        where = root / name / TOWER_CONFIG
        specs = {f.get("name"): f for f in configs[name]["features"] if isinstance(f, dict)}
        read = tower_class(configs[name]).features_read(configs[name])
        if set(read) != set(side):
            raise ArtifactError(f"{where}: the tower reads features {sorted(map(str, read))}, {name}/{TOWER_VOCAB} makes {sorted(side)}")
        for feature, fitted in side.items():
            if feature not in specs:
                continue  # read through another tower (a click history through the item tower), which checks its own
            spec = specs[feature]
            # The entry the fitted feature makes at the tower's own width and options: only what the fitted data sets can differ.
            expected = fitted.kind.encoder_spec(fitted, preprocessor, spec.get("dim"), spec.get("options") or {})
            found = {key: spec.get(key) for key in expected}
            if found != expected:
                raise ArtifactError(f"{where}: feature '{feature}' has {found}, but {name}/{TOWER_VOCAB} gives {expected}")


def ids_of(root: Path, name: str, array: np.ndarray, vocabulary: Vocabulary, vocabulary_file: str) -> np.ndarray:
    """The ids in ``array`` (memory-mapped, not yet read) as an object array, after checking them.

    Fixed-width unicode on disk, at most ``MAX_ID_CHARS`` wide (checked before the array is read, so a
    crafted width cannot make load allocate it); unique; holding every id of the tower's vocabulary.
    Held as Python strings in memory, so adding one long id later does not widen all of them.
    """
    where = root / name
    if array.ndim != 1 or array.dtype.kind != "U":
        raise ArtifactError(f"{where} holds {array.dtype} of shape {array.shape}, expected a 1-d unicode array")
    if array.dtype.itemsize // 4 > MAX_ID_CHARS:
        raise ArtifactError(f"{where} holds ids up to {array.dtype.itemsize // 4} characters wide; ids have at most {MAX_ID_CHARS} (MAX_ID_CHARS)")
    # Code points as numbers, before any becomes a Python string: numpy stores any 32-bit value, and one
    # beyond U+10FFFF (or a lone surrogate) makes a string nothing can encode, or no string at all.
    codes = array.view(f"{array.dtype.str[0]}u4").reshape(len(array), -1) if array.dtype.itemsize else np.zeros((len(array), 0), np.uint32)
    invalid = (codes > 0x10FFFF) | ((codes >= 0xD800) & (codes <= 0xDFFF))  # (n, width)
    if invalid.any():
        row, column = np.argwhere(invalid)[0]
        raise ArtifactError(f"{where}: the id at row {row} holds code point {int(codes[row, column]):#x}, which is not Unicode text")
    ids = np.asarray(array, dtype=object)
    empty = ids == ""
    if empty.any():
        raise ArtifactError(f"{where} holds an empty id at row {int(np.argmax(empty))}; '' pads answers shorter than k, so it is no item's or user's id")
    keys = pd.Index(ids, dtype=object)
    if not keys.is_unique:
        raise ArtifactError(f"{where} repeats id(s) {keys[keys.duplicated()].unique()[:5].tolist()}")
    unknown = pd.Index(vocabulary.values, dtype=object).difference(keys)
    if len(unknown):
        raise ArtifactError(f"{where} lacks id(s) {unknown[:5].tolist()} that {vocabulary_file} holds ({len(unknown)} in all)")
    return ids


def prior_of(root: Path, manifest: Mapping[str, Any]) -> PopularityPrior | None:
    """The manifest's popularity prior, or None (none blended in; absent in artifacts written before it existed)."""
    stored = manifest.get("popularity_prior")
    if stored is None:
        return None
    try:
        prior = PopularityPrior.from_json(stored)
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{root / MANIFEST}: popularity_prior is {_short(stored)}: {err}") from None
    if not prior.active:
        raise ArtifactError(f"{root / MANIFEST}: popularity_prior has weight 0; an artifact without a prior records null")
    return prior


def check_index(root: Path, manifest: Mapping[str, Any], infos: Any, index: faiss.Index, tower_dims: Mapping[str, int],
                item_ids: np.ndarray, item_vectors: np.ndarray, prior: PopularityPrior | None = None) -> tuple[dict[str, float], int]:
    """The index against the towers, the manifest, ``index_infos.json`` and the item vectors; returns the search
    parameters to apply and the fetch factor (candidates per requested item re-ranked exactly, ``IndexSpec.fetch_factor``).
    With a popularity ``prior`` the index's vectors have one dimension more than the towers': the prior's column."""
    dim, counts, key = manifest["dim"], manifest["counts"], manifest["index"]["key"]
    extra, column = (1, " + the popularity prior's column") if prior is not None else (0, "")
    for name, tower_dim in tower_dims.items():
        _expect(root / name / TOWER_CONFIG, f"the {_side(name)} tower outputs dim{column}", tower_dim + extra, f"{INDEX} has dim", index.d)
    _expect(root / MANIFEST, f"dim{column}", dim + extra, f"{INDEX} has dim", index.d)
    _expect(root / MANIFEST, "counts.indexed", counts["indexed"], f"{INDEX} holds vectors:", index.ntotal)
    _expect(root / MANIFEST, "counts.items", counts["items"], f"{INDEX} holds vectors:", index.ntotal)
    _expect(root / ITEM_IDS, "holds item ids:", len(item_ids), f"{INDEX} holds vectors:", index.ntotal)
    _expect(root / INDEX, "has metric", _metric_name(index.metric_type), f"{MANIFEST} records", "inner_product")
    structure = factory_key(index)
    if structure is not None:
        _expect(root / INDEX, "is a", structure, f"{MANIFEST} records index key", key)
    if not isinstance(infos, dict):
        raise ArtifactError(f"{root / INDEX_INFOS} holds a JSON {type(infos).__name__}, not an object")
    _expect(root / INDEX_INFOS, "key", infos.get("key"), f"{MANIFEST} records", key)
    params = infos.get("search_params", {})
    if not isinstance(params, dict):
        raise ArtifactError(f"{root / INDEX_INFOS}: search_params is {_short(params)}, expected an object of parameter -> value")
    for name, value in params.items():
        limit = SEARCH_PARAM_LIMITS.get(name)
        if limit is None or not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= limit:
            raise ArtifactError(f"{root / INDEX_INFOS}: search parameter {name}={_short(value)}; "
                                f"known: {', '.join(f'{k} in [1, {v}]' for k, v in SEARCH_PARAM_LIMITS.items())}")
    fetch_factor = infos.get("fetch_factor", 1)  # absent in artifacts written before it existed
    if not isinstance(fetch_factor, int) or isinstance(fetch_factor, bool) or not 1 <= fetch_factor <= MAX_FETCH_FACTOR:
        raise ArtifactError(f"{root / INDEX_INFOS}: fetch_factor={_short(fetch_factor)}, expected an integer in [1, {MAX_FETCH_FACTOR}]")
    _expect(root / ITEM_VECTORS, "has dtype", str(item_vectors.dtype), "expected", "float32")
    _expect(root / ITEM_VECTORS, "has shape", tuple(item_vectors.shape), f"{ITEM_IDS} x dim gives", (len(item_ids), index.d))
    _check_vectors_match(root, index, item_vectors, extra)
    return params, fetch_factor


def _check_vectors_match(root: Path, index: faiss.Index, item_vectors: np.ndarray, extra: int) -> None:
    """Finite item vectors that are the index's: all compared where the index stores them exactly, and a sample searched in any index."""
    n = index.ntotal
    exact = holds_exact_vectors(index)
    for start in range(0, n, CHUNK_ROWS):
        block = np.asarray(item_vectors[start : start + CHUNK_ROWS])  # (chunk, dim)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise ArtifactError(f"{root / ITEM_VECTORS}: row {start + int(np.argmin(finite))} holds NaN or infinite values")
        if exact:
            stored = index.reconstruct_n(start, len(block))
            differs = ~(stored == block).all(axis=1)
            if differs.any():
                row = start + int(np.argmax(differs))
                raise ArtifactError(f"{root / ITEM_VECTORS}: row {row} differs from vector {row} of {INDEX} "
                                    f"(by up to {np.abs(stored - block).max():.3g}): the files are not of one export")
    if not n:
        return
    rows = np.unique(np.linspace(0, n - 1, min(n, SPOT_CHECK_ROWS)).astype(np.int64))
    queries = np.array(item_vectors[rows], dtype=np.float32)  # (S, dim)
    if extra:
        queries[:, -extra:] = 0.0  # the towers' part alone: the prior's column would favour popular items over the item itself
    _, found = index.search(queries, min(n, 10))  # (S, 10)
    # Each query is an item's own vector, so an index that holds it finds it, or an item scoring as high.
    best = np.einsum("sd,skd->sk", queries, np.asarray(item_vectors[np.maximum(found, 0).ravel()]).reshape(*found.shape, -1))
    best = np.where(found >= 0, best, -np.inf).max(axis=1)
    own = (queries * queries).sum(axis=1)
    hits = best >= own - 1e-4 * np.maximum(1.0, own)
    if hits.mean() < SPOT_CHECK_SHARE:
        raise ArtifactError(f"{root / INDEX}: of {len(rows)} item vectors from {ITEM_VECTORS} searched in it, {int(hits.sum())} find "
                            f"themselves (expected at least {SPOT_CHECK_SHARE:.0%}): the index does not hold these vectors")


def check_users(root: Path, preprocessor: Preprocessor, configs: Mapping[str, Any], user_ids: np.ndarray,
                user_features: Mapping[str, np.ndarray], seen: Mapping[str, np.ndarray], events: Mapping[str, np.ndarray],
                counts: Mapping[str, int], n_items: int) -> None:
    """The stored query inputs, seen items and interaction log: shapes, dtypes and ranges the towers and queries rely on."""
    n_users = len(user_ids)
    _expect(root / MANIFEST, "counts.users", counts["users"], f"{USER_IDS} holds users:", n_users)
    where = root / USER_FEATURES
    stored = {name: fitted for name, fitted in preprocessor.query.items() if not fitted.kind.per_request}  # a request's time is not stored
    if sorted(user_features) != sorted(stored):
        raise ArtifactError(f"{where} holds arrays {sorted(user_features)}, the stored query features are {sorted(stored)}")
    tables = {f["name"]: f for f in configs[QUERY_TOWER]["features"]}
    for name, fitted in stored.items():
        # A history read through the item tower has no encoder here; stored as id-vocabulary indices all the same.
        cardinality = tables[name].get("cardinality") if name in tables else len(preprocessor.item_ids)
        _check_feature_array(where, name, fitted, user_features[name], n_users, f"{n_users} users in {USER_IDS}", cardinality)
    _check_table(root / USER_SEEN, seen, {"indptr": "i", "indices": "i"})
    indptr, indices = seen["indptr"], seen["indices"]
    _expect(root / USER_SEEN, "indptr has length", len(indptr), f"{USER_IDS} has users + 1 =", n_users + 1)
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise ArtifactError(f"{root / USER_SEEN}: indptr runs from {indptr[0]} to {indptr[-1]} and must rise from 0 to "
                            f"the {len(indices)} indices, never falling")
    _in_range(root / USER_SEEN, "indices", indices, n_items)
    _expect(root / USER_SEEN, "holds interactions:", len(indices), f"{MANIFEST} counts.interactions", counts["interactions"])
    _check_table(root / ITEM_EVENTS, events, {"items": "i", "times": "f"})
    if not np.isfinite(events["times"]).all():
        raise ArtifactError(f"{root / ITEM_EVENTS}: times hold NaN or infinite values (at row {int(np.argmin(np.isfinite(events['times'])))})")
    _in_range(root / ITEM_EVENTS, "items", events["items"], n_items)
    _expect(root / ITEM_EVENTS, "holds interactions:", len(events["items"]), f"{MANIFEST} counts.interactions", counts["interactions"])
    _expect(root / ITEM_EVENTS, "holds times:", len(events["times"]), "and items:", len(events["items"]))


def check_item_features(root: Path, preprocessor: Preprocessor, configs: Mapping[str, Any], item_features: Mapping[str, np.ndarray],
                        item_ids: np.ndarray) -> None:
    """The stored candidate-tower inputs of every catalogue row: one array per candidate feature, as training made them,
    an identity feature (the item id) holding each row's own id: rows reordered against ``item_ids`` are refused."""
    where, n_items = root / ITEM_FEATURES, len(item_ids)
    if set(item_features) != set(preprocessor.candidate):
        raise ArtifactError(f"{where} holds arrays {sorted(item_features)}, the candidate features are {sorted(preprocessor.candidate)}")
    tables = {f["name"]: f for f in configs[CANDIDATE_TOWER]["features"]}
    for name, fitted in preprocessor.candidate.items():
        _check_feature_array(where, name, fitted, item_features[name], n_items, f"{n_items} items in {ITEM_IDS}", tables[name].get("cardinality"))
        if fitted.kind.identity:
            expected = preprocessor.item_ids.lookup(item_ids.tolist())
            differs = np.flatnonzero(item_features[name] != expected)
            if len(differs):
                row = int(differs[0])
                raise ArtifactError(f"{where}: array '{name}' row {row} holds id index {item_features[name][row]}, but {ITEM_IDS} row {row} "
                                    f"is {item_ids[row]!r} (index {expected[row]}): the rows are not of one catalogue order")


def check_item_vectors_encode(root: Path, candidate_tower: torch.nn.Module, item_features: Mapping[str, np.ndarray], item_vectors: np.ndarray,
                              popularity: np.ndarray | None = None) -> None:
    """A sample of items encoded again from their stored features by the candidate tower gives their stored vectors:
    vectors, features and tower are of one export and one row order. ``popularity``: the popularity prior's column
    computed again from the stored log, which the vectors' last column must be."""
    n = len(item_vectors)
    if not n:
        return
    rows = np.unique(np.linspace(0, n - 1, min(n, SPOT_CHECK_ROWS)).astype(np.int64))
    try:
        with torch.inference_mode():
            encoded = candidate_tower.eval()({name: torch.from_numpy(np.asarray(array[rows])) for name, array in item_features.items()}).numpy()
    except Exception as err:  # noqa: BLE001 - whatever a tower built from untrusted files raises, the files are at fault
        raise ArtifactError(f"{root / CANDIDATE_TOWER / TOWER_CONFIG}: the tower cannot encode {ITEM_FEATURES}: {err!r}") from None
    stored = np.asarray(item_vectors[rows], dtype=np.float32)[:, : encoded.shape[1]]
    worst = np.abs(encoded - stored).max(axis=1)  # (S,)
    if (worst > VECTOR_TOLERANCE).any():
        row = int(rows[np.argmax(worst)])
        raise ArtifactError(f"{root / ITEM_VECTORS}: row {row} differs by {worst.max():.3g} from the candidate tower's vector of "
                            f"{ITEM_FEATURES} row {row}: the vectors are not this tower's encoding of these items")
    if popularity is not None:
        differs = np.abs(np.asarray(item_vectors[:, -1]) - popularity)
        if (differs > VECTOR_TOLERANCE).any():
            row = int(np.argmax(differs))
            raise ArtifactError(f"{root / ITEM_VECTORS}: row {row}'s popularity column is {item_vectors[row, -1]:.6g}, the popularity prior "
                                f"of {MANIFEST} gives {popularity[row]:.6g} from {ITEM_EVENTS}: the vectors are not of this log")


def check_histories(root: Path, preprocessor: Preprocessor, histories: Mapping[str, np.ndarray], n_users: int, n_items: int) -> None:
    """One (n_users, max_len) table of catalogue rows + 1 (0 = empty) per history feature."""
    where = root / USER_HISTORIES
    names = sorted(n for n, f in preprocessor.query.items() if f.kind.from_interactions)
    if sorted(histories) != names:
        raise ArtifactError(f"{where} holds arrays {sorted(histories)}, the history features are {names}")
    for name in names:
        array, shape = histories[name], (n_users, preprocessor.query[name].max_len)
        if array.shape != shape or array.dtype != np.int64:
            raise ArtifactError(f"{where}: array '{name}' is {array.dtype} of shape {array.shape}, expected int64 of shape {shape}")
        _in_range(where, f"array '{name}'", array, n_items + 1)


def check_histories_match_users(root: Path, histories: Mapping[str, np.ndarray], user_features: Mapping[str, np.ndarray], item_vocab_index: np.ndarray) -> None:
    """Each stored history (catalogue rows) names the items the users' stored history feature (id indices) names:
    histories, user features and the catalogue's row order are of one export."""
    padded = np.concatenate([[0], item_vocab_index])  # row + 1 -> id index, 0 -> 0
    for name, rows in histories.items():
        differs = np.flatnonzero((padded[rows] != user_features[name]).any(axis=1))
        if len(differs):
            user = int(differs[0])
            raise ArtifactError(f"{root / USER_HISTORIES}: user row {user}'s '{name}' names item rows {rows[user][:5].tolist()}, whose id indices "
                                f"{padded[rows[user][:5]].tolist()} are not {USER_FEATURES}'s {user_features[name][user][:5].tolist()}: "
                                f"the catalogue's rows were reordered")


def _check_feature_array(where: Path, name: str, fitted: FittedFeature, array: np.ndarray, n_rows: int, rows: str, cardinality: int | None) -> None:
    """One stored feature array: the dtype and shape its kind serves, finite, within the tower's embedding table."""
    served = fitted.kind.serving_input(fitted)
    dtype, shape = np.dtype(served.dtype), (n_rows, *served.shape[1:])
    if array.shape != shape or array.dtype != dtype:
        raise ArtifactError(f"{where}: array '{name}' is {array.dtype} of shape {array.shape}, expected {dtype} of shape {shape} ({rows})")
    if dtype == np.float32 and not np.isfinite(array).all():
        raise ArtifactError(f"{where}: array '{name}' holds NaN or infinite values")
    if dtype == np.int64:
        _in_range(where, f"array '{name}'", array, cardinality)


def check_items_table(root: Path, items: pd.DataFrame, item_ids: np.ndarray) -> None:
    """The display table lists the catalogue's items in index order."""
    where = root / ITEMS
    if ITEM not in items.columns:
        raise ArtifactError(f"{where} has no column '{ITEM}' (columns: {list(items.columns)})")
    keys = [_key(v) for v in items[ITEM].tolist()]
    if len(keys) != len(item_ids) or keys != item_ids.tolist():
        raise ArtifactError(f"{where}: column '{ITEM}' lists {len(keys)} items, not the {len(item_ids)} of {ITEM_IDS} in its order")


def _check_table(where: Path, arrays: Mapping[str, np.ndarray], kinds: Mapping[str, str]) -> None:
    """Exactly the 1-d arrays named in ``kinds``, each of a numpy dtype kind given there ("i": integers, "f": floats)."""
    if set(arrays) != set(kinds) or any(arrays[n].ndim != 1 or arrays[n].dtype.kind != kind for n, kind in kinds.items()):
        expected = ", ".join(f"'{n}' {'integers' if kind == 'i' else 'floats'}" for n, kind in kinds.items())
        raise ArtifactError(f"{where} holds {_describe(arrays)}, expected 1-d arrays {expected}")


def _in_range(where: Path, what: str, array: np.ndarray, size: int) -> None:
    if array.size and (array.min() < 0 or array.max() >= size):
        raise ArtifactError(f"{where}: {what} holds values {array.min()} to {array.max()}, outside 0..{size - 1}")


def _expect(file: Path, what: str, value: Any, other: str, expected: Any) -> None:
    if value != expected:
        raise ArtifactError(f"{file}: {what} {value}, but {other} {expected}")


def _side(tower: str) -> str:
    return "query" if tower == QUERY_TOWER else "candidate"


def _metric_name(metric: int) -> str:
    return {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "L2"}.get(metric, f"faiss metric {metric}")


def _describe(arrays: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"'{k}' {a.dtype}{list(a.shape)}" for k, a in arrays.items()) or "nothing"


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)
