"""The server's bounds, met as a stranger or a flood meets them: raw sockets and a real HTTP client against a real
uvicorn on 127.0.0.1. Idle and trickling connections, declared and stalled bodies, floods of refusals in the log, and
the queue's bounds (global, per owner, per repo, supersede, case)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.test_server_http import (REPO_ROOT, SECRET, assert_no_secrets, fresh, push, server,  # noqa: F401
                                    server_command, sha)

from bot.server.queue import QUEUED, RUNNING, SKIPPED


def address(proc) -> tuple[str, int]:
    host, port = proc.url.rsplit("//", 1)[1].split(":")
    return host, int(port)


def request_head(length: int | None = None, secret: str = SECRET, extra: str = "") -> bytes:
    head = f"POST /webhooks/hub HTTP/1.1\r\nHost: test\r\nX-Webhook-Secret: {secret}\r\n" \
           f"Content-Type: application/json\r\n{extra}"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


def exchange(proc, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send `data` on a new connection and read until the server closes it: (what it sent, seconds it took)."""
    started = time.monotonic()
    with socket.create_connection(address(proc), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := _recv(sock):
            received += chunk
    return received, time.monotonic() - started


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""
    except socket.timeout:
        raise AssertionError("the server kept the connection open") from None


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.startswith(b"{") else {}


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(1024):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# --- bodies ---------------------------------------------------------------------------------------------------------

def test_a_declared_100_mib_body_is_refused_before_reading_and_the_connection_closed(server):
    response, took = exchange(server, request_head(100 << 20) + b'{"event":')
    status, body = status_and_body(response)
    assert status == 413 and "larger than 1048576 bytes (--max-body-size)" in body["detail"]
    assert b"connection: close" in response.lower()
    assert took < 5  # answered at once, not after a body that never comes


def test_a_body_without_a_length_is_refused_with_411(server):
    response, _ = exchange(server, request_head(None) + b"{}")
    assert status_and_body(response)[0] == 411


def test_a_chunked_body_is_read(server):
    payload = json.dumps(push("acme/chunked", sha(700))).encode()
    chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    response, _ = exchange(server, request_head(None, extra="Transfer-Encoding: chunked\r\nConnection: close\r\n")
                           + chunked)
    assert status_and_body(response)[0] == 202


def test_small_limits_stalled_and_oversized_chunked_bodies(fresh):
    proc = fresh("--body-timeout", "1", "--max-body-size", "4K").start()
    response, took = exchange(proc, request_head(200) + b'{"event": {')
    status, body = status_and_body(response)
    assert status == 408 and "within 1 s (--body-timeout)" in body["detail"]
    assert 0.9 <= took < 8
    chunk = b"800\r\n" + b" " * 0x800 + b"\r\n"
    response, _ = exchange(proc, request_head(None, extra="Transfer-Encoding: chunked\r\n") + chunk * 3
                           + b"0\r\n\r\n")
    status, body = status_and_body(response)
    assert status == 413 and "larger than 4096 bytes" in body["detail"]
    # the same through an HTTP client library, as a sender would meet it
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        response = client.post("/webhooks/hub", content=b" " * 5000, headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 413 and response.headers["connection"] == "close"
    assert response.json()["detail"] == "body of 5000 bytes is larger than 4096 bytes (--max-body-size)"


def test_clients_that_vanish_mid_body_cost_no_traceback_and_few_log_lines(server):
    before = server.log.stat().st_size
    for _ in range(150):
        with socket.create_connection(address(server)) as sock:
            sock.sendall(request_head(5000) + b'{"event": {"action"')
    for _ in range(150):  # and wrong secrets, which are logged as a warning each
        with socket.create_connection(address(server)) as sock:
            sock.sendall(request_head(2, secret="wrong") + b"{}")
            _recv(sock)
    time.sleep(1)
    assert server.client.get("/healthz").status_code == 200
    grown = server.log.read_text()[before:]
    assert "Traceback" not in grown and "Exception in ASGI application" not in grown
    assert grown.count("disconnected before sending the whole body") <= 10
    assert grown.count("wrong secret") <= 10 and "more like this are dropped" in grown
    assert len(grown) < 10_000, len(grown)


# --- connections ----------------------------------------------------------------------------------------------------

def test_idle_and_trickling_connections_are_closed_and_deliveries_get_through(fresh):
    proc = fresh("--max-connections", "20", "--header-timeout", "1.5").start()
    idle = [socket.create_connection(address(proc)) for _ in range(40)]
    trickler = socket.create_connection(address(proc))
    stop = threading.Event()

    def trickle():  # a header byte every 0.3 s: each byte would restart uvicorn's keep-alive timer
        for byte in request_head(2):
            if stop.wait(0.3):
                return
            try:
                trickler.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # 41 silent connections, twice the limit: the longest idle ones are closed to make room for real requests
        assert proc.post(push("acme/model", sha(800))).status_code == 202
        assert all(closed_by_server(sock, within=6) for sock in idle)
        assert closed_by_server(trickler, within=6)
        assert proc.post(push("acme/model", sha(801))).status_code == 202
    finally:
        stop.set()
        for sock in [*idle, trickler]:
            sock.close()
    log = proc.log.read_text()
    assert 1 <= log.count("no complete request within 1.5 s (--header-timeout)") <= 10  # the trickler, at least
    assert log.count("closed the longest idle connection") <= 10
    assert log.count("Exceeded concurrency limit") <= 10
    assert "Traceback" not in log


def test_oversized_headers_are_refused(server):
    """h11 counts what it holds of an unfinished request head: 9 kB of headers that are still coming is too much."""
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(request_head(2)[:-2] + b"X-Padding: " + b"a" * 9000 + b"\r\n")
        time.sleep(0.3)
        sock.sendall(b"\r\n{}")
        response = b""
        while chunk := _recv(sock):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400")


# --- the queue's bounds ---------------------------------------------------------------------------------------------

def test_a_newer_push_supersedes_the_waiting_one_without_old_sha_whatever_the_case(fresh):
    proc = fresh("--shutdown-grace", "0").start()
    busy = proc.post(push("busy/sleep-30", sha(900))).json()["job_id"]
    proc.wait_state(busy, RUNNING)
    _thirty_pushes_to_one_repo(proc)
    assert proc.signal(signal.SIGTERM) == 0


def _thirty_pushes_to_one_repo(proc) -> None:
    """30 pushes to one repo, no oldSha, the repo id in varying case: one export waits, the rest are superseded."""
    pushes = []
    for i in range(30):
        delivery = push("Trainer/Model" if i % 2 else "trainer/model", sha(1000 + i))
        del delivery["updatedRefs"][0]["oldSha"]
        pushes.append(proc.post(delivery))
    assert all(r.status_code == 202 for r in pushes)
    queued = proc.client.get("/jobs", params={"state": QUEUED}).json()
    assert [(j["repo_id"].lower(), j["sha"]) for j in queued] == [("trainer/model", sha(1029))]
    skipped = proc.client.get("/jobs", params={"state": SKIPPED}).json()
    assert len(skipped) == 29 and all(j["result_status"] == "superseded" for j in skipped)
    again = proc.post(push("TRAINER/MODEL", sha(1029)))
    assert again.json() == {"status": "duplicate", "job_id": queued[0]["id"], "state": QUEUED}


def test_the_queue_is_bounded_globally_and_per_owner_with_a_reason_and_retry_after(fresh):
    proc = fresh("--max-queued", "4", "--max-pending-per-owner", "2", "--max-pending-per-repo", "1",
                 "--shutdown-grace", "0").start()
    busy = proc.post(push("busy/sleep-30", sha(900))).json()["job_id"]
    proc.wait_state(busy, RUNNING)
    _thirty_pushes_to_one_repo(proc)  # one waiting job, however many pushes

    # per repo: with one export allowed, a push to a repo whose export is running is refused
    refused = proc.post(push("Busy/sleep-30", sha(901)))
    assert refused.status_code == 429 and "--max-pending-per-repo 1" in refused.json()["reason"]

    # per owner: 2 pending; the owner is compared case-insensitively too
    assert proc.post(push("acme/a", sha(1100))).status_code == 202
    assert proc.post(push("acme/b", sha(1101))).status_code == 202
    refused = proc.post(push("ACME/c", sha(1102)))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    assert refused.json()["status"] == "refused" and "--max-pending-per-owner 2" in refused.json()["reason"]

    # globally: 4 waiting (trainer/model, acme/a, acme/b, other/x)
    assert proc.post(push("other/x", sha(1200))).status_code == 202
    full = proc.post(push("third/y", sha(1201)))
    assert full.status_code == 503 and full.headers["Retry-After"] == "60"
    assert "the queue is full" in full.json()["reason"]
    assert proc.client.get("/healthz").json()["queued"] == 4
    assert proc.signal(signal.SIGTERM) == 0
    assert_no_secrets(proc)


def test_a_push_to_a_repo_with_a_running_export_waits_for_it(fresh):
    proc = fresh("--workers", "2", "--shutdown-grace", "0").start()
    first = proc.post(push("acme/sleep-2", sha(1300))).json()["job_id"]
    proc.wait_state(first, RUNNING)
    second = proc.post(push("ACME/sleep-2", sha(1301))).json()["job_id"]
    time.sleep(1)
    assert proc.job(second)["state"] == QUEUED  # a second worker is free, but not for the same repo
    done = proc.wait_state(second, "done")
    assert done["started_at"] >= proc.job(first)["finished_at"]


# --- the limits are options -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--max-body-size", "lots"], "is not a size"),
    (["--max-connections", "0"], "must be positive"),
    (["--child-env", "WEBHOOK_SECRET"], "never passed to export processes"),
])
def test_bad_limits_are_usage_errors(fresh, options, message):
    proc = fresh()
    result = subprocess.run([*server_command(), *proc.options, *options], cwd=REPO_ROOT, env=proc.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
