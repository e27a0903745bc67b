"""`export_manifest.json`: what was exported from what, with which tools, and how it validated.

The source hashes recorded here are what later runs compare to decide "up to date"; the schema is documented in
the README and versioned by SCHEMA_VERSION. The artifact hashes decide which files in a repo are the bot's (see
"ownership" below): the only ones it may ever replace or delete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from bot import __version__
from bot.layout import FP32

MANIFEST_NAME = "export_manifest.json"
SCHEMA_VERSION = 1


def library_versions() -> dict[str, str]:
    versions = {"hub-export-bot": __version__}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def options_record(options) -> dict:
    """ExportOptions as stored in the manifest; equal records mean equal exports of equal sources."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


def build_manifest(result, options) -> dict:
    """The manifest as a dict (JSON-ready) from an ExportResult and its ExportOptions."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "complete" if result.ok else "partial",
        "source": {
            "model": result.source,
            "revision": result.revision,
            "model_type": result.model_type,
            "support": result.support,
            "files": result.source_files,
        },
        "options": options_record(options),
        "versions": library_versions(),
        "primary_feature": result.primary,
        "artifacts": [_artifact_record(a) for a in result.artifacts if _dtype(a) == FP32],
        # dtype variants of the ONNX graphs (bot.export.variants), each with its quality gate in `validation`
        "variants": [{**_artifact_record(a), "dtype": _dtype(a)} for a in result.artifacts if _dtype(a) != FP32],
        "failed": [
            {"feature": f.feature, "format": f.format, "component": f.component, "error": f.error,
             "validation": f.validation.to_dict() if f.validation else None}
            for f in result.failures
        ],
        "skipped": result.skipped,
        # dtype variants that failed their quality gate (bot.export.variants): not published, with the figures
        "refused_variants": [r.to_dict() for r in getattr(result, "refused", [])],
    }


def _artifact_record(a) -> dict:
    submodules = getattr(a, "submodules", [])
    return {
        "path": a.path,
        "format": a.format,
        "feature": a.feature,
        "component": a.component,
        **_contract(a),
        "opset": a.opset,
        "exporter": a.exporter,
        "sha256": a.files[a.path]["sha256"],
        "size": a.size,
        "files": a.files,
        "random_head": a.random_head,
        "validation": a.validation.to_dict(),
        # a TorchScript file of several graphs: `module.<name>(*inputs)` per graph, each with its own checks
        **({"submodules": [{"name": s.component, **_contract(s), "validation": s.validation.to_dict()}
                           for s in submodules]} if submodules else {}),
    }


def _contract(a) -> dict:
    return {"inputs": a.inputs, "outputs": a.outputs,
            "dynamic_axes": {name: {str(i): axis for i, axis in axes.items()} for name, axes in a.dynamic_axes.items()}}


def _dtype(artifact) -> str:
    return getattr(artifact, "dtype", FP32)


def write_manifest(result, path: Path, options) -> Path:
    """Write atomically, so a crash never leaves a truncated manifest."""
    data = build_manifest(result, options)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


# -- ownership: which files in a repo the bot wrote, and so may replace or delete -------------------------------------
#
# A file is the bot's only if the bot's own manifest at that revision lists it with that sha256 (an LFS oid).
# Anything else, even at a path the bot would use, is a maintainer's: never overwritten, never deleted.

README_NAME = "README.md"  # edited between markers (see bot.card), never replaced
_OWN_PATHS = (MANIFEST_NAME, README_NAME)


def read_manifest(text: str | None) -> dict | None:
    """The manifest if `text` is one the bot wrote (right schema and shape), else None."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not (isinstance(data, dict) and data.get("schema_version") == SCHEMA_VERSION
            and isinstance(data.get("artifacts"), list) and isinstance(data.get("source"), dict)):
        return None
    return data


def listed_files(manifest: dict | None) -> dict[str, str]:
    """{path: sha256} of every artifact file a manifest records."""
    listed = {}
    variants = (manifest or {}).get("variants")
    for artifact in (manifest or {}).get("artifacts", []) + (variants if isinstance(variants, list) else []):
        if not isinstance(artifact, dict):
            continue
        for path, info in (artifact.get("files") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("sha256"), str):
                listed[path] = info["sha256"]
    return listed


