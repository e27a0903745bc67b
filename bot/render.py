"""Render results for people: the seed-style validation log and the final summary (terminal text)."""

from __future__ import annotations

from bot.validate import ValidationReport

OK, FAIL = "✓", "✗"
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def _mark(ok: bool) -> str:
    return OK if ok else FAIL


def validation_log(report: ValidationReport, path: str) -> str:
    """The log users know from `python -m transformers.onnx`, extended with every shape tried and the max diff."""
    kind = _FORMAT_NAMES[report.format]
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
            close = output.values_ok(report.atol)
            lines.append(f"\t\t\t-[{_mark(close)}] {'all values close' if close else 'values not close'} "
                         f"(atol: {report.atol:g}, max diff: {output.max_abs_diff:.3g})")
    if report.generation is not None:
        g = report.generation
        verdict = "matches" if g["passed"] else "differs from"
        lines.append(f"\t-[{_mark(g['passed'])}] greedy decoding with the artifacts {verdict} generate(): "
                     f"{g['actual']} vs {g['expected']}" + (f" ({g['error']})" if g["error"] else ""))
    return "\n".join(lines)


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
    for feature, reason in result.skipped.items():
        lines.append(f"  [-] {feature:<24} skipped: {reason}")
    seconds = result.timings.get("total", 0.0)
    if result.ok:
        lines.append(f"All good: {len(result.artifacts)} artifacts validated in {seconds:.1f} s, "
                     f"manifest at {result.manifest_path}")
    else:
        lines.append(f"{len(result.failures)} artifact(s) failed, {len(result.artifacts)} validated "
                     f"({seconds:.1f} s); failed artifacts were not written")
    return "\n".join(lines)


def publish_summary(result) -> str:
    """What a publish run did, for the terminal; a dry run shows the PR it would open."""
    lines = []
    if result.export is not None:
        for artifact in result.export.artifacts:
            lines.append(validation_log(artifact.validation, artifact.path))
        lines.append(summary(result.export))
    if result.status == "dry-run":
        lines += ["", f"PR title: {result.title}", "", result.description, "Files:"]
        lines += [f"  {path}" for path in result.files]
    lines.append(f"{result.status}: {result.message}" + (f" — {result.pr_url}" if result.pr_url else ""))
    return "\n".join(lines)
