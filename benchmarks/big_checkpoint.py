"""The > 2 GB case: export a random GPT-2-style checkpoint just over 2 GiB and compare with a floor.

    python benchmarks/big_checkpoint.py [--checkpoint fp32|fp32-7gb|sharded-bf16] [--exporter auto|dynamo|torchscript]
                                        [--peer] [--keep-output] [--json PATH]

Slow (minutes) and heavy (the checkpoint and an artifact of the same size on disk, 2.2 GB each by default, 6.8 GB
each with --checkpoint fp32-7gb; RAM: ~1.1x that for ours, ~2.2x for --peer): run it by hand, it is not part of
compare_optimum.py. It
1. generates the checkpoint once under benchmarks/.cache/ckpt: by default gpt2-big, GPT2LMHeadModel, n_embd 2048,
   9 layers, 16 heads, vocab 50257, random float32 weights in one model.safetensors of ~2.23 GB (> 2 GiB, the
   protobuf limit); see VARIANTS for the others;
2. runs `hub-export-bot export --model DIR --feature causal-lm --format onnx OUT` as one measured process (wall, CPU,
   peak RSS by /usr/bin/time -v or os.wait4), sampling the process's RSS every 0.2 s against its progress lines, so
   the peak can be attributed to a phase;
3. measures a floor in a separate process: read the checkpoint files, write as many bytes as the artifact has, and
   one forward pass at the export shape (batch 2 x 8 tokens) -- imports and model construction excluded from its
   time; its peak RSS (imports, the model and that forward pass) is the memory floor of any export validated
   against PyTorch;
   (`--peer` measures optimum-cli export onnx --task text-generation on the same checkpoint instead, for context);
4. checks the output is onnx/model.onnx + its external-data chunks (model.onnx_data, model.onnx_data_1, ..., each at
   most 2,000,000,000 bytes), and that onnxruntime loads it and matches
   PyTorch on one input;
5. prints the figures and writes them to benchmarks/results-big.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the benchmark helpers, and this checkout's bot
from checkpoints import CKPT  # noqa: E402
from bot.export.external import CHUNK_BYTES  # noqa: E402
from bot.layout import external_data_name  # noqa: E402
from compare_optimum import (OFFLINE, PEER_VENV, code_version, ensure_ours, ensure_peer, machine, tool_env,
                             versions)  # noqa: E402

OUT = HERE / ".cache" / "out" / "gpt2-big"
RESULTS = HERE / "results-big.json"
GIB = 1024**3
# checkpoint variant -> (directory, config, dtype it is stored in, max shard size or None for one file)
VARIANTS = {
    "fp32": (CKPT / "gpt2-big", dict(n_embd=2048, n_layer=9, n_head=16, vocab_size=50257, n_positions=1024),
             "float32", None),
    # the size the Why of the memory goal names (a 7 GB checkpoint): 6.8 GB of float32 in one file
    "fp32-7gb": (CKPT / "gpt2-7gb", dict(n_embd=2560, n_layer=20, n_head=20, vocab_size=50257, n_positions=1024),
                 "float32", None),
    # 2.2 GB of bf16 in shards: the graph gets fp32 weights (bot.checkpoint.load_model), twice the checkpoint
    "sharded-bf16": (CKPT / "gpt2-big-bf16-sharded",
                     dict(n_embd=2048, n_layer=20, n_head=16, vocab_size=50257, n_positions=1024), "bfloat16", "1GB"),
}


def generate(variant: str = "fp32") -> Path:
    BIG, CONFIG, dtype, shard = VARIANTS[variant]
    if (BIG / "config.json").is_file():
        return BIG
    code = f"""
import torch, transformers
from pathlib import Path
torch.manual_seed(0)
config = transformers.GPT2Config(**{CONFIG!r})
model = transformers.GPT2LMHeadModel(config).eval().to(torch.{dtype})
target = Path({str(BIG) + '.tmp'!r})
model.save_pretrained(target{f", max_shard_size={shard!r}" if shard else ""})
for f in target.iterdir():
    f.chmod(0o644)
