"""Every huggingface_hub call. The endpoint and token are always passed in, never read at import time.

Why timeouts are installed here: huggingface_hub's shared HTTP client has no timeout of its own, and most HfApi
calls take none, so a Hub (or proxy) that accepts a connection and never answers would hang the run forever.
`HubTimeouts.install` gives the shared client connect/read timeouts through `set_client_factory` (the supported
hook, in huggingface_hub 1.x and 2.x alike); downloads get the same read timeout as their `etag_timeout`.

Why retries are here too: the client retries some calls itself (downloads, tree listings) but not `model_info`,
`whoami`, discussions or the commit. `with_retries` applies one policy to every call: 429, 5xx and connection
errors are retried with backoff (0.5, 1, 2, 4 s, or the server's Retry-After), a timeout only once (the endpoint
already had `read` seconds; more tries would multiply a hang). Calls that write are retried only when a `landed`
check, run before each retry, shows that the failed attempt did not take effect after all.

Errors the user can fix become UsageError with a message that says how; the token never appears in a message.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

from bot.errors import BotError, UsageError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV = "HUB_EXPORT_BOT_CONNECT_TIMEOUT", "HUB_EXPORT_BOT_READ_TIMEOUT"
T = TypeVar("T")


class HubUnavailable(BotError):
    """The Hub kept failing (5xx, 429, timeouts or no connection) after every retry."""


class StaleParent(BotError):
    """The branch moved between our read and our commit (HTTP 412)."""


# -- timeouts --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubTimeouts:
    """Seconds to wait for a connection and for each read of an answer (not for a whole transfer)."""

    connect: float = 10.0
    read: float = 60.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HubTimeouts:
        """HUB_EXPORT_BOT_CONNECT_TIMEOUT / HUB_EXPORT_BOT_READ_TIMEOUT, in seconds, when set."""
        values = {}
        for name, variable in (("connect", CONNECT_TIMEOUT_ENV), ("read", READ_TIMEOUT_ENV)):
            text = environ.get(variable, "").strip()
            if not text:
                continue
            try:
                values[name] = float(text)
            except ValueError:
                raise UsageError(f"{variable}={text!r} is not a number of seconds; unset it or write e.g. 30") from None
            if values[name] <= 0:
                raise UsageError(f"{variable} must be a positive number of seconds, not {text}")
        return cls(**values)

    def install(self) -> None:
        """Make huggingface_hub's shared client use these timeouts (replacing it only when they change)."""
        global _INSTALLED
        if _INSTALLED == self:
            return
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils import _http

        default_factory = _http.default_client_factory

        def factory():
            client = default_factory()
            client.timeout = type(client.timeout)(self.read, connect=self.connect)
            return client

        set_client_factory(factory)
        _INSTALLED = self

    def for_call(self):
        """The timeout object to pass to the few HfApi calls that take one (passing None there means "none")."""
        from huggingface_hub.utils import get_session

        return get_session().timeout


_INSTALLED: HubTimeouts | None = None


# -- retries ---------------------------------------------------------------------------------------------------------


def _network_errors(kind: str) -> tuple[type[BaseException], ...]:
    """Transport exceptions of every HTTP library the admitted huggingface_hub versions use.

    1.x raises httpx's exceptions, 2.x those of its fork httpx2: the same names in two modules. `kind`:
    "timeout", "retryable" (timeouts, dropped or refused connections, proxies) or "any" (also a bad URL).
    """
    names = {"timeout": ("TimeoutException",),
             "retryable": ("TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"),
             "any": ("TransportError", "InvalidURL")}[kind]
    found: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        found += [getattr(module, name) for name in names]
    return tuple(found)