def owned_paths(manifest: dict | None, present: dict[str, str | None]) -> set[str]:
    """The paths of `present` ({path: sha256 or None if unknown}) that `manifest` lists with the same sha256."""
    owned = {path for path, sha in listed_files(manifest).items() if present.get(path) == sha}
    return owned | ({MANIFEST_NAME} if manifest is not None and MANIFEST_NAME in present else set())


@dataclass
class FilePlan:
    """What one commit does, decided by ownership. The lists describe merging into the exported revision."""

    artifacts: list  # the validated artifacts to publish
    withheld: list[dict] = field(default_factory=list)  # {path, feature, format, reason}
    deletions: list[str] = field(default_factory=list)  # the bot's files on the commit's parent to delete
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # the bot's own earlier files, new content
    removed: list[str] = field(default_factory=list)  # the bot's own earlier files, no longer exported
    edited: list[str] = field(default_factory=list)  # the maintainer's README.md, between the markers

    def description_data(self) -> dict:
        """For the PR description template: `changes` {added, replaced, removed, edited}, `only_adds`, `withheld`."""
        return {"changes": {"added": self.added, "replaced": self.replaced, "removed": self.removed,
                            "edited": self.edited},
                "only_adds": not (self.replaced or self.removed), "withheld": self.withheld}


def plan_files(artifacts: list, base: dict[str, str | None], base_owned: set[str],
               target: dict[str, str | None], target_owned: set[str]) -> FilePlan:
    """Which artifacts to publish, which of the bot's files to delete, and what merging changes.

    `base` is the exported revision, `target` the commit's parent (the same, or the bot's open PR), each as
    {path: sha256 or None}. An artifact whose path (or external data) is taken by a file the bot does not own is
    withheld together with every artifact of the same feature and format: an ONNX graph without its data, or an
    encoder without its decoder, is of no use to anyone.
    """
    def taken(path: str, sha256: str) -> bool:
        return any(path in files and path not in owned and files[path] != sha256
                   for files, owned in ((target, target_owned), (base, base_owned)))

    groups: dict[tuple[str, str], list] = {}
    for artifact in artifacts:
        groups.setdefault((artifact.feature, artifact.format), []).append(artifact)
    plan = FilePlan(artifacts=[])
    for group in groups.values():
        blocked = {a.path: p for a in group for p, info in a.files.items() if taken(p, info["sha256"])}
        if not blocked:
            plan.artifacts += group
            continue
        first_path, first_file = next(iter(blocked.items()))
        for a in group:
            own = blocked.get(a.path)
            reason = (f"`{own}` is already in the repo and was not written by hub-export-bot; it is left as it is"
                      if own else
                      f"left out with `{first_path}`: files of one feature and format only work together, and "
                      f"`{first_file}` is already in the repo, not written by hub-export-bot")
            plan.withheld.append({"path": a.path, "feature": a.feature, "format": a.format, "reason": reason})
    new = {p: info["sha256"] for a in plan.artifacts for p, info in a.files.items()}
    published = set(new) | set(_OWN_PATHS)
    plan.deletions = sorted(p for p in target_owned - published)
    plan.added = sorted(p for p in published if p not in base)
    plan.replaced = sorted(p for p in new if p in base and base[p] != new[p]) + \
        ([MANIFEST_NAME] if MANIFEST_NAME in base else [])
    plan.removed = sorted(p for p in base_owned - published)
    plan.edited = [README_NAME] if README_NAME in base else []
    return plan


def publishable_manifest(data: dict, published_paths: set[str], withheld: list[dict]) -> dict:
    """The manifest as committed: only the artifacts the commit carries, and what was withheld and why."""
    kept = [a for a in data.get("artifacts", []) if a.get("path") in published_paths]
    variants = [v for v in data.get("variants", []) if v.get("path") in published_paths]
    return {**data, "artifacts": kept, "variants": variants, "withheld": withheld}


def lost_artifacts(previous: dict | None, source_files: dict[str, str], result) -> list[str]:
    """Paths a previous export of the SAME source files validated that this one, having failures, does not.

    Publishing such an export would replace a fuller export with a poorer one; an empty list means it is safe.
    """
    if previous is None or not result.failures or previous["source"].get("files") != source_files:
        return []
    now = {(a.feature, a.format, graph.component) for a in result.artifacts  # a TorchScript file's graphs count
           for graph in [a, *getattr(a, "submodules", [])]}  # as its submodules (earlier: one file each)
    return sorted(a.get("path", "?") for a in previous["artifacts"] if isinstance(a, dict)
                  and (a.get("feature"), a.get("format"), a.get("component")) not in now)
