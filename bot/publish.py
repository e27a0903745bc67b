"""Publishing: one Hub PR per source change with the validated artifacts, the card section and the manifest.

Order of work, cheapest first: resolve the revision to a sha and read file metadata; compute the source files'
sha256 (LFS files from metadata, small files by downloading them); compare with the manifests on that revision and
in the bot's PRs — when they already cover these hashes and options, stop ("up to date") without downloading weights.
Only then download, export, validate, render and commit. Merging the bot's PR changes the sha but not the source
hashes, so the next run stops early: no PR loops.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from bot import card
from bot import checkpoint as ckpt
from bot.errors import BotError
from bot.hub import HubClient, PullRequest, RepoState, StaleParent
from bot.job import DRY_RUN, FAILED, OPENED, UP_TO_DATE, UPDATED, Job, PublishJob, PublishResult  # noqa: F401
from bot.manifest import MANIFEST_NAME, options_record
from bot.pipeline import run_export

log = logging.getLogger(__name__)

def publish(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path,
            progress: Callable[[str], None] | None = None) -> PublishResult:
    """Run the whole pipeline for a Hub repo; raises BotError subclasses for bad input (exit 2)."""
    say = progress or (lambda message: None)
    client = HubClient(endpoint, token, work_dir / "hub-cache")
    try:
        return _publish_once(job, client, work_dir, say)
    except StaleParent:
        say("the repo changed while exporting; planning again against its new head")
        try:
            return _publish_once(job, client, work_dir, say)
        except StaleParent as exc:
            raise BotError(f"{job.repo_id} kept changing while exporting; retry when pushes settle") from exc


def _covers(manifest_text: str | None, source_files: dict[str, str], options: dict) -> bool:
    """Whether a manifest was made from these exact source files with these options."""
    if not manifest_text:
        return False
    try:
        manifest = json.loads(manifest_text)
        return manifest["source"]["files"] == source_files and manifest["options"] == options
    except (ValueError, KeyError, TypeError):
        return False  # a hand-edited or foreign manifest never counts as up to date


def _remote_source_hashes(client: HubClient, state: RepoState) -> tuple[dict[str, str], list[str]]:
    """sha256 of the repo's source files: LFS from metadata, small files downloaded (they are needed anyway)."""
    names = ckpt.select_source_files(list(state.files))
    small = [n for n in names if state.files[n].sha256 is None]
    hashes = {n: state.files[n].sha256 for n in names if state.files[n].sha256}
    if small:
        folder = client.download(state.repo_id, state.sha, small)
        hashes.update({n: ckpt.sha256_file(folder / n) for n in small})
    return dict(sorted(hashes.items())), names


def _is_bot_pr(pr: PullRequest) -> bool:
    return pr.title == card.PR_TITLE