def _chain(exc: BaseException | None):
    """The exception and what it was raised from: the client wraps transport errors (e.g. a failed HEAD)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _is_timeout(exc: BaseException) -> bool:
    timeouts = _network_errors("timeout")
    return any(isinstance(error, timeouts) for error in _chain(exc))


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def transient(exc: BaseException) -> bool:
    """Whether a retry may succeed: 408/429/5xx answers, timeouts and connection errors (also when wrapped)."""
    from huggingface_hub.errors import HfHubHTTPError

    retryable = _network_errors("retryable")
    for error in _chain(exc):
        if isinstance(error, retryable):
            return True
        if isinstance(error, HfHubHTTPError):
            return _status(error) in RETRY_STATUSES
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure."""

    attempts: int = 5
    timeout_attempts: int = 2  # a timeout already waited HubTimeouts.read: one more try, not four
    base_delay: float = 0.5
    max_delay: float = 4.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the run fails and says so
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def _stop(self, state: RetryCallState) -> bool:
        failure = state.outcome.exception() if state.outcome else None
        limit = self.timeout_attempts if failure is not None and _is_timeout(failure) else self.attempts
        return state.attempt_number >= limit

    def _wait(self, state: RetryCallState) -> float:
        delay = min(self.max_delay, self.base_delay * 2 ** (state.attempt_number - 1))
        failure = state.outcome.exception() if state.outcome else None
        response = getattr(failure, "response", None)
        retry_after = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self.max_retry_after))
        return delay


DEFAULT_RETRY = RetryPolicy()


