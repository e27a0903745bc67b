"""Publishing: one Hub PR per source change with the validated artifacts, the card section and the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bot.job import PublishJob

# PublishResult.status values
OPENED, UPDATED, UP_TO_DATE, DRY_RUN, FAILED = "opened", "updated", "up-to-date", "dry-run", "failed"


@dataclass
class PublishResult:
    """What a publish run did; `status` is one of OPENED, UPDATED, UP_TO_DATE, DRY_RUN, FAILED."""

    status: str
    repo_id: str
    revision: str | None  # the commit sha that was exported
    message: str
    pr_url: str | None = None
    pr_num: int | None = None
    export: object | None = None  # the ExportResult, when an export ran
    files: list[str] = field(default_factory=list)  # paths added or updated in the PR
    title: str = ""
    description: str = ""

    @property
    def ok(self) -> bool:
        return self.status != FAILED


def publish(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path,
            progress: Callable[[str], None] | None = None) -> PublishResult:
    """Run the whole pipeline for a Hub repo; raises BotError subclasses for bad input (exit 2)."""
    raise NotImplementedError("publishing lands with the publish issue")
