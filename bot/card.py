"""The texts a maintainer reads: the model-card section, the PR title and description; README splicing.

Splicing keeps the maintainer's README byte for byte: only the bytes between our markers are replaced (or the
section is appended), and `onnx` / `torchscript` are added to the YAML front matter's `tags` by inserting lines,
never by re-serialising the YAML, so comments, key order and quoting survive.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import jinja2

from bot.manifest import library_versions
from bot.render import human_size

START, END = "<!-- hub-export-bot:start -->", "<!-- hub-export-bot:end -->"
CARD_TEMPLATE, PR_TEMPLATE = "model_card_section.md.j2", "pr_description.md.j2"
PR_TITLE = "Add validated ONNX and TorchScript exports (hub-export-bot)"
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def _template_text(name: str, override: Path | None = None) -> str:
    if override is not None:
        return Path(override).read_text(encoding="utf-8")
    source_tree = Path(__file__).resolve().parent.parent / "templates" / name
    if source_tree.is_file():
        return source_tree.read_text(encoding="utf-8")
    return resources.files("bot.templates").joinpath(name).read_text(encoding="utf-8")


def _render(name: str, context: dict, override: Path | None = None) -> str:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)
    try:
        return environment.from_string(_template_text(name, override)).render(**context).strip() + "\n"
    except jinja2.TemplateError as exc:
        from bot.errors import UsageError

        raise UsageError(f"template {override or name} failed to render: {exc}") from exc


def _artifact_row(artifact) -> dict:
    worst = max(artifact.validation.max_abs_diff.values(), default=0.0)
    return {"feature": artifact.feature, "format": artifact.format, "format_name": _FORMAT_NAMES[artifact.format],
            "path": artifact.path, "size": human_size(artifact.size), "inputs": artifact.inputs,
            "outputs": artifact.outputs, "max_diff": f"{worst:.2g}", "atol": f"{artifact.validation.atol:g}",
            "exporter": artifact.exporter}


def _failure_row(failure) -> dict:
    report = failure.validation
    worst = max(report.max_abs_diff.values(), default=0.0) if report else None
    return {"feature": failure.feature, "format_name": _FORMAT_NAMES[failure.format],
            "error": failure.error.replace("|", "/").replace("\n", " ")[:200],
            "max_diff": f"{worst:.2g}" if worst is not None else "—", "atol": f"{report.atol:g}" if report else "—"}


def context(result, repo_id: str, *, source_url: str | None = None, trigger: str = "cli",
            pr_ref: str | None = None, has_tokenizer: bool = False) -> dict:
    """Everything the templates may use, built from an ExportResult."""
    order = {"onnx": 0, "torchscript": 1}
    ranked = sorted(result.artifacts, key=lambda a: (a.feature != result.primary, a.feature, order[a.format], a.path))
    artifacts = [_artifact_row(a) for a in ranked]
    primary = {a["format"]: a for a in artifacts if "/" not in a["path"].split("/", 1)[1]}
    shapes = sorted({shape for a in result.artifacts for shape in a.validation.to_dict()["shapes_tried"]})
    return {
        "repo_id": repo_id, "revision": result.revision, "artifacts": artifacts,
        "failures": [_failure_row(f) for f in result.failures], "skipped": result.skipped,
        "primary_onnx": primary.get("onnx"), "primary_torchscript": primary.get("torchscript"),
        "versions": library_versions(), "source_url": source_url, "trigger": trigger, "pr_ref": pr_ref,
        "shapes": "; ".join(shapes), "has_tokenizer": has_tokenizer, "tags": card_tags(result),
    }


def card_tags(result) -> list[str]:
    return sorted({a.format for a in result.artifacts})


def render_card_section(ctx: dict, template: Path | None = None) -> str:
    return _render(CARD_TEMPLATE, ctx, template)


def render_pr_description(ctx: dict) -> str:
    return _render(PR_TEMPLATE, ctx)


def splice_readme(readme: str | None, section: str, tags: list[str]) -> str:
    """README.md with our section between the markers (replacing an earlier one) and `tags` added."""
    block = f"{START}\n{section.strip()}\n{END}"
    if readme is None:
        return "---\ntags:\n" + "".join(f"- {t}\n" for t in tags) + f"---\n\n{block}\n"
    front, body = _split_front_matter(readme)
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(body):
        body = pattern.sub(lambda _: block, body, count=1)
    else:
        body = body + ("" if body.endswith("\n") or not body else "\n") + ("\n" if body.strip() else "") + block + "\n"
    if front is None:
        front = "---\ntags:\n" + "".join(f"- {t}\n" for t in tags) + "---\n"
    else:
        front = _add_tags(front, tags)
    return front + body


def _split_front_matter(readme: str) -> tuple[str | None, str]:
    """(front matter including both `---` lines, rest) — or (None, readme) when there is none."""
    match = re.match(r"---[ \t]*\r?\n.*?\r?\n---[ \t]*(\r?\n|$)", readme, re.DOTALL)
    if not match:
        return None, readme
    return readme[:match.end()], readme[match.end():]


def _add_tags(front: str, tags: list[str]) -> str:
    """Insert missing tags into YAML front matter without rewriting anything else."""
    lines = front.splitlines(keepends=True)
    newline = "\r\n" if lines[0].endswith("\r\n") else "\n"
    for index, line in enumerate(lines):
        flow = re.match(r"^tags:\s*\[(.*)\]\s*$", line.rstrip("\r\n"))
        if flow:
            present = [t.strip().strip("'\"") for t in flow.group(1).split(",") if t.strip()]
            missing = [t for t in tags if t not in present]
            if missing:
                lines[index] = "tags: [" + ", ".join([flow.group(1).strip()] * bool(present) + missing) + "]" + newline
            return "".join(lines)
        if re.match(r"^tags:\s*$", line.rstrip("\r\n")):
            end = index + 1
            present = []
            indent = "- "
            while end < len(lines) - 1 and re.match(r"^\s*-\s", lines[end]):
                item = re.match(r"^(\s*-\s+)(.*)$", lines[end].rstrip("\r\n"))
                indent, value = item.group(1), item.group(2).strip().strip("'\"")
                present.append(value)
                end += 1
            lines[end:end] = [f"{indent}{t}{newline}" for t in tags if t not in present]
            return "".join(lines)
    # no tags key: add one just before the closing ---
    lines[-1:-1] = [f"tags:{newline}"] + [f"- {t}{newline}" for t in tags]
    return "".join(lines)