def with_retries(call: Callable[[], T], what: str, *, landed: Callable[[], T | None] | None = None,
                 policy: RetryPolicy | None = None) -> T:
    """Run `call`, retrying transient failures; raise HubUnavailable once the policy gives up.

    `landed`, for calls that change something: run before every retry, it returns the outcome if the failed
    attempt took effect after all (the answer was lost, not the request), which then ends the retries.
    """
    policy = policy or DEFAULT_RETRY

    def before_sleep(state: RetryCallState) -> None:
        # INFO, not WARNING: a retry that works is routine; one that does not ends in HubUnavailable's one line
        log.info("%s failed (%s), retrying in %.1f s", what, _describe(state.outcome.exception()),
                    state.next_action.sleep if state.next_action else 0.0)

    retrying = Retrying(retry=retry_if_exception(transient), stop=policy._stop, wait=policy._wait,
                        sleep=policy.sleep, before_sleep=before_sleep, reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                if landed is not None and attempt.retry_state.attempt_number > 1:
                    outcome = landed()
                    if outcome is not None:
                        log.warning("%s: the previous attempt took effect; not repeating it", what)
                        return outcome
                return call()
    except Exception as exc:
        if transient(exc):
            tries = retrying.statistics.get("attempt_number", 1)
            raise HubUnavailable(f"the Hub did not answer while {what} ({_describe(exc)}, {tries} attempt"
                                 f"{'s' if tries != 1 else ''}); check HF_ENDPOINT and the network, or retry "
                                 f"later") from exc
        raise
    raise AssertionError("unreachable")  # pragma: no cover - Retrying either returns or raises


def _describe(exc: BaseException | None) -> str:
    status = _status(exc) if exc is not None else None
    return f"HTTP {status}" if status else type(exc).__name__


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None):
    """Turn the client's typed errors into messages that say what to do (never showing the token)."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except RevisionNotFoundError as exc:
        raise UsageError(f"revision {revision!r} not found in {repo_id}; pass an existing branch, tag or commit") from exc
    except RepositoryNotFoundError as exc:
        raise UsageError(f"Hub repo {repo_id} not found, or private and the token cannot read it; "
                         f"check the name and HF_TOKEN") from exc
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status == 401:
            raise UsageError("the Hub rejected the token (401); set HF_TOKEN to a valid token") from exc
        if status == 403:
            raise UsageError(f"the token may not write to {repo_id} (403); use a token with write access") from exc
        if status == 412:
            raise StaleParent(f"{repo_id} changed while exporting (412)") from exc
        raise HubUnavailable(f"the Hub answered {status} for {repo_id}; retry later") from exc
    except _network_errors("any") as exc:  # not retryable: a bad HF_ENDPOINT, a TLS failure, ...
        raise HubUnavailable(f"cannot reach the Hub for {repo_id} ({type(exc).__name__}: {exc}); "
                             f"check HF_ENDPOINT") from exc


# -- what the bot reads and writes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # known for LFS files from metadata alone


@dataclass(frozen=True)
class RepoState:
    """A repo at one commit: its sha and file metadata."""

    repo_id: str
    sha: str
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class PullRequest:
    num: int
    status: str  # open, closed, merged, draft
    title: str

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclass(frozen=True)
class Identity:
    name: str
    can_write: bool  # False only when the Hub says the token is read-only


@dataclass(frozen=True)
class Committed:
    oid: str | None
    pr_num: int | None = None
    pr_url: str | None = None


class HubClient:
    """The Hub operations the bot needs, with timeouts, retries and error translation, for one endpoint and token."""

    def __init__(self, endpoint: str, token: str | None, cache_dir: Path, *, timeouts: HubTimeouts | None = None):
        from huggingface_hub import HfApi

        self.endpoint = endpoint
        self.token = token
        self.cache_dir = cache_dir
        self.timeouts = timeouts or HubTimeouts.from_environ(os.environ)
        self.timeouts.install()
        self.api = HfApi(endpoint=endpoint, token=token if token else False)

    def state(self, repo_id: str, revision: str | None) -> RepoState:
        """Resolve a revision to a commit and read every file's size (and LFS sha256) without downloading."""
        with hub_errors(repo_id, revision):
            info = with_retries(lambda: self.api.model_info(repo_id, revision=revision, files_metadata=True,
                                                            timeout=self.timeouts.for_call()),
                                f"reading {repo_id}")
        files = {}
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            sha256 = (lfs.sha256 if hasattr(lfs, "sha256") else lfs.get("sha256")) if lfs else None
            files[sibling.rfilename] = RemoteFile(sibling.rfilename, sibling.size or 0, sha256)
        return RepoState(repo_id, info.sha, files)

    def download(self, repo_id: str, sha: str, filenames: list[str]) -> Path:
        """Download files at one commit into the cache; returns the snapshot folder."""
        from huggingface_hub import snapshot_download

        from bot.budget import check_download

        files = self.state(repo_id, sha).files  # sizes from the Hub's metadata, checked before a byte is fetched
        check_download(repo_id, {name: files[name].size for name in filenames if name in files})
        with hub_errors(repo_id, sha):
            return Path(with_retries(
                lambda: snapshot_download(repo_id, revision=sha, allow_patterns=filenames, endpoint=self.endpoint,
                                          token=self.token or False, cache_dir=str(self.cache_dir),
                                          etag_timeout=self.timeouts.read),
                f"downloading {repo_id}"))

    def read_text(self, repo_id: str, path: str, revision: str) -> str | None:
        """A small text file at a revision, or None when it does not exist there.

        One GET, not hf_hub_download: when its HEAD fails and nothing is cached, that function retries it with a
        fixed 60 s timeout, five times over, whatever timeout it was given; manifests and READMEs need no cache.
        """
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(repo_id, path, revision=revision, endpoint=self.endpoint)

        def fetch():
            response = get_session().get(url, headers=build_hf_headers(token=self.token or False),
                                         follow_redirects=True)
            try:
                hf_raise_for_status(response)
            except EntryNotFoundError:
                return None
            return response.content.decode("utf-8")

        with hub_errors(repo_id, revision):
            return with_retries(fetch, f"reading {path} of {repo_id}")

    def identity(self) -> Identity:
        """Who the token belongs to (the author of the bot's PRs) and whether it may write at all."""
        with hub_errors("whoami"):
            info = with_retries(self.api.whoami, "checking the token")
        access = (info.get("auth") or {}).get("accessToken") or {}
        return Identity(info["name"], access.get("role") != "read")

    def user(self) -> str:
        return self.identity().name

    def pull_requests(self, repo_id: str, author: str) -> list[PullRequest]:
        """Pull requests opened by `author`, newest first."""
        with hub_errors(repo_id):
            found = with_retries(lambda: list(self.api.get_repo_discussions(
                repo_id, author=author, discussion_type="pull_request")), f"listing PRs of {repo_id}")
        return [PullRequest(d.num, d.status, d.title) for d in found]

    def pr_status(self, repo_id: str, num: int) -> str:
        with hub_errors(repo_id):
            return with_retries(lambda: self.api.get_discussion_details(repo_id, num).status, "reading the PR")

    def commit(self, repo_id: str, files: dict[str, Path | bytes], *, title: str, description: str,
               revision: str | None, parent_commit: str, create_pr: bool, landed: Callable[[], Committed | None],
               deletions: tuple[str, ...] = ()) -> Committed:
        """One commit adding `files` and deleting `deletions`; opens a PR when `create_pr`.

        A transient failure is retried only after `landed` (see `with_retries`) found that the commit did not go
        through: a commit whose answer was lost is not made twice. A 412 means the branch moved: StaleParent.
        """
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(data) if isinstance(data, Path)
                                         else data) for path, data in sorted(files.items())]
        operations += [CommitOperationDelete(path_in_repo=path) for path in sorted(deletions)]

        def call() -> Committed:
            info = self.api.create_commit(repo_id, operations, commit_message=title,
                                          commit_description=description, revision=revision,
                                          parent_commit=parent_commit, create_pr=create_pr)
            return Committed(info.oid, info.pr_num, info.pr_url)

        with hub_errors(repo_id, revision):
            return with_retries(call, f"committing to {repo_id}", landed=landed)

    def discussion_url(self, repo_id: str, num: int) -> str:
        return f"{self.endpoint.rstrip('/')}/{repo_id}/discussions/{num}"

    def comment(self, repo_id: str, num: int, text: str) -> None:
        """Comment on a PR; before a retry, a comment with the same text means the failed attempt was posted."""
        def posted():
            details = self.api.get_discussion_details(repo_id, num)
            return True if any(getattr(e, "content", None) == text for e in details.events[1:]) else None

        with hub_errors(repo_id):
            with_retries(lambda: self.api.comment_discussion(repo_id, num, text), "commenting on the PR",
                         landed=posted)

    def edit_description(self, repo_id: str, num: int, text: str) -> None:
        """Rewrite a PR's description: on the Hub it is the opening comment, the discussion's first event."""
        def edit():
            details = self.api.get_discussion_details(repo_id, num)
            opening = details.events[0]
            if getattr(opening, "content", None) != text:
                self.api.edit_discussion_comment(repo_id, num, opening.id, text)

        with hub_errors(repo_id):
            with_retries(edit, "rewriting the PR description")


