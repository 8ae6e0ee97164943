"""The HTTP API over a ``LiveRetriever``: JSON in, JSON out, every refusal naming the field and its value.

The query endpoints are ``async``: they run on the event loop, one after another. A query is well
under a millisecond of work that holds the GIL for most of it, so FastAPI's thread pool (where plain
``def`` endpoints run) bought no parallelism, only hand-offs and GIL contention: at 8 concurrent
clients on 2 cores p99 was 28-30 ms on the pool and 13 ms on the loop (benchmarks/serving_http.py,
interleaved runs). More cores are used by more processes (``--workers``). ``/admin/reload`` stays a
plain function, so a load runs on the pool while the loop keeps answering. Each query reads
``live.current`` once, so a reload never changes the artifact under a request.

Every 4xx body has FastAPI's shape, ``{"detail": [{"loc": [...], "msg": ..., "input": ...}]}``, with
``msg`` naming the field and (cut to a line) its value, and ``input`` that value as JSON allows it.
"""
from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from twotower.artifact import MAX_ID_CHARS, ArtifactError
from twotower.retriever import FRESHNESS_HALF_LIFE, Recommendations, Retriever
from twotower.retriever_arguments import short
from twotower.serving_http.live import LiveRetriever

MAX_K = 1000  # the most items one request may ask for: a bound on the work and the answer one request makes
QUERIES = ("user_id", "user", "history")  # what a /recommend names its visitor by: exactly one of them

Id = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID_CHARS)] | StrictInt
UNION_MEMBERS = ("constrained-str", "int")  # how pydantic names Id's members in an error's loc
ABSENT = object()  # a required field the request lacks: there is no value to name
Count = Annotated[StrictInt, Field(ge=1)]  # strict: JSON true or 2.0 is not a count


class Problem(Exception):
    """A request refused: the HTTP status, the field (its path in the body or query) and the value, and why."""

    def __init__(self, status: int, loc: Sequence[str | int], value: Any, why: str):
        super().__init__(why)
        self.status, self.loc, self.value, self.why = status, tuple(loc), value, why


class RecommendRequest(BaseModel):
    """Exactly one of ``user_id`` (a known user), ``user`` (a raw profile row) or ``history`` (item ids, most recent first)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field ("user-id") is refused, not ignored
    user_id: Id | None = None
    user: dict[str, Any] | None = None
    history: list[Id] | None = None
    k: Count = 10
    exclude_seen: StrictBool = True
    # The freshness knob of ``Retriever.recommend`` and ``recommend_from_history`` (ages in the log's unit, seconds for
    # the bundled data); ``now`` is also the request's time, which a ``request_time`` feature reads.
    max_age: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    freshness_boost: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    freshness_half_life: Annotated[float, Field(gt=0, allow_inf_nan=False)] = FRESHNESS_HALF_LIFE
    now: Annotated[float, Field(allow_inf_nan=False)] | None = None

    def freshness(self) -> dict[str, Any]:
        return {"max_age": self.max_age, "freshness_boost": self.freshness_boost, "freshness_half_life": self.freshness_half_life, "now": self.now}


class SimilarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: Id
    k: Count = 10


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = None  # another artifact directory; none: the served path again


class Item(BaseModel):
    item_id: str
    score: float


class Items(BaseModel):
    items: list[Item]


def create_app(live: LiveRetriever, max_k: int = MAX_K, watch_s: float = 0.0) -> FastAPI:
    """The app serving ``live``; ``watch_s`` > 0 checks the served path that often and reloads when a new export lands there."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        if watch_s > 0:
            threading.Thread(target=live.watch, args=(watch_s, stop), name="twotower-artifact-watch", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="twotower", summary="Top-k items from a twotower artifact", lifespan=lifespan)
    app.add_exception_handler(Problem, _problem_response)
    app.add_exception_handler(RequestValidationError, _invalid_request_response)

    def within_max_k(k: int, loc: Sequence[str]) -> int:
        if k > max_k:
            raise Problem(422, loc, k, f"asks for more than {max_k} items (the server's --max-k)")
        return k

    @app.post("/recommend", response_model=Items)
    async def recommend(request: RecommendRequest) -> Items:
        """Top-k items for a known user, a raw profile row or a live click history."""
        given = [name for name in QUERIES if getattr(request, name) is not None]
        if len(given) != 1:
            raise Problem(422, ("body",), {name: getattr(request, name) for name in given},
                          f"give exactly one of {', '.join(QUERIES)}; got {' and '.join(given) if given else 'none'}")
        k, retriever = within_max_k(request.k, ("body", "k")), live.current.retriever
        field = given[0]
        value = getattr(request, field)
        with _refusals(field, value, "is not a user of the served model; a visitor without a profile is served by history (or GET /popular)"):
            if field == "user_id":
                return _items(retriever.recommend([value], k=k, exclude_seen=request.exclude_seen, **request.freshness()))
            if field == "user":
                return _items(retriever.recommend(pd.DataFrame([value]), k=k, exclude_seen=request.exclude_seen, **request.freshness()))
            if not request.exclude_seen:
                raise Problem(422, ("body", "exclude_seen"), False, "does not apply to a history: its items are always left out of the answer")
            return _items(retriever.recommend_from_history(value, k=k, **request.freshness()))

    @app.post("/similar", response_model=Items)
    async def similar(request: SimilarRequest) -> Items:
        """The k items nearest ``item_id`` (the item itself left out)."""
        k, retriever = within_max_k(request.k, ("body", "k")), live.current.retriever
        with _refusals("item_id", request.item_id, "is not in the served catalogue"):
            return _items(retriever.similar_items([request.item_id], k=k))

    @app.get("/popular", response_model=Items)
    async def popular(k: Annotated[int, Query(ge=1)] = 10) -> Items:
        """The k items with the most interactions in the exported log."""
        return _items(live.current.retriever.popular(within_max_k(k, ("query", "k"))))

    @app.get("/health")
    def health() -> dict[str, Any]:
        """200 while an artifact is served (the server answers only once one is loaded)."""
        served = live.current
        manifest = served.retriever.artifact.manifest
        return {"status": "ok", "artifact": str(served.path), "version_dir": str(served.retriever.artifact.path),
                "format": manifest["format"], "format_version": manifest["format_version"], "loaded_at": served.loaded_at}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        """What a client needs to know of the served model; not its config or checkpoint path."""
        return _metadata(live.current.retriever)

    @app.post("/admin/reload")
    def reload(request: ReloadRequest | None = None) -> dict[str, Any]:
        """Loads ``path`` (default: the served path again) beside the served artifact, then swaps it in; answers once it serves."""
        path = request.path if request is not None else None
        try:
            served = live.reload(path)
        except ArtifactError as err:
            raise Problem(422, ("body", "path"), path if path is not None else str(live.current.path),
                          f"not loaded, still serving {live.current.path}: {err}") from None
        return {"status": "reloaded", "artifact": str(served.path), "version_dir": str(served.retriever.artifact.path), **_metadata(served.retriever)}

    return app


