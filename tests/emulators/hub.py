"""A local emulator of the Hugging Face Hub HTTP API, driven by the REAL `huggingface_hub` client over real HTTP.

    with HubEmulator() as hub:
        sha = hub.create_repo("some-org/tiny-bert", {"config.json": b"{}", "model.safetensors": weights})
        api = HfApi(endpoint=hub.url, token="hf_test_token")
        info = api.create_commit("some-org/tiny-bert", operations, commit_message="Add ONNX export",
                                 create_pr=True, parent_commit=sha)
        assert hub.discussions("some-org/tiny-bert")[0].ref == f"refs/pr/{info.pr_num}"

Two servers run on 127.0.0.1, each on an ephemeral port: `hub.url`, the Hub itself, and `hub.cdn_url`, the stand-in for
the storage the Hub hands out signed URLs to (LFS downloads are redirected there, LFS uploads are PUT there). The CDN is
a different origin on purpose: the client then behaves as against the real Hub (it does not follow the HEAD redirect
and drops the Authorization header on the download). The emulator speaks LFS, not Xet: while it runs it sets the
client's `constants.HF_HUB_DISABLE_XET` (read only once, at import); a client in a subprocess needs `hub.env()`.

State lives in memory: repos with a git-like history (every commit keeps a full snapshot {path: bytes}), branches
(`main`) and PR refs (`refs/pr/N`), discussions and pull requests with their events. Revisions resolve by branch name,
`refs/heads/<branch>`, `refs/pr/N`, or a full 40-hex commit sha. Repo ids are always "namespace/name". Write access:
a user may push to branches of repos in their own namespace or of an org listed for them in `hub.orgs`; anyone with a
write token may open a PR (create_pr=1) and push to the PRs they authored.

Choices the real Hub makes that cannot be verified offline
----------------------------------------------------------
Everything below is the emulator's guess, kept in this one place so that it can be corrected in one place.

- New repos (through the API or `create_repo()`) get an initial commit "initial commit" holding a default
  `.gitattributes` that routes the LFS extensions below to LFS.
- LFS rule (preupload and `commit()`): a non-empty file is LFS when its extension is in LFS_EXTENSIONS or it is larger
  than LFS_THRESHOLD (10 MiB). The `.gitattributes` content is not parsed; `shouldIgnore` is always false.
  A regular (non-LFS) file above LFS_THRESHOLD in a commit is refused with 400.
- The preupload `oid` of a file already at the revision is its git blob sha1 if it is stored as a regular file, its
  sha256 if it is stored in LFS (the client compares that with its local oid to skip unchanged files).
- LFS objects are "already stored" (no `actions` in the batch answer) per repo, once uploaded to that repo.
  A `verify` action is always offered. Multipart uploads are offered only if `multipart_chunk_size` is set.
- The CDN refuses (400) a download that carries an Authorization header, as signed S3 URLs do.
- Unknown token: 401, X-Error-Message "Invalid credentials in Authorization header", no X-Error-Code.
  Missing or private repo: 401 RepoNotFound without a token, 404 RepoNotFound with one.
  Read-only token on a write: 403. Pushing to a branch of a repo one may not write: 403 (open a PR instead).
- Revision errors: 404 RevisionNotFound "Invalid rev id: <rev>". Missing file: 404 EntryNotFound (with X-Repo-Commit);
  deleting a missing file: 404 EntryNotFound "A file with this name doesn't exist" (the client looks for that text).
- Stale `parentCommit` on a commit to a branch or PR ref: 412 "A commit has happened since. Please refresh and try
  again." With create_pr=1 the PR is branched from `parentCommit` instead (the client's documented behaviour); a
  `parentCommit` that matches no commit of the repo is 412 too. create_pr=1 needs a branch as revision, else 404
  RevisionNotFound.
- A commit that changes nothing creates no commit and, with create_pr=1, opens no PR (`pullRequestUrl` null); the
  answer carries the current head as `commitOid`.
- PRs opened by a commit with create_pr=1 start "open"; PRs opened by POST /discussions (create_pull_request) start
  "draft" (as the client documents) and stay draft when commits are pushed to them. The first event of every discussion
  is a comment holding its description. Commits to a PR that is closed or merged: 403.
- Discussion listing: newest first, `discussions_page_size` (50) per page; status filter "open" includes drafts and
  "closed" includes merged. `changes.base` is "refs/heads/<branch>"; `filesWithConflicts` lists the files the PR
  changed that its base branch also changed since the PR branched, differently. Merging over conflicts through the API
  is refused with 409 (`merge_pr()` applies the PR's files regardless). A merge commit is titled "<PR title> (#N)".
- Tree listing pages: `tree_page_size` (1000) entries, 50 with expand, via `Link: <...&cursor=N>; rel="next"`.
  Entries are sorted by path. Downloads honour a single `Range: bytes=a-[b]` (206), as the client uses for resumes
  and safetensors headers; such partial reads are logged in `requests` like any GET.
- `validate-yaml` accepts everything. Dates are ISO 8601 with milliseconds and a trailing Z.
- Editing a comment (POST .../discussions/N/comment/<id>/edit {content}): only its author may, else 403; an unknown
  id is 404. The answer is {"updatedComment": event}; the event's `latest` becomes the new text, `edited` true,
  `numEdits` counts the edits and `history` gets the new version first. Editing a discussion's first comment
  changes its description (the description IS that comment).
- `drop_next()` closes the connection without an answer, before or after handling the request (the latter is a
  change that took effect while its answer was lost): the client sees a dropped connection, not an HTTP error.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub import constants

LFS_EXTENSIONS = (".safetensors", ".bin", ".onnx", ".onnx_data", ".data", ".pt", ".pth", ".msgpack", ".h5")
LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_EXTENSIONS).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
STALE_PARENT = "A commit has happened since. Please refresh and try again."


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_sha(data: bytes) -> str:
    """Git blob id, what the Hub reports as `blobId`/`oid` and as the ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pointer(data: bytes) -> bytes:
    """The git-LFS pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha256(data)}\nsize {len(data)}\n".encode()


def is_lfs(path: str, size: int) -> bool:
    """Whether the Hub would store this file in LFS (see the module docstring)."""
    return size > 0 and (path.lower().endswith(LFS_EXTENSIONS) or size > LFS_THRESHOLD)


def _text(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


class HubError(Exception):
    """An HTTP error answer, shaped like the Hub's: JSON {"error": ...} plus X-Error-Code / X-Error-Message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    description: str
    files: dict[str, bytes]
    lfs: frozenset[str]
    author: str
    date: str