def download_checkpoint(repo_id: str, revision: str | None, select: Callable[[list[str]], list[str]], *,
                        endpoint: str, token: str | None, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Download the files `select` picks at one commit; returns the local snapshot and that commit's sha."""
    from huggingface_hub.constants import HF_HUB_CACHE

    client = HubClient(endpoint, token, cache_dir or Path(HF_HUB_CACHE))
    state = client.state(repo_id, revision)
    return client.download(repo_id, state.sha, select(list(state.files))), state.sha


def read_model_type(repo_id: str, *, endpoint: str | None, token: str | None, revision: str | None = None) -> str:
    """The `model_type` of a Hub repo's config.json, fetched alone (no weights, no cache) for `features`."""
    import json
    import tempfile

    client = HubClient(endpoint or DEFAULT_ENDPOINT, token, Path(tempfile.gettempdir()))
    text = client.read_text(repo_id, "config.json", revision or "main")
    if text is None:
        raise UsageError(f"{repo_id} has no config.json; it is not a transformers checkpoint")
    try:
        model_type = json.loads(text).get("model_type")
    except (ValueError, AttributeError):
        model_type = None
    if not isinstance(model_type, str) or not model_type:
        raise UsageError(f"the config.json of {repo_id} names no model_type; it is not a transformers checkpoint")
    return model_type