def _publish_once(job: PublishJob, client: HubClient, work_dir: Path, say) -> PublishResult:
    repo = job.repo_id
    state = client.state(repo, job.revision)
    say(f"{repo}: revision {job.revision or 'default branch'} is commit {state.sha[:12]}")
    if job.source_dir is not None:
        source_files, names = ckpt.hash_source_files(job.source_dir), None
    else:
        source_files, names = _remote_source_hashes(client, state)
    options = options_record(job.options)

    prs = [pr for pr in client.pull_requests(repo, client.user()) if _is_bot_pr(pr)] if client.token else []
    open_pr = next((pr for pr in prs if pr.status in ("open", "draft")), None)
    if _covers(client.read_text(repo, MANIFEST_NAME, state.sha), source_files, options):
        return PublishResult(UP_TO_DATE, repo, state.sha, f"up to date: the exports on {state.sha[:12]} match "
                                                          f"the current weights, config and tokenizer")
    previous_manifest = None
    if open_pr is not None:
        previous_manifest = client.read_text(repo, MANIFEST_NAME, open_pr.ref)
        if _covers(previous_manifest, source_files, options):
            return PublishResult(UP_TO_DATE, repo, state.sha, f"up to date: PR #{open_pr.num} already has these "
                                                              f"exports", pr_num=open_pr.num,
                                 pr_url=client.discussion_url(repo, open_pr.num))
    for pr in prs:
        if pr.status == "closed" and _covers(client.read_text(repo, MANIFEST_NAME, pr.ref), source_files, options):
            return PublishResult(UP_TO_DATE, repo, state.sha, f"not reopening: PR #{pr.num} with these exports was "
                                                              f"closed without merging", pr_num=pr.num,
                                 pr_url=client.discussion_url(repo, pr.num))

    if job.source_dir is not None:
        checkpoint = ckpt.open_checkpoint(job.source_dir, repo, state.sha)
    else:
        say(f"{repo}: downloading {len(names)} source files")
        checkpoint = ckpt.open_checkpoint(client.download(repo, state.sha, names), repo, state.sha)
    export_dir = work_dir / f"export-{state.sha[:12]}"
    result = run_export(Job(model=repo, output_dir=export_dir, options=job.options), progress=say,
                        checkpoint=checkpoint)
    if not result.artifacts:
        reasons = "; ".join(f"{f.feature}/{f.format}: {f.error}" for f in result.failures)
        return PublishResult(FAILED, repo, state.sha, f"nothing validated, no PR opened: {reasons}", export=result)

    pr_ref = open_pr.ref if open_pr else None
    ctx = card.context(result, repo, source_url=job.source_url, trigger=job.trigger, pr_ref=pr_ref,
                       has_tokenizer=checkpoint.has_tokenizer)
    readme = card.splice_readme(client.read_text(repo, "README.md", state.sha),
                                card.render_card_section(ctx, job.template), card.card_tags(result))
    files: dict[str, Path | bytes] = {path: export_dir / path for a in result.artifacts for path in a.files}
    files[MANIFEST_NAME] = export_dir / MANIFEST_NAME
    files["README.md"] = readme.encode("utf-8")
    description = card.render_pr_description(ctx)
    outcome = PublishResult(DRY_RUN, repo, state.sha, "dry run: nothing committed", export=result,
                            files=sorted(files), title=card.PR_TITLE, description=description)
    if job.dry_run:
        return outcome

    if open_pr is not None and client.pr_status(repo, open_pr.num) in ("open", "draft"):
        head = client.state(repo, open_pr.ref).sha
        say(f"{repo}: pushing the new export to PR #{open_pr.num}")
        client.commit(repo, files, title="Update exports (hub-export-bot)", description=description,
                      revision=open_pr.ref, parent_commit=head, create_pr=False)
        client.comment(repo, open_pr.num, _update_comment(previous_manifest, source_files, state.sha))
        outcome.status, outcome.pr_num = UPDATED, open_pr.num
        outcome.pr_url = client.discussion_url(repo, open_pr.num)
        outcome.message = f"updated PR #{open_pr.num} with exports of {state.sha[:12]}"
        return outcome
    say(f"{repo}: opening a PR")
    info = client.commit(repo, files, title=card.PR_TITLE, description=description, revision=None,
                         parent_commit=state.sha, create_pr=True)
    if info.pr_url is None:  # every file already identical on the default branch
        outcome.status, outcome.message = UP_TO_DATE, "up to date: the default branch already has these files"
        return outcome
    outcome.status, outcome.pr_url, outcome.pr_num = OPENED, info.pr_url, info.pr_num
    outcome.message = f"opened PR #{info.pr_num} with {len(result.artifacts)} validated artifacts"
    return outcome


def _update_comment(previous_manifest: str | None, source_files: dict[str, str], sha: str) -> str:
    """What changed since the PR's last export, for the maintainers watching it."""
    try:
        before = json.loads(previous_manifest or "{}")["source"]["files"]
    except (ValueError, KeyError, TypeError):
        before = {}
    changed = sorted(n for n in set(before) | set(source_files) if before.get(n) != source_files.get(n))
    listed = ", ".join(f"`{n}`" for n in changed) if changed else "the export options"
    return f"Updated the exports for commit `{sha[:12]}`: {listed} changed since the previous export in this PR."
