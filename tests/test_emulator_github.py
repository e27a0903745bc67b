"""The GitHub emulator, exercised through the real PyGithub client.

Why: the bot's GitHub tests are only as good as the emulator, so these pin down both what the emulator
answers and what PyGithub (2.10) does with it — notably retries and which exceptions reach the caller.
"""

import json

import pytest
import requests
from github import Auth, BadCredentialsException, Github, GithubException, UnknownObjectException

from tests.emulators.github import read_github_output

REPO = "acme/models"


@pytest.fixture
def sha(gh):
    return gh.add_repo(REPO)


def client(gh, token="ghs_test_token", **kwargs):
    """Spelled out (not gh.client()) once, to show the exact construction the bot must use."""
    return Github(base_url=gh.url, auth=Auth.Token(token), seconds_between_requests=0, seconds_between_writes=0, **kwargs)


def test_get_repo_returns_urls_on_the_emulator(gh, sha):
    repo = client(gh).get_repo(REPO)
    assert (repo.full_name, repo.default_branch, repo.owner.login) == (REPO, "main", "acme")
    assert repo.url == f"{gh.url}/repos/{REPO}"
    assert repo.html_url.startswith(gh.url)
    assert ("GET", f"/repos/{REPO}") in gh.requests


def test_get_commit_by_sha_and_by_branch(gh, sha):
    repo = client(gh).get_repo(REPO)
    commit = repo.get_commit(sha)
    assert (commit.sha, commit.commit.message) == (sha, "Initial commit")
    assert commit.url == f"{gh.url}/repos/{REPO}/commits/{sha}"
    second = gh.add_commit(REPO, message="Export model")
    assert repo.get_commit("main").sha == second
    assert repo.get_commit(second).parents[0].sha == sha


def test_create_status_is_recorded_and_listed(gh, sha):
    commit = client(gh).get_repo(REPO).get_commit(sha)
    status = commit.create_status("pending", target_url="https://hf.co/x", description="exporting", context="export")
    assert (status.state, status.context, status.creator.login) == ("pending", "export", "github-actions[bot]")
    commit.create_status("success", description="done", context="export")
    commit.create_status("failure")

    recorded = gh.statuses[(REPO, sha)]
    assert [s["state"] for s in recorded] == ["pending", "success", "failure"]
    assert recorded[0]["target_url"] == "https://hf.co/x"
    assert recorded[2]["context"] == "default"
    assert [s.state for s in commit.get_statuses()] == ["failure", "success", "pending"]  # newest first

    combined = commit.get_combined_status()
    assert (combined.state, combined.total_count, combined.sha) == ("failure", 2, sha)
    assert {s.context: s.state for s in combined.statuses} == {"export": "success", "default": "failure"}


def test_combined_status_without_statuses_is_pending(gh, sha):
    assert client(gh).get_repo(REPO).get_commit(sha).get_combined_status().state == "pending"


def test_status_validation_answers_422(gh, sha):
    commit = client(gh).get_repo(REPO).get_commit(sha)
    with pytest.raises(GithubException) as too_long:
        commit.create_status("success", description="x" * 141)
    assert too_long.value.status == 422
    assert "140" in too_long.value.data["errors"][0]["message"]
    with pytest.raises(GithubException) as bad_state:
        commit.create_status("done")
    assert bad_state.value.status == 422
    commit.create_status("success", description="x" * 140)
    assert len(gh.statuses[(REPO, sha)]) == 1


def test_unknown_sha_answers_422(gh, sha):
    repo = client(gh).get_repo(REPO)
    with pytest.raises(GithubException) as error:
        repo.get_commit("f" * 40)  # PyGithub 2.10 is eager by default: get_* fetches at once
    assert error.value.status == 422


def test_check_run_create_and_edit(gh, sha):
    repo = client(gh).get_repo(REPO)
    run = repo.create_check_run("hub-export", sha, status="in_progress", output={"title": "Export", "summary": "started"})
    assert (run.status, run.conclusion, run.head_sha) == ("in_progress", None, sha)
    assert run.url == f"{gh.url}/repos/{REPO}/check-runs/{run.id}"

    run.edit(conclusion="success", output={"title": "Export", "summary": "pushed to the Hub"})
    assert (run.status, run.conclusion, run.output.summary) == ("completed", "success", "pushed to the Hub")
    assert gh.check_runs[run.id]["status"] == "completed"
    assert gh.check_runs[run.id]["completed_at"]
    assert repo.get_check_run(run.id).conclusion == "success"

    with pytest.raises(GithubException) as error:
        repo.create_check_run("hub-export", sha, status="completed")
    assert error.value.status == 422


def test_check_runs_need_an_app_token(gh, sha):
    gh.tokens["ghp_personal"] = "alice"
    with pytest.raises(GithubException) as error:
        client(gh, "ghp_personal").get_repo(REPO).create_check_run("hub-export", sha)
    assert error.value.status == 403
    assert gh.check_runs == {}


