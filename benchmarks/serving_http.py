"""``twotower-serve`` under load: ``POST /recommend`` latency and throughput at 8 concurrent clients, beside in-process ``Retriever.recommend``.

    python benchmarks/serving_http.py                  # results -> benchmarks/results/serving_http.md

The artifact is ``artifacts/demo`` if there is one (``make demo`` exports it), else one exported here
from a small synthetic run. The server runs as the command does (``python -m twotower.serving_http``,
one process, torch and faiss at 1 thread) in its own process; the clients are threads of this one,
each with a keep-alive connection, asking for the top 10 of known users drawn at random. In the same
run, ``Retriever.recommend([user], k=10)`` is timed in this process on the same users: one caller,
then 8 threads. Goal: p99 <= 20 ms at 8 concurrent clients.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twotower.retriever import Retriever  # noqa: E402

DEMO = ROOT / "artifacts" / "demo"
K = 10


def artifact_path(workdir: Path) -> Path:
    if DEMO.exists():
        return DEMO
    from tests.export_fixtures import trained_and_exported  # the tests' small synthetic run and export

    return trained_and_exported(workdir)[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(artifact: Path, port: int, workers: int, timeout_s: float = 120.0) -> subprocess.Popen:
    command = [sys.executable, "-m", "twotower.serving_http", str(artifact), "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"twotower-serve on port {port} did not answer /health within {timeout_s} s (exit code {process.poll()})")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_clients(port: int, users: list[str], clients: int, per_client: int, warmup: int) -> tuple[np.ndarray, float]:
    """(latencies in ms of every timed request, wall seconds of the timed part); ``warmup`` untimed requests per client first."""
    start, latencies = threading.Barrier(clients + 1), [[] for _ in range(clients)]

    def client(c: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        rng = np.random.default_rng(c)

        def ask() -> float:
            body = json.dumps({"user_id": users[rng.integers(len(users))], "k": K})
            began = time.perf_counter()
            connection.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            took = time.perf_counter() - began
            if response.status != 200 or len(answer["items"]) != K:
                raise RuntimeError(f"POST /recommend {body}: {response.status} {answer}")
            return took

        for _ in range(warmup):
            ask()
        start.wait()
        latencies[c] = [ask() * 1000 for _ in range(per_client)]
        connection.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return np.concatenate([np.asarray(t) for t in latencies]), wall


def in_process(retriever: Retriever, users: list[str], threads: int, per_thread: int) -> tuple[np.ndarray, float]:
    """(latencies in ms, wall seconds) of ``recommend([user], k)`` from ``threads`` threads sharing one Retriever."""
    def caller(t: int) -> list[float]:
        rng, times = np.random.default_rng(100 + t), []
        for _ in range(per_thread):
            user = users[rng.integers(len(users))]
            began = time.perf_counter()
            retriever.recommend([user], k=K)
            times.append((time.perf_counter() - began) * 1000)
        return times

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        times = [t for found in pool.map(caller, range(threads)) for t in found]
    return np.asarray(times), time.perf_counter() - began


def row(name: str, latencies: np.ndarray, wall: float) -> str:
    p50, p99 = np.percentile(latencies, [50, 99])
    return f"| {name} | {len(latencies)} | {p50:.2f} | {p99:.2f} | {latencies.max():.2f} | {len(latencies) / wall:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="server processes (twotower-serve --workers)")
    parser.add_argument("--requests", type=int, default=250, help="timed requests per client")
    parser.add_argument("--runs", type=int, default=3, help="HTTP measurements, one after another against the same server (a shared box is noisy)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_http.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        artifact = artifact_path(Path(workdir))
        port = free_port()
        load_before = os.getloadavg()
        server = start_server(artifact, port, args.workers)
        try:
            torch.set_num_threads(1)  # as the server runs
            faiss.omp_set_num_threads(1)
            retriever = Retriever.load(artifact)
            users = retriever.user_ids.tolist()
            cpu_before = cpu_seconds(server.pid)
            runs = [http_clients(port, users, args.clients, args.requests, warmup=20) for _ in range(args.runs)]
            cpu_after = cpu_seconds(server.pid)
        finally:
            server.terminate()
            server.wait(30)
        alone, alone_wall = in_process(retriever, users, 1, args.requests * 2)
        shared, shared_wall = in_process(retriever, users, args.clients, args.requests)
        load_after = os.getloadavg()

    manifest = retriever.artifact.manifest
    answered = args.runs * args.clients * (args.requests + 20)
    server_cpu = (f"{(cpu_after - cpu_before) / answered * 1000:.2f} ms" if cpu_before is not None and cpu_after is not None and args.workers == 1
                  else "not measured (more than one server process, or no /proc)")
    in_process_cpu = float(np.median(alone))
    p99 = float(np.median([np.percentile(latencies, 99) for latencies, _ in runs]))
    lines = [
        "# HTTP serving benchmark",
        "",
        "`python benchmarks/serving_http.py" + (f" --clients {args.clients}" if args.clients != 8 else "")
        + (f" --requests {args.requests}" if args.requests != 250 else "") + (f" --runs {args.runs}" if args.runs != 3 else "")
        + (f" --workers {args.workers}" if args.workers != 1 else "") + "`",
        "",
        f"Machine: `nproc` {os.cpu_count()}, load average {load_before[0]:.2f} before the run and {load_after[0]:.2f} after "
        f"(1-minute, `uptime`); torch {torch.__version__}, faiss {faiss.__version__}.",
        f"Artifact: `{artifact.relative_to(ROOT) if artifact.is_relative_to(ROOT) else 'synthetic (exported by this script)'}`: "
        f"{manifest['counts']['items']} items, {manifest['counts']['users']} users, dim {manifest['dim']}, index `{manifest['index']['key']}`.",
        f"Server: `python -m twotower.serving_http ARTIFACT --workers {args.workers}` (= `twotower-serve`), torch and faiss at 1 thread; "
        f"{args.clients} client threads in the benchmark's process, one keep-alive connection each, `POST /recommend` "
        f'`{{"user_id": <random known user>, "k": {K}}}`, 20 untimed requests per client first.',
        "",
        "| what | requests | p50 ms | p99 ms | max ms | requests/s |",
        "|---|---:|---:|---:|---:|---:|",
        *[row(f"HTTP `POST /recommend`, {args.clients} concurrent clients, run {n + 1}", latencies, wall) for n, (latencies, wall) in enumerate(runs)],
        row("in process `Retriever.recommend([user], k=10)`, 1 caller", alone, alone_wall),
        row(f"in process `Retriever.recommend([user], k=10)`, {args.clients} threads", shared, shared_wall),
        "",
        f"Server CPU time per request (all {answered} requests, warm-up included): {server_cpu}; "
        f"the in-process `recommend` alone takes {in_process_cpu:.2f} ms (median, 1 caller).",
        "",
        f"Goal p99 <= 20 ms at {args.clients} concurrent clients: {'met' if p99 <= 20 else 'NOT met'} (median of the runs' p99: {p99:.2f} ms).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
