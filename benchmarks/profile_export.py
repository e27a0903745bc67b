"""Where one `hub-export-bot export` spends its time and memory, phase by phase, without changing bot/.

    python benchmarks/profile_export.py --model DIR --feature F [--exporter auto|dynamo|torchscript] [--json PATH]

Runs the real CLI (`bot.cli.main`) in this process with timers wrapped around the pipeline's steps and the
exporter's internals: imports, opening/hashing the checkpoint, tokenizer, model load, building example inputs,
eager references, torch.export, decompositions, ONNX translation, onnxscript optimisation, the exporter's save,
our re-save (onnx.load + onnx.save_model + onnx.checker), ORT session creation, validation, greedy-decoding parity,
artifact hashing and the manifest. Each phase also gets its exact peak RSS: the kernel's high-water mark (VmHWM) is read and
reset (/proc/self/clear_refs) at every phase boundary and credited to every phase open at that moment (a 20 ms VmRSS
sampler is the fallback where the reset is not allowed). Times are inclusive; "self" excludes the timed phases nested inside.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

START = time.perf_counter()
_rss_now = [0]
_stop = threading.Event()


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    return _status("VmRSS:")


def _peak_since_reset() -> int:
    """The kernel's exact peak RSS (VmHWM) since the last reset, then reset it (writing 5 to clear_refs)."""
    peak = _status("VmHWM:")
    _rss_now[0] = max(_rss_now[0], peak)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:  # not allowed here: the 20 ms VmRSS sampler is all we have
        pass
    return peak


