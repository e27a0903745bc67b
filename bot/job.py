"""What to export: the one description every front door (CLI, Action, webhook) builds for the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import UsageError
from bot.features import normalize_feature
from bot.layout import DTYPE_SUFFIXES, FP32

FORMATS = ("onnx", "torchscript")
MIN_OPSET, MAX_OPSET = 14, 21
DTYPES = tuple(DTYPE_SUFFIXES)  # fp32 (always exported), fp16, q8, q4, q4f16
PUBLISH_DTYPES = (FP32, "q8")  # what publish, the Action and the webhook server offer by default (README: measured)


@dataclass(frozen=True)
class ExportOptions:
    """How to export; part of what decides whether an earlier export is still up to date."""

    features: tuple[str, ...] = ()  # empty: every feature the checkpoint supports
    formats: tuple[str, ...] = FORMATS
    opset: int = 18
    atol: float | None = None  # None: each spec's measured default
    exporter: str = "auto"
    allow_random_heads: bool = False
    rtol: float | None = None  # None: bot.validate.DEFAULT_RTOL
    dtypes: tuple[str, ...] = (FP32,)  # ONNX dtype variants, fp32 first, each published only if it passes its gate


@dataclass(frozen=True)
class Job:
    model: str  # a local directory or a Hub repo id
    output_dir: Path
    revision: str | None = None
    options: ExportOptions = field(default_factory=ExportOptions)
    allow_pickle: bool = False


def make_options(features=(), formats=(), opset=18, atol=None, exporter="auto",
                 allow_random_heads=False, rtol=None, dtypes=(), default_dtypes=(FP32,)) -> ExportOptions:
    """Validate and normalise user input into ExportOptions; every mistake is a UsageError saying what to do."""
    normalized = tuple(dict.fromkeys(normalize_feature(f) for f in features))
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats)) or FORMATS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset {opset} is out of range; choose {MIN_OPSET}..{MAX_OPSET} (default 18)")
    if atol is not None and not (0 < atol < 1):
        raise UsageError(f"atol {atol} must be a small positive number such as 1e-4")
    if rtol is not None and not (0 <= rtol < 1):
        raise UsageError(f"rtol {rtol} must be a small non-negative number such as 1e-3 (0: absolute only)")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise UsageError(f"unknown exporter {exporter!r}; choose auto, dynamo or torchscript")
    if exporter == "dynamo" and opset < 18:  # it writes 18 and converts down only where it can
        raise UsageError(f"the dynamo exporter writes opset 18 or later; pass --opset 18 (or more), or --exporter "
                         f"torchscript for opset {opset}")
    return ExportOptions(normalized, formats, opset, atol, exporter, allow_random_heads, rtol,
                         _dtypes(dtypes, default_dtypes, formats))


def _dtypes(requested, default, formats) -> tuple[str, ...]:
    """fp32 plus the requested (else the default) variants, in DTYPES order; variants are ONNX graphs."""
    names = [d.strip().lower() for d in requested if d.strip()]
    unknown = [d for d in names if d not in DTYPES]
    if unknown:
        raise UsageError(f"unknown dtype {unknown[0]!r}; choose from {', '.join(DTYPES)}")
    if "onnx" not in formats:
        if set(names) - {FP32}:
            raise UsageError(f"dtype {next(d for d in names if d != FP32)} is an ONNX variant; add --format onnx")
        return (FP32,)
    chosen = {FP32, *(names or default)}
    return tuple(d for d in DTYPES if d in chosen)


@dataclass(frozen=True)
class PublishJob:
    """Export a Hub model repo (or a local checkout of it) and offer the artifacts to the repo as one PR."""

    repo_id: str
    revision: str | None = None  # branch, tag or sha; None: the default branch
    options: ExportOptions = field(default_factory=ExportOptions)
    template: Path | None = None  # model-card section template overriding templates/model_card_section.md.j2
    dry_run: bool = False
    source_dir: Path | None = None  # export these files (a GitHub checkout) instead of downloading the repo
    source_url: str | None = None  # where the source change lives (a GitHub commit), linked from the PR
    trigger: str = "cli"  # "cli", "action" or "webhook": shown in the PR description, never changes behaviour


# PublishResult.status values
OPENED, UPDATED, UP_TO_DATE, DRY_RUN, FAILED = "opened", "updated", "up-to-date", "dry-run", "failed"
PARTIAL = "partial"  # a PR was opened or updated (or kept) without every requested artifact: some failed

# What `publish` and `action` exit with. A partial result has its own code so that scripts can tell "the PR is
# there but incomplete" from "nothing was published" without parsing output.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
_EXIT_CODES = {OPENED: EXIT_OK, UPDATED: EXIT_OK, UP_TO_DATE: EXIT_OK, DRY_RUN: EXIT_OK, PARTIAL: EXIT_PARTIAL}

# PublishResult.pr_action values: what happened to the Hub PR, whatever the status
PR_OPENED, PR_UPDATED, PR_KEPT = "opened", "updated", "kept"


@dataclass
class PublishResult:
    """What a publish run did; `status` is one of OPENED, UPDATED, PARTIAL, UP_TO_DATE, DRY_RUN, FAILED.

    The file lists say what merging the PR does to the exported revision, so that nothing is claimed that the
    data does not show: `added` (new paths), `replaced` (files the bot wrote earlier, per its manifest),
    `removed` (the bot's earlier files that the new export no longer has). `withheld` lists validated artifacts
    left out because a file the bot did not write already sits at their path ({path, feature, format, reason}).
    """

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
    pr_action: str | None = None  # PR_OPENED, PR_UPDATED or PR_KEPT; None when no PR was touched
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    withheld: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # done, but something after it did not work (a comment)

    @property
    def ok(self) -> bool:
        return self.status != FAILED

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES.get(self.status, EXIT_FAILED)
