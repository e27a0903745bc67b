"""Every PyGithub call the bot makes: a commit status (and optionally a commit comment) on the source commit.

Why one module: network I/O lives only here and in bot/hub.py, and the API URL and token are always passed in
(never read from the environment), so the same code serves the Action, the CLI and tests against the emulator.

Why nothing here raises for GitHub's failures: the Hub PR is the product; the status and comment are courtesies.
A missing permission, a revoked token or a GitHub outage must not turn a published PR into a failed job. Each
failure comes back as one readable sentence in `GitHubReport.errors` (and is logged); the front door decides how
to show it (the Action prints a `::warning::`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import requests
from github import Auth, Github, GithubException
from github.GithubObject import NotSet
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

CONTEXT = "hub-export-bot"  # the status context: one line on the commit, replaced by each new run
STATES = ("success", "failure", "pending", "error")
MAX_DESCRIPTION = 140  # GitHub refuses longer status descriptions with a 422
MAX_COMMENT = 65_000  # GitHub's limit is 65,536 characters
# Seconds to connect and to wait for each read of an answer (PyGithub takes one whole number for both). Without it, an
# API that accepts the connection and never answers would hold the run until the job is killed.
TIMEOUT = 30

# What PyGithub lets escape: its own exceptions for 4xx/5xx answers, and requests' for the transport, notably
# RetryError once a 5xx storm has used up the retries (see tests/emulators/github.py).
_FAILURES = (GithubException, requests.exceptions.RequestException)

_HINTS = {
    401: "the token was refused: pass `github-token: ${{ github.token }}` (the default) or a valid token",
    403: "the token may not do this",
    404: "the token cannot see this repository: check `GITHUB_REPOSITORY` and the token's repository access",
    422: "GitHub refused the request as invalid",
}


def make_retry(total: int = 3, backoff_factor: float = 0.5) -> Retry:
    """A small retry for 5xx answers, POST included, with exponential backoff (0 s, 1 s, 2 s by default).

    Why not PyGithub's default: it retries 10 times without pausing, which hammers an API that is already
    failing and still gives up within a second. Retrying a POST is safe here: a new status for the same
    context replaces the old one; a comment may be duplicated only if GitHub stored it and still answered 5xx.
    """
    return Retry(total=total, backoff_factor=backoff_factor, backoff_max=10,
                 status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=True,
                 respect_retry_after_header=True)


@dataclass
class GitHubReport:
    """What reached GitHub. `errors` holds one sentence per call that failed; empty means everything worked."""

    status: str | None = None  # the state GitHub recorded, None if no status was set
    comment_url: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def clip_description(text: str) -> str:
    """GitHub allows 140 characters in a status description; keep the start, which carries the counts."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


DEFAULT_RETRY = make_retry()  # urllib3 copies a Retry for every request, so one instance can be shared


def report_to_github(api_url: str, token: str, repo_full_name: str, sha: str, *, state: str, description: str,
                     target_url: str | None, comment_body: str | None,
                     retry: Retry | int | None = DEFAULT_RETRY, timeout: int = TIMEOUT) -> GitHubReport:
    """Set the `hub-export-bot` commit status on `sha` and, if `comment_body`, comment on the commit.

    `retry` defaults to `make_retry()`; pass None to fail fast. Never raises for GitHub's answers or the
    network: see `GitHubReport.errors`.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    report = GitHubReport()
    client = Github(base_url=api_url.rstrip("/"), auth=Auth.Token(token), seconds_between_requests=0,
                    seconds_between_writes=0, retry=retry, timeout=timeout,
                    lazy=True)
    with client:
        # lazy: no GET of the repository; the commit itself is fetched once, by the first call that needs its sha
        commit = client.get_repo(repo_full_name).get_commit(sha)
        try:
            status = commit.create_status(state, target_url=target_url or NotSet,
                                          description=clip_description(description), context=CONTEXT)
            report.status = status.state
        except _FAILURES as exc:
            report.errors.append(_explain(f"set the {CONTEXT} status on {repo_full_name}@{sha[:7]}", exc, api_url,
                                          "give the workflow `permissions: statuses: write`"))
        if comment_body:
            body = comment_body if len(comment_body) <= MAX_COMMENT else comment_body[:MAX_COMMENT] + "\n\n(truncated)"
            try:
                report.comment_url = commit.create_comment(body).html_url
            except _FAILURES as exc:
                report.errors.append(_explain(f"comment on {repo_full_name}@{sha[:7]}", exc, api_url,
                                              "give the workflow `permissions: contents: write`, or set "
                                              "`comment: false`"))
    for error in report.errors:
        log.warning("%s", error)
    return report


def _explain(action: str, exc: Exception, api_url: str, permission: str) -> str:
    """One sentence: what we tried, what GitHub (or the network) answered, and what to do about it."""
    if isinstance(exc, GithubException):
        data = exc.data if isinstance(exc.data, dict) else {}
        detail = data.get("message") or str(exc.data or "")
        details = [e.get("message") for e in data.get("errors") or [] if isinstance(e, dict) and e.get("message")]
        if details:
            detail = f"{detail}: {'; '.join(details)}"
        hint = _HINTS.get(exc.status) or ("GitHub is failing; re-run the job later" if (exc.status or 0) >= 500 else "")
        if exc.status == 403:
            hint = f"{hint}: {permission}"
        return f"could not {action}: GitHub answered {exc.status} {detail}" + (f" ({hint})" if hint else "")
    if isinstance(exc, requests.exceptions.RetryError):
        return f"could not {action}: {api_url} kept answering server errors after retries; re-run the job later"
    reason = str(exc)
    reason = reason if len(reason) <= 200 else reason[:199] + "…"
    return f"could not {action}: {api_url} is unreachable ({type(exc).__name__}: {reason})"
