"""Load run of the webhook server on loopback: how fast deliveries are acknowledged, and that none is lost or doubled.

    python benchmarks/webhook_load.py [--deliveries 500] [--clients 50] [--pairs 100] [--workers 2]

Starts the real server (uvicorn, SQLite queue, worker child processes) with a runner that returns at once, then
sends `--deliveries` signed pushes from `--clients` concurrent HTTP clients, covering `--pairs` distinct (repo, sha)
pairs in a shuffled order, so that every push is delivered several times, some of them concurrently.

Reported: ack latency p50/p99, also as a ratio to the peer GET /healthz (no work, same concurrency, measured just
before on the same server); jobs created (must equal --pairs); lost (accepted pushes without a job: must be 0);
duplicates collapsed; how long the workers took to finish every job. Exit status 1 if anything was lost or doubled.
Bounded: each phase gives up after --deadline seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "benchmark-secret"


def server_command() -> list[str]:
    return [sys.executable, "-m", "bot", "serve"]


def push(repo: str, sha: str) -> dict:
    return {"event": {"action": "update", "scope": "repo.content"},
            "repo": {"type": "model", "name": repo, "id": "65c0ffee", "private": False, "headSha": sha},
            "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "f" * 40, "newSha": sha}],
            "webhook": {"id": "bench", "version": 3}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def hammer(url: str, requests: list[tuple[str, dict | None]], clients: int) -> list[tuple[float, int, dict]]:
    """Send every (path, payload) from `clients` concurrent clients (one connection each); (latency, status, body)."""
    pending = list(requests)
    results: list[tuple[float, int, dict]] = []
    # Clients are made before the clock starts and share one TLS context: building 50 of those costs the *client*
    # seconds of CPU on a small machine, which would otherwise show up as server latency.
    tls = ssl.create_default_context()
    made = [httpx.AsyncClient(base_url=url, timeout=30, verify=tls, headers={"X-Webhook-Secret": SECRET})
            for _ in range(clients)]

    async def client_loop(client: httpx.AsyncClient) -> None:
        async with client:
            while pending:
                path, payload = pending.pop()
                started = time.perf_counter()
                if payload is None:
                    response = await client.get(path)
                else:
                    response = await client.post(path, json=payload)
                results.append((time.perf_counter() - started, response.status_code, response.json()))

    await asyncio.gather(*(client_loop(client) for client in made))
    return results


def start_server(state: Path, workers: int) -> tuple[subprocess.Popen, str, Path]:
    log = state.parent / "server.log"
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "HF_ENDPOINT": "http://hub.invalid", "HF_TOKEN": "hf_bench"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*server_command(), "--port", "0", "--state-dir", str(state), "--workers", str(workers),
                                 "--runner", "tests.server_runners:instant"], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if match := re.search(r"listening on (http://\S+:\d+)", log.read_text()):
            return proc, match.group(1), log
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


async def run(args) -> int:
    rng = random.Random(5)
    repos = [f"bench/model-{i:02d}" for i in range(max(1, args.pairs // 5))]
    pairs = [(repos[i % len(repos)], f"{i + 1:040x}") for i in range(args.pairs)]  # sha 0...0 means "deleted"
    deliveries = [pairs[i % len(pairs)] for i in range(args.deliveries)]
    rng.shuffle(deliveries)

    with tempfile.TemporaryDirectory(prefix="webhook-load-") as tmp:
        proc, url, log = start_server(Path(tmp) / "state", args.workers)
        try:
            peer = await asyncio.wait_for(hammer(url, [("/healthz", None)] * args.deliveries, args.clients),
                                          args.deadline)
            started = time.perf_counter()
            acks = await asyncio.wait_for(
                hammer(url, [("/webhooks/hub", push(r, s)) for r, s in deliveries], args.clients), args.deadline)
            load_seconds = time.perf_counter() - started

            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                deadline = time.monotonic() + args.deadline
                while time.monotonic() < deadline:
                    health = (await client.get("/healthz")).json()
                    if health["queued"] == 0 and health["running"] == 0:
                        break
                    await asyncio.sleep(0.2)
                drained_seconds = time.perf_counter() - started
                jobs = (await client.get("/jobs", params={"limit": 1000})).json()
        finally:
            proc.terminate()
            exit_code = proc.wait(timeout=60)

    latencies = [latency * 1000 for latency, _, _ in acks]
    peer_latencies = [latency * 1000 for latency, _, _ in peer]
    statuses = [body.get("status") for _, _, body in acks]
    errors = [code for _, code, _ in acks if code not in (200, 202)]
    accepted_ids = {body["job_id"] for _, code, body in acks if code in (200, 202) and "job_id" in body}
    job_pairs = {(j["repo_id"], j["sha"]) for j in jobs}
    created = statuses.count("queued")
    lost = len(set(pairs) - job_pairs) + len(accepted_ids - {j["id"] for j in jobs})
    not_done = [j for j in jobs if j["state"] != "done" or j["attempts"] != 1]

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    peer_p50, peer_p99 = percentile(peer_latencies, 50), percentile(peer_latencies, 99)
    print(f"deliveries           {len(acks)} from {args.clients} concurrent clients, {len(pairs)} distinct "
          f"(repo, sha) pairs, in {load_seconds:.2f} s ({len(acks) / load_seconds:.0f}/s)")
    print(f"ack latency          p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms, "
          f"mean {statistics.fmean(latencies):.1f} ms")
    print(f"peer GET /healthz    p50 {peer_p50:.1f} ms, p99 {peer_p99:.1f} ms  ->  ack/peer ratio p50 "
          f"{p50 / peer_p50:.2f}x, p99 {p99 / peer_p99:.2f}x")
    print(f"jobs created         {created} (expected {len(pairs)}); jobs in the queue {len(jobs)}")
    print(f"duplicates collapsed {statuses.count('duplicate')}")
    print(f"lost                 {lost}; non-2xx answers {len(errors)}")
    print(f"all jobs done        {'yes' if not not_done else f'NO: {len(not_done)} not done once'} "
          f"{drained_seconds:.1f} s after the first delivery ({args.workers} worker(s), a child process per job)")
    print(f"server exit status   {exit_code} after SIGTERM")
    ok = created == len(pairs) == len(jobs) and lost == 0 and not errors and not not_done and exit_code == 0
    if not ok:
        print(f"FAILED; server log: {log}" if log.exists() else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=120, help="seconds each phase may take")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
