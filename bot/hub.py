"""Every huggingface_hub call. The endpoint and token are always passed in, never read at import time."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from bot.errors import BotError, UsageError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None):
    """Turn the client's typed errors into messages that say what to do (never showing the token)."""
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        yield
    except RevisionNotFoundError as exc:
        raise UsageError(f"revision {revision!r} not found in {repo_id}; pass an existing branch, tag or commit") from exc
    except RepositoryNotFoundError as exc:
        raise UsageError(f"Hub repo {repo_id} not found, or private and the token cannot read it; "
                         f"check the name and HF_TOKEN") from exc
    except EntryNotFoundError as exc:
        raise BotError(f"a file of {repo_id} disappeared while reading it ({exc}); retry") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UsageError("the Hub rejected the token (401); set HF_TOKEN to a valid token") from exc
        if status == 403:
            raise UsageError(f"the token has no access to {repo_id} (403); use a token with write access") from exc
        raise BotError(f"the Hub answered {status} for {repo_id}; retry later") from exc


def download_checkpoint(repo_id: str, revision: str | None, select: Callable[[list[str]], list[str]], *, endpoint: str,
                        token: str | None, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Download the files `select` picks at one commit; returns the local snapshot and that commit's sha."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision)
        files = select([s.rfilename for s in info.siblings or []])
        path = snapshot_download(repo_id, revision=info.sha, allow_patterns=files, endpoint=endpoint, token=token,
                                 cache_dir=str(cache_dir) if cache_dir else None)
    return Path(path), info.sha
