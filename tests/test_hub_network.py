"""Network faults between the bot and the Hub (and GitHub): timeouts on every call, retries of the transport errors
of every huggingface_hub major version the dependency range admits, a commit retried only once it is known not to
have landed, and a comment that fails after a successful update reported as a warning. Against the Hub emulator
(the real huggingface_hub client over HTTP) and a socket that accepts connections and never answers."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from bot import hub as hub_module
from bot import publish as pub
from bot.errors import UnsafeCheckpointError, UsageError
from bot.github import report_to_github
from bot.hub import HubClient, HubTimeouts, HubUnavailable, RetryPolicy, transient
from tests.emulators.silent import SilentServer
from tests.test_publish import README, REPO, checkpoint_files, run, tiny_retrained, weight_downloads

SHORT = {hub_module.CONNECT_TIMEOUT_ENV: "0.5", hub_module.READ_TIMEOUT_ENV: "0.5"}


@pytest.fixture
def repo(hub, tiny):
    hub.create_repo(REPO, {**checkpoint_files(tiny("bert", "sequence-classification")), "README.md": README.encode()})
    return REPO


@pytest.fixture
def sleeps(monkeypatch):
    """The bot's backoff waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(hub_module, "DEFAULT_RETRY", RetryPolicy(sleep=waited.append))
    return waited


@pytest.fixture
def silent():
    with SilentServer() as server:
        yield server


def commit_posts(hub) -> int:
    return sum(1 for method, path in hub.requests if method == "POST" and "/commit/" in path)


# -- timeouts --------------------------------------------------------------------------------------------------------


