"""A small GitHub REST API emulator that the real PyGithub client can talk to over HTTP.

Why: the bot reports results to GitHub (commit statuses, check runs, commit / PR comments). Mocking
PyGithub objects would only test our assumptions about PyGithub; serving real HTTP on 127.0.0.1 lets the
unmodified client build its requests, follow the ``url`` fields we return and raise its own exceptions.

Usage::

    with GitHubEmulator() as gh:
        sha = gh.add_repo("acme/models")
        client = gh.client()                      # PyGithub, no throttling
        client.get_repo("acme/models").get_commit(sha).create_status("success")
        assert gh.statuses[("acme/models", sha)][0]["state"] == "success"

Emulator choices that differ from, or cannot be checked against, the real GitHub (kept in one place):

- Every request must carry a known token (``Authorization: token X`` or ``Bearer X``); real GitHub lets
  anonymous clients read public repositories. No token -> 401 "Requires authentication", unknown -> 401
  "Bad credentials".
- Tokens starting with ``ghs_`` behave like GitHub App installation tokens (the Actions ``GITHUB_TOKEN``):
  only they may create check runs, and they get 403 on ``GET /user``. Other tokens act as personal tokens.
- Commits must be known (``add_repo`` / ``add_commit``); an unknown SHA answers 422 "No commit found for SHA".
- Error texts for check-run and pull-request validation are approximations; status validation (state list,
  140-character description) follows GitHub's documented rules.
- ``html_url`` fields use the emulator's base URL too (the emulator doubles as GITHUB_SERVER_URL).
- One page per list: no pagination ``Link`` headers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from collections import defaultdict
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

DOCS_URL = "https://docs.github.com/rest"
STATUS_STATES = {"error", "failure", "pending", "success"}
CHECK_STATUSES = {"queued", "in_progress", "completed"}
CHECK_CONCLUSIONS = {"action_required", "cancelled", "failure", "neutral", "success", "skipped", "timed_out"}
DEFAULT_TOKEN = "ghs_test_token"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """Raised by a route to answer with GitHub's error JSON: {message, documentation_url, status[, errors]}."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "documentation_url": DOCS_URL, "status": str(self.status)}
        if self.errors:
            body["errors"] = self.errors
        return body


def _invalid(resource: str, field: str, message: str) -> ApiError:
    """GitHub's 422 shape for a field that failed validation."""
    return ApiError(422, "Validation Failed", [{"resource": resource, "code": "custom", "field": field, "message": message}])


