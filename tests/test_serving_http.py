"""``twotower-serve``: the real uvicorn server on a loopback port, asked over HTTP what the Retriever answers in process.

Answers equal the Retriever's (known users, raw profiles, histories, similar and popular items);
each refusal has its status and names its field and value; eight concurrent clients all get right
answers; a reload during concurrent requests drops none, and afterwards the new artifact answers.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from tests.export_fixtures import export_config, trained_and_exported  # noqa: E402 - after the skips: they need the serve extra
from twotower import Retriever  # noqa: E402
from twotower.artifact import FORMAT_VERSION, INDEX  # noqa: E402
from twotower.exporting import export  # noqa: E402
from twotower.serving_http.app import MAX_K, create_app  # noqa: E402
from twotower.serving_http.cli import main  # noqa: E402
from twotower.serving_http.live import LiveRetriever  # noqa: E402

START_S = 30.0  # how long a server may take to start answering
K = 5


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> tuple[Path, Path]:
    """(the session's artifact, a second one exported from the same run with every weight moved: other vectors, other answers)."""
    _, first, objects = trained_and_exported(tmp_path_factory.mktemp("export"))
    root = tmp_path_factory.mktemp("second")
    state = torch.load(objects["best_checkpoint"], map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(1)
    state["state_dict"] = {k: v + 0.3 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, root / "moved.ckpt")
    second = export(export_config(root / "moved.ckpt", root / "artifact", overrides=("torchscript=false",)))
    return first, second


@pytest.fixture(scope="module")
def retriever(artifacts) -> Retriever:
    return Retriever.load(artifacts[0])


@pytest.fixture(scope="module")
def server(artifacts) -> Iterator[str]:
    with serving(LiveRetriever(artifacts[0])) as url:
        yield url


@contextmanager
def serving(live: LiveRetriever, watch_s: float = 0.0) -> Iterator[str]:
    """uvicorn serving ``live`` in a thread, on a free loopback port; yields 'host:port'."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(live, watch_s=watch_s), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(url: str, method: str, path: str, body: Any = None, connection: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; ``connection`` keeps one open across calls."""
    own = connection or http.client.HTTPConnection(url, timeout=30)
    try:
        own.request(method, path, body=None if body is None else json.dumps(body), headers={"Content-Type": "application/json"})
        response = own.getresponse()
        return response.status, json.loads(response.read())
    finally:
        if connection is None:
            own.close()


def questions(retriever: Retriever) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, body) of each kind of question, about ``retriever``'s users and items."""
    users, items = retriever.user_ids.tolist(), retriever.item_ids.tolist()
    return [
        ("POST", "/recommend", {"user_id": users[0], "k": K}),
        ("POST", "/recommend", {"user_id": int(users[2]), "k": K, "exclude_seen": False}),
        ("POST", "/recommend", {"user_id": users[3], "k": K, "freshness_boost": 0.3, "freshness_half_life": 86400.0}),
        ("POST", "/recommend", {"user_id": users[3], "k": K, "max_age": 11 * 86400.0}),
        ("POST", "/recommend", {"user": {"user_id": "visitor", "segment": "S-never-seen", "age": 41}, "k": K}),
        ("POST", "/recommend", {"user": {"user_id": users[1], "segment": "S1", "age": 30}}),
        ("POST", "/recommend", {"user": {"user_id": None, "segment": "S2", "age": 25, "history": items[3:6]}, "k": K}),
        ("POST", "/recommend", {"history": items[10:13], "k": K}),
        ("POST", "/recommend", {"history": ["never-seen", items[20]], "k": K}),
        ("POST", "/recommend", {"history": [], "k": K}),
        ("POST", "/recommend", {"history": items[10:13], "k": K, "now": 1e9, "freshness_boost": 0.2}),  # the knob serves histories too
        ("POST", "/similar", {"item_id": items[7], "k": K}),
        ("GET", f"/popular?k={K}", None),
    ]


def answer_of(retriever: Retriever, method: str, path: str, body: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """What ``retriever`` answers the request in process, as the server should send it."""
    freshness = {name: body[name] for name in ("max_age", "freshness_boost", "freshness_half_life", "now") if name in (body or {})}
    if path.startswith("/popular"):
        found = retriever.popular(int(path.split("=")[1]))
    elif path == "/similar":
        found = retriever.similar_items([body["item_id"]], k=body.get("k", 10))
    elif "history" in body:
        found = retriever.recommend_from_history(body["history"], k=body.get("k", 10), **freshness)
    else:
        users = pd.DataFrame([body["user"]]) if "user" in body else [body["user_id"]]
        found = retriever.recommend(users, k=body.get("k", 10), exclude_seen=body.get("exclude_seen", True), **freshness)
    return {"items": [{"item_id": i, "score": s} for i, s in zip(found.item_ids[0].tolist(), found.scores[0].tolist()) if i != ""]}


def test_answers_are_the_retrievers(server, retriever):
    for method, path, body in questions(retriever):
        status, got = call(server, method, path, body)
        assert status == 200, (path, body, got)
        assert got == answer_of(retriever, method, path, body), (path, body)
        assert len(got["items"]) == (body or {}).get("k", K if "popular" in path else 10)


def test_the_freshness_knob_reaches_the_retriever(server, retriever):
    user = retriever.user_ids.tolist()[3]
    _, plain = call(server, "POST", "/recommend", {"user_id": user, "k": K})
    for knob in ({"freshness_boost": 0.3, "freshness_half_life": 86400.0}, {"max_age": 11 * 86400.0}):
        _, fresh = call(server, "POST", "/recommend", {"user_id": user, "k": K, **knob})
        assert fresh != plain, knob  # the knob changes the answer (and test_answers_are_the_retrievers: exactly as in process)


def test_a_user_with_more_k_than_items_left_gets_only_real_items(server, retriever):
    status, got = call(server, "POST", "/recommend", {"user_id": retriever.user_ids[0], "k": MAX_K})
    seen = len(retriever._seen_of(0))
    assert status == 200 and len(got["items"]) == len(retriever.item_ids) - seen  # no padding ("" / -inf) sent
    assert all(item["item_id"] for item in got["items"])


REFUSALS = [
    # (method, path, body, status, loc, words in msg)
    ("POST", "/recommend", {"user_id": "no-such-user"}, 404, ["body", "user_id"], "user_id='no-such-user': is not a user"),
    ("POST", "/recommend", {"user_id": "0", "k": 0}, 422, ["body", "k"], "k=0: Input should be greater than or equal to 1"),
    ("POST", "/recommend", {"user_id": "0", "k": -3}, 422, ["body", "k"], "k=-3"),
    ("POST", "/recommend", {"user_id": "0", "k": MAX_K + 1}, 422, ["body", "k"], f"k={MAX_K + 1}: asks for more than {MAX_K} items"),
    ("POST", "/recommend", {"user_id": "0", "k": True}, 422, ["body", "k"], "k=True: Input should be a valid integer"),
    ("POST", "/recommend", {"user_id": "0", "k": 2.5}, 422, ["body", "k"], "k=2.5"),
    ("POST", "/recommend", {}, 422, ["body"], "give exactly one of user_id, user, history; got none"),
    ("POST", "/recommend", {"user_id": "0", "history": ["1"]}, 422, ["body"], "got user_id and history"),
    ("POST", "/recommend", {"user_id": "0", "user": {"age": 3}, "history": ["1"]}, 422, ["body"], "got user_id and user and history"),
    ("POST", "/recommend", {"user_id": [1]}, 422, ["body", "user_id"], "user_id=[1]: Input should be a valid string or Input should be a valid integer"),
    ("POST", "/recommend", {"user_id": True}, 422, ["body", "user_id"], "user_id=True"),
    ("POST", "/recommend", {"userid": "0"}, 422, ["body", "userid"], "userid='0': Extra inputs are not permitted"),
    ("POST", "/recommend", {"user": {"segment": "S1", "age": "old"}}, 422, ["body", "user"], "numeric column 'age' has a non-numeric value 'old'"),
    ("POST", "/recommend", {"user": {"age": 30}}, 422, ["body", "user"], "no column(s) ['segment']"),
    ("POST", "/recommend", {"history": "12"}, 422, ["body", "history"], "history='12': Input should be a valid list"),
    ("POST", "/recommend", {"history": ["1", None]}, 422, ["body", "history", 1], "history[1]=None"),
    ("POST", "/recommend", {"history": ["x" * 300]}, 422, ["body", "history", 0], "at most 256 characters"),
    ("POST", "/recommend", {"history": ["1"], "exclude_seen": False}, 422, ["body", "exclude_seen"], "does not apply to a history"),
    ("POST", "/recommend", {"user_id": "0", "exclude_seen": "no"}, 422, ["body", "exclude_seen"], "exclude_seen='no'"),
    ("POST", "/recommend", {"user_id": "0", "max_age": 0}, 422, ["body", "max_age"], "max_age=0: Input should be greater than 0"),
    ("POST", "/recommend", {"user_id": "0", "freshness_boost": -1}, 422, ["body", "freshness_boost"], "freshness_boost=-1"),
    ("POST", "/recommend", {"user_id": "0", "now": "today"}, 422, ["body", "now"], "now='today'"),
    ("POST", "/recommend", {"history": ["1"], "max_age": -1}, 422, ["body", "max_age"], "max_age=-1: Input should be greater than 0"),
    ("POST", "/similar", {"item_id": "no-such-item"}, 404, ["body", "item_id"], "item_id='no-such-item': is not in the served catalogue"),
    ("POST", "/similar", {"item_id": "1", "k": 0}, 422, ["body", "k"], "k=0"),
    ("POST", "/similar", {}, 422, ["body", "item_id"], "item_id: Field required"),
    ("GET", "/popular?k=0", None, 422, ["query", "k"], "k='0'"),
    ("GET", f"/popular?k={MAX_K + 1}", None, 422, ["query", "k"], f"k={MAX_K + 1}: asks for more than {MAX_K}"),
    ("GET", "/popular?k=ten", None, 422, ["query", "k"], "k='ten': Input should be a valid integer"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "loc", "words"), REFUSALS, ids=[f"{r[1]}-{json.dumps(r[2])}" for r in REFUSALS])
def test_each_refusal_names_the_field_and_value(server, method, path, body, status, loc, words):
    got_status, got = call(server, method, path, body)
    assert got_status == status, got
    assert [d["loc"] for d in got["detail"]] == [loc], got
    assert words in got["detail"][0]["msg"], got


def test_a_nan_in_a_request_is_refused_not_a_server_error(server):
    connection = http.client.HTTPConnection(server, timeout=30)
    connection.request("POST", "/recommend", body='{"user_id": "0", "k": NaN}', headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 422 and "k=nan" in json.loads(response.read())["detail"][0]["msg"]


def test_health_and_metadata_describe_the_artifact_and_nothing_secret(server, artifacts, retriever):
    status, health = call(server, "GET", "/health")
    assert status == 200
    assert health["artifact"] == str(artifacts[0]) and health["format"] == "twotower-artifact" and health["format_version"] == FORMAT_VERSION
    status, meta = call(server, "GET", "/metadata")
    manifest = retriever.artifact.manifest
    assert status == 200
    assert meta["dim"] == manifest["dim"] == 64 and meta["metric"] == "inner_product" and meta["counts"] == manifest["counts"]
    assert meta["index"]["key"] == manifest["index"]["key"] and meta["libraries"] == manifest["libraries"]
    assert set(meta["user_features"]) == {"age", "segment", "history"} and meta["history"] is True
    text = json.dumps(meta)
    assert "config" not in meta and "checkpoint" not in text and manifest["checkpoint"] not in text


def test_eight_clients_fifty_requests_each_all_right(server, retriever):
    asked = questions(retriever)
    expected = [answer_of(retriever, *q) for q in asked]

    def client(c: int) -> list[str]:
        connection, wrong = http.client.HTTPConnection(server, timeout=30), []
        for n in range(50):
            q = (c * 50 + n) % len(asked)
            status, got = call(server, *asked[q], connection=connection)
            if status != 200 or got != expected[q]:
                wrong.append(f"{asked[q][1]} {asked[q][2]}: {status}")
        connection.close()
        return wrong

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        wrong = [w for found in pool.map(client, range(8)) for w in found]
    took = time.monotonic() - start
    assert not wrong, f"{len(wrong)} of 400 answers wrong, e.g. {wrong[:3]}"
    assert took < 60, f"400 requests from 8 clients took {took:.1f} s"


def test_reload_during_requests_drops_none_then_serves_the_new_artifact(artifacts, retriever, tmp_path):
    new = Retriever.load(artifacts[1])
    asked = questions(retriever)
    # Each question has two right answers while the reload runs: the old artifact's and the new one's.
    answers = [{json.dumps(answer_of(r, *q), sort_keys=True) for r in (retriever, new)} for q in asked]
    assert len(answers[0]) == 2, "the second artifact must answer a user differently"
    broken = broken_copy(artifacts[1], tmp_path / "broken")

    with serving(LiveRetriever(artifacts[0])) as url:
        stop, failures, counts = threading.Event(), [], [0] * 8

        def client(c: int) -> None:
            connection, n = http.client.HTTPConnection(url, timeout=30), c
            while not stop.is_set():
                q = n % len(asked)
                status, got = call(url, *asked[q], connection=connection)
                if status != 200 or json.dumps(got, sort_keys=True) not in answers[q]:
                    failures.append(f"{asked[q][1]} {asked[q][2]}: {status} {got}")
                n, counts[c] = n + 1, counts[c] + 1
            connection.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        answered_before = sum(counts)
        status, reloaded = call(url, "POST", "/admin/reload", {"path": str(artifacts[1])})
        answered_while_loading = sum(counts) - answered_before
        assert status == 200 and reloaded["artifact"] == str(artifacts[1]), reloaded
        status, refused = call(url, "POST", "/admin/reload", {"path": str(broken)})
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not failures, f"{len(failures)} of {sum(counts)} requests failed or answered wrong, e.g. {failures[:3]}"
        assert min(counts) > 0 and answered_while_loading > 0, (counts, answered_while_loading)
        assert status == 422 and refused["detail"][0]["loc"] == ["body", "path"], refused
        assert str(broken / INDEX) in refused["detail"][0]["msg"] and f"still serving {artifacts[1]}" in refused["detail"][0]["msg"]
        for q in asked:  # the new artifact answers, whatever the failed load did
            assert call(url, *q)[1] == answer_of(new, *q), q


def test_watch_serves_a_new_export_published_at_the_path_and_skips_a_broken_one(artifacts, tmp_path, caplog):
    """An export publishes by pointing its output_dir, a link, at a new version directory: the watcher loads that."""
    first, second = Path(artifacts[0]).resolve(), Path(artifacts[1]).resolve()
    broken = broken_copy(second, tmp_path / "broken")
    served = tmp_path / "served"
    served.symlink_to(first)

    def publish(version: Path) -> None:
        link = tmp_path / "served.link-new"
        link.symlink_to(version)
        os.replace(link, served)  # as twotower.artifact publishes: one rename, never a moment without an artifact

    def wait_for(what: str, done) -> None:
        deadline = time.monotonic() + 20
        while not done():
            assert time.monotonic() < deadline, f"the watcher did not {what} within 20 s"
            time.sleep(0.05)

    with serving(LiveRetriever(served), watch_s=0.05) as url:
        before = call(url, "POST", "/recommend", {"user_id": "0"})[1]
        publish(broken)
        wait_for("refuse the broken export", lambda: str(broken / INDEX) in caplog.text)
        assert call(url, "GET", "/health")[1]["version_dir"] == str(first)
        assert call(url, "POST", "/recommend", {"user_id": "0"})[1] == before
        publish(second)
        wait_for("load the new export", lambda: call(url, "GET", "/health")[1]["version_dir"] == str(second))
        after = call(url, "POST", "/recommend", {"user_id": "0"})[1]
        assert after == answer_of(Retriever.load(second), "POST", "/recommend", {"user_id": "0"}) != before


def broken_copy(artifact: Path, copy: Path) -> Path:
    """A copy of ``artifact`` with one byte of its index changed: the manifest's sha256 of it no longer matches."""
    shutil.copytree(artifact, copy)
    with open(copy / INDEX, "r+b") as index:
        index.seek(100)
        byte = index.read(1)
        index.seek(100)
        index.write(bytes([byte[0] ^ 0xFF]))
    return copy


def test_the_command_serves_and_refuses_a_bad_artifact_by_name(artifacts, tmp_path):
    with pytest.raises(SystemExit, match=f"{tmp_path}/manifest.json does not exist"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit):
        main([str(artifacts[0]), "--workers", "0"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    process = subprocess.Popen([sys.executable, "-m", "twotower.serving_http", str(artifacts[0]), "--port", str(port), "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_S * 2
        while True:
            try:
                status, health = call(f"127.0.0.1:{port}", "GET", "/health")
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "twotower-serve did not answer"
                time.sleep(0.2)
        assert status == 200 and health["artifact"] == str(artifacts[0])
    finally:
        process.terminate()
        process.wait(10)