target.rename({str(BIG)!r})
"""
    print(f"generating {BIG} (random GPT-2, {CONFIG}) ...", flush=True)
    shutil.rmtree(str(BIG) + ".tmp", ignore_errors=True)
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, **OFFLINE))
    return BIG


def _children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
                found += kids
                todo += kids
        except OSError:
            continue
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def export(checkpoint: Path, exporter: str) -> dict:
    """One export as one measured process, with an RSS timeline lined up with its progress lines (ours only)."""
    shutil.rmtree(OUT, ignore_errors=True)
    if exporter == "optimum":
        cli = PEER_VENV / "bin" / "optimum-cli"
        command = [str(cli), "export", "onnx", "--model", str(checkpoint), "--task", "text-generation",
                   "--library-name", "transformers", str(OUT)]
        bin_dir = cli.parent
    else:
        ours = ensure_ours()
        command = [str(ours), "export", "--model", str(checkpoint), "--feature", "causal-lm", "--format", "onnx",
                   "--exporter", exporter, str(OUT)]
        bin_dir = ours.parent
    timefile = OUT.with_suffix(".time")
    timefile.parent.mkdir(parents=True, exist_ok=True)
    use_time = Path("/usr/bin/time").is_file()
    full = ["/usr/bin/time", "-v", "-o", str(timefile)] + command if use_time else command
    lines, samples = [], []
    started = time.perf_counter()
    process = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=tool_env(bin_dir))

    def read():
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while True:
        pids = [process.pid] + _children(process.pid)
        samples.append((time.perf_counter() - started, sum(_rss(p) for p in pids)))
        try:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    reader.join()
    record = {"command": " ".join(command), "wall_s": wall, "rc": os.waitstatus_to_exitcode(status)}
    if use_time:
        text = timefile.read_text()
        record["peak_rss_bytes"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024
        record["cpu_s"] = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1))
                              for k in ("User", "System"))
    else:
        record["peak_rss_bytes"], record["cpu_s"] = usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
    # attribute the sampled RSS to the phase announced by the latest progress line
    progress = [(t, line) for t, line in lines if re.match(r"\[\s*[\d.]+s\]", line)]
    phases = []
    for index, (begin, line) in enumerate(progress):
        end = progress[index + 1][0] if index + 1 < len(progress) else wall
        peak = max((rss for t, rss in samples if begin <= t < end), default=0)
        phases.append({"from_s": round(begin, 1), "to_s": round(end, 1), "line": line, "peak_rss_bytes": peak})
    first = progress[0][0] if progress else wall
    record["startup"] = {"to_s": round(first, 1),
                         "peak_rss_bytes": max((rss for t, rss in samples if t < first), default=0)}
    record["phases"] = phases
    record["output_tail"] = [line for _, line in lines[-6:]]
    return record


FLOOR = r"""
import json, os, resource, sys, time
import numpy as np
started = time.perf_counter()
import torch, transformers, onnxruntime
imports = time.perf_counter() - started
checkpoint, out, artifact_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
transformers.logging.set_verbosity_error()
# 1. read the checkpoint's files (the page cache is as warm as it was for the export)
started = time.perf_counter()
size = 0
for name in sorted(os.listdir(checkpoint)):
    with open(os.path.join(checkpoint, name), "rb", buffering=0) as handle:
        while chunk := handle.read(64 << 20):
            size += len(chunk)
read_s = time.perf_counter() - started
# 2. write as many bytes as the artifact has (no fsync, as the exporter does not fsync either)
scratch = os.path.join(out, "..", "floor-write.bin")
block = os.urandom(64 << 20)
started = time.perf_counter()
with open(scratch, "wb", buffering=0) as handle:
    left = artifact_bytes
    while left > 0:
        left -= handle.write(block[: min(left, len(block))])