def test_commit_comment_create_and_list(gh, sha):
    commit = client(gh).get_repo(REPO).get_commit(sha)
    comment = commit.create_comment("Exported to https://hf.co/acme/models")
    assert (comment.body, comment.commit_id, comment.user.login) == ("Exported to https://hf.co/acme/models", sha, "github-actions[bot]")
    assert [c.body for c in commit.get_comments()] == [comment.body]
    assert gh.commit_comments[(REPO, sha)][0]["id"] == comment.id


def test_pull_request_and_issue_comment(gh, sha):
    gh.add_commit(REPO, message="Add weights", branch="export")
    repo = client(gh).get_repo(REPO)
    pull = repo.create_pull(base="main", head="export", title="Export", body="automated")
    assert (pull.number, pull.head.ref, pull.base.ref) == (1, "export", "main")
    assert pull.issue_url == f"{gh.url}/repos/{REPO}/issues/1"
    comment = pull.create_issue_comment("done")
    assert [c.body for c in repo.get_pull(1).get_issue_comments()] == ["done"]
    assert gh.issue_comments[(REPO, 1)][0]["id"] == comment.id


def test_bad_or_missing_token_answers_401(gh, sha):
    with pytest.raises(BadCredentialsException):
        client(gh, "ghs_wrong").get_repo(REPO)
    with pytest.raises(GithubException) as anonymous:  # "Requires authentication" is not BadCredentials
        Github(base_url=gh.url, seconds_between_requests=0, seconds_between_writes=0).get_repo(REPO)
    assert anonymous.value.status == 401
    assert anonymous.value.data["documentation_url"]


def test_unknown_repo_answers_404(gh, sha):
    with pytest.raises(UnknownObjectException) as error:
        client(gh).get_repo("acme/missing")
    assert error.value.data["message"] == "Not Found"


def test_read_only_token_can_read_but_not_write(gh, sha):
    gh.read_only_tokens.add("ghs_test_token")
    commit = client(gh).get_repo(REPO).get_commit(sha)
    with pytest.raises(GithubException) as error:
        commit.create_status("success")
    assert error.value.status == 403
    assert error.value.data["message"] == "Resource not accessible by integration"
    assert gh.requests.count(("POST", f"/repos/{REPO}/statuses/{sha}")) == 1  # a plain 403 is not retried


def test_get_user_with_personal_and_installation_tokens(gh):
    gh.tokens["ghp_personal"] = "alice"
    assert client(gh, "ghp_personal").get_user().login == "alice"
    with pytest.raises(GithubException) as error:
        client(gh).get_user().login  # get_user() itself is lazy; the attribute triggers GET /user
    assert error.value.status == 403


def test_single_500_is_retried_transparently_by_pygithub(gh, sha):
    """PyGithub's default GithubRetry retries 5xx (POST included) with no backoff, so one 500 is invisible."""
    commit = client(gh).get_repo(REPO).get_commit(sha)
    gh.fail_next("POST", r"/statuses/", 500)
    assert commit.create_status("success").state == "success"
    assert gh.requests.count(("POST", f"/repos/{REPO}/statuses/{sha}")) == 2
    assert len(gh.statuses[(REPO, sha)]) == 1


def test_persistent_500_surfaces_as_requests_retry_error(gh, sha):
    """After 10 retries PyGithub lets requests' RetryError escape: it is NOT a GithubException."""
    commit = client(gh).get_repo(REPO).get_commit(sha)
    gh.fail_next("POST", r"/statuses/", 500, times=100)
    with pytest.raises(requests.exceptions.RetryError):
        commit.create_status("success")
    assert gh.requests.count(("POST", f"/repos/{REPO}/statuses/{sha}")) == 11
    assert gh.statuses[(REPO, sha)] == []


def test_500_without_retries_raises_github_exception(gh, sha):
    commit = client(gh, retry=None).get_repo(REPO).get_commit(sha)
    gh.fail_next("POST", r"/statuses/", 502)
    with pytest.raises(GithubException) as error:
        commit.create_status("success")
    assert error.value.status == 502
    assert commit.create_status("success").state == "success"  # the fault is used up


def test_injected_403_is_not_retried(gh, sha):
    repo = client(gh).get_repo(REPO)
    gh.fail_next("POST", r"/check-runs$", 403)
    with pytest.raises(GithubException) as error:
        repo.create_check_run("hub-export", sha)
    assert error.value.status == 403
    assert gh.requests.count(("POST", f"/repos/{REPO}/check-runs")) == 1


def test_client_helper_and_push_env(gh, sha, tmp_path):
    assert gh.client().get_repo(REPO).get_commit(sha).sha == sha
    env = gh.push_env(REPO, tmp_path)
    event = json.loads((tmp_path / "event.json").read_text())
    assert (env["GITHUB_SHA"], env["GITHUB_REF"], env["GITHUB_API_URL"]) == (sha, "refs/heads/main", gh.url)
    assert (event["after"], event["head_commit"]["id"], event["repository"]["full_name"]) == (sha, sha, REPO)
    assert "GITHUB_TOKEN" not in env

    with open(env["GITHUB_OUTPUT"], "a") as output:
        output.write("sha=abc\nsummary<<EOF\nline 1\nline 2\nEOF\n")
    assert read_github_output(env["GITHUB_OUTPUT"]) == {"sha": "abc", "summary": "line 1\nline 2"}
