"""Render results for people: the validation log and the final summary (terminal text), the one jinja2 renderer
of the markdown templates in templates/ (model card, PR description, the Action's step summary, PR comments), and
the markdown escaping every untrusted string goes through there."""

from __future__ import annotations

import json
import keyword
import math
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: importing bot.validate loads torch, which the escaping helpers do not need
    from bot.validate import ValidationReport

OK, FAIL = "✓", "✗"
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def _mark(ok: bool) -> str:
    return OK if ok else FAIL


def validation_log(report: ValidationReport, path: str, verbose: bool = False) -> str:
    """The validation log: one line per input shape by default; on failure or with `verbose` the log users know
    from `python -m transformers.onnx`, extended with every shape tried and the max diff of every output."""
    kind = _FORMAT_NAMES[report.format]
    if not verbose and report.passed:
        return _compact_log(report, kind, path)
    lines = [f"Validating {kind} model {path}..."]
    for check in report.checks:
        lines.append(f"\t- inputs: {check.shape}")
        if check.error:
            lines.append(f"\t\t-[{FAIL}] the model failed to run: {check.error}")
            continue
        names_ok = report.names_ok(check)
        shown = ", ".join(check.actual_names)
        lines.append(f"\t\t-[{_mark(names_ok)}] {kind} model output names match reference model ({shown})")
        for output in check.outputs:
            lines.append(f'\t\t- Validating {kind} Model output "{output.name}":')
            lines.append(f"\t\t\t-[{_mark(output.shape_ok())}] {output.actual_shape} matches {output.expected_shape}")
            close = output.values_ok()
            lines.append(f"\t\t\t-[{_mark(close)}] {'all values close' if close else 'values not close'} "
                         f"(atol: {report.atol:g}, rtol: {report.rtol:g}, max abs diff: {output.max_abs_diff:.3g}, "
                         f"max rel diff: {output.max_rel_diff:.3g})")
    return "\n".join(lines + _generation_lines(report))


def _compact_log(report: ValidationReport, kind: str, path: str) -> str:
    """A passed report: the graph, then per input shape the output count and the largest difference."""
    lines = [f"Validated {kind} model {path} (atol {report.atol:g}, rtol {report.rtol:g}):"]
    for check in report.checks:
        worst = max((o.max_abs_diff for o in check.outputs), default=0.0)
        lines.append(f"\t-[{OK}] {check.shape}: {len(check.outputs)} outputs close, max abs diff {worst:.3g}")
    return "\n".join(lines + _generation_lines(report))


def _generation_lines(report: ValidationReport) -> list[str]:
    lines = []
    if report.generation is not None:
        g = report.generation
        verdict = "matches" if g["passed"] else "differs from"
        lines.append(f"\t-[{_mark(g['passed'])}] greedy decoding with the artifacts {verdict} generate(): "
                     f"{g['actual']} vs {g['expected']}" + (f" ({g['error']})" if g["error"] else ""))
    return lines


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def summary(result) -> str:
    """Final table: one line per artifact and failure, then skipped features and the verdict."""
    lines = ["", f"Export of {result.source} ({result.model_type}, primary feature: {result.primary})"]
    for a in result.artifacts:
        worst = max(a.validation.max_abs_diff.values(), default=0.0)
        flag = " (random head)" if a.random_head else ""
        lines.append(f"  [{OK}] {a.feature:<24} {a.format:<12} {a.path:<42} {human_size(a.size):>9}  "
                     f"max diff {worst:.2g} <= {a.validation.atol:g}  via {a.exporter}{flag}")
    for f in result.failures:
        lines.append(f"  [{FAIL}] {f.feature:<24} {f.format:<12} {f.error}")
    for features, reason in collapse_skipped(result.skipped):
        lines.append(f"  [-] {', '.join(features):<24} skipped: {reason}")
    seconds = result.timings.get("total", 0.0)
    if result.ok:
        lines.append(f"All good: {len(result.artifacts)} artifacts validated in {seconds:.1f} s, "
                     f"manifest at {result.manifest_path}")
    else:
        lines.append(f"{len(result.failures)} artifact(s) failed, {len(result.artifacts)} validated "
                     f"({seconds:.1f} s); failed artifacts were not written")
    return "\n".join(lines)