write_s = time.perf_counter() - started
os.remove(scratch)
# 3. one forward pass at the export shape (batch 2 x 8 tokens); loading the model is not part of the floor
started = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()  # as the export does
load_s = time.perf_counter() - started
ids = torch.randint(5, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
mask = torch.ones_like(ids)
with torch.no_grad():  # the first call, cold, as the exporter's first call is
    started = time.perf_counter()
    reference = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
forward_s = time.perf_counter() - started
held_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # imports + the model + one forward pass
del model
# 4. the artifact: onnxruntime loads it and agrees with PyTorch
started = time.perf_counter()
session = onnxruntime.InferenceSession(os.path.join(out, "onnx", "model.onnx"), providers=["CPUExecutionProvider"])
session_s = time.perf_counter() - started
given = {"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1}
feed = {i.name: given[i.name].numpy() for i in session.get_inputs()}
logits = session.run(None, feed)[0]
print(json.dumps({"imports_s": imports, "read_s": read_s, "read_bytes": size, "write_s": write_s,
                  "write_bytes": artifact_bytes, "load_model_s": load_s, "forward_s": forward_s,
                  "model_held_peak_rss_bytes": held_rss,
                  "ort_session_s": session_s, "ort_inputs": sorted(feed),
                  "ort_max_abs_diff": float(np.abs(logits - reference).max())}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-output", action="store_true", help=f"keep the exported artifact in {OUT}")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                        help="our --exporter (default auto); results are stored per value")
    parser.add_argument("--peer", action="store_true",
                        help="instead of ours, measure `optimum-cli export onnx --task text-generation` on the same "
                             "checkpoint (wall, CPU, peak RSS and files only), stored as 'optimum'")
    parser.add_argument("--checkpoint", default="fp32", choices=list(VARIANTS),
                        help="fp32: one 2.23 GB float32 file (default); fp32-7gb: one 6.8 GB float32 file; sharded-bf16: "
                             "2.2 GB of bfloat16 in shards plus an index, exported as fp32 graphs of twice that size")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.peer:
        ensure_peer()
        args.exporter = "optimum"
    checkpoint = generate(args.checkpoint)
    weights = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    print(f"checkpoint {checkpoint}: {weights / 1e9:.2f} GB of safetensors ({weights / GIB:.2f} GiB)", flush=True)
    print("exporting (" + ("optimum-cli export onnx --task text-generation" if args.peer else
                           "hub-export-bot export --feature causal-lm --format onnx") + ") ...", flush=True)
    code = code_version()
    record = export(checkpoint, args.exporter)
    manifest = OUT / "export_manifest.json"
    used = [a["exporter"] for a in json.loads(manifest.read_text())["artifacts"]] if manifest.is_file() else []
    files = sorted(p.relative_to(OUT).as_posix() for p in OUT.rglob("*") if p.is_file())
    onnx_files = [f for f in files if f.startswith("onnx/") or (args.peer and ".onnx" in f)]
    artifact = sum((OUT / f).stat().st_size for f in onnx_files)
    chunks = [f for f in onnx_files if f != "onnx/model.onnx"]  # model.onnx_data, model.onnx_data_1, ...
    layout_ok = (onnx_files[:1] == ["onnx/model.onnx"] and bool(chunks)
                 and chunks == [f"onnx/{external_data_name('model.onnx', i)}" for i in range(len(chunks))]
                 and all((OUT / f).stat().st_size <= CHUNK_BYTES for f in chunks))
    print(f"  rc={record['rc']} wall {record['wall_s']:.1f} s, CPU {record['cpu_s']:.1f} s, peak RSS "
          f"{record['peak_rss_bytes'] / 1e9:.2f} GB; files: {files}", flush=True)
    floor = {}
    if record["rc"] == 0 and layout_ok and not args.peer:
        print("measuring the floor and loading the artifact in onnxruntime ...", flush=True)
        done = subprocess.run([sys.executable, "-c", FLOOR, str(checkpoint), str(OUT), str(artifact)],
                              capture_output=True, text=True, env=dict(os.environ, **OFFLINE))
        floor = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
            {"error": done.stderr[-1500:]}
    floor_s = sum(floor.get(k, 0) for k in ("read_s", "write_s", "forward_s")) or None
    result = {
        "exporter_option": args.exporter, "exporter_used": used, "code": code, "code_at_end": code_version(),
        "machine": machine(), "versions": versions(str(ensure_ours().parent / "python")), "checkpoint": args.checkpoint,
        "config": VARIANTS[args.checkpoint][1], "checkpoint_dtype": VARIANTS[args.checkpoint][2],
        "checkpoint_files": sorted(p.name for p in checkpoint.iterdir()),
        "peak_rss_over_artifact": record["peak_rss_bytes"] / artifact if artifact else None,
        "checkpoint_bytes": weights, "export": record, "files": files, "artifact_bytes": artifact,
        "layout_ok": layout_ok, "floor": floor, "floor_s": floor_s,
        "peak_rss_over_checkpoint": record["peak_rss_bytes"] / weights,
        "wall_over_floor": record["wall_s"] / floor_s if floor_s else None,
        "loadavg_1m_end": os.getloadavg()[0],
    }
    stored = json.loads(args.json.read_text()) if args.json.is_file() else {}
    stored = stored if "by_exporter_option" in stored else {"by_exporter_option": {}}
    key = args.exporter if args.checkpoint == "fp32" else f"{args.exporter}/{args.checkpoint}"
    stored["by_exporter_option"][key] = result
    args.json.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"\n--exporter {args.exporter} (used: {', '.join(used) or 'n/a'}), code {code['head']}"
          f"{' + uncommitted bot/ changes' if code['bot_dirty'] else ''}")
    print(f"checkpoint {weights / 1e9:.2f} GB -> artifact {artifact / 1e9:.2f} GB "
          f"({f'model.onnx + {len(chunks)} external-data chunk(s)' if layout_ok else ', '.join(onnx_files) if args.peer else 'UNEXPECTED LAYOUT'})")
    print(f"peak RSS {record['peak_rss_bytes'] / 1e9:.2f} GB = {result['peak_rss_over_checkpoint']:.2f} x checkpoint, "
          f"{result['peak_rss_over_artifact'] or 0:.2f} x the exported weights (goal <= 1.2)")
    if floor_s:
        print(f"wall {record['wall_s']:.1f} s = {result['wall_over_floor']:.1f} x floor {floor_s:.1f} s (read "
              f"{floor['read_s']:.1f} + write {floor['write_s']:.1f} + forward {floor['forward_s']:.2f}); imports "
              f"{floor['imports_s']:.1f} s and model load {floor['load_model_s']:.1f} s not in the floor")
        print(f"floor peak RSS (imports, the model and one forward pass, nothing else): "
              f"{floor['model_held_peak_rss_bytes'] / 1e9:.2f} GB; ours / floor "
              f"{record['peak_rss_bytes'] / floor['model_held_peak_rss_bytes']:.2f}")
        print(f"onnxruntime loads it: session {floor['ort_session_s']:.1f} s, max diff vs PyTorch "
              f"{floor['ort_max_abs_diff']:.1e}")
    elif floor:
        print(f"floor/ORT check failed: {floor.get('error')}")
    print("phases (from progress lines; RSS sampled every 0.2 s):")
    print(f"  {'':>6} - {record['startup']['to_s']:6.1f} s  peak {record['startup']['peak_rss_bytes'] / 1e9:5.2f} GB  "
          f"(imports, config, sha256 of the checkpoint)")
    for phase in record["phases"]:
        print(f"  {phase['from_s']:6.1f} - {phase['to_s']:6.1f} s  peak {phase['peak_rss_bytes'] / 1e9:5.2f} GB  "
              f"{phase['line'][:90]}")
    if not args.keep_output:
        shutil.rmtree(OUT, ignore_errors=True)
    return 0 if record["rc"] == 0 and (layout_ok or args.peer) and "error" not in floor else 1


if __name__ == "__main__":
    sys.exit(main())
