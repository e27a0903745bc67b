"""Every huggingface_hub call. The endpoint and token are always passed in, never read at import time.

Calls are retried with exponential backoff on 429, 5xx and connection errors (the client itself retries only some
of them); the commit is the exception, see `HubClient.commit`. Errors the user can fix become UsageError with a
message that says how; the token never appears in a message.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from bot.errors import BotError, UsageError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_STATUSES = {429, 500, 502, 503, 504}
T = TypeVar("T")


class HubUnavailable(BotError):
    """The Hub kept failing (5xx, 429 or no connection) after every retry."""


class StaleParent(BotError):
    """The branch moved between our read and our commit (HTTP 412)."""


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
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UsageError("the Hub rejected the token (401); set HF_TOKEN to a valid token") from exc
        if status == 403:
            raise UsageError(f"the token may not write to {repo_id} (403); use a token with write access") from exc
        if status == 412:
            raise StaleParent(f"{repo_id} changed while exporting (412)") from exc
        raise HubUnavailable(f"the Hub answered {status} for {repo_id}; retry later") from exc


def _transient(exc: BaseException) -> bool:
    import requests
    from huggingface_hub.errors import HfHubHTTPError

    try:
        import httpx

        network = (requests.ConnectionError, requests.Timeout, httpx.TransportError)
    except ImportError:  # pragma: no cover - httpx ships with huggingface_hub 1.x
        network = (requests.ConnectionError, requests.Timeout)
    if isinstance(exc, network):
        return True
    return isinstance(exc, HfHubHTTPError) and exc.response is not None and \
        exc.response.status_code in RETRY_STATUSES


def with_retries(call: Callable[[], T], what: str, attempts: int = 5, base_delay: float = 0.5) -> T:
    """Run `call`, retrying transient failures with exponential backoff (0.5, 1, 2, 4 s)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or attempt == attempts:
                if _transient(exc):
                    raise HubUnavailable(f"the Hub kept failing while {what} ({type(exc).__name__}); "
                                         f"retry later") from exc
                raise
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("%s failed (%s), retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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


class HubClient:
    """The Hub operations the bot needs, with retries and error translation, for one endpoint and token."""

    def __init__(self, endpoint: str, token: str | None, cache_dir: Path):
        from huggingface_hub import HfApi

        self.endpoint = endpoint
        self.token = token
        self.cache_dir = cache_dir
        self.api = HfApi(endpoint=endpoint, token=token if token else False)

    def state(self, repo_id: str, revision: str | None) -> RepoState:
        """Resolve a revision to a commit and read every file's size (and LFS sha256) without downloading."""
        with hub_errors(repo_id, revision):
            info = with_retries(lambda: self.api.model_info(repo_id, revision=revision, files_metadata=True),
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
                                          token=self.token or False, cache_dir=str(self.cache_dir)),
                f"downloading {repo_id}"))

    def read_text(self, repo_id: str, path: str, revision: str) -> str | None:
        """A small text file at a revision, or None when it does not exist there."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        def fetch():
            try:
                return Path(hf_hub_download(repo_id, path, revision=revision, endpoint=self.endpoint,
                                            token=self.token or False, cache_dir=str(self.cache_dir))
                            ).read_text(encoding="utf-8")
            except RemoteEntryNotFoundError:
                return None

        with hub_errors(repo_id, revision):
            return with_retries(fetch, f"reading {path} of {repo_id}")

    def user(self) -> str:
        """The name the token belongs to: the author of the bot's PRs."""
        with hub_errors("whoami"):
            return with_retries(lambda: self.api.whoami()["name"], "checking the token")

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
               revision: str | None, parent_commit: str, create_pr: bool):
        """One commit adding `files`; opens a PR when `create_pr`. Returns the client's CommitInfo.

        Not retried blindly: a commit that failed on the way back may have been applied, so the caller re-plans
        (which finds a PR that was opened) instead. A 412 means the branch moved: StaleParent.
        """
        from huggingface_hub import CommitOperationAdd

        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(data) if isinstance(data, Path)
                                         else data) for path, data in sorted(files.items())]
        with hub_errors(repo_id, revision):
            return self.api.create_commit(repo_id, operations, commit_message=title,
                                          commit_description=description, revision=revision,
                                          parent_commit=parent_commit, create_pr=create_pr)

    def discussion_url(self, repo_id: str, num: int) -> str:
        return f"{self.endpoint.rstrip('/')}/{repo_id}/discussions/{num}"

    def comment(self, repo_id: str, num: int, text: str) -> None:
        with hub_errors(repo_id):
            with_retries(lambda: self.api.comment_discussion(repo_id, num, text), "commenting on the PR")


def download_checkpoint(repo_id: str, revision: str | None, select: Callable[[list[str]], list[str]], *,
                        endpoint: str, token: str | None, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Download the files `select` picks at one commit; returns the local snapshot and that commit's sha."""
    from huggingface_hub.constants import HF_HUB_CACHE

    client = HubClient(endpoint, token, cache_dir or Path(HF_HUB_CACHE))
    state = client.state(repo_id, revision)
    return client.download(repo_id, state.sha, select(list(state.files))), state.sha