@contextmanager
def _refusals(field: str, value: Any, unknown: str) -> Iterator[None]:
    """Turns the Retriever's refusals of ``field``'s value into Problems: an unknown id is 404 (saying ``unknown``), a bad value 422."""
    try:
        yield
    except KeyError:
        raise Problem(404, ("body", field), value, unknown) from None
    except (ValueError, TypeError) as err:
        raise Problem(422, ("body", field), value, str(err)) from None


def _items(found: Recommendations) -> Items:
    """Row 0 as ``Items``: the padding of a short row (``""`` / -inf, nothing left to recommend) is dropped, not sent."""
    ids, scores = found.item_ids[0], found.scores[0]
    return Items(items=[Item(item_id=i, score=s) for i, s in zip(ids.tolist(), scores.tolist()) if i != ""])


def _metadata(retriever: Retriever) -> dict[str, Any]:
    manifest = retriever.artifact.manifest
    return {
        "format": manifest["format"], "format_version": manifest["format_version"], "created": manifest.get("created"),
        "dim": manifest["dim"], "metric": manifest["metric"], "normalized": manifest.get("normalized"),
        "counts": {**manifest["counts"], "indexed": int(retriever.index.ntotal)},  # indexed: add_items may have grown the catalogue
        "index": {"key": manifest["index"]["key"], "recall@10": manifest["index"].get("recall@10")},
        "libraries": manifest["libraries"],
        "user_features": list(retriever.preprocessor.query),  # the columns a raw profile ("user") may give
        "history": retriever.history_name is not None,  # whether /recommend takes a history
    }


def _problem_response(_: Request, problem: Problem) -> JSONResponse:
    return JSONResponse(status_code=problem.status, content={"detail": [_detail(problem.loc, problem.value, problem.why)]})


def _invalid_request_response(_: Request, err: RequestValidationError) -> JSONResponse:
    # pydantic tries each member of a union (str | int) and names it in the loc (("body", "user_id", "int")):
    # one entry per field the client wrote, its reasons joined
    reasons: dict[tuple[str | int, ...], tuple[Any, list[str]]] = {}
    for error in err.errors():
        loc = tuple(part for part in error["loc"] if part not in UNION_MEMBERS)
        value = ABSENT if error["type"] == "missing" else error.get("input")  # pydantic gives a missing field's whole body as its input
        reasons.setdefault(loc, (value, []))[1].append(error["msg"])
    return JSONResponse(status_code=422, content={"detail": [_detail(loc, value, " or ".join(why)) for loc, (value, why) in reasons.items()]})


def _detail(loc: Sequence[str | int], value: Any, why: str) -> dict[str, Any]:
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:]).lstrip(".") or str(loc[0])
    if value is ABSENT:
        return {"loc": list(loc), "msg": f"{field}: {why}", "input": None}
    return {"loc": list(loc), "msg": f"{field}={short(value)}: {why}", "input": _json_safe(value)}


def _json_safe(value: Any) -> Any:
    """``value`` if JSON can carry it (short enough, no NaN or infinity), else its cut repr."""
    if value is None or (isinstance(value, (bool, int, str)) and len(str(value)) <= 200):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return short(value)
