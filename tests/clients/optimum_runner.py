"""Loads an exported model with optimum-onnx's ORTModelFor… classes and runs it (run with the optimum venv's python).

    python optimum_runner.py REQUEST.json RESULT.json

REQUEST.json:
    {"model": "/abs/path/to/repo" | "owner/name",   # a local directory, or a Hub repo id (HF_ENDPOINT decides where)
     "class": "ORTModelForCausalLM",
     "options": {"file_name": "model_sequence_classification.onnx", "subfolder": "onnx", "revision": "main"},
     "runs": [
       {"kind": "forward", "inputs": {"input_ids": {"dtype": "int64", "dims": [2, 5], "data": [...]}, ...}},
       {"kind": "generate", "inputs": {"input_ids": {...}, "attention_mask": {...}}, "max_new_tokens": 8}
     ]}

RESULT.json: {"ok": true, "class": ..., "sessions": {component: {"file": path in the repo, "inputs": [...],
"outputs": [...]}}, "results": [{"outputs": {name: {"dtype", "dims", "data"}}} | {"sequences": [[...], ...]}
| {"error": "..."} (a run that failed)]}
or {"ok": false, "error": "...", "traceback": "..."} with exit code 1. Only the standard library is imported at
module level, so a broken install still produces a readable answer.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from pathlib import Path

DTYPES = {"int64": "int64", "int32": "int32", "float32": "float32", "bool": "bool"}
COMPONENTS = ("", "encoder", "decoder", "decoder_with_past")


def _tensor(spec: dict):
    import numpy as np
    import torch

    array = np.asarray(spec["data"], dtype=DTYPES[spec["dtype"]]).reshape(spec["dims"])
    return torch.from_numpy(array)


def _plain(value) -> dict:
    import numpy as np

    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return {"dtype": str(array.dtype), "dims": list(array.shape), "data": array.reshape(-1).tolist()}


def _repo_path(path: Path, model: str) -> str:
    """The path of a loaded file inside the repo: relative to a local model dir, or to the Hub cache snapshot."""
    local = Path(model)
    if local.is_dir():
        try:
            return path.resolve().relative_to(local.resolve()).as_posix()
        except ValueError:
            pass
    match = re.search(r"/snapshots/[^/]+/(.+)$", path.as_posix())
    return match.group(1) if match else path.as_posix()


def _sessions(model, model_id: str) -> dict:
    found = {}
    for name in COMPONENTS:
        part = getattr(model, name, None) if name else model
        session = getattr(part, "session", None)
        if session is None:
            continue
        found[name or "model"] = {"file": _repo_path(Path(session._model_path), model_id),
                                  "inputs": [i.name for i in session.get_inputs()],
                                  "outputs": [o.name for o in session.get_outputs()]}
    return found


def _run_one(model, item: dict) -> dict:
    import torch

    inputs = {name: _tensor(spec) for name, spec in (item.get("inputs") or {}).items()}
    with torch.no_grad():
        if item["kind"] == "forward":
            output = model(**inputs)
            return {"outputs": {name: _plain(value) for name, value in output.items()
                                if isinstance(value, torch.Tensor)}}
        if item["kind"] == "generate":
            generation = {"max_new_tokens": item.get("max_new_tokens", 8), "do_sample": False, "num_beams": 1,
                          **(item.get("generation") or {})}
            return {"sequences": model.generate(**inputs, **generation).tolist()}
    raise ValueError(f"unknown run kind {item['kind']}")


def run(request: dict) -> dict:
    import optimum.onnxruntime as ort_models

    cls = getattr(ort_models, request["class"], None)
    if cls is None:
        raise ValueError(f"optimum.onnxruntime has no class {request['class']}")
    options = dict(request.get("options") or {})
    model = cls.from_pretrained(request["model"], **options)
    answer = {"ok": True, "class": type(model).__name__, "sessions": _sessions(model, request["model"]),
              "results": []}
    for item in request.get("runs", []):
        try:
            answer["results"].append(_run_one(model, item))
        except Exception as exc:  # noqa: BLE001 - one failing run does not hide the others
            answer["results"].append({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    return answer


def main() -> int:
    request_path, result_path = sys.argv[1], Path(sys.argv[2])
    try:
        answer, code = run(json.loads(Path(request_path).read_text())), 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a readable answer for the test
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        code = 1
    result_path.write_text(json.dumps(answer) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