@dataclass
class Discussion:
    """A discussion or pull request; `events` are the Hub's JSON events (first one: the description comment)."""

    num: int
    title: str
    description: str
    author: str
    is_pull_request: bool
    status: str
    created_at: str
    events: list[dict] = field(default_factory=list)
    base_branch: str = "main"
    base_sha: str | None = None  # the commit a PR branched from, to tell its own changes from its base's
    merge_commit: str | None = None

    @property
    def ref(self) -> str | None:
        return f"refs/pr/{self.num}" if self.is_pull_request else None

    @property
    def comments(self) -> list[str]:
        """Comments posted after the discussion was opened (the description is not one of them)."""
        return [e["data"]["latest"]["raw"] for e in self.events[1:] if e["type"] == "comment"]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main" or "refs/pr/N" -> commit sha
    discussions: list[Discussion] = field(default_factory=list)
    lfs_oids: set[str] = field(default_factory=set)

    @property
    def url_path(self) -> str:
        return self.repo_id if self.repo_type == "model" else f"{self.repo_type}s/{self.repo_id}"


_API = r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT = r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", r"^/api/whoami-v2$", "_whoami"),
    ("POST", r"^/api/repos/create$", "_api_create_repo"),
    ("POST", r"^/api/validate-yaml$", "_validate_yaml"),
    ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?$", "_repo_info"),
    ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", "_tree"),
    ("GET", _API + r"/refs$", "_refs"),
    ("POST", _API + r"/preupload/(?P<rev>[^/]+)$", "_preupload"),
    ("POST", _API + r"/commit/(?P<rev>[^/]+)$", "_api_commit"),
    ("GET", _API + r"/discussions$", "_list_discussions"),
    ("POST", _API + r"/discussions$", "_create_discussion"),
    ("GET", _API + r"/discussions/(?P<num>\d+)$", "_discussion_details"),
    ("POST", _API + r"/discussions/(?P<num>\d+)/(?P<action>comment|status|merge|title)$", "_discussion_action"),
    ("POST", _API + r"/discussions/(?P<num>\d+)/comment/(?P<comment>[0-9a-f]+)/edit$", "_edit_comment"),
    ("POST", _GIT + r"\.git/info/lfs/objects/batch$", "_lfs_batch"),
    ("POST", _GIT + r"\.git/info/lfs/objects/verify$", "_lfs_verify"),
    ("GET HEAD", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "_resolve"),
    ("GET", _API + r"/xet-(?:read|write)-token/.*$", "_no_xet"),
]
_CDN_ROUTES = [
    ("GET HEAD", r"^/lfs/(?P<oid>[0-9a-f]{64})$", "_cdn_download"),
    ("PUT POST", r"^/upload/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})$",
     "_cdn_upload"),
]


@dataclass
class _Request:
    method: str
    path: str  # raw, still URL-encoded, without the query
    query: dict[str, str]  # last value of each parameter
    expand: list[str]  # every value of the repeatable `expand` parameter
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self):
        return json.loads(self.body or b"{}")


