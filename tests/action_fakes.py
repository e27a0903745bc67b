"""Test doubles for bot.publish.publish, used by tests/test_action.py.

In process they are passed as `run_action(..., publish_fn=...)`; in a subprocess they are selected with the test
hook `HUB_EXPORT_BOT_PUBLISH=tests.action_fakes:<name>` (see bot/action.py). Each records the call it received in
`work_dir/publish_call.json` (the token only as a yes/no) and returns results built from the real pipeline
dataclasses, so the action renders exactly what a real export would hand it.
"""

from __future__ import annotations

import json
from pathlib import Path

from bot.errors import UsageError
from bot.pipeline import Artifact, ExportResult, Failure
from bot.job import DRY_RUN, FAILED, OPENED, UP_TO_DATE, PublishResult
from bot.validate import OutputCheck, ShapeCheck, ValidationReport

SHA = "4f1c0de" + "0" * 33  # the Hub commit the fakes pretend to have exported


def _record(job, endpoint, token, work_dir: Path, progress) -> None:
    progress("resolving the checkpoint")
    progress("::set-output name=evil::pwned\nsecond line of a multi-line message")
    call = {"repo_id": job.repo_id, "source_dir": str(job.source_dir), "source_url": job.source_url,
            "trigger": job.trigger, "dry_run": job.dry_run, "features": list(job.options.features),
            "formats": list(job.options.formats), "opset": job.options.opset, "atol": job.options.atol,
            "endpoint": endpoint, "token_given": bool(token), "work_dir": str(work_dir)}
    (Path(work_dir) / "publish_call.json").write_text(json.dumps(call))


def _report(fmt: str, atol: float, diff: float) -> ValidationReport:
    checks = [ShapeCheck(shape, ["last_hidden_state"], [OutputCheck("last_hidden_state", (2, 7, 32), (2, 7, 32), diff)])
              for shape in ("batch=2, sequence=7", "batch=3, sequence=13, padded")]
    return ValidationReport(fmt, atol, ["last_hidden_state"], checks)


def _artifact(feature: str, fmt: str, path: str, size: int, diff: float) -> Artifact:
    return Artifact(path=path, format=fmt, feature=feature, component="model", inputs=["input_ids", "attention_mask"],
                    outputs=["last_hidden_state"], dynamic_axes={}, opset=18 if fmt == "onnx" else None,
                    exporter="dynamo" if fmt == "onnx" else "trace", files={path: {"sha256": "0" * 64, "size": size}},
                    validation=_report(fmt, 1e-4, diff), seconds=1.0)


def export_result(work_dir: Path, failing: bool = False) -> ExportResult:
    result = ExportResult(source="model", revision=SHA, model_type="bert", support="registry", primary="default",
                          output_dir=Path(work_dir) / "export", source_files={"model.safetensors": "a" * 64},
                          skipped={"masked-lm": "the checkpoint has no weights for its head (cls.predictions)"})
    result.artifacts = [_artifact("default", "onnx", "onnx/model.onnx", 1_234_567, 3.1e-6),
                        _artifact("default", "torchscript", "torchscript/model.pt", 1_300_000, 0.0)]
    if failing:
        result.failures = [Failure("default", "onnx", "values not close: max diff 0.21 > atol 0.0001 | output "
                                   "last_hidden_state", _report("onnx", 1e-4, 0.21))]
        result.artifacts = result.artifacts[1:]
    return result


def opened(job, *, endpoint, token, work_dir, progress=None):
    _record(job, endpoint, token, work_dir, progress)
    return PublishResult(OPENED, job.repo_id, SHA, "opened a PR with 2 artifacts, the manifest and the model card",
                         pr_url=f"{endpoint}/{job.repo_id}/discussions/3", pr_num=3,
                         export=export_result(work_dir), files=["onnx/model.onnx", "torchscript/model.pt",
                                                                "export_manifest.json", "README.md"],
                         title="Add ONNX and TorchScript exports")


def failed(job, *, endpoint, token, work_dir, progress=None):
    _record(job, endpoint, token, work_dir, progress)
    return PublishResult(FAILED, job.repo_id, SHA, "1 artifact failed validation (default, onnx): nothing was "
                         "published", export=export_result(work_dir, failing=True))


def up_to_date(job, *, endpoint, token, work_dir, progress=None):
    _record(job, endpoint, token, work_dir, progress)
    return PublishResult(UP_TO_DATE, job.repo_id, SHA, "the Hub repo already has exports of these source files")


def dry_run(job, *, endpoint, token, work_dir, progress=None):
    _record(job, endpoint, token, work_dir, progress)
    return PublishResult(DRY_RUN, job.repo_id, SHA, "dry run: this is the PR that would be opened",
                         export=export_result(work_dir), files=["onnx/model.onnx", "torchscript/model.pt"])


def leaky(job, *, endpoint, token, work_dir, progress=None):
    """A pipeline that (wrongly) puts the token in its messages: the action must still never show it."""
    _record(job, endpoint, token, work_dir, progress)
    progress(f"using token {token}")
    return PublishResult(FAILED, job.repo_id, None, f"the Hub refused token {token}")


def unsupported(job, *, endpoint, token, work_dir, progress=None):
    _record(job, endpoint, token, work_dir, progress)
    raise UsageError("unsupported architecture 'mamba9': no export spec is registered for it")


def crash(job, *, endpoint, token, work_dir, progress=None):
    _record(job, endpoint, token, work_dir, progress)
    raise RuntimeError("boom")