def read_github_output(path: str | Path) -> dict[str, str]:
    """Parse a GITHUB_OUTPUT file (``name=value`` lines and ``name<<DELIM`` ... ``DELIM`` blocks)."""
    outputs: dict[str, str] = {}
    lines = iter(Path(path).read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            outputs[name] = "\n".join(itertools.takewhile(lambda value: value != delimiter, lines))
        elif "=" in line:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs


def _parse_json(body: bytes) -> dict[str, Any]:
    """Request bodies are JSON objects; anything else gets GitHub's 400 "Problems parsing JSON"."""
    try:
        payload = json.loads(body) if body else {}
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ApiError(400, "Problems parsing JSON")
    return payload


class GitHubEmulator:
    """A real HTTP server on 127.0.0.1 answering the subset of the GitHub REST API the bot uses.

    Recorded state (plain dicts, shaped like GitHub's JSON answers, for assertions):
      statuses[(repo, sha)]        commit statuses, oldest first (the API lists newest first)
      check_runs[id]               check runs in their current state (after PATCHes)
      commit_comments[(repo, sha)] commit comments, oldest first
      pulls[(repo, number)]        pull requests; issue_comments[(repo, number)] their conversation comments
      requests                     every (method, path) received, including failed and retried ones
      errors                       exceptions raised inside the emulator itself (answered as 500); assert empty
    """

    def __init__(self) -> None:
        self.url = ""
        self.tokens: dict[str, str] = {DEFAULT_TOKEN: "github-actions[bot]"}
        self.read_only_tokens: set[str] = set()
        self.repos: dict[str, dict[str, Any]] = {}
        self.commits: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.check_runs: dict[int, dict[str, Any]] = {}
        self.commit_comments: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.pulls: dict[tuple[str, int], dict[str, Any]] = {}
        self.issue_comments: defaultdict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self.requests: list[tuple[str, str]] = []
        self.errors: list[Exception] = []
        self._faults: list[dict[str, Any]] = []
        self._ids = itertools.count(1001)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> GitHubEmulator:
        """Listen on an ephemeral port; ``self.url`` becomes the API base URL (no /api/v3 suffix)."""
        handler = type("Handler", (_Handler,), {"emulator": self})  # one handler class per emulator
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="github-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; recorded state stays readable for assertions."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> GitHubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup helpers -----------------------------------------------------------------------------------

    def add_repo(self, full_name: str, default_branch: str = "main", private: bool = False) -> str:
        """Create a repository with one commit on ``default_branch``; return that commit's SHA."""
        owner, name = full_name.split("/")
        with self._lock:
            self.repos[full_name.lower()] = {
                "full_name": full_name, "owner": owner, "name": name, "id": next(self._ids),
                "default_branch": default_branch, "private": private, "branches": {}, "issue_numbers": itertools.count(1),
            }
            return self.add_commit(full_name, message="Initial commit", branch=default_branch)

    def add_commit(self, full_name: str, sha: str | None = None, message: str = "Update", branch: str | None = None) -> str:
        """Add a commit on ``branch`` (default branch if None; created from it if missing); return its SHA."""
        with self._lock:
            repo = self._repo(full_name)
            branch = branch or repo["default_branch"]
            parent = repo["branches"].get(branch) or repo["branches"].get(repo["default_branch"])
            sha = sha or hashlib.sha1(f"{full_name}:{next(self._ids)}:{message}".encode()).hexdigest()
            self.commits[(repo["full_name"], sha)] = {"sha": sha, "message": message, "parent": parent, "date": _now()}
            repo["branches"][branch] = sha
            return sha

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1,
                  message: str | None = None, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests whose method matches and whose path (no query) matches
        ``re.search(path_regex)`` with ``status`` and GitHub's error JSON, without touching any state.
        Why: the bot must report GitHub failures, not crash on them; this injects them on demand."""
        defaults = {403: "Resource not accessible by integration", 404: "Not Found", 422: "Validation Failed"}
        with self._lock:
            self._faults.append({
                "method": method.upper(), "regex": re.compile(path_regex), "status": status, "times": times,
                "message": message or defaults.get(status, "Server Error"), "headers": headers or {},
            })

    def client(self, token: str = DEFAULT_TOKEN, **kwargs: Any) -> Any:
        """A PyGithub ``Github`` pointed at the emulator with throttling off (PyGithub otherwise sleeps
        0.25 s per request and 1 s per write). Extra kwargs (e.g. ``retry=0``) go to ``Github``."""
        from github import Auth, Github

        kwargs.setdefault("seconds_between_requests", 0)
        kwargs.setdefault("seconds_between_writes", 0)
        return Github(base_url=self.url, auth=Auth.Token(token), **kwargs)

    def push_env(self, full_name: str, directory: str | Path, sha: str | None = None) -> dict[str, str]:
        """Environment of a GitHub Actions job triggered by a push of ``sha`` (default: branch head) to the
        default branch, with the API and server URLs pointing here. Files (event JSON, GITHUB_OUTPUT,
        GITHUB_STEP_SUMMARY, workspace, RUNNER_TEMP) are created under ``directory``. Like Actions, no
        token is included: add it under whatever name the action passes it (``env:``)."""
        repo = self._repo(full_name)
        branch = repo["default_branch"]
        sha = sha or repo["branches"][branch]
        commit = self.commits[(repo["full_name"], sha)]
        directory = Path(directory)
        for sub in ("workspace", "runner_temp"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        event = {
            "ref": f"refs/heads/{branch}",
            "before": commit["parent"] or "0" * 40,
            "after": sha,
            "repository": self._repo_json(repo),
            "pusher": {"name": "octocat", "email": "octocat@example.com"},
            "head_commit": {
                "id": sha, "tree_id": hashlib.sha1(sha.encode()).hexdigest(), "message": commit["message"],
                "timestamp": commit["date"], "url": f"{self.url}/{repo['full_name']}/commit/{sha}",
                "author": {"name": "Octo Cat", "email": "octocat@example.com", "username": "octocat"},
                "committer": {"name": "Octo Cat", "email": "octocat@example.com", "username": "octocat"},
            },
        }
        event["commits"] = [event["head_commit"]]
        (directory / "event.json").write_text(json.dumps(event))
        for name in ("github_output", "step_summary"):
            (directory / name).touch()
        return {
            "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "push",
            "GITHUB_EVENT_PATH": str(directory / "event.json"),
            "GITHUB_REPOSITORY": repo["full_name"], "GITHUB_REPOSITORY_OWNER": repo["owner"],
            "GITHUB_SHA": sha, "GITHUB_REF": f"refs/heads/{branch}", "GITHUB_REF_NAME": branch,
            "GITHUB_REF_TYPE": "branch", "GITHUB_ACTOR": "octocat", "GITHUB_RUN_ID": "1", "GITHUB_RUN_NUMBER": "1",
            "GITHUB_WORKSPACE": str(directory / "workspace"), "RUNNER_TEMP": str(directory / "runner_temp"),
            "GITHUB_OUTPUT": str(directory / "github_output"), "GITHUB_STEP_SUMMARY": str(directory / "step_summary"),
            "GITHUB_API_URL": self.url, "GITHUB_SERVER_URL": self.url, "GITHUB_GRAPHQL_URL": f"{self.url}/graphql",
        }

    # -- request dispatch (called from server threads) -------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        """Record, then fault injection, then auth, then route: (status, JSON answer, extra headers)."""
        path = urlsplit(raw_path).path.rstrip("/") or "/"
        with self._lock:
            self.requests.append((method, path))
            for fault in self._faults:
                if fault["times"] > 0 and fault["method"] == method and fault["regex"].search(path):
                    fault["times"] -= 1
                    return fault["status"], ApiError(fault["status"], fault["message"]).body(), fault["headers"]
            try:
                token = self._authenticate(headers.get("Authorization", ""), method)
                for route_method, pattern, route in _ROUTES:
                    match = pattern.fullmatch(path)
                    if match and route_method == method:
                        args = {key: unquote(value) for key, value in match.groupdict().items()}
                        status, answer = route(self, token, _parse_json(body), **args)
                        return status, answer, {}
                raise ApiError(404, "Not Found")
            except ApiError as error:
                return error.status, error.body(), {}
            except Exception as error:  # an emulator bug: keep it visible to the test, answer like GitHub's 500
                self.errors.append(error)
                return 500, ApiError(500, f"Emulator error: {error!r}").body(), {}

    def _authenticate(self, authorization: str, method: str) -> str:
        scheme, _, token = authorization.partition(" ")
        if not token or scheme.lower() not in ("token", "bearer"):
            raise ApiError(401, "Requires authentication")
        if token not in self.tokens:
            raise ApiError(401, "Bad credentials")
        if method != "GET" and token in self.read_only_tokens:
            raise ApiError(403, "Resource not accessible by integration")
        return token

    # -- JSON builders -----------------------------------------------------------------------------------

    def _repo(self, full_name: str) -> dict[str, Any]:
        try:
            return self.repos[full_name.lower()]
        except KeyError:
            raise ApiError(404, "Not Found") from None

    def _sha(self, repo: dict[str, Any], ref: str) -> str:
        """Resolve a SHA (full or 7+ char prefix) or branch name like GitHub does, else 422."""
        sha = repo["branches"].get(ref.removeprefix("refs/heads/"))
        if sha:
            return sha
        found = [s for (name, s) in self.commits if name == repo["full_name"] and len(ref) >= 7 and s.startswith(ref)]
        if len(found) != 1:
            raise ApiError(422, f"No commit found for SHA: {ref}")
        return found[0]

    def _user_json(self, login: str) -> dict[str, Any]:
        bot = login.endswith("[bot]")
        return {
            "login": login, "id": int(hashlib.sha1(login.encode()).hexdigest()[:8], 16), "node_id": f"U_{login}",
            "type": "Bot" if bot else "User", "site_admin": False,
            "url": f"{self.url}/users/{quote(login)}", "html_url": f"{self.url}/{'apps/' if bot else ''}{quote(login.removesuffix('[bot]'))}",
            "avatar_url": f"{self.url}/avatars/{quote(login)}",
        }

    def _repo_json(self, repo: dict[str, Any]) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo['full_name']}"
        owner = self._user_json(repo["owner"]) | {"name": repo["owner"]}
        return {
            "id": repo["id"], "node_id": f"R_{repo['id']}", "name": repo["name"], "full_name": repo["full_name"],
            "owner": owner, "private": repo["private"], "visibility": "private" if repo["private"] else "public",
            "default_branch": repo["default_branch"], "url": api, "html_url": f"{self.url}/{repo['full_name']}",
            "clone_url": f"{self.url}/{repo['full_name']}.git", "statuses_url": f"{api}/statuses/{{sha}}",
            "commits_url": f"{api}/commits{{/sha}}", "pulls_url": f"{api}/pulls{{/number}}",
            "issues_url": f"{api}/issues{{/number}}", "fork": False, "archived": False,
            "created_at": "2024-01-01T00:00:00Z", "updated_at": _now(), "pushed_at": _now(),
        }

    def _commit_json(self, repo: dict[str, Any], sha: str) -> dict[str, Any]:
        commit = self.commits[(repo["full_name"], sha)]
        api, html = f"{self.url}/repos/{repo['full_name']}", f"{self.url}/{repo['full_name']}"
        person = {"name": "Octo Cat", "email": "octocat@example.com", "date": commit["date"]}
        parents = [commit["parent"]] if commit["parent"] else []
        return {
            "sha": sha, "node_id": f"C_{sha}", "url": f"{api}/commits/{sha}", "html_url": f"{html}/commit/{sha}",
            "comments_url": f"{api}/commits/{sha}/comments",
            "commit": {
                "url": f"{api}/git/commits/{sha}", "message": commit["message"], "author": person, "committer": person,
                "tree": {"sha": hashlib.sha1(sha.encode()).hexdigest(), "url": f"{api}/git/trees/{sha}"},
                "comment_count": len(self.commit_comments[(repo["full_name"], sha)]),
            },
            "author": None, "committer": None,
            "parents": [{"sha": p, "url": f"{api}/commits/{p}", "html_url": f"{html}/commit/{p}"} for p in parents],
            "stats": {"additions": 0, "deletions": 0, "total": 0}, "files": [],
        }

    def _new_id(self) -> tuple[int, str]:
        """A fresh object id and the creation timestamp that goes with it."""
        return next(self._ids), _now()


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP to ``GitHubEmulator.handle``. HTTP/1.1 so PyGithub's session keeps its connection;
    no Nagle, or headers and body sent in two writes stall ~40 ms per request on delayed ACKs."""

    emulator: GitHubEmulator
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer, extra = self.emulator.handle(self.command, self.path, self.headers, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-RateLimit-Limit", "5000")
        self.send_header("X-RateLimit-Remaining", "4999")
        self.send_header("X-RateLimit-Reset", str(int(datetime.now(timezone.utc).timestamp()) + 3600))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; ``GitHubEmulator.requests`` records traffic instead."""


# -- routes: each takes (emulator, token, json_body, **path_groups) and returns (status, json) -----------


def _get_user(gh: GitHubEmulator, token: str, body: Any) -> tuple[int, Any]:
    if token.startswith("ghs_"):  # installation tokens (GITHUB_TOKEN) cannot read /user on GitHub
        raise ApiError(403, "Resource not accessible by integration")
    return 200, gh._user_json(gh.tokens[token])


def _get_repo(gh: GitHubEmulator, token: str, body: Any, repo: str) -> tuple[int, Any]:
    return 200, gh._repo_json(gh._repo(repo))


def _get_commit(gh: GitHubEmulator, token: str, body: Any, repo: str, ref: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    return 200, gh._commit_json(r, gh._sha(r, ref))


def _create_status(gh: GitHubEmulator, token: str, body: Any, repo: str, sha: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    sha = gh._sha(r, sha)
    if body.get("state") not in STATUS_STATES:
        raise _invalid("Status", "state", "state is not included in the list")
    description = body.get("description")
    if description is not None and len(description) > 140:
        raise _invalid("Status", "description", "description is too long (maximum is 140 characters)")
    number, now = gh._new_id()
    status = {
        "url": f"{gh.url}/repos/{r['full_name']}/statuses/{sha}", "id": number, "node_id": f"SC_{number}",
        "avatar_url": f"{gh.url}/avatars/{quote(gh.tokens[token])}", "state": body["state"],
        "description": description, "target_url": body.get("target_url"), "context": body.get("context") or "default",
        "created_at": now, "updated_at": now, "creator": gh._user_json(gh.tokens[token]),
    }
    gh.statuses[(r["full_name"], sha)].append(status)
    return 201, status


def _list_statuses(gh: GitHubEmulator, token: str, body: Any, repo: str, ref: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    return 200, list(reversed(gh.statuses[(r["full_name"], gh._sha(r, ref))]))


def _combined_status(gh: GitHubEmulator, token: str, body: Any, repo: str, ref: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    sha = gh._sha(r, ref)
    latest: dict[str, dict[str, Any]] = {}
    for status in gh.statuses[(r["full_name"], sha)]:
        latest[status["context"]] = status
    states = {status["state"] for status in latest.values()}
    state = "failure" if states & {"error", "failure"} else "pending" if not states or "pending" in states else "success"
    api = f"{gh.url}/repos/{r['full_name']}"
    return 200, {
        "state": state, "statuses": list(latest.values()), "sha": sha, "total_count": len(latest),
        "repository": gh._repo_json(r), "commit_url": f"{api}/commits/{sha}", "url": f"{api}/commits/{sha}/status",
    }


def _apply_check_run(run: dict[str, Any], body: dict[str, Any]) -> None:
    """Validate and merge create/update fields; a conclusion implies status "completed" (as on GitHub)."""
    for field in ("name", "details_url", "external_id", "started_at", "completed_at"):
        if field in body:
            run[field] = body[field]
    if "status" in body:
        if body["status"] not in CHECK_STATUSES:
            raise _invalid("CheckRun", "status", f"status is not included in the list: {body['status']}")
        run["status"] = body["status"]
    if body.get("conclusion") is not None:
        if body["conclusion"] not in CHECK_CONCLUSIONS:
            raise _invalid("CheckRun", "conclusion", f"conclusion is not included in the list: {body['conclusion']}")
        run["conclusion"], run["status"] = body["conclusion"], "completed"
    if run["status"] == "completed":
        if run["conclusion"] is None:
            raise _invalid("CheckRun", "conclusion", "conclusion must be provided when status is completed")
        run["completed_at"] = run["completed_at"] or _now()
    if "output" in body:
        output = body["output"]
        if not output.get("title") or not output.get("summary"):
            raise _invalid("CheckRun", "output", "output requires title and summary")
        if max(len(output.get("summary") or ""), len(output.get("text") or "")) > 65535:
            raise _invalid("CheckRun", "output", "output summary and text are limited to 65535 characters")
        run["output"].update({key: output.get(key) for key in ("title", "summary", "text")})
        run["output"]["annotations_count"] += len(output.get("annotations") or [])


def _create_check_run(gh: GitHubEmulator, token: str, body: Any, repo: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    if not token.startswith("ghs_"):
        raise ApiError(403, "You must authenticate via a GitHub App.")
    for field in ("name", "head_sha"):
        if not body.get(field):
            raise ApiError(422, f'Invalid request.\n\n"{field}" wasn\'t supplied.')
    sha = gh._sha(r, body["head_sha"])
    number, now = gh._new_id()
    api = f"{gh.url}/repos/{r['full_name']}"
    run = {
        "id": number, "node_id": f"CR_{number}", "head_sha": sha, "name": body["name"], "external_id": "",
        "url": f"{api}/check-runs/{number}", "html_url": f"{gh.url}/{r['full_name']}/runs/{number}",
        "details_url": None, "status": "queued", "conclusion": None, "started_at": now, "completed_at": None,
        "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                   "annotations_url": f"{api}/check-runs/{number}/annotations"},
        "check_suite": {"id": number + 500000}, "pull_requests": [],
        "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions", "node_id": "A_15368",
                "html_url": f"{gh.url}/apps/github-actions"},
    }
    _apply_check_run(run, body)
    gh.check_runs[number] = run
    return 201, run


def _find_check_run(gh: GitHubEmulator, repo: str, id: str) -> dict[str, Any]:
    run = gh.check_runs.get(int(id))
    if run is None or not run["url"].startswith(f"{gh.url}/repos/{gh._repo(repo)['full_name']}/"):
        raise ApiError(404, "Not Found")
    return run


def _update_check_run(gh: GitHubEmulator, token: str, body: Any, repo: str, id: str) -> tuple[int, Any]:
    if not token.startswith("ghs_"):
        raise ApiError(403, "You must authenticate via a GitHub App.")
    run = _find_check_run(gh, repo, id)
    updated = json.loads(json.dumps(run))  # validate on a copy so a 422 leaves the run unchanged
    _apply_check_run(updated, body)
    run.update(updated)
    return 200, run


def _get_check_run(gh: GitHubEmulator, token: str, body: Any, repo: str, id: str) -> tuple[int, Any]:
    return 200, _find_check_run(gh, repo, id)


def _create_commit_comment(gh: GitHubEmulator, token: str, body: Any, repo: str, ref: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    sha = gh._sha(r, ref)
    if not body.get("body"):
        raise _invalid("CommitComment", "body", "body can't be blank")
    number, now = gh._new_id()
    comment = {
        "id": number, "node_id": f"CC_{number}", "url": f"{gh.url}/repos/{r['full_name']}/comments/{number}",
        "html_url": f"{gh.url}/{r['full_name']}/commit/{sha}#commitcomment-{number}", "body": body["body"],
        "path": body.get("path"), "position": body.get("position"), "line": body.get("line"), "commit_id": sha,
        "user": gh._user_json(gh.tokens[token]), "author_association": "NONE", "created_at": now, "updated_at": now,
    }
    gh.commit_comments[(r["full_name"], sha)].append(comment)
    return 201, comment


def _list_commit_comments(gh: GitHubEmulator, token: str, body: Any, repo: str, ref: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    return 200, gh.commit_comments[(r["full_name"], gh._sha(r, ref))]


def _branch_json(gh: GitHubEmulator, r: dict[str, Any], branch: str) -> dict[str, Any]:
    return {"label": f"{r['owner']}:{branch}", "ref": branch, "sha": r["branches"][branch],
            "user": gh._user_json(r["owner"]), "repo": gh._repo_json(r)}


def _create_pull(gh: GitHubEmulator, token: str, body: Any, repo: str) -> tuple[int, Any]:
    r = gh._repo(repo)
    head, base = (body.get("head") or "").split(":")[-1], body.get("base") or ""
    if not body.get("title"):
        raise _invalid("PullRequest", "title", "title can't be blank")
    for field, branch in (("head", head), ("base", base)):
        if branch not in r["branches"]:
            raise _invalid("PullRequest", field, "invalid")
    if r["branches"][head] == r["branches"][base]:
        raise _invalid("PullRequest", "head", f"No commits between {base} and {head}")
    number = next(r["issue_numbers"])
    pull_id, now = gh._new_id()
    api = f"{gh.url}/repos/{r['full_name']}"
    pull = {
        "id": pull_id, "node_id": f"PR_{pull_id}", "number": number, "state": "open", "title": body["title"],
        "body": body.get("body"), "draft": bool(body.get("draft")), "merged": False, "locked": False,
        "url": f"{api}/pulls/{number}", "html_url": f"{gh.url}/{r['full_name']}/pull/{number}",
        "issue_url": f"{api}/issues/{number}", "comments_url": f"{api}/issues/{number}/comments",
        "statuses_url": f"{api}/statuses/{r['branches'][head]}", "user": gh._user_json(gh.tokens[token]),
        "head": _branch_json(gh, r, head), "base": _branch_json(gh, r, base), "created_at": now, "updated_at": now,
    }
    gh.pulls[(r["full_name"], number)] = pull
    return 201, pull


def _find_pull(gh: GitHubEmulator, repo: str, number: str) -> tuple[dict[str, Any], dict[str, Any]]:
    r = gh._repo(repo)
    pull = gh.pulls.get((r["full_name"], int(number)))
    if pull is None:
        raise ApiError(404, "Not Found")
    return r, pull


def _get_pull(gh: GitHubEmulator, token: str, body: Any, repo: str, number: str) -> tuple[int, Any]:
    return 200, _find_pull(gh, repo, number)[1]


def _create_issue_comment(gh: GitHubEmulator, token: str, body: Any, repo: str, number: str) -> tuple[int, Any]:
    r, pull = _find_pull(gh, repo, number)
    if not body.get("body"):
        raise _invalid("IssueComment", "body", "body can't be blank")
    comment_id, now = gh._new_id()
    comment = {
        "id": comment_id, "node_id": f"IC_{comment_id}", "body": body["body"],
        "url": f"{gh.url}/repos/{r['full_name']}/issues/comments/{comment_id}",
        "html_url": f"{pull['html_url']}#issuecomment-{comment_id}", "issue_url": pull["issue_url"],
        "user": gh._user_json(gh.tokens[token]), "author_association": "NONE", "created_at": now, "updated_at": now,
    }
    gh.issue_comments[(r["full_name"], pull["number"])].append(comment)
    return 201, comment


def _list_issue_comments(gh: GitHubEmulator, token: str, body: Any, repo: str, number: str) -> tuple[int, Any]:
    r, pull = _find_pull(gh, repo, number)
    return 200, gh.issue_comments[(r["full_name"], pull["number"])]


_REPO = r"/repos/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    (method, re.compile(pattern.replace("{repo}", _REPO)), route)
    for method, pattern, route in [
        ("GET", r"/user", _get_user),
        ("GET", r"{repo}", _get_repo),
        ("GET", r"{repo}/commits/(?P<ref>[^/]+)", _get_commit),
        ("POST", r"{repo}/statuses/(?P<sha>[^/]+)", _create_status),
        ("GET", r"{repo}/statuses/(?P<ref>[^/]+)", _list_statuses),
        ("GET", r"{repo}/commits/(?P<ref>[^/]+)/statuses", _list_statuses),
        ("GET", r"{repo}/commits/(?P<ref>[^/]+)/status", _combined_status),
        ("POST", r"{repo}/check-runs", _create_check_run),
        ("PATCH", r"{repo}/check-runs/(?P<id>\d+)", _update_check_run),
        ("GET", r"{repo}/check-runs/(?P<id>\d+)", _get_check_run),
        ("POST", r"{repo}/commits/(?P<ref>[^/]+)/comments", _create_commit_comment),
        ("GET", r"{repo}/commits/(?P<ref>[^/]+)/comments", _list_commit_comments),
        ("POST", r"{repo}/pulls", _create_pull),
        ("GET", r"{repo}/pulls/(?P<number>\d+)", _get_pull),
        ("POST", r"{repo}/issues/(?P<number>\d+)/comments", _create_issue_comment),
        ("GET", r"{repo}/issues/(?P<number>\d+)/comments", _list_issue_comments),
    ]
]