class HubEmulator:
    """The emulated Hub. Test-facing state and helpers are public; HTTP handlers are the `_`-prefixed methods."""

    def __init__(self):
        self.tokens: dict[str, str] = {"hf_test_token": "bot-user"}  # write tokens -> username
        self.read_tokens: dict[str, str] = {"hf_read_token": "bot-user"}  # read-only tokens -> username
        self.orgs: dict[str, set[str]] = {}  # org -> members allowed to push to its repos
        self.requests: list[tuple[str, str]] = []  # (method, raw path) of every request, CDN included
        self.multipart_chunk_size: int | None = None
        self.tree_page_size = 1000
        self.discussions_page_size = 50
        self.url = self.cdn_url = ""
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> content of every LFS object ever uploaded or committed
        self._parts: dict[str, dict[int, bytes]] = {}
        self._faults: list[list] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._servers: list[ThreadingHTTPServer] = []
        self._xet_flag = constants.HF_HUB_DISABLE_XET

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> HubEmulator:
        # The emulator speaks LFS, not Xet. The client reads HF_HUB_DISABLE_XET once, when it is imported, so
        # whichever module imported huggingface_hub first would decide: force the flag while the hub runs.
        self._xet_flag = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = True
        for is_cdn in (False, True):
            handler = type("Handler", (_Handler,), {"hub": self, "is_cdn": is_cdn})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            # A short poll interval keeps stop() (which waits for the loop to notice) fast: tests start many hubs.
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(server)
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        constants.HF_HUB_DISABLE_XET = self._xet_flag

    def env(self, token: str = "hf_test_token") -> dict[str, str]:
        """Environment variables that point a client in a subprocess (e.g. the bot's CLI) at this hub."""
        return {"HF_ENDPOINT": self.url, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1"}

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- test-facing helpers ---------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False,
                    repo_type: str = "model") -> str:
        """Create a repo as the Hub does (an "initial commit" holding `.gitattributes`), then commit `files` to main
        if any; return main's head sha."""
        with self._lock:
            repo = self._new_repo(repo_type, repo_id, private)
            if files:
                self.commit(repo_id, files, message="Add files", repo_type=repo_type)
            return repo.refs["main"]

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", message: str = "Update files",
               deleted=(), description: str = "", repo_type: str = "model") -> str:
        """Push a commit as the repo owner would (no auth, no checks); `branch` may also be a "refs/pr/N".

        A branch that does not exist yet is created from main.
        """
        with self._lock:
            repo = self._get(repo_type, repo_id)
            if not branch.startswith("refs/pr/"):
                repo.refs.setdefault(branch, repo.refs["main"])
            ops = [("add", p, d, is_lfs(p, len(d))) for p, d in files.items()] + [("delete", p) for p in deleted]
            author = repo_id.split("/")[0]
            return self._commit_on_ref(repo, branch, repo.refs[branch], ops, message, description, author).sha

    def head(self, repo_id: str, ref: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._resolve_rev(self._get(repo_type, repo_id), ref)

    def files(self, repo_id: str, ref: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return dict(repo.commits[self._resolve_rev(repo, ref)].files)

    def get_commit(self, repo_id: str, ref: str = "main", repo_type: str = "model") -> Commit:
        """The commit `ref` (branch, refs/pr/N or sha) points to: parent, message, description, files, author."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return repo.commits[self._resolve_rev(repo, ref)]

    def discussions(self, repo_id: str, repo_type: str = "model") -> list[Discussion]:
        with self._lock:
            return list(self._get(repo_type, repo_id).discussions)

    def merge_pr(self, repo_id: str, num: int, repo_type: str = "model") -> str:
        """Merge PR `num` as a maintainer would: its changes land on the base branch; return the merge commit sha."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return self._merge(repo, repo.discussions[num - 1], repo_id.split("/")[0])

    def close_pr(self, repo_id: str, num: int, repo_type: str = "model") -> None:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            self._set_status(repo.discussions[num - 1], "closed", repo_id.split("/")[0])

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1) -> None:
        """Answer `status` to the next `times` requests whose method ("*" for any) and raw path match."""
        with self._lock:
            self._faults.append([method.upper(), re.compile(path_regex), status, times])

    def drop_next(self, method: str, path_regex: str, times: int = 1, after: bool = False) -> None:
        """Close the connection without answering the next `times` matching requests; with `after`, handle each
        request first, so that its change takes effect and only the answer is lost."""
        with self._lock:
            self._faults.append([method.upper(), re.compile(path_regex), "drop-after" if after else "drop", times])

    # ---- state internals -------------------------------------------------------------------------------------------

    def _new_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        if (repo_type, repo_id) in self._repos:
            raise ValueError(f"{repo_type} repo {repo_id} already exists")
        repo = Repo(repo_type, repo_id, private, _now())
        self._repos[(repo_type, repo_id)] = repo
        first = self._new_commit(repo, None, {".gitattributes": DEFAULT_GITATTRIBUTES}, frozenset(),
                                 "initial commit", "", repo_id.split("/")[0])
        repo.refs["main"] = first.sha
        return repo

    def _get(self, repo_type: str, repo_id: str) -> Repo:
        return self._repos[(repo_type, repo_id)]

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], lfs: frozenset[str],
                    message: str, description: str, author: str) -> Commit:
        digest = hashlib.sha1(f"{parent}\n{message}\n{next(self._counter)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + _git_sha(files[path]).encode())
        commit = Commit(digest.hexdigest(), parent, message, description, files, lfs, author, _now())
        repo.commits[commit.sha] = commit
        for path in lfs:
            self._blobs[_sha256(files[path])] = files[path]
            repo.lfs_oids.add(_sha256(files[path]))
        return commit

    @staticmethod
    def _apply(base: Commit, ops: list) -> tuple[dict[str, bytes], frozenset[str]]:
        """The (files, lfs paths) that `ops` make of `base`; raises, changing nothing, if an op cannot apply.

        ops: ("add", path, data, lfs) | ("delete", path) | ("delete_folder", path).
        """
        files, lfs = dict(base.files), set(base.lfs)
        for op in ops:
            if op[0] == "add":
                files[op[1]] = op[2]
                (lfs.add if op[3] else lfs.discard)(op[1])
            elif op[0] == "delete":
                if op[1] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[op[1]]
            else:
                prefix = op[1].rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                for path in doomed:
                    del files[path]
        return files, frozenset(lfs & set(files))

    def _commit_on_ref(self, repo: Repo, ref: str, base_sha: str, ops: list, message: str, description: str,
                       author: str) -> Commit:
        """Apply `ops` on top of `base_sha`, move `ref` to the new commit, and log it on the PR if `ref` is one."""
        files, lfs = self._apply(repo.commits[base_sha], ops)
        commit = self._new_commit(repo, base_sha, files, lfs, message, description, author)
        repo.refs[ref] = commit.sha
        if match := re.fullmatch(r"refs/pr/(\d+)", ref):
            repo.discussions[int(match[1]) - 1].events.append(
                self._event("commit", author, {"subject": message, "oid": commit.sha}))
        return commit

    def _resolve_rev(self, repo: Repo, rev: str) -> str:
        rev = unquote(rev)
        name = rev.removeprefix("refs/heads/")
        if name in repo.refs:
            return repo.refs[name]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo.commits:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _event(self, kind: str, author: str, data: dict) -> dict:
        return {"id": hashlib.sha1(str(next(self._counter)).encode()).hexdigest()[:24], "type": kind,
                "createdAt": _now(), "author": {"name": author, "type": "user"}, "data": data}

    def _comment(self, text: str, author: str) -> dict:
        latest = {"raw": text, "html": f"<p>{text}</p>", "updatedAt": _now(), "author": {"name": author}}
        data = {"edited": False, "hidden": False, "latest": latest, "numEdits": 0, "editors": [author],
                "reactions": [], "history": [latest]}
        return self._event("comment", author, data)

    def _open_discussion(self, repo: Repo, title: str, description: str, author: str, pull_request: bool,
                         status: str = "open", base_branch: str = "main", base_sha: str | None = None) -> Discussion:
        num = len(repo.discussions) + 1  # PRs and discussions share the numbering
        d = Discussion(num, title, description, author, pull_request, status, _now(),
                       [self._comment(description, author)], base_branch)
        if pull_request:
            d.base_sha = base_sha or repo.refs[base_branch]
            repo.refs[d.ref] = d.base_sha
        repo.discussions.append(d)
        return d

    def _set_status(self, d: Discussion, status: str, author: str) -> dict:
        d.status = status
        d.events.append(self._event("status-change", author, {"status": status}))
        return d.events[-1]

    def _pr_changes(self, repo: Repo, d: Discussion) -> tuple[Commit, Commit, list[str]]:
        """The PR's fork point, its head, and the paths it changed since it branched."""
        fork, head = repo.commits[d.base_sha], repo.commits[repo.refs[d.ref]]
        changed = sorted(p for p in set(fork.files) | set(head.files) if fork.files.get(p) != head.files.get(p))
        return fork, head, changed

    def _conflicts(self, repo: Repo, d: Discussion) -> list[str]:
        fork, head, changed = self._pr_changes(repo, d)
        base = repo.commits[repo.refs[d.base_branch]].files
        return [p for p in changed if base.get(p) != fork.files.get(p) and base.get(p) != head.files.get(p)]

    def _merge(self, repo: Repo, d: Discussion, author: str) -> str:
        _, head, changed = self._pr_changes(repo, d)
        ops = [("add", p, head.files[p], p in head.lfs) if p in head.files else ("delete", p) for p in changed]
        ops = [op for op in ops if op[0] == "add" or op[1] in repo.commits[repo.refs[d.base_branch]].files]
        commit = self._commit_on_ref(repo, d.base_branch, repo.refs[d.base_branch], ops,
                                     f"{d.title} (#{d.num})", d.description, author)
        d.merge_commit = commit.sha
        self._set_status(d, "merged", author)
        return commit.sha

    # ---- HTTP plumbing ---------------------------------------------------------------------------------------------

    def _handle(self, req: _Request, is_cdn: bool) -> tuple[int, dict, bytes] | None:
        """The answer to a request, or None to close the connection without one (see `drop_next`)."""
        with self._lock:
            self.requests.append((req.method, req.path))
            for fault in self._faults:
                if fault[3] > 0 and fault[0] in ("*", req.method) and fault[1].search(req.path):
                    fault[3] -= 1
                    if fault[2] == "drop-after":
                        self._route(req, is_cdn)
                    if fault[2] in ("drop", "drop-after"):
                        return None
                    return self._error(HubError(fault[2], f"Injected failure {fault[2]}"))
            return self._route(req, is_cdn)

    def _route(self, req: _Request, is_cdn: bool) -> tuple[int, dict, bytes]:
        with self._lock:
            return self._dispatch(_CDN_ROUTES if is_cdn else _ROUTES, req) or self._error(HubError(404, "Not Found"))

    def _dispatch(self, routes, req: _Request) -> tuple[int, dict, bytes] | None:
        """The answer of the first of `routes` matching the request (a HubError as its error), or None."""
        for methods, pattern, name in routes:
            match = re.match(pattern, req.path)
            if match and req.method in methods.split():
                try:
                    return getattr(self, name)(req, match)
                except HubError as err:
                    return self._error(err)
        return None

    @staticmethod
    def _json(obj, status: int = 200, headers: dict | None = None) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(obj).encode()

    def _error(self, err: HubError) -> tuple[int, dict, bytes]:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        return self._json({"error": err.message}, err.status, headers)

    def _auth(self, req: _Request) -> tuple[str | None, bool]:
        """(username or None, has write access); an unknown token is refused outright."""
        header = req.headers.get("authorization", "")
        if not header:
            return None, False
        token = header.removeprefix("Bearer ").strip()
        if token in self.tokens:
            return self.tokens[token], True
        if token in self.read_tokens:
            return self.read_tokens[token], False
        raise HubError(401, "Invalid credentials in Authorization header")

    def _is_member(self, user: str | None, repo: Repo) -> bool:
        namespace = repo.repo_id.split("/")[0]
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _repo(self, match: re.Match, user: str | None) -> Repo:
        repo = self._repos.get((REPO_TYPES[match["type"] or "models"], match["repo"]))
        if repo is None or (repo.private and not self._is_member(user, repo)):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _writer(self, req: _Request, match: re.Match) -> tuple[str, Repo]:
        """The authenticated user of a write request and the repo it targets."""
        user, can_write = self._auth(req)
        repo = self._repo(match, user)
        if user is None:
            raise HubError(401, "You must be authenticated to do this")
        if not can_write:
            raise HubError(403, "This token is read-only: a write token is needed")
        return user, repo

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{repo.url_path}"

    # ---- API handlers ----------------------------------------------------------------------------------------------

    def _whoami(self, req, match):
        user, can_write = self._auth(req)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": org, "roleInOrg": "write"} for org, members in self.orgs.items()
                if user in members]
        return self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                           "fullname": user, "email": f"{user}@example.com", "emailVerified": True, "orgs": orgs,
                           "auth": {"type": "access_token", "accessToken": {
                               "displayName": "emulator", "role": "write" if can_write else "read",
                               "createdAt": _now()}}})

    def _api_create_repo(self, req, match):
        user, can_write = self._auth(req)
        if user is None or not can_write:
            raise HubError(401 if user is None else 403, "You need a write token to create a repo")
        body = req.json()
        namespace = body.get("organization") or user
        repo_type = body.get("type") or "model"
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.url}/{repo_id if repo_type == 'model' else f'{repo_type}s/{repo_id}'}"
        if (repo_type, repo_id) in self._repos:
            return self._json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        if namespace != user and user not in self.orgs.get(namespace, ()):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        private = body.get("visibility") == "private" or body.get("private") is True
        self._new_repo(repo_type, repo_id, private)
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, req, match):
        return self._json({"errors": [], "warnings": []})

    def _repo_info(self, req, match):
        user, _ = self._auth(req)
        repo = self._repo(match, user)
        commit = repo.commits[self._resolve_rev(repo, match["rev"] or "main")]
        blobs = _truthy(req.query.get("blobs"))
        siblings = []
        for path in sorted(commit.files):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(self._blob_info(commit, path, "blobId", "sha256"))
            siblings.append(sibling)
        info = {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.sha, "lastModified": commit.date,
                "createdAt": repo.created_at, "private": repo.private, "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        if expand := req.expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id", *expand)}
        return self._json(info)

    @staticmethod
    def _blob_info(commit: Commit, path: str, oid_key: str, lfs_key: str) -> dict:
        """size/oid (+ lfs) of one file, with the key names of model_info siblings or tree entries."""
        data = commit.files[path]
        if path not in commit.lfs:
            return {"size": len(data), oid_key: _git_sha(data)}
        pointer = _pointer(data)
        lfs = {lfs_key: _sha256(data), "size": len(data), "pointerSize": len(pointer)}
        return {"size": len(data), oid_key: _git_sha(pointer), "lfs": lfs}

    def _tree(self, req, match):
        user, _ = self._auth(req)
        repo = self._repo(match, user)
        sha = self._resolve_rev(repo, match["rev"])
        commit = repo.commits[sha]
        root = unquote(match["path"] or "").strip("/")
        prefix = root + "/" if root else ""
        recursive, expand = _truthy(req.query.get("recursive")), _truthy(req.query.get("expand"))
        under = [p for p in commit.files if p.startswith(prefix)]
        if root and not under:
            raise HubError(404, f"Entry not found: {root}", "EntryNotFound", {"X-Repo-Commit": sha})
        dirs = {"/".join(p.split("/")[:i]) for p in under for i in range(1, p.count("/") + 1)}
        dirs = {d for d in dirs if d.startswith(prefix)}
        entries = []
        for path in sorted(set(under) | dirs):
            if not recursive and "/" in path[len(prefix):]:
                continue
            if path in dirs:
                tree = sorted((p, _git_sha(commit.files[p])) for p in under if p.startswith(path + "/"))
                entry = {"type": "directory", "oid": hashlib.sha1(repr(tree).encode()).hexdigest(), "size": 0,
                         "path": path}
            else:
                entry = {"type": "file", **self._blob_info(commit, path, "oid", "oid"), "path": path}
            if expand:
                last = self._last_commit(repo, sha, path)
                entry["lastCommit"] = {"id": last.sha, "title": last.message, "date": last.date}
            entries.append(entry)
        size = 50 if expand else self.tree_page_size
        cursor = int(req.query.get("cursor") or 0)
        headers = {}
        if cursor + size < len(entries):
            query = f"recursive={str(recursive).lower()}&expand={str(expand).lower()}&cursor={cursor + size}"
            headers["Link"] = f'<{self.url}{req.path}?{query}>; rel="next"'
        return self._json(entries[cursor:cursor + size], headers=headers)

    def _refs(self, req, match):
        user, _ = self._auth(req)
        repo = self._repo(match, user)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.refs.items()
                    if not n.startswith("refs/pr/")]
        prs = [{"name": n, "ref": n, "targetCommit": s} for n, s in repo.refs.items() if n.startswith("refs/pr/")]
        return self._json({"branches": branches, "converts": [], "tags": [],
                           **({"pullRequests": prs} if req.query.get("include_prs") == "1" else {})})

    def _last_commit(self, repo: Repo, sha: str, path: str) -> Commit:
        """The most recent commit, walking first parents from `sha`, that changed the file or folder `path`."""
        def snapshot(c: Commit):
            return sorted((p, d) for p, d in c.files.items() if p == path or p.startswith(path + "/"))

        commit = repo.commits[sha]
        while commit.parent and snapshot(repo.commits[commit.parent]) == snapshot(commit):
            commit = repo.commits[commit.parent]
        return commit

    def _preupload(self, req, match):
        _, repo = self._writer(req, match)
        rev = unquote(match["rev"]).removeprefix("refs/heads/")
        if req.query.get("create_pr") == "1" and rev not in repo.refs:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        sha = self._resolve_rev(repo, rev)
        commit = repo.commits[sha]
        answers = []
        for f in req.json()["files"]:
            path, oid = f["path"], None
            if path in commit.files:
                data = commit.files[path]
                oid = _sha256(data) if path in commit.lfs else _git_sha(data)
            mode = "lfs" if is_lfs(path, f["size"]) else "regular"
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return self._json({"files": answers, "commitOid": sha})

    def _api_commit(self, req, match):
        user, repo = self._writer(req, match)
        rev = unquote(match["rev"]).removeprefix("refs/heads/")
        header, ops = self._parse_commit(req.body)
        summary, description = header.get("summary") or "", header.get("description") or ""
        parent = (header.get("parentCommit") or "").lower() or None
        pr_match = re.fullmatch(r"refs/pr/(\d+)", rev)
        create_pr = req.query.get("create_pr") == "1"
        if create_pr:
            if rev not in repo.refs or pr_match:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            base_sha = repo.refs[rev]
            if parent:
                found = [s for s in repo.commits if s.startswith(parent)]
                if len(found) != 1:
                    raise HubError(412, STALE_PARENT)
                base_sha = found[0]
        else:
            if rev not in repo.refs:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if pr_match:
                d = repo.discussions[int(pr_match[1]) - 1]
                if user != d.author and not self._is_member(user, repo):
                    raise HubError(403, "Only the author of this pull request or the repo's owners can push to it")
                if d.status not in ("open", "draft"):
                    raise HubError(403, f"This pull request is {d.status}")
            elif not self._is_member(user, repo):
                raise HubError(403, f"You don't have write access to {repo.repo_id}: pass create_pr=1 to open a PR")
            base_sha = repo.refs[rev]
            if parent and not base_sha.startswith(parent):
                raise HubError(412, STALE_PARENT)
        base = repo.commits[base_sha]
        if self._apply(base, ops) == (base.files, base.lfs):  # validates the ops before a PR is opened, too
            return self._commit_answer(repo, base_sha, None)
        pr_url = None
        if create_pr:
            d = self._open_discussion(repo, summary, description, user, True, "open", rev, base_sha)
            rev, pr_url = d.ref, f"{self._repo_url(repo)}/discussions/{d.num}"
        commit = self._commit_on_ref(repo, rev, repo.refs[rev], ops, summary, description, user)
        return self._commit_answer(repo, commit.sha, pr_url)

    def _commit_answer(self, repo: Repo, sha: str, pr_url: str | None):
        return self._json({"success": True, "commitOid": sha, "commitUrl": f"{self._repo_url(repo)}/commit/{sha}",
                           "pullRequestUrl": pr_url, "hookOutput": ""})

    def _parse_commit(self, body: bytes) -> tuple[dict, list]:
        """The ndjson commit payload as (header, ops) in the shape `_commit_on_ref` takes."""
        header, ops = {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                if len(data) > LFS_THRESHOLD:
                    raise HubError(400, f"{value['path']} is larger than 10 MiB: upload it with LFS")
                ops.append(("add", value["path"], data, False))
            elif key == "lfsFile":
                if value["oid"] not in self._blobs:
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                ops.append(("add", value["path"], self._blobs[value["oid"]], True))
            elif key == "deletedFile":
                ops.append(("delete", value["path"]))
            elif key == "deletedFolder":
                ops.append(("delete_folder", value["path"]))
            else:
                raise HubError(400, f"Unknown commit operation {key}")
        return header, ops

    def _no_xet(self, req, match):
        raise HubError(501, "The Hub emulator speaks LFS only: run the client with HF_HUB_DISABLE_XET=1")

    def _lfs_batch(self, req, match):
        _, repo = self._writer(req, match)
        objects = []
        for obj in req.json()["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in repo.lfs_oids:
                objects.append({"oid": oid, "size": size})
                continue
            href = f"{self.cdn_url}/upload/{repo.repo_type}s/{repo.repo_id}/{oid}"
            upload = {"href": href}
            chunk = self.multipart_chunk_size
            if chunk and size > chunk:
                parts = {str(i + 1): f"{href}?part={i + 1}" for i in range(-(-size // chunk))}
                upload["header"] = {"chunk_size": str(chunk), **parts}
            verify = {"href": f"{self._repo_url(repo)}.git/info/lfs/objects/verify"}
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": upload, "verify": verify}})
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                          headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_verify(self, req, match):
        _, repo = self._writer(req, match)
        body = req.json()
        if body["oid"] not in repo.lfs_oids or len(self._blobs[body["oid"]]) != body["size"]:
            raise HubError(404, f"LFS object {body['oid']} not found")
        return self._json({"success": True})

    def _resolve(self, req, match):
        user, _ = self._auth(req)
        repo = self._repo(match, user)
        sha = self._resolve_rev(repo, match["rev"])
        commit = repo.commits[sha]
        path = unquote(match["path"])
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = commit.files[path]
        if path in commit.lfs:
            oid = _sha256(data)
            return 302, {"Location": f"{self.cdn_url}/lfs/{oid}", "X-Repo-Commit": sha,
                         "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(len(data)),
                         "ETag": f'"{_git_sha(_pointer(data))}"'}, b""
        return self._ranged(req, data, {"X-Repo-Commit": sha, "ETag": f'"{_git_sha(data)}"'})

    @staticmethod
    def _ranged(req: _Request, data: bytes, headers: dict) -> tuple[int, dict, bytes]:
        """A file body, or the single `Range: bytes=a-[b]` slice asked for (resumed downloads, safetensors headers)."""
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **headers}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("range", ""))
        if not match:
            return 200, headers, data
        start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
        if start >= len(data):
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
        return 206, {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}, data[start:end + 1]

    def _list_discussions(self, req, match):
        user, _ = self._auth(req)
        repo = self._repo(match, user)
        kind, status, author = (req.query.get(k, "all") for k in ("type", "status", "author"))
        wanted_status = {"open": ("open", "draft"), "closed": ("closed", "merged")}.get(status)
        found = [d for d in reversed(repo.discussions)
                 if (kind == "all" or d.is_pull_request == (kind == "pull_request"))
                 and (wanted_status is None or d.status in wanted_status)
                 and (author == "all" or d.author == author)]
        start = int(req.query.get("p") or 0) * self.discussions_page_size
        page = found[start:start + self.discussions_page_size]
        return self._json({"discussions": [self._summary(repo, d) for d in page], "count": len(found),
                           "start": start, "numClosedDiscussions": sum(d.status != "open" for d in found)})

    def _summary(self, repo: Repo, d: Discussion) -> dict:
        return {"num": d.num, "title": d.title, "status": d.status, "isPullRequest": d.is_pull_request,
                "createdAt": d.created_at, "author": {"name": d.author, "type": "user"},
                "repo": {"name": repo.repo_id, "type": repo.repo_type}, "pinned": False,
                "numComments": sum(e["type"] == "comment" for e in d.events), "topReactions": []}

    def _discussion(self, repo: Repo, match: re.Match) -> Discussion:
        num = int(match["num"])
        if not 1 <= num <= len(repo.discussions):
            raise HubError(404, f"Discussion {num} not found")
        return repo.discussions[num - 1]

    def _discussion_details(self, req, match):
        user, _ = self._auth(req)
        repo = self._repo(match, user)
        d = self._discussion(repo, match)
        details = {**self._summary(repo, d), "events": d.events}
        if d.is_pull_request:
            details["changes"] = {"base": f"refs/heads/{d.base_branch}"}
            if d.merge_commit:
                details["changes"]["mergeCommitId"] = d.merge_commit
            details["filesWithConflicts"] = self._conflicts(repo, d)
            if req.query.get("diff") == "1":
                details["diff"] = self._diff(repo, d)
        return self._json(details)

    def _diff(self, repo: Repo, d: Discussion) -> str:
        """A git-style diff of the PR's own changes: unified for text, a one-liner for binary and LFS files."""
        fork, head, changed = self._pr_changes(repo, d)
        out = []
        for path in changed:
            old, new = fork.files.get(path), head.files.get(path)
            old_text, new_text = _text(old or b""), _text(new or b"")
            out.append(f"diff --git a/{path} b/{path}\n")
            if path in fork.lfs or path in head.lfs or old_text is None or new_text is None:
                out.append(f"Binary files a/{path} and b/{path} differ\n")
                continue
            for line in difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                             f"a/{path}" if old is not None else "/dev/null",
                                             f"b/{path}" if new is not None else "/dev/null"):
                out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        return "".join(out)

    def _create_discussion(self, req, match):
        user, repo = self._writer(req, match)
        body = req.json()
        pull_request = bool(body.get("pullRequest"))
        d = self._open_discussion(repo, body["title"], body.get("description") or "", user, pull_request,
                                  "draft" if pull_request else "open")
        return self._json({"num": d.num, "pullRequest": pull_request,
                           "url": f"{self._repo_url(repo)}/discussions/{d.num}"})

    def _discussion_action(self, req, match):
        user, repo = self._writer(req, match)
        d = self._discussion(repo, match)
        body = req.json() if req.body else {}
        action = match["action"]
        if action == "comment":
            d.events.append(self._comment(body["comment"], user))
            return self._json({"newMessage": d.events[-1]})
        if action == "title":
            d.events.append(self._event("title-change", user, {"from": d.title, "to": body["title"]}))
            d.title = body["title"]
            return self._json({"newTitle": d.events[-1]})
        if not (self._is_member(user, repo) or action == "status" and user == d.author):
            raise HubError(403, f"You can't change the status of discussion {d.num}")
        if d.status == "merged":
            raise HubError(400, "This pull request is already merged")
        if body.get("comment"):
            d.events.append(self._comment(body["comment"], user))
        if action == "merge":
            if not d.is_pull_request or self._conflicts(repo, d):
                raise HubError(409, "This pull request cannot be merged")
            self._merge(repo, d, user)
            return self._json({"newStatus": d.events[-1]})
        if body.get("status") not in ("open", "closed"):
            raise HubError(400, "status must be open or closed")
        return self._json({"newStatus": self._set_status(d, body["status"], user)})

    def _edit_comment(self, req, match):
        user, repo = self._writer(req, match)
        d = self._discussion(repo, match)
        event = next((e for e in d.events if e["id"] == match["comment"] and e["type"] == "comment"), None)
        if event is None:
            raise HubError(404, f"Comment {match['comment']} not found")
        if event["author"]["name"] != user:
            raise HubError(403, "You can only edit your own comments")
        content = req.json()["content"]
        latest = {"raw": content, "html": f"<p>{content}</p>", "updatedAt": _now(), "author": {"name": user}}
        data = event["data"]
        data.update(latest=latest, edited=True, numEdits=data["numEdits"] + 1, history=[latest, *data["history"]])
        if event is d.events[0]:
            d.description = content
        return self._json({"updatedComment": event})

    # ---- CDN handlers ----------------------------------------------------------------------------------------------

    def _cdn_download(self, req, match):
        if "authorization" in req.headers:
            raise HubError(400, "Only one auth mechanism allowed")
        if match["oid"] not in self._blobs:
            raise HubError(404, "NoSuchKey")
        return self._ranged(req, self._blobs[match["oid"]], {"ETag": f'"{match["oid"]}"'})

    def _cdn_upload(self, req, match):
        """Basic PUT of a whole object, PUT of one multipart part (?part=N), or POST completing a multipart upload."""
        oid = match["oid"]
        repo = self._repos[(REPO_TYPES[match["type"]], match["repo"])]
        if req.method == "PUT" and "part" in req.query:
            self._parts.setdefault(oid, {})[int(req.query["part"])] = req.body
            return 200, {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'}, b""
        if req.method == "POST":
            parts = self._parts.pop(oid, {})
            data = b"".join(parts[p["partNumber"]] for p in sorted(req.json()["parts"], key=lambda p: p["partNumber"]))
        else:
            data = req.body
        if _sha256(data) != oid:
            raise HubError(400, "Uploaded content does not match its sha256")
        self._blobs[oid] = data
        repo.lfs_oids.add(oid)
        return 200, {}, b""


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, hands it to the hub, writes the answer. HTTP/1.1 so the client can keep connections alive."""

    protocol_version = "HTTP/1.1"
    hub: HubEmulator
    is_cdn: bool

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self):
        body = self._read_body()
        split = urlsplit(self.path)
        params = parse_qs(split.query)
        query = {k: v[-1] for k, v in params.items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = _Request(self.command, split.path, query, params.get("expand", []), headers, body)
        answer = self.hub._handle(request, self.is_cdn)
        if answer is None:  # an injected dropped connection: no status line, nothing
            self.close_connection = True
            return
        status, out_headers, payload = answer
        self.send_response(status)
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


__all__ = ["HubEmulator", "HubError", "Commit", "Discussion", "Repo", "is_lfs", "LFS_EXTENSIONS", "LFS_THRESHOLD"]