def test_a_silent_hub_ends_the_cli_with_one_line_and_exit_1(silent):
    env = {**os.environ, "HF_ENDPOINT": silent.url, "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_XET": "1", **SHORT}
    proc = subprocess.run([sys.executable, "-m", "bot", "publish", REPO, "--format", "torchscript"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: the Hub did not answer while checking the token (ReadTimeout, 2 attempts); check HF_ENDPOINT and "
        "the network, or retry later"]
    assert silent.accepted >= 1 and "hf_test_token" not in proc.stderr


def test_every_hub_call_gives_up_on_a_silent_endpoint(silent, tmp_path, sleeps):
    # (downloads are left out: when nothing is cached, hf_hub_download retries a failed HEAD with its own fixed
    # 60 s timeout, five times; that bound is the client's, the run still ends)
    client = HubClient(silent.url, "hf_test_token", tmp_path, timeouts=HubTimeouts(connect=0.3, read=0.3))
    calls = {"identity": client.identity, "state": lambda: client.state(REPO, None),
             "read_text": lambda: client.read_text(REPO, "README.md", "main"),
             "pull_requests": lambda: client.pull_requests(REPO, "bot-user"),
             "comment": lambda: client.comment(REPO, 1, "hello"),
             "edit_description": lambda: client.edit_description(REPO, 1, "hello")}
    for name, call in calls.items():
        with pytest.raises(HubUnavailable, match="did not answer"):
            call()
    assert sleeps.count(0.5) == len(calls)  # each timed out twice: one retry, not four


def test_timeouts_come_from_the_environment_and_are_checked():
    assert HubTimeouts.from_environ({}) == HubTimeouts(10.0, 60.0)
    assert HubTimeouts.from_environ(SHORT) == HubTimeouts(0.5, 0.5)
    for value in ("soon", "0", "-1"):
        with pytest.raises(UsageError, match=hub_module.READ_TIMEOUT_ENV):
            HubTimeouts.from_environ({hub_module.READ_TIMEOUT_ENV: value})


def test_a_silent_github_api_is_reported_not_waited_for(silent):
    report = report_to_github(silent.url, "ghs_test_token", "acme/models", "a" * 40, state="success",
                              description="done", target_url=None, comment_body="hi", retry=None, timeout=1)
    assert not report.ok and len(report.errors) == 2
    assert all("is unreachable" in error and "Timeout" in error for error in report.errors)


# -- which failures are retried ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["hub-1.x-httpx", "hub-2.x-httpx2"])
def test_transport_errors_of_both_client_generations_are_transient(library):
    for error in (library.ConnectError("refused"), library.ReadTimeout("silent"),
                  library.RemoteProtocolError("dropped"), library.ReadError("reset")):
        assert transient(error), error
        wrapped = LocalEntryNotFoundError("the HEAD failed")  # how hf_hub_download reports it
        wrapped.__cause__ = error
        assert transient(wrapped)
    assert not transient(library.UnsupportedProtocol("ftp://"))


def test_only_retryable_statuses_are_transient():
    for status, expected in ((429, True), (503, True), (500, True), (404, False), (403, False), (412, False)):
        assert transient(HfHubHTTPError("x", response=httpx2.Response(status, request=httpx2.Request("GET", "http://hub")))) is expected
    assert not transient(ValueError("a bug"))


def test_dropped_connections_are_retried_then_explained(hub, repo, tmp_path, sleeps):
    hub.drop_next("GET", rf"^/api/models/{REPO}$|^/api/models/{REPO}/revision/", times=2)
    assert run(hub, tmp_path / "ok").status == pub.OPENED
    assert sleeps[:2] == [0.5, 1.0]
    hub.drop_next("GET", r"^/api/whoami", times=10)
    with pytest.raises(HubUnavailable, match=r"checking the token \(RemoteProtocolError, 5 attempts\)"):
        run(hub, tmp_path / "down")


# -- the commit and what follows it ----------------------------------------------------------------------------------


def test_a_429_on_the_commit_is_retried_and_the_export_kept(hub, repo, tmp_path, sleeps):
    hub.fail_next("POST", r"/commit/", 429)
    result = run(hub, tmp_path)
    assert result.status == pub.OPENED and len(hub.discussions(REPO)) == 1
    assert commit_posts(hub) == 2 and 0.5 in sleeps


def test_a_commit_whose_answer_was_lost_is_not_made_twice(hub, repo, tmp_path, sleeps):
    hub.drop_next("POST", r"/commit/", after=True)  # the PR is opened, the answer never arrives
    result = run(hub, tmp_path)
    assert (result.status, result.pr_num) == (pub.OPENED, 1)
    assert commit_posts(hub) == 1 and len(hub.discussions(REPO)) == 1


def test_a_pr_update_whose_answer_was_lost_is_not_pushed_twice(hub, repo, tmp_path, tiny, sleeps):
    run(hub, tmp_path / "first")
    hub.commit(REPO, {"model.safetensors": tiny_retrained(tiny, tmp_path)}, message="retrain")
    hub.drop_next("POST", r"/commit/refs%2Fpr%2F1", after=True)
    result = run(hub, tmp_path / "update")
    assert result.status == pub.UPDATED
    (pr,) = hub.discussions(REPO)
    assert [e["type"] for e in pr.events].count("commit") == 2 and len(pr.comments) == 1


def test_a_comment_that_fails_after_the_update_is_a_warning_not_a_failed_run(hub, repo, tmp_path, tiny, sleeps):
    run(hub, tmp_path / "first")
    retrained = tiny_retrained(tiny, tmp_path)
    hub.commit(REPO, {"model.safetensors": retrained}, message="retrain")
    hub.fail_next("POST", r"/discussions/1/comment$", 500, times=100)
    result = run(hub, tmp_path / "update")
    assert (result.status, result.exit_code) == (pub.UPDATED, 0)
    [warning] = result.warnings
    assert warning.startswith("the PR was updated, but could not comment on the PR")
    assert hub.discussions(REPO)[0].comments == []


def test_a_comment_is_retried_and_posted_once(hub, repo, tmp_path, tiny, sleeps):
    run(hub, tmp_path / "first")
    hub.commit(REPO, {"model.safetensors": tiny_retrained(tiny, tmp_path)}, message="retrain")
    hub.drop_next("POST", r"/discussions/1/comment$", after=True)  # posted, answer lost: not posted again
    result = run(hub, tmp_path / "update")
    assert result.status == pub.UPDATED and result.warnings == []
    assert len(hub.discussions(REPO)[0].comments) == 1


# -- checks before any work ------------------------------------------------------------------------------------------


def test_a_read_only_token_is_refused_before_exporting(hub, repo, tmp_path, monkeypatch):
    monkeypatch.setattr(pub, "run_export", lambda *a, **k: pytest.fail("exported with a read-only token"))
    with pytest.raises(UsageError, match="read-only") as err:
        run(hub, tmp_path, token="hf_read_token")
    assert err.value.exit_code == 2 and "write role" in str(err.value)
    assert weight_downloads(hub) == 0 and hub.discussions(REPO) == []
    monkeypatch.undo()
    assert run(hub, tmp_path / "dry", token="hf_read_token", dry_run=True).status == pub.DRY_RUN


def test_pickle_only_repos_are_refused_without_advice_publish_cannot_follow(hub, tmp_path):
    hub.create_repo(REPO, {"config.json": b'{"model_type": "bert"}', "pytorch_model.bin": b"pickle" * 100})
    with pytest.raises(UnsafeCheckpointError) as err:
        run(hub, tmp_path)
    message = str(err.value)
    assert "pytorch_model.bin" in message and "safetensors" in message and "--allow-pickle" not in message
    assert not [p for m, p in hub.requests if p.endswith("pytorch_model.bin") or p.startswith("/lfs/")]
