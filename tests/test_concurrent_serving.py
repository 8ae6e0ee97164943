"""One Retriever shared by many threads: answers identical to sequential calls, and ``add_items``
while queries run never gives a torn answer (each answer is the one of a whole catalogue state)."""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.export_fixtures import trained_and_exported
from twotower import Retriever

THREADS, QUERIES_PER_THREAD, K = 8, 1_000, 10


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return trained_and_exported(tmp_path_factory.mktemp("export"))[1]


def ask(retriever: Retriever, query: tuple[str, str]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """One query of one of three kinds, as hashable (ids, scores)."""
    kind, key = query
    if kind == "user":
        got = retriever.recommend([key], k=K)
    elif kind == "history":
        got = retriever.recommend_from_history([key], k=K)
    else:
        got = retriever.similar_items([key], k=K)
    return tuple(got.item_ids[0].tolist()), tuple(got.scores[0].tolist())


def query_mix(retriever: Retriever, n: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    users, items = retriever.user_ids.tolist(), retriever.item_ids.tolist()
    kinds = rng.choice(["user", "history", "item"], n, p=[0.6, 0.2, 0.2])
    return [(kind, users[rng.integers(len(users))] if kind == "user" else items[rng.integers(len(items))]) for kind in kinds]


def test_eight_threads_answer_like_one(artifact):
    retriever = Retriever.load(artifact)
    queries = query_mix(retriever, THREADS * QUERIES_PER_THREAD)
    sequential = {q: ask(retriever, q) for q in dict.fromkeys(queries)}
    start = threading.Barrier(THREADS)

    def worker(t: int) -> list[tuple[str, str]]:
        start.wait()  # all threads query at once
        mine = queries[t * QUERIES_PER_THREAD : (t + 1) * QUERIES_PER_THREAD]
        return [q for q in mine if ask(retriever, q) != sequential[q]]

    with ThreadPoolExecutor(THREADS) as pool:
        differing = [q for found in pool.map(worker, range(THREADS)) for q in found]
    assert not differing, f"{len(differing)} of {len(queries)} concurrent answers differ from sequential ones, e.g. {differing[:3]}"


def test_add_items_while_queries_run_never_tears_an_answer(artifact):
    reference, live = Retriever.load(artifact), Retriever.load(artifact)
    queries = [q for q in query_mix(reference, 60) if q[0] != "item"]
    # New items copy the content of items the queries rank first, under new ids: they tie with
    # their originals, so they enter the answers and every state answers differently.
    top = list(dict.fromkeys(ask(reference, q)[0][0] for q in queries))[:30]
    originals = reference.items.set_index("item_id").loc[top].reset_index()
    batches = [originals.iloc[[i]].assign(item_id=f"new-{i}") for i in range(len(originals))]
    queries += [("item", "new-0"), ("item", f"new-{len(batches) - 1}")]
    # Every answer each catalogue state gives, computed one state at a time.
    allowed = {q: set() for q in queries}
    for state in range(len(batches) + 1):
        if state:
            reference.add_items(batches[state - 1])
        for q in queries:
            if q[0] == "item" and q[1] not in reference._item_row:
                continue
            allowed[q].add(ask(reference, q))

    done, torn, answered = threading.Event(), [], [0]

    def reader(t: int) -> None:
        while not done.is_set():
            for q in queries[t::4]:
                try:
                    answer = ask(live, q)
                except KeyError:  # a new item asked for before it was added
                    continue
                answered[0] += 1
                if answer not in allowed[q]:
                    torn.append((q, answer))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up in a short test
    try:
        with ThreadPoolExecutor(4) as pool:
            readers = [pool.submit(reader, t) for t in range(4)]
            while answered[0] < 20:  # the readers are under way
                time.sleep(0.001)
            for batch in batches:
                live.add_items(batch)
                time.sleep(0.002)  # let queries run against each state
            done.set()
            for r in readers:
                r.result()
    finally:
        sys.setswitchinterval(switch)
    assert answered[0] > len(queries), answered
    assert not torn, f"{len(torn)} torn answers, e.g. {torn[:2]}"
    assert ask(live, queries[-1]) in allowed[queries[-1]]
