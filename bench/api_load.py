"""Load on the control plane, with and without chats: does inference slow down files, jobs and events?

Starts ``esft serve`` (embedded mode: SQLite, filesystem broker, no worker, so submitted jobs stay queued) in a
subprocess on a fresh data folder, registers a tiny toy MoE as base model ``toy`` and uploads a training file.
Then ``--rounds`` rounds of two phases of ``--duration`` seconds each, their order alternating (the job list
grows through the run, so neither phase always sees the longer one):

1. ``without_chats``: ``--clients`` minus ``--chat-clients`` clients loop over the control-plane mix (job
   submissions, job and file lists, job retrieval, event polls), each waiting for its answer before the next;
2. ``with_chats``: the same control-plane clients, plus ``--chat-clients`` clients sending chat completions
   (``--chat-tokens`` new tokens, ``ignore_eos`` so each generates them all) to the toy base model.

Prints one JSON object: per round, phase and route ``n``, ``p50_ms``, ``p99_ms``; the chats' count, latency and
generated ``tokens_per_s``; errors (any status >= 400 or failed connection) per phase and in total; the
control-plane p99 ratio with/without chats per route and overall per round, and min/median/max over the
rounds (goal: median at most 3); the 1/5/15-minute load
average at the end (figures from a loaded machine mean little: record them on a quiet one).

Run: ``python bench/api_load.py`` (50 clients, 3 rounds of 2 x 30 s, about 3.5 minutes);
``python bench/api_load.py --duration 5 --clients 10 --rounds 2`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CONTROL_MIX = (  # (route label, weight): what a dashboard and a few training scripts do
    ("POST /v1/fine_tuning/jobs", 2),
    ("GET /v1/fine_tuning/jobs", 2),
    ("GET /v1/fine_tuning/jobs/{id}", 1),
    ("GET /v1/fine_tuning/jobs/{id}/events", 3),
    ("GET /v1/files", 2),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _training_rows(n: int = 32) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"add {i} and {i + 3}"},
                          {"role": "assistant", "content": str(2 * i + 3)}]} for i in range(n)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    """``esft serve`` without a worker, rate limits off (this measures latency, not the limiter)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "ESFT_RATE_LIMIT_REQUESTS_PER_SECOND": "0",  # one key sends everything: limits and quotas off
        "ESFT_QUOTA_CONCURRENT_DEVICES": "0",  # no worker: every submitted job stays queued
        "ESFT_QUOTA_STORED_BYTES": "0",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    command = [sys.executable, "-m", "api.cli", "serve", "--no-worker", "--port", str(port), "--data-dir",
               str(data_dir)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def prepare(url: str, data_dir: Path, timeout: float = 120.0) -> tuple[dict[str, str], str]:
    """Wait for the server, register the toy model, upload a file and warm the engine; returns (auth, file id)."""
    from esft.models.toy import build_toy_model

    deadline = time.monotonic() + timeout
    key_file = data_dir / "api_key"
    while not key_file.exists() or httpx.get(f"{url}/health", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not start")
        time.sleep(0.2)
    auth = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    model_dir = build_toy_model(data_dir / "models" / "toy", layers=2, experts=8, top_k=2, hidden=64)
    with httpx.Client(base_url=url, headers=auth, timeout=120) as client:
        client.post("/v1/admin/models", json={"id": "toy", "path": str(model_dir)}).raise_for_status()
        uploaded = client.post("/v1/files", files={"file": ("train.jsonl", _training_rows())},
                               data={"purpose": "fine-tune"})
        uploaded.raise_for_status()
        chat = {"model": "toy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        client.post("/v1/chat/completions", json=chat).raise_for_status()  # loads the engine
    return auth, uploaded.json()["id"]


class Recorder:
    """Latencies per route and errors, for one phase."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.error_codes: dict[str, int] = defaultdict(int)  # "route status code", to tell why
        self.chat_tokens = 0

    async def timed(self, route: str, call) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await call
        except httpx.HTTPError as exc:
            self.errors[route] += 1
            self.error_codes[f"{route} {type(exc).__name__}"] += 1
            return None
        self.latencies[route].append(time.perf_counter() - started)
        if response.status_code >= 400:
            self.errors[route] += 1
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            self.error_codes[f"{route} {response.status_code} {code}"] += 1
        return response


def _job_body(file_id: str) -> dict:
    hyper = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "seq_len": 32}
    return {"model": "toy", "training_file": file_id,
            "method": {"type": "esft", "esft": {"hyperparameters": hyper}}}


async def control_client(client: httpx.AsyncClient, rec: Recorder, file_id: str, jobs: list[str],
                         stop: float, rng: random.Random) -> None:
    routes, weights = zip(*CONTROL_MIX, strict=True)
    while time.monotonic() < stop:
        route = rng.choices(routes, weights)[0]
        job = rng.choice(jobs)
        if route == "POST /v1/fine_tuning/jobs":
            response = await rec.timed(route, client.post("/v1/fine_tuning/jobs", json=_job_body(file_id)))
            if response is not None and response.status_code == 200:
                jobs.append(response.json()["id"])
        elif route == "GET /v1/fine_tuning/jobs":
            await rec.timed(route, client.get("/v1/fine_tuning/jobs", params={"limit": 20}))
        elif route == "GET /v1/fine_tuning/jobs/{id}":
            await rec.timed(route, client.get(f"/v1/fine_tuning/jobs/{job}"))
        elif route == "GET /v1/fine_tuning/jobs/{id}/events":
            await rec.timed(route, client.get(f"/v1/fine_tuning/jobs/{job}/events", params={"limit": 20}))
        else:
            await rec.timed(route, client.get("/v1/files"))


async def chat_client(client: httpx.AsyncClient, rec: Recorder, tokens: int, stop: float, index: int) -> None:
    n = 0
    while time.monotonic() < stop:
        body = {"model": "toy", "messages": [{"role": "user", "content": f"add {index} and {n}"}],
                "max_tokens": tokens, "temperature": 0.7, "ignore_eos": True}
        response = await rec.timed("POST /v1/chat/completions", client.post("/v1/chat/completions", json=body))
        if response is not None and response.status_code == 200:
            rec.chat_tokens += response.json()["usage"]["completion_tokens"]
        n += 1


async def run_phase(url: str, auth: dict, file_id: str, jobs: list[str], *, control: int, chats: int,
                    duration: float, chat_tokens: int, seed: int) -> dict:
    rec = Recorder()
    limits = httpx.Limits(max_connections=control + chats, max_keepalive_connections=control + chats)
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=300, limits=limits) as client:
        started = time.monotonic()
        stop = started + duration
        tasks = [control_client(client, rec, file_id, jobs, stop, random.Random(seed + i)) for i in range(control)]
        tasks += [chat_client(client, rec, chat_tokens, stop, i) for i in range(chats)]
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    return summarize(rec, elapsed)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summarize(rec: Recorder, elapsed: float) -> dict:
    routes = {
        route: {"n": len(values), "p50_ms": round(1000 * _percentile(values, 0.50), 2),
                "p99_ms": round(1000 * _percentile(values, 0.99), 2)}
        for route, values in sorted(rec.latencies.items()) if values
    }
    control = [v for route, values in rec.latencies.items() if "chat" not in route for v in values]
    summary = {"seconds": round(elapsed, 1), "routes": routes, "errors": sum(rec.errors.values()),
               "errors_by_route": dict(rec.errors), "errors_by_code": dict(rec.error_codes)}
    if control:
        summary["control_plane"] = {"n": len(control), "p50_ms": round(1000 * _percentile(control, 0.5), 2),
                                    "p99_ms": round(1000 * _percentile(control, 0.99), 2)}
    if rec.chat_tokens:
        summary["chat_tokens_per_s"] = round(rec.chat_tokens / elapsed, 1)
    return summary


def compare(without: dict, with_chats: dict) -> dict:
    """p99 with chats over p99 without, per control-plane route and overall."""
    ratios = {}
    for route, stats in without["routes"].items():
        if route in with_chats["routes"] and stats["p99_ms"] > 0:
            ratios[route] = round(with_chats["routes"][route]["p99_ms"] / stats["p99_ms"], 2)
    if "control_plane" in without and "control_plane" in with_chats:
        ratios["all"] = round(with_chats["control_plane"]["p99_ms"] / without["control_plane"]["p99_ms"], 2)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="clients in the phase with chats (all of them)")
    parser.add_argument("--chat-clients", type=int, default=None, help="of which send chats (default a fifth)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both phases, their order alternating")
    parser.add_argument("--chat-tokens", type=int, default=32, help="new tokens per chat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temporary folder")
    args = parser.parse_args()
    chats = args.chat_clients if args.chat_clients is not None else max(1, args.clients // 5)
    control = args.clients - chats
    if control < 1:
        parser.error("--clients must be larger than --chat-clients")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="esft-api-load-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port)
    try:
        auth, file_id = prepare(url, data_dir)
        jobs: list[str] = []
        with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
            jobs.append(client.post("/v1/fine_tuning/jobs", json=_job_body(file_id)).raise_for_status().json()["id"])
        phase = dict(control=control, duration=args.duration, chat_tokens=args.chat_tokens, seed=args.seed)
        rounds = []  # the job list grows through the run: alternating the order spreads that over both phases
        for r in range(args.rounds):
            order = (0, chats) if r % 2 == 0 else (chats, 0)
            done = {n: asyncio.run(run_phase(url, auth, file_id, jobs, chats=n, **phase)) for n in order}
            rounds.append((done[0], done[chats]))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    ratios = [compare(without, with_chats) for without, with_chats in rounds]
    overall = [r.get("all", float("inf")) for r in ratios]
    summary = {"min": min(overall), "median": statistics.median(overall), "max": max(overall), "n": len(overall)}
    errors = sum(w["errors"] + c["errors"] for w, c in rounds)
    print(json.dumps({
        "config": {"clients": args.clients, "control_clients": control, "chat_clients": chats,
                   "duration_s": args.duration, "rounds": args.rounds, "chat_tokens": args.chat_tokens,
                   "cpus": os.cpu_count()},
        "rounds": [{"without_chats": w, "with_chats": c, "p99_with_over_without": r}
                   for (w, c), r in zip(rounds, ratios, strict=True)],
        "control_p99_with_over_without": summary,
        "errors": errors,
        "goal": {"no_errors": errors == 0, "control_p99_ratio_at_most_3": summary["median"] <= 3},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }, indent=2))


if __name__ == "__main__":
    main()