class Phases:
    def __init__(self):
        self.records = []  # (name, depth, start, seconds, self seconds, peak rss)
        self.stack = []  # [name, start, child seconds, peak rss]

    def sample(self, rss: int) -> None:
        for frame in self.stack:
            frame[3] = max(frame[3], rss)

    def timed(self, name: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            self.sample(_peak_since_reset())  # the peak so far belongs to the phases already open
            frame = [name, time.perf_counter(), 0.0, _rss()]
            self.stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                self.sample(_peak_since_reset())
                self.stack.pop()
                seconds = time.perf_counter() - frame[1]
                if self.stack:
                    self.stack[-1][2] += seconds
                self.records.append((name, len(self.stack), frame[1] - START, seconds, seconds - frame[2],
                                     frame[3]))
        return wrapper

    def patch(self, owner, attribute: str, name: str | None = None) -> None:
        original = getattr(owner, attribute)
        timed = self.timed(name or attribute, original)
        if isinstance(owner, type) and not isinstance(owner.__dict__.get(attribute), (staticmethod, classmethod)):
            setattr(owner, attribute, timed)
        elif isinstance(owner, type):
            setattr(owner, attribute, staticmethod(timed) if isinstance(owner.__dict__[attribute], staticmethod)
                    else classmethod(self.timed(name or attribute, original.__func__)))
        else:
            setattr(owner, attribute, timed)


def _sampler(phases: Phases) -> None:
    while not _stop.is_set():
        rss = _rss()
        _rss_now[0] = max(_rss_now[0], rss)
        phases.sample(rss)
        time.sleep(0.02)


def _git_head() -> str | None:
    import subprocess

    done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--feature", required=True)
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    parser.add_argument("--json", type=Path, help="also write the phases as JSON here")
    args = parser.parse_args()

    phases = Phases()
    threading.Thread(target=_sampler, args=(phases,), daemon=True).start()
    imports = {}
    for module in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "torch.onnx._internal.exporter._core",
                   "bot.cli", "bot.pipeline"):
        started = time.perf_counter()
        __import__(module)
        imports[module] = time.perf_counter() - started
    import onnx
    import torch
    from torch.onnx._internal.exporter import _core, _onnx_program, _registration
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils, utils as ts_utils

    from bot import checkpoint, cli, pipeline
    from bot.export import onnx as bot_onnx

    # the pipeline's steps (patched where the pipeline looks them up)
    for owner, attribute, name in [
        (checkpoint, "open_checkpoint", "open checkpoint (config, sha256 of sources)"),
        (checkpoint, "hash_source_files", "  sha256 of source files"),
        (checkpoint, "plan_features", "plan features"),
        (checkpoint, "load_tokenizer", "load tokenizer"),
        (checkpoint, "load_model", "load model (from_pretrained)"),
        (pipeline, "reference_cases", "eager references (validation inputs)"),
        (pipeline, "_dynamic_axes", "output axes (extra eager runs)"),
        (bot_onnx, "_run_exporter", "torch.onnx.export (incl. its save)"),
        (bot_onnx, "_finalize", "our re-save (_finalize)"),
        (onnx, "load", "onnx.load"),
        (onnx, "save_model", "onnx.save_model"),
        (onnx.checker, "check_model", "onnx.checker.check_model"),
        (pipeline, "onnx_runner", "ORT session for validation"),
        (pipeline, "validate", "validate (ORT runs + compare)"),
        (pipeline, "generation_reference", "generate() reference (eager)"),
        (pipeline, "_check_generation", "greedy decoding with the artifacts"),
        (pipeline, "_file_digest", "sha256 of artifacts"),
        (pipeline, "write_manifest", "write manifest"),
        # the dynamo exporter's own steps
        (torch.export, "export", "  torch.export.export"),
        (_registration.ONNXRegistry, "from_torchlib", "  torchlib registry"),
        (_core, "_prepare_exported_program_for_export", "  decompositions"),
        (_core, "_exported_program_to_onnx_program", "  translate to ONNX"),
        (_onnx_program.ONNXProgram, "optimize", "  onnxscript optimize"),
        (_onnx_program.ONNXProgram, "save", "  exporter save (model.onnx + .data)"),
        # the TorchScript-based exporter's own steps (the rest of its time is graph._export_onnx, C++)
        (ts_utils, "_model_to_graph", "  TS: trace + ONNX passes"),
        (onnx_proto_utils, "_export_file", "  TS: write the file"),
    ]:
        phases.patch(owner, attribute, name)
    original_spec_for = pipeline.spec_for

    def spec_for(*a, **k):
        spec = original_spec_for(*a, **k)
        spec.graphs = phases.timed("build graphs + example inputs", spec.graphs)
        return spec

    pipeline.spec_for = spec_for
    setup = time.perf_counter() - START
    with tempfile.TemporaryDirectory() as out:
        argv = ["export", "--model", args.model, "--feature", args.feature, "--format", "onnx",
                "--exporter", args.exporter, out]
        run = phases.timed("cli.main export", cli.main)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            code = run(argv)
        manifest = json.loads((Path(out) / "export_manifest.json").read_text()) if code == 0 else {}
        used = {a["component"]: a["exporter"] for a in manifest.get("artifacts", [])}
    _stop.set()
    _rss_now[0] = max(_rss_now[0], _status("VmHWM:"))
    total = time.perf_counter() - START
    # aggregate by name
    table: dict[str, dict] = {}
    for name, depth, begin, seconds, own, peak in phases.records:
        row = table.setdefault(name, {"calls": 0, "seconds": 0.0, "self": 0.0, "peak_rss": 0, "first": begin,
                                      "depth": depth})
        row["calls"] += 1
        row["seconds"] += seconds
        row["self"] += own
        row["peak_rss"] = max(row["peak_rss"], peak)
        row["first"] = min(row["first"], begin)
    print(f"exporter used: {used}")
    print(f"exit code {code}; total {total:.1f} s (python start to end, excluding the interpreter's own start), "
          f"peak RSS {_rss_now[0] / 1e6:.0f} MB")
    print(f"{'imports':48} {sum(imports.values()):7.2f} s   " + ", ".join(f"{k} {v:.2f}" for k, v in imports.items()))
    print(f"{'phase':48} {'calls':>5} {'incl s':>8} {'self s':>8} {'peak RSS':>9}")
    for name, row in sorted(table.items(), key=lambda item: item[1]["first"]):
        print(f"{name:48} {row['calls']:5d} {row['seconds']:8.2f} {row['self']:8.2f} {row['peak_rss'] / 1e6:7.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "feature": args.feature, "exporter": args.exporter,
                                         "exit_code": code, "exporter_used": used, "git_head": _git_head(), "total_s": total, "setup_s": setup, "imports_s": imports,
                                         "peak_rss_bytes": _rss_now[0], "phases": table}, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
