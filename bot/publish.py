"""Publishing: one Hub PR per source change with the validated artifacts, the card section and the manifest.

Order of work, cheapest first: check that the token may write at all; resolve the revision to a sha and read file
metadata; compute the source files' sha256 (LFS files from metadata, small files by downloading them); compare with
the manifests on that revision and in the bot's PRs — when they already cover these hashes and options, stop
("up to date") without downloading weights. Only then download, export, validate, render and commit. Merging the
bot's PR changes the sha but not the source hashes, so the next run stops early: no PR loops.

What the commit may touch is decided by ownership (bot.manifest): the bot replaces or deletes only files its own
manifest lists with their current hash, and leaves out an artifact whose path holds a maintainer's file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable

from bot import card, jsconfig
from bot import checkpoint as ckpt
from bot.errors import BotError, UnsafeCheckpointError, UsageError
from bot.hub import Committed, HubClient, Identity, PullRequest, RepoState, StaleParent
from bot.job import (DRY_RUN, FAILED, OPENED, PARTIAL, PR_KEPT, PR_OPENED, PR_UPDATED, UP_TO_DATE,  # noqa: F401
                     UPDATED, Job, PublishJob, PublishResult)
from bot.manifest import (MANIFEST_NAME, listed_files, lost_artifacts, options_record, owned_paths, plan_files,
                          publishable_manifest, read_manifest)
from bot.pipeline import run_export

log = logging.getLogger(__name__)
OPEN = ("open", "draft")
UPDATE_TEMPLATE = "update_comment.md.j2"  # the comment on the bot's PR when a new export updates it


def publish(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path,
            progress: Callable[[str], None] | None = None) -> PublishResult:
    """Run the whole pipeline for a Hub repo; raises BotError subclasses for bad input (exit 2)."""
    say = progress or (lambda message: None)
    client = HubClient(endpoint, token, work_dir / "hub-cache")
    identity = _check_access(client, job)
    try:
        return _publish_once(job, client, identity, work_dir, say)
    except StaleParent:
        say("the repo changed while exporting; planning again against its new head")
        try:
            return _publish_once(job, client, identity, work_dir, say)
        except StaleParent as exc:
            raise BotError(f"{job.repo_id} kept changing while exporting; retry when pushes settle") from exc


def _check_access(client: HubClient, job: PublishJob) -> Identity | None:
    """Fail before exporting, not after, when the token cannot open a PR (a dry run needs no write access)."""
    if not client.token:
        if job.dry_run:
            return None
        raise UsageError("no Hub token: set HF_TOKEN to a token with write access (or use --dry-run)")
    identity = client.identity()
    if not identity.can_write and not job.dry_run:
        raise UsageError(f"the token of {identity.name} is read-only, and opening a PR on {job.repo_id} needs "
                         f"write access: create a token with the write role (Hub settings, Access Tokens) and set "
                         f"HF_TOKEN to it, or use --dry-run")
    return identity


def _covers(manifest_text: str | None, source_files: dict[str, str], options: dict) -> bool:
    """Whether a manifest was made from these exact source files with these options."""
    if not manifest_text:
        return False
    try:
        manifest = json.loads(manifest_text)
        return manifest["source"]["files"] == source_files and manifest["options"] == options
    except (ValueError, KeyError, TypeError):
        return False  # a hand-edited or foreign manifest never counts as up to date


def _refuse_pickle_only(names: list[str], where: str) -> None:
    """publish, serve and the Action never load pickle; say so before downloading anything (and without the
    `export` command's --allow-pickle advice, which these front doors do not offer)."""
    if any(Path(n).name.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if Path(n).name.startswith("pytorch_model") and n.endswith(".bin"))
    if pickles:
        raise UnsafeCheckpointError(
            f"{where} has only pickle weights ({pickles[0]}); publishing never loads pickle, which can run code "
            f"when loaded: convert the weights to safetensors (e.g. model.save_pretrained(dir, "
            f"safe_serialization=True)) and push model.safetensors")
    raise UsageError(f"no weights in {where}: expected model.safetensors")


def _remote_source_hashes(client: HubClient, state: RepoState) -> tuple[dict[str, str], list[str]]:
    """sha256 of the repo's source files: LFS from metadata, small files downloaded (they are needed anyway)."""
    names = ckpt.select_source_files(list(state.files))
    _refuse_pickle_only(names, state.repo_id)
    return _hashes(client, state, names), names


def _hashes(client: HubClient, state: RepoState, names) -> dict[str, str]:
    """sha256 of files at a revision: LFS oids from metadata, the few small files downloaded and hashed."""
    names = [n for n in names if n in state.files]
    small = [n for n in names if state.files[n].sha256 is None]
    hashes = {n: state.files[n].sha256 for n in names if state.files[n].sha256}
    if small:
        folder = client.download(state.repo_id, state.sha, small)
        hashes.update({n: ckpt.source_sha256(folder / n) for n in small})
    return dict(sorted(hashes.items()))


def _is_bot_pr(pr: PullRequest) -> bool:
    return pr.title == card.PR_TITLE


def _publish_once(job: PublishJob, client: HubClient, identity: Identity | None, work_dir: Path,
                  say) -> PublishResult:
    repo = job.repo_id
    state = client.state(repo, job.revision)
    say(f"{repo}: revision {job.revision or 'default branch'} is commit {state.sha[:12]}")
    if job.source_dir is not None:
        _refuse_pickle_only([p.name for p in job.source_dir.iterdir() if p.is_file()], str(job.source_dir))
        source_files, names = ckpt.hash_source_files(job.source_dir), None
    else:
        source_files, names = _remote_source_hashes(client, state)
    options = options_record(job.options)

    prs = [pr for pr in client.pull_requests(repo, identity.name) if _is_bot_pr(pr)] if identity else []
    open_pr = next((pr for pr in prs if pr.status in OPEN), None)
    base_manifest = client.read_text(repo, MANIFEST_NAME, state.sha)
    if _covers(base_manifest, source_files, options):
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

    # The commit's parent: the bot's open PR (re-checked now, just before planning on its head), or the revision.
    if open_pr is not None and client.pr_status(repo, open_pr.num) not in OPEN:
        open_pr, previous_manifest = None, None
    target = client.state(repo, open_pr.ref) if open_pr else state
    target_manifest = previous_manifest if open_pr else base_manifest
    pr_url = client.discussion_url(repo, open_pr.num) if open_pr else None

    lost = lost_artifacts(read_manifest(target_manifest), source_files, result)
    if lost:
        where = f"PR #{open_pr.num}" if open_pr else f"the exports on {state.sha[:12]}"
        return PublishResult(PARTIAL, repo, state.sha, f"kept {where} as it is: it has {', '.join(lost)} validated "
                             f"for these same source files, which this run failed ({_failed(result)})",
                             export=result, pr_url=pr_url, pr_num=open_pr.num if open_pr else None,
                             pr_action=PR_KEPT)

    plan = _plan(client, result, state, base_manifest, target, target_manifest)
    if not plan.artifacts:
        return PublishResult(FAILED, repo, state.sha, "nothing to publish: every validated artifact's path holds a "
                             "file that hub-export-bot did not write (" +
                             "; ".join(w["reason"] for w in plan.withheld) + ")", export=result,
                             withheld=plan.withheld)

    shown = dataclasses.replace(result, artifacts=plan.artifacts)
    ctx = card.context(shown, repo, source_url=job.source_url, trigger=job.trigger,
                       pr_ref=open_pr.ref if open_pr else None, has_tokenizer=checkpoint.has_tokenizer)
    ctx.update(plan.description_data())
    edit = card.edit_readme(client.read_text(repo, "README.md", state.sha),
                            card.render_card_section(ctx, job.template), card.card_tags(shown))
    ctx["readme_note"] = edit.reason  # README.md left as it is: the PR says why
    files: dict[str, Path | bytes] = {path: export_dir / path for a in plan.artifacts for path in a.files}
    manifest = publishable_manifest(json.loads((export_dir / MANIFEST_NAME).read_text(encoding="utf-8")),
                                    {a.path for a in plan.artifacts}, plan.withheld)
    manifest_text = json.dumps(manifest, indent=2) + "\n"
    files[MANIFEST_NAME] = manifest_text.encode("utf-8")
    if edit.text is not None:
        files["README.md"] = edit.text.encode("utf-8")
    ctx.update(_config_edit(client.read_text(repo, "config.json", state.sha), plan.artifacts, result.primary,
                            files))
    description = card.render_pr_description(ctx)
    outcome = PublishResult(DRY_RUN, repo, state.sha, "dry run: nothing committed", export=result,
                            files=sorted(files), title=card.PR_TITLE, description=description, added=plan.added,
                            replaced=plan.replaced, removed=plan.removed, withheld=plan.withheld)
    if job.dry_run:
        return outcome

    if open_pr is not None:
        say(f"{repo}: pushing the new export to PR #{open_pr.num}")
        client.commit(repo, files, title="Update exports (hub-export-bot)", description=description,
                      revision=open_pr.ref, parent_commit=target.sha, create_pr=False, deletions=plan.deletions,
                      landed=lambda: _landed_on(client, repo, open_pr, target.sha, manifest_text))
        _courtesy(outcome, "rewrite the PR description",
                  lambda: client.edit_description(repo, open_pr.num, description))
        _courtesy(outcome, "comment on the PR", lambda: client.comment(
            repo, open_pr.num, _update_comment(previous_manifest, source_files, state.sha, plan)))
        outcome.pr_num, outcome.pr_url, outcome.pr_action = open_pr.num, pr_url, PR_UPDATED
        return _finish(outcome, UPDATED, f"updated PR #{open_pr.num} with exports of {state.sha[:12]}")

    known = {pr.num for pr in prs}
    _no_new_bot_pr(client, repo, identity, known)
    say(f"{repo}: opening a PR")
    info = client.commit(repo, files, title=card.PR_TITLE, description=description, revision=None,
                         parent_commit=state.sha, create_pr=True, deletions=plan.deletions,
                         landed=lambda: _opened_since(client, repo, identity, known, manifest_text))
    if info.pr_url is None:  # every file already identical on the default branch
        outcome.status, outcome.message = UP_TO_DATE, "up to date: the default branch already has these files"
        return outcome
    outcome.pr_url, outcome.pr_num, outcome.pr_action = info.pr_url, info.pr_num, PR_OPENED
    return _finish(outcome, OPENED, f"opened PR #{info.pr_num} with {len(plan.artifacts)} validated artifacts")


def _plan(client: HubClient, result, state: RepoState, base_manifest: str | None, target: RepoState,
          target_manifest: str | None):
    """Ownership on the exported revision and on the commit's parent, and the plan they allow."""
    sides = []
    for revision, text in ((state, base_manifest), (target, target_manifest)):
        manifest = read_manifest(text)
        if text is not None and manifest is None:
            raise UsageError(f"{MANIFEST_NAME} at {revision.sha[:12]} of {state.repo_id} was not written by "
                             f"hub-export-bot, and the bot keeps its manifest at that path: rename that file")
        wanted = set(listed_files(manifest)) | {p for a in result.artifacts for p in a.files}
        present = {p: f.sha256 for p, f in revision.files.items()}
        present.update(_hashes(client, revision, sorted(wanted)))
        sides += [present, owned_paths(manifest, present)]
    return plan_files(result.artifacts, *sides)


def _config_edit(text: str | None, artifacts, primary: str, files: dict) -> dict:
    """config.json with the `transformers.js_config` keys the artifacts need (bot.jsconfig), if that changes it."""
    if text is None:
        return {}
    try:
        edited = jsconfig.with_bot_keys(text, jsconfig.wanted_keys(artifacts, primary))
    except ValueError as exc:
        log.warning("config.json left as it is: %s", exc)
        return {}
    if edited == text:
        return {}
    files["config.json"] = edited.encode("utf-8")
    return {"config_diff": jsconfig.diff(text, edited)}


def _finish(outcome: PublishResult, status: str, message: str) -> PublishResult:
    """The final status: PARTIAL whenever a requested artifact failed, whatever happened to the PR."""
    export = outcome.export
    if export.failures:
        status = PARTIAL
        message += f"; {len(export.failures)} of {len(export.failures) + len(export.artifacts)} requested " \
                   f"artifacts failed and are not included ({_failed(export)})"
    if outcome.withheld:
        message += f"; {len(outcome.withheld)} left out because their paths hold the maintainers' files"
    outcome.status, outcome.message = status, message
    return outcome


def _failed(export) -> str:
    return ", ".join(f"{f.feature}/{f.format}" for f in export.failures)


def _courtesy(outcome: PublishResult, what: str, call: Callable[[], None]) -> None:
    """After the commit landed, a failure to describe it is a warning: the PR itself is what matters."""
    try:
        call()
    except BotError as exc:
        warning = f"the PR was updated, but could not {what}: {exc}"
        log.warning("%s", warning)
        outcome.warnings.append(warning)


def _no_new_bot_pr(client: HubClient, repo: str, identity: Identity | None, known: set[int]) -> None:
    """Just before opening a PR: a bot PR opened since planning means a concurrent run (a duplicate delivery, a
    second Job) got there first. Raise StaleParent, so publish() plans again and pushes to that PR (or finds it
    already up to date) instead of opening a second one."""
    for pr in client.pull_requests(repo, identity.name) if identity else []:
        if pr.num not in known and _is_bot_pr(pr) and pr.status in OPEN:
            raise StaleParent(f"PR #{pr.num} was opened on {repo} by another run while this one exported")


def _landed_on(client: HubClient, repo: str, pr: PullRequest, parent: str, manifest_text: str) -> Committed | None:
    """After a failed push to a PR: did it land anyway? Its head moved and carries our manifest."""
    head = client.state(repo, pr.ref).sha
    if head != parent and client.read_text(repo, MANIFEST_NAME, head) == manifest_text:
        return Committed(head, pr.num, client.discussion_url(repo, pr.num))
    return None


def _opened_since(client: HubClient, repo: str, identity: Identity | None, known: set[int],
                  manifest_text: str) -> Committed | None:
    """After a failed create-PR commit: did it land anyway? A new bot PR carries our manifest."""
    for pr in client.pull_requests(repo, identity.name) if identity else []:
        if pr.num not in known and _is_bot_pr(pr) and pr.status in OPEN and \
                client.read_text(repo, MANIFEST_NAME, pr.ref) == manifest_text:
            return Committed(None, pr.num, client.discussion_url(repo, pr.num))
    return None


def _update_comment(previous_manifest: str | None, source_files: dict[str, str], sha: str, plan) -> str:
    """What changed since the PR's last export, for the maintainers watching it."""
    try:
        before = json.loads(previous_manifest or "{}")["source"]["files"]
    except (ValueError, KeyError, TypeError):
        before = {}
    changed = sorted(n for n in set(before) | set(source_files) if before.get(n) != source_files.get(n))
    from bot.render import render_template

    return render_template(UPDATE_TEMPLATE, {"sha": sha, "changed": changed, "deletions": plan.deletions}).strip()

