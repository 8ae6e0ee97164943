"""``twotower-serve ARTIFACT``: the HTTP API (``twotower.serving_http.app``) under uvicorn.

With ``--workers N`` uvicorn starts N processes, each loading the artifact itself (it finds the
settings in ``ENV``): ``POST /admin/reload`` then reaches only the worker that takes it, so reload
many workers with ``--watch`` (each watches the path) and publish a new export at the served path.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

import faiss
import torch

from twotower.artifact import ArtifactError

ENV = "TWOTOWER_SERVE"  # JSON of the settings, for the worker processes uvicorn starts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="twotower-serve", description="Serve top-k recommendations from a twotower artifact over HTTP (JSON).")
    parser.add_argument("artifact", help="artifact directory (an export's output_dir)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; /admin/reload loads any path it is given, so keep it off open networks)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the artifact (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and faiss threads per process (default 1: one query is too small to split; --workers uses more cores)")
    parser.add_argument("--max-k", type=int, default=None, help="the most items one request may ask for (default 1000)")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="check the artifact path this often and reload when a new export lands there (default 0: never)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    for name in ("port", "workers", "threads"):
        if getattr(args, name) < (0 if name == "port" else 1):
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be {'>= 0' if name == 'port' else 'at least 1'}")
    if args.max_k is not None and args.max_k < 1:
        parser.error(f"--max-k={args.max_k} must be at least 1")
    if args.watch < 0:
        parser.error(f"--watch={args.watch} must be >= 0 seconds")
    return args


def app_from_env():
    """The app for this process, from the settings ``main`` left in ``ENV`` (uvicorn's factory for its workers)."""
    from twotower.serving_http.app import MAX_K, create_app
    from twotower.serving_http.live import LiveRetriever

    settings = json.loads(os.environ[ENV])
    torch.set_num_threads(settings["threads"])
    faiss.omp_set_num_threads(settings["threads"])
    return create_app(LiveRetriever(settings["artifact"]), max_k=settings["max_k"] or MAX_K, watch_s=settings["watch"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import fastapi  # noqa: F401 - only to say which extra is missing, before uvicorn says less
        import uvicorn
    except ImportError as err:
        raise SystemExit(f"twotower-serve needs {err.name}: pip install 'twotower[serve]'") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ[ENV] = json.dumps({"artifact": args.artifact, "threads": args.threads, "max_k": args.max_k, "watch": args.watch})
    try:
        # One worker: the app is built here, so a bad artifact stops the command with the file named, before any port is taken.
        app = app_from_env() if args.workers == 1 else "twotower.serving_http.cli:app_from_env"
    except ArtifactError as err:
        raise SystemExit(f"twotower-serve: {err}") from None
    uvicorn.run(app, host=args.host, port=args.port, workers=args.workers, factory=args.workers > 1, log_level=args.log_level)
