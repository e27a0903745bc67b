"""Load run of the webhook server on loopback: how fast deliveries are acknowledged, and that none is lost or doubled.

    python benchmarks/webhook_load.py [--deliveries 500] [--clients 50] [--pairs 100] [--workers 2]

Starts the real server (uvicorn, SQLite queue, worker child processes) with a runner that returns at once, then
sends `--deliveries` signed pushes from `--clients` concurrent HTTP clients, covering `--pairs` distinct (repo, sha)
pairs in a shuffled order, so that every push is delivered several times, some of them concurrently. Each pair is a
repo of its own (a newer push to a repo would supersede the waiting one), and the queue bounds are raised above
`--pairs`: the transport and the queue are measured, not the limits.

Reported: ack latency p50/p99, also as a ratio to the peer GET /healthz (no work, same concurrency, measured just
before on the same server); jobs created (must equal --pairs); lost (accepted pushes without a job: must be 0);
duplicates collapsed; how long the workers took to finish every job. Exit status 1 if anything was lost or doubled.

Then a hostile phase of --flood seconds (0 to skip): 300 sockets held open without a request (each reopened a second
after the server closes it), ten clients that send half a body and vanish or a wrong secret ten times a second, while
one real delivery is sent every half second. Reported: how many real deliveries were answered 202, and how many bytes
of log the server wrote meanwhile. Bounded: each phase gives up after --deadline seconds.
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


async def flood(url: str, seconds: float, idle_sockets: int = 300) -> tuple[int, int, int]:
    """The hostile phase: (connections opened by the flood, real deliveries sent, real deliveries answered 202)."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    stop = time.monotonic() + seconds
    opened = 0

    async def connect():
        nonlocal opened
        opened += 1
        return await asyncio.open_connection(host, int(port))

    async def hold_idle():  # connect, say nothing; a second after the server closes it, connect again
        while time.monotonic() < stop:
            try:
                reader, writer = await connect()
                await asyncio.wait_for(reader.read(), max(0.1, stop - time.monotonic()))
            except (OSError, asyncio.TimeoutError):
                pass
            else:
                writer.close()
            await asyncio.sleep(1)

    async def vanish(secret: str):  # half a declared body, then gone; or a wrong secret
        while time.monotonic() < stop:
            try:
                _, writer = await connect()
                writer.write(f"POST /webhooks/hub HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {secret}\r\n"
                             "Content-Length: 5000\r\n\r\n{\"event\": ".encode())
                await writer.drain()
                writer.close()
            except OSError:
                pass
            await asyncio.sleep(0.1)

    async def deliver(client: httpx.AsyncClient) -> list[int]:
        statuses, i = [], 0
        while time.monotonic() < stop:
            i += 1
            try:
                response = await client.post("/webhooks/hub", json=push(f"flood/model-{i:04d}", f"{i:040x}"))
                statuses.append(response.status_code)
            except httpx.HTTPError:
                statuses.append(0)
            await asyncio.sleep(0.5)
        return statuses

    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"X-Webhook-Secret": SECRET}) as client:
        results = await asyncio.gather(deliver(client), *(hold_idle() for _ in range(idle_sockets)),
                                       *(vanish(SECRET) for _ in range(5)), *(vanish("wrong") for _ in range(5)))
    statuses = results[0]
    return opened, len(statuses), statuses.count(202)


def start_server(state: Path, workers: int, bound: int) -> tuple[subprocess.Popen, str, Path]:
    log = state.parent / "server.log"
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "HF_ENDPOINT": "http://hub.invalid", "HF_TOKEN": "hf_bench"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*server_command(), "--port", "0", "--state-dir", str(state), "--workers", str(workers),
                                 "--runner", "tests.server_runners:instant", "--max-queued", str(bound),
                                 "--max-pending-per-owner", str(bound)], cwd=REPO_ROOT, env=env, stdout=out,
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
    pairs = [(f"bench-{i % 5}/model-{i:03d}", f"{i + 1:040x}") for i in range(args.pairs)]  # sha 0...0: "deleted"
    deliveries = [pairs[i % len(pairs)] for i in range(args.deliveries)]
    rng.shuffle(deliveries)

    with tempfile.TemporaryDirectory(prefix="webhook-load-") as tmp:
        proc, url, log = start_server(Path(tmp) / "state", args.workers, bound=args.pairs)
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
            log_before = log.stat().st_size
            flooded = await asyncio.wait_for(flood(url, args.flood), args.flood + args.deadline) if args.flood else None
            flood_log = log.stat().st_size - log_before
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
    if flooded:
        opened, sent, accepted = flooded
        print(f"flood                {opened} hostile connections in {args.flood:g} s; real deliveries answered 202: "
              f"{accepted} of {sent}; {flood_log / 1000:.1f} kB of log written meanwhile")
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
    parser.add_argument("--flood", type=float, default=20, help="seconds of the hostile phase (0: skip it)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