def collapse_skipped(skipped: dict[str, str]) -> list[tuple[list[str], str]]:
    """Skipped features grouped by reason, in first-seen order: six heads missing for one reason are one line."""
    grouped: dict[str, list[str]] = {}
    for feature, reason in skipped.items():
        grouped.setdefault(reason, []).append(feature)
    return [(features, reason) for reason, features in grouped.items()]


def publish_summary(result, verbose: bool = False) -> str:
    """What a publish run did, for the terminal; a dry run shows the PR it would open."""
    lines = []
    if result.export is not None:
        for artifact in result.export.artifacts:
            lines.append(validation_log(artifact.validation, artifact.path, verbose))
        lines.append(summary(result.export))
    if result.status == "dry-run":
        lines += ["", f"PR title: {result.title}", "", result.description, "Files:"]
        lines += [f"  {path}" for path in result.files]
    lines.append(f"{result.status}: {result.message}" + (f" — {result.pr_url}" if result.pr_url else ""))
    return "\n".join(lines)


# -- markdown for untrusted strings ----------------------------------------------------------------------------------
#
# Repo and file names, feature, input and output names, config class names and exporters' error messages come from
# people we do not know. Wherever they are shown in markdown they must read as the text they are: never a link, an
# image, raw HTML, emphasis, a new table column, a new line or paragraph, or the end of a code block.

_INVISIBLE = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")  # controls, bidi, zero-width
# Every character that can open inline markup, HTML or an entity; `_` only where it can start or end emphasis (not
# inside a word, so `input_ids` stays readable in the raw card).
_MARKUP = re.compile(r"[\\`*\[\]<>|&~$]|(?<![^\W_])_|_(?![^\W_])")
_LINE_START = re.compile(r"[#+=-]|\d+[.)]")  # what makes the start of a line a heading, list item or underline
_AUTOLINK = re.compile(r"(?i)://|www\.")  # bare URLs some renderers turn into links
_BACKTICKS = re.compile(r"`+")


def one_line(value: object) -> str:
    """`value` on one line, whitespace runs as one space and invisible or direction-changing characters shown as
    U+FFFD: safe inside a fenced code block, which only a new line starting with a fence could end."""
    return _INVISIBLE.sub("\ufffd", " ".join(str(value).split()))


def md_text(value: object) -> str:
    """`value` as inert inline markdown text, safe in prose, list items and table cells (GFM reads `\\|` as a
    literal pipe inside a cell). Backslash escapes only: the rendered text is exactly the original one."""
    text = _MARKUP.sub(lambda m: "\\" + m.group(0), one_line(value))
    text = _AUTOLINK.sub(lambda m: "\\://" if m.group(0) == "://" else m.group(0)[:3] + "\\.", text)
    start = _LINE_START.match(text)
    if start:  # escape the punctuation that would make a line of its own a heading or a list item
        end = start.end()
        text = text[:end - 1] + "\\" + text[end - 1:]
    return text


def md_code(value: object) -> str:
    """`value` as an inline code span, safe in prose and table cells. The fence is one backtick longer than the
    longest backtick run inside (CommonMark's rule); a value with a pipe falls back to md_text, because GFM splits
    table cells on pipes even inside code spans and a `\\|` would show its backslash outside tables."""
    text = one_line(value)
    if not text or "|" in text:
        return md_text(text)
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_href(value: object) -> str:
    """A link destination, `[text](here)`: an http(s) URL with nothing that could end the link or start markup,
    else `#` (a dead link is better than a crafted one)."""
    text = one_line(value)
    return text if re.fullmatch(r"https?://[^\s<>()\[\]`|\\\ufffd\"']+", text) else "#"


def md_url(value: object) -> str:
    """An http(s) URL as an autolink `<url>`; anything else (spaces, angle brackets, other schemes) as text."""
    text = one_line(value)
    if re.fullmatch(r"https?://[^\s<>`|\\\ufffd]+", text):
        return f"<{text}>"
    return md_text(text)


def py_str(value: object) -> str:
    """A Python string literal for code snippets people copy: quotes, backslashes and new lines escaped, non-ASCII
    as \\u escapes (a JSON string is a valid Python literal), so a value can neither end the string nor the block."""
    return json.dumps(str(value), ensure_ascii=True)


def py_name(value: object) -> str:
    """A name used as a variable in a Python snippet: itself when it is an identifier, else a string literal, so a
    crafted input name can never add code to a snippet people run."""
    text = str(value)
    return text if text.isidentifier() and not keyword.iskeyword(text) and text.isascii() else py_str(text)


