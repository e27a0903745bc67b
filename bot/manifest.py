"""`export_manifest.json`: what was exported from what, with which tools, and how it validated.

The source hashes recorded here are what later runs compare to decide "up to date"; the schema is documented in
the README and versioned by SCHEMA_VERSION.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from bot import __version__

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
        "artifacts": [
            {
                "path": a.path,
                "format": a.format,
                "feature": a.feature,
                "component": a.component,
                "inputs": a.inputs,
                "outputs": a.outputs,
                "dynamic_axes": {name: {str(i): axis for i, axis in axes.items()} for name, axes in a.dynamic_axes.items()},
                "opset": a.opset,
                "exporter": a.exporter,
                "sha256": a.files[a.path]["sha256"],
                "size": a.size,
                "files": a.files,
                "random_head": a.random_head,
                "validation": a.validation.to_dict(),
            }
            for a in result.artifacts
        ],
        "failed": [
            {"feature": f.feature, "format": f.format, "component": f.component, "error": f.error,
             "validation": f.validation.to_dict() if f.validation else None}
            for f in result.failures
        ],
        "skipped": result.skipped,
    }


def write_manifest(result, path: Path, options) -> Path:
    """Write atomically, so a crash never leaves a truncated manifest."""
    data = build_manifest(result, options)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