def md_block(value: object, language: str = "") -> str:
    """`value` as a fenced code block: each line made visible as one_line does, and a fence longer than any backtick
    run inside, so no line can end the block."""
    lines = [one_line(line) if line.strip() else "" for line in str(value).splitlines()]
    longest = max((len(run) for line in lines for run in _BACKTICKS.findall(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([fence + language, *lines, fence])


MARKDOWN_FILTERS = {"md": md_text, "code": md_code, "url": md_url, "href": md_href, "py": py_str,
                    "py_name": py_name, "one_line": one_line, "block": md_block}


def template_text(name: str, override: Path | None = None) -> str:
    """A template from templates/ (the source tree, else the installed bot.templates), or a user's override."""
    if override is not None:
        return Path(override).read_text(encoding="utf-8")
    source_tree = Path(__file__).resolve().parent.parent / "templates" / name
    if source_tree.is_file():
        return source_tree.read_text(encoding="utf-8")
    return resources.files("bot.templates").joinpath(name).read_text(encoding="utf-8")


def render_template(name: str, context: dict, override: Path | None = None) -> str:
    """Render a markdown template with the escaping filters; no autoescape (it is markdown, not HTML): the
    templates escape every untrusted value themselves, with `md`, `code`, `url`, `href` or `one_line`."""
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)
    environment.filters.update(MARKDOWN_FILTERS)
    try:
        return environment.from_string(template_text(name, override)).render(**context).strip() + "\n"
    except jinja2.TemplateError as exc:
        from bot.errors import UsageError

        raise UsageError(f"template {override or name} failed to render: {exc}") from exc


# -- JSON for machines (`--json`, the Action's report) ----------------------------------------------------------------


def _finite(value: object) -> object:
    """JSON has no NaN or infinity; a diff that blew up is reported as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def worst_diff(validation: object) -> float | None:
    diffs = getattr(validation, "max_abs_diff", None) or {}
    values = list(diffs.values()) if isinstance(diffs, dict) else [diffs]
    return max(values) if values else None


def export_data(export: object) -> dict | None:
    """An ExportResult as plain JSON: one row per artifact and per failure, the skipped features, the verdict."""
    if export is None:
        return None
    artifacts = []
    for a in getattr(export, "artifacts", []):
        v = getattr(a, "validation", None)
        per_output = {k: _finite(x) for k, x in (getattr(v, "max_abs_diff", None) or {}).items()}
        artifacts.append({"path": a.path, "format": a.format, "feature": a.feature, "size": a.size,
                          "exporter": getattr(a, "exporter", None), "passed": getattr(v, "passed", None),
                          "atol": getattr(v, "atol", None), "max_abs_diff": _finite(worst_diff(v)),
                          "max_abs_diff_per_output": per_output})
    failures = []
    for f in getattr(export, "failures", []):
        v = getattr(f, "validation", None)
        failures.append({"feature": f.feature, "format": f.format, "error": f.error,
                         "atol": getattr(v, "atol", None), "max_abs_diff": _finite(worst_diff(v)) if v else None})
    manifest = getattr(export, "manifest_path", None)
    timings = getattr(export, "timings", None) or {}
    return {"ok": bool(getattr(export, "ok", False)), "source": getattr(export, "source", None),
            "revision": getattr(export, "revision", None), "model_type": getattr(export, "model_type", None),
            "primary": getattr(export, "primary", None), "artifacts": artifacts, "failures": failures,
            "skipped": dict(getattr(export, "skipped", None) or {}),
            "manifest": str(manifest) if manifest else None, "seconds": timings.get("total"),
            "removed": list(getattr(export, "removed", None) or [])}


def publish_data(result) -> dict:
    """A PublishResult as plain JSON, for `publish --json`."""
    return {"status": result.status, "exit_code": result.exit_code, "message": result.message,
            "repo_id": result.repo_id, "revision": result.revision, "pr_url": result.pr_url,
            "pr_num": result.pr_num, "pr_action": result.pr_action, "title": result.title,
            "files": list(result.files), "added": list(result.added), "replaced": list(result.replaced),
            "removed": list(result.removed), "withheld": list(result.withheld), "warnings": list(result.warnings),
            "export": export_data(result.export)}
