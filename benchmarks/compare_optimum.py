"""hub-export-bot vs optimum-cli export onnx, side by side, on one-feature ONNX exports.

    python benchmarks/compare_optimum.py [--runs N] [--cases minilm bert-base gpt2 t5-small]
                                         [--ours-exporter auto [dynamo torchscript]] [--latency-iters N]

Run it with the project's venv (the `python` that has hub-export-bot installed). It
1. builds its inputs into benchmarks/.cache/ckpt (benchmarks/checkpoints.py: bert-base, gpt2 and t5-small sized
   random checkpoints, and the real all-MiniLM-L6-v2);
2. installs the peer in its own venv benchmarks/.cache/optimum-venv if missing
   (`pip install torch==2.13.0 "optimum-onnx[onnxruntime]"`, which pins transformers 4.57);
3. runs ours and the peer interleaved (peer, ours, peer, ours, ... per case), each as a whole process measured from
   outside: wall time, CPU time and peak RSS (`/usr/bin/time -v`, else os.wait4's rusage of that one child);
4. on the artifacts of the last run, measures their size, their onnxruntime latency (same session options and inputs
   for both tools; the sessions are timed alternately) and their max difference from eager PyTorch (transformers 5
   in this venv) on that same input;
5. prints a table of medians and ratios ours/peer and writes benchmarks/results.json (machine, versions, raw runs).

Both tools run with HF_HUB_OFFLINE=1 and their own defaults otherwise (ours: opset 18, validation on 2-3 shapes plus
greedy-decoding parity for generative features; the peer: its per-architecture opset, validation on one shape).
The peer is given `--library-name transformers` so that it exports MiniLM's BertModel, as ours does, rather than
a sentence-transformers pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from checkpoints import CACHE, build  # noqa: E402

PEER_VENV = CACHE / "optimum-venv"
OURS_VENV = CACHE / "ours-venv"
OUT = CACHE / "out"
LOGS = CACHE / "logs"
RESULTS = HERE / "results.json"

# case -> (our feature, the peer's task)
CASES = {
    "minilm": ("default", "feature-extraction"),
    "bert-base": ("sequence-classification", "text-classification"),
    "gpt2": ("causal-lm-with-past", "text-generation-with-past"),
    "t5-small": ("seq2seq-lm-with-past", "text2text-generation-with-past"),
}
PEER = "optimum"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


# ---------------------------------------------------------------------------------------------------------------
# the peer's venv


def _venv(venv: Path, program: str, what: str, install: list[str]) -> Path:
    """`venv/bin/program`, installing `venv` first with the command `install`, run with the venv active."""
    cli = venv / "bin" / program
    if cli.is_file():
        return cli
    print(f"installing {what} into {venv} ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
    subprocess.run(install, check=True, env=env)
    return cli


def ensure_peer() -> Path:
    # torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build
    return _venv(PEER_VENV, "optimum-cli", "the peer (torch==2.13.0 CPU wheel, optimum-onnx[onnxruntime])",
                 ["pip", "install", "-q", "torch==2.13.0", "optimum-onnx[onnxruntime]"])


def ensure_ours() -> Path:
    """Ours installed the way users install it, like the peer in a venv of its own: `scripts/install.sh` (CPU torch,
    then the project and its runtime dependencies, no test extras). The checkout's code still runs (PYTHONPATH,
    tool_env); the venv only provides the dependencies. The development venv would not do: its test packages
    (scipy, pulled in by sentence-transformers) make `import transformers` 0.24 s slower, which the peer's does not."""
    return _venv(OURS_VENV, "hub-export-bot", "ours (scripts/install.sh)",
                 ["bash", str(HERE.parent / "scripts" / "install.sh")])


def versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for n in ('hub-export-bot', 'optimum', 'optimum-onnx', 'torch', 'transformers', 'onnx', 'onnxruntime',"
            " 'onnxscript', 'numpy'):\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def code_version() -> dict:
    """The commit of our code under test, and whether bot/ has uncommitted changes (read-only git commands)."""
    root = HERE.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "bot"], capture_output=True,
                           text=True)
    return {"head": head.stdout.strip() or None, "bot_dirty": bool(dirty.stdout.strip())}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "kernel": platform.release(),
            "python": platform.python_version(), "gpu": False}


# ---------------------------------------------------------------------------------------------------------------
# one measured process


def measure(command: list[str], env: dict, log: Path) -> dict:
    """Run one command alone; wall time from here, peak RSS and CPU time of that process (tree) from the kernel."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    timefile = log.with_suffix(".time")
    use_time = Path("/usr/bin/time").is_file()
    full = ["/usr/bin/time", "-v", "-o", str(timefile)] + command if use_time else command
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    record = {"wall_s": wall, "rc": process.returncode, "loadavg_1m_before": load}
    if use_time and timefile.is_file():
        text = timefile.read_text()
        record["peak_rss_bytes"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024
        record["cpu_s"] = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1))
                              for k in ("User", "System"))
        code = re.search(r"Exit status: (\d+)", text)
        record["rc"] = int(code.group(1)) if code else record["rc"]
    else:
        record["peak_rss_bytes"] = usage.ru_maxrss * 1024
        record["cpu_s"] = usage.ru_utime + usage.ru_stime
    if record["rc"] != 0:
        record["log_tail"] = log.read_text(errors="replace")[-1500:]
    return record


def tool_env(bin_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OFFLINE)
    if bin_dir != PEER_VENV / "bin":  # ours: this checkout's code, even if another one is installed
        env["PYTHONPATH"] = str(HERE.parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return env


def command_for(variant: str, case: str, checkpoint: Path, out: Path, peer_cli: Path) -> tuple[list[str], dict]:
    feature, task = CASES[case]
    if variant == PEER:
        return ([str(peer_cli), "export", "onnx", "--model", str(checkpoint), "--task", task,
                 "--library-name", "transformers", str(out)], tool_env(peer_cli.parent))
    ours = ensure_ours()
    exporter = variant.split("/", 1)[1]
    return ([str(ours), "export", "--model", str(checkpoint), "--feature", feature, "--format", "onnx",
             "--exporter", exporter, str(out)], tool_env(ours.parent))


def pr_bytes(case: str, checkpoint: Path, log: Path) -> dict:
    """What a PR of the primary feature adds: ours with both formats (fp32 ONNX + TorchScript), bytes per file."""
    out = OUT / case / "ours-pr"
    shutil.rmtree(out, ignore_errors=True)
    ours = ensure_ours()
    command = [str(ours), "export", "--model", str(checkpoint), "--feature", CASES[case][0], "--format", "onnx",
               "--format", "torchscript", str(out)]
    record = measure(command, tool_env(ours.parent), log)
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*"))
             if p.is_file() and p.parts[len(out.parts)] in ("onnx", "torchscript")}
    return {"rc": record["rc"], "wall_s": record["wall_s"], "files": files, "bytes": sum(files.values())}


def ours_manifest(out: Path) -> dict:
    """What our manifest says: the exporter used and the validation max diff of the primary output, per graph."""
    path = out / "export_manifest.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    graphs = {}
    for artifact in data["artifacts"]:
        diffs = artifact["validation"]["max_abs_diff"]
        primary = artifact["outputs"][0]
        graphs[artifact["component"]] = {"exporter": artifact["exporter"], "size": artifact["size"],
                                         "primary_output": primary, "max_abs_diff": diffs.get(primary),
                                         "max_abs_diff_all_outputs": max(diffs.values()) if diffs else None}
    return {"graphs": graphs, "exporters": sorted({g["exporter"] for g in graphs.values()}),
            "max_abs_diff": max((g["max_abs_diff"] for g in graphs.values() if g["max_abs_diff"] is not None),
                                default=None)}


# ---------------------------------------------------------------------------------------------------------------
# artifacts: size, ORT latency, max diff (runs in a child process of this venv, one per case)


def graph_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and re.search(r"\.onnx(_data|\.data)?$", p.name))


def roles(case: str, variant: str, out: Path) -> dict[str, Path]:
    """Which graph to time for each role: one step of the model as a user runs it."""
    base = out / "onnx" if variant != PEER else out
    if case != "t5-small":
        return {"model": base / "model.onnx"}
    step = base / "decoder_with_past_model.onnx"
    if not step.is_file():
        step = base / "decoder_model_merged.onnx"
    return {"encoder": base / "encoder_model.onnx", "decoder-step": step}


def _analyze(case: str, dirs: dict[str, str], iters: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    checkpoint = build(case)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    low = 5
    pools: dict[str, dict[str, np.ndarray]] = {}
    reference: dict[str, tuple[str, np.ndarray]] = {}
    described: dict[str, str] = {}
    with torch.no_grad():
        if case in ("minilm", "bert-base"):
            cls = transformers.AutoModel if case == "minilm" else transformers.AutoModelForSequenceClassification
            model = cls.from_pretrained(checkpoint).eval()
            ids = torch.randint(low, model.config.vocab_size, (1, 128), generator=generator)
            mask, types = torch.ones_like(ids), torch.zeros_like(ids)
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            name = "last_hidden_state" if case == "minilm" else "logits"
            reference["model"] = (name, out[name].numpy())
            pools["model"] = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
            described["model"] = "batch 1 x 128 tokens"
        elif case == "gpt2":
            model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
            prefix = torch.randint(low, model.config.vocab_size, (1, 32), generator=generator)
            step = torch.randint(low, model.config.vocab_size, (1, 1), generator=generator)
            cache = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True).past_key_values
            past = {}
            for i, layer in enumerate(cache.layers):
                past[f"past_key_values.{i}.key"] = layer.keys.numpy().copy()
                past[f"past_key_values.{i}.value"] = layer.values.numpy().copy()
            mask = torch.ones(1, 33, dtype=torch.long)
            logits = model(input_ids=step, attention_mask=mask, past_key_values=cache, use_cache=True).logits
            reference["model"] = ("logits", logits.numpy())
            pools["model"] = {"input_ids": step.numpy(), "attention_mask": mask.numpy(),
                              "position_ids": np.array([[32]], dtype=np.int64), **past}
            described["model"] = "one decoder step: 1 new token, past of 32"
        elif case == "t5-small":
            from transformers.modeling_outputs import BaseModelOutput

            model = transformers.AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
            ids = torch.randint(low, model.config.vocab_size, (1, 128), generator=generator)
            mask = torch.ones_like(ids)
            hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            reference["encoder"] = ("last_hidden_state", hidden.numpy())
            pools["encoder"] = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            described["encoder"] = "encoder: batch 1 x 128 tokens"
            prefix = torch.randint(low, model.config.vocab_size, (1, 32), generator=generator)
            prefix[:, 0] = model.config.decoder_start_token_id
            step = torch.randint(low, model.config.vocab_size, (1, 1), generator=generator)
            encoded = BaseModelOutput(last_hidden_state=hidden)
            cache = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=prefix,
                          use_cache=True).past_key_values
            past = {}
            for i, (own, cross) in enumerate(zip(cache.self_attention_cache.layers, cache.cross_attention_cache.layers)):
                past[f"past_key_values.{i}.decoder.key"] = own.keys.numpy().copy()
                past[f"past_key_values.{i}.decoder.value"] = own.values.numpy().copy()
                past[f"past_key_values.{i}.encoder.key"] = cross.keys.numpy().copy()
                past[f"past_key_values.{i}.encoder.value"] = cross.values.numpy().copy()
            logits = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=step, past_key_values=cache,
                           use_cache=True).logits
            reference["decoder-step"] = ("logits", logits.numpy())
            pools["decoder-step"] = {"input_ids": step.numpy(), "encoder_attention_mask": mask.numpy(),
                                     "encoder_hidden_states": hidden.numpy(), "use_cache_branch": np.array([True]),
                                     **past}
            described["decoder-step"] = "decoder step: 1 new token, past of 32, encoder output of 128"
    del model

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    result = {"threads": threads, "iterations": iters, "sizes": {}, "roles": {}}
    for variant, out in dirs.items():
        files = graph_files(Path(out))
        result["sizes"][variant] = {"bytes": sum(f.stat().st_size for f in files),
                                    "files": {f.relative_to(out).as_posix(): f.stat().st_size for f in files}}
    for role, pool in pools.items():
        sessions, entry = {}, {"input": described[role], "variants": {}}
        for variant, out in dirs.items():
            path = roles(case, variant, Path(out)).get(role)
            info = entry["variants"][variant] = {"graph": path.relative_to(out).as_posix() if path else None}
            if path is None or not path.is_file():
                info["error"] = "graph not found"
                continue
            try:
                started = time.perf_counter()
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                info["session_create_s"] = time.perf_counter() - started
                wanted = [i.name for i in session.get_inputs()]
                missing = [n for n in wanted if n not in pool]
                if missing:
                    raise KeyError(f"no value for graph inputs {missing}")
                feed = {n: pool[n] for n in wanted}
                name, expected = reference[role]
                outputs = [o.name for o in session.get_outputs()]
                primary = name if name in outputs else outputs[0]
                got = session.run([primary], feed)[0]
                info["primary_output"] = primary
                info["max_abs_diff"] = float(np.abs(got - expected).max()) if got.shape == expected.shape else None
                if got.shape != expected.shape:
                    info["error"] = f"shape {got.shape} != reference {expected.shape}"
                for _ in range(3):  # warm-up
                    session.run(None, feed)
                sessions[variant] = (session, feed)
            except Exception as exc:  # a graph that cannot run is reported, not fatal
                info["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        times = {v: [] for v in sessions}
        order = list(sessions)
        for i in range(iters):  # interleaved, rotating which goes first
            for variant in order[i % len(order):] + order[: i % len(order)]:
                session, feed = sessions[variant]
                started = time.perf_counter()
                session.run(None, feed)
                times[variant].append(time.perf_counter() - started)
        for variant, samples in times.items():
            entry["variants"][variant].update(latency_ms_median=1000 * statistics.median(samples),
                                              latency_ms_min=1000 * min(samples),
                                              latency_ms=[round(1000 * s, 3) for s in samples])
        sessions.clear()
        result["roles"][role] = entry
    return result


def analyze(case: str, dirs: dict[str, Path], iters: int, threads: int) -> dict:
    """Run _analyze in a fresh child process, so the orchestrator never holds models or sessions."""
    payload = json.dumps({"case": case, "dirs": {k: str(v) for k, v in dirs.items()}, "iters": iters,
                          "threads": threads})
    env = dict(os.environ, **OFFLINE)
    done = subprocess.run([sys.executable, __file__, "--_analyze", payload], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# report


def _median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get("rc") == 0 and r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def _fmt(value, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "MB":
        return f"{value / 1e6:.0f} MB"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "diff":
        return f"{value:.1e}"
    return str(value)


def summarize(results: dict) -> list[dict]:
    rows = []
    for case, data in results["cases"].items():
        runs, analysis = data["runs"], data.get("analysis", {})
        peer_runs = [r for r in runs if r["variant"] == PEER]
        for variant in data["variants"]:
            if variant == PEER:
                continue
            ours_runs = [r for r in runs if r["variant"] == variant]
            row = {"case": case, "ours": variant, "feature": CASES[case][0], "task": CASES[case][1],
                   "ours_ok": sum(r["rc"] == 0 for r in ours_runs), "peer_ok": sum(r["rc"] == 0 for r in peer_runs),
                   "runs": len(ours_runs),
                   "exporters": sorted({e for r in ours_runs for e in r.get("manifest", {}).get("exporters", [])})}
            for key in ("wall_s", "cpu_s", "peak_rss_bytes"):
                row[key] = {"ours": _median(ours_runs, key), "peer": _median(peer_runs, key)}
            sizes = analysis.get("sizes", {})
            row["size_bytes"] = {"ours": sizes.get(variant, {}).get("bytes"), "peer": sizes.get(PEER, {}).get("bytes")}
            row["latency_ms"], row["max_abs_diff"] = {}, {}
            for role, entry in analysis.get("roles", {}).items():
                ours_info, peer_info = entry["variants"].get(variant, {}), entry["variants"].get(PEER, {})
                row["latency_ms"][role] = {"ours": ours_info.get("latency_ms_median"),
                                           "peer": peer_info.get("latency_ms_median")}
                row["max_abs_diff"][role] = {"ours": ours_info.get("max_abs_diff"), "peer": peer_info.get("max_abs_diff")}
            row["pr_bytes"] = {"ours": data.get("pr", {}).get("bytes"),
                               "checkpoint": results["checkpoints"][case]["bytes"]}
            row["loadavg_1m"] = {"min": min(r["loadavg_1m_before"] for r in runs),
                                 "max": max(r["loadavg_1m_before"] for r in runs)}
            manifests = [r["manifest"].get("max_abs_diff") for r in ours_runs if r.get("manifest")]
            row["ours_manifest_max_abs_diff"] = max((m for m in manifests if m is not None), default=None)
            rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| case (ours feature / peer task) | ours exporter | wall ours / peer | ratio | CPU ratio | peak RSS ours / "
             "peer | ratio | artifact size ours / peer | ratio | ORT latency ours / peer | ratio | max diff ours / peer "
             "(same input) | ours manifest | PR bytes: fp32 ONNX + TorchScript / checkpoint | ratio | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        w, c, m, s = row["wall_s"], row["cpu_s"], row["peak_rss_bytes"], row["size_bytes"]
        latency = "<br>".join(f"{role}: {_fmt(v['ours'], 'ms')} / {_fmt(v['peer'], 'ms')}"
                              for role, v in row["latency_ms"].items()) or "n/a"
        latency_ratio = "<br>".join(_ratio(v["ours"], v["peer"]) for v in row["latency_ms"].values()) or "n/a"
        diffs = "<br>".join(f"{_fmt(v['ours'], 'diff')} / {_fmt(v['peer'], 'diff')}"
                            for v in row["max_abs_diff"].values()) or "n/a"
        ok = "" if row["ours_ok"] == row["runs"] and row["peer_ok"] == row["runs"] else \
            f" (ok runs: ours {row['ours_ok']}/{row['runs']}, peer {row['peer_ok']}/{row['runs']})"
        exporter = row["ours"].split("/", 1)[1] + (f" ({', '.join(row['exporters'])})" if row["exporters"] else "")
        lines.append(
            f"| {row['case']} ({row['feature']} / {row['task']}){ok} | {exporter} | "
            f"{_fmt(w['ours'], 's')} / {_fmt(w['peer'], 's')} | {_ratio(w['ours'], w['peer'])} | "
            f"{_ratio(c['ours'], c['peer'])} | "
            f"{_fmt(m['ours'], 'MB')} / {_fmt(m['peer'], 'MB')} | {_ratio(m['ours'], m['peer'])} | "
            f"{_fmt(s['ours'], 'MB')} / {_fmt(s['peer'], 'MB')} | {_ratio(s['ours'], s['peer'])} | "
            f"{latency} | {latency_ratio} | {diffs} | {_fmt(row['ours_manifest_max_abs_diff'], 'diff')} | "
            f"{_fmt(row['pr_bytes']['ours'], 'MB')} / {_fmt(row['pr_bytes']['checkpoint'], 'MB')} | "
            f"{_ratio(row['pr_bytes']['ours'], row['pr_bytes']['checkpoint'])} | "
            f"{row['loadavg_1m']['min']:.1f}-{row['loadavg_1m']['max']:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--_analyze":
        args = json.loads(sys.argv[2])
        print(json.dumps(_analyze(args["case"], args["dirs"], args["iters"], args["threads"])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="whole-process runs per tool and case (default 3)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--ours-exporter", nargs="+", default=["auto"], choices=["auto", "dynamo", "torchscript"],
                        help="our --exporter value(s); each is a separate variant measured against the peer "
                             "(default: auto, our default)")
    parser.add_argument("--latency-iters", type=int, default=50, help="timed ORT runs per graph (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for both tools (default 2)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args()

    print("building checkpoints ...", flush=True)
    subprocess.run([sys.executable, str(HERE / "checkpoints.py"), *args.cases], check=True,
                   capture_output=True, env=dict(os.environ, **OFFLINE))
    peer_cli = ensure_peer()
    variants = [PEER] + [f"ours/{e}" for e in args.ours_exporter]
    results = {
        "command": " ".join(["python", "benchmarks/compare_optimum.py"] + sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "versions": {"ours": versions(str(ensure_ours().parent / "python")), "peer": versions(str(PEER_VENV / "bin" / "python"))},
        "code": code_version(),
        "checkpoints": {},
        "cases": {},
    }
    for case in args.cases:
        checkpoint = build(case)
        results["checkpoints"][case] = {"path": str(checkpoint), "bytes": sum(
            f.stat().st_size for f in checkpoint.iterdir() if f.suffix == ".safetensors")}
        data = results["cases"][case] = {"variants": variants, "runs": []}
        dirs = {}
        for run in range(args.runs):  # A B A B ...: every tool sees the same background load, on average
            for variant in variants:
                out = OUT / case / variant.replace("/", "-")
                shutil.rmtree(out, ignore_errors=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                command, env = command_for(variant, case, checkpoint, out, peer_cli)
                record = measure(command, env, LOGS / case / f"{variant.replace('/', '-')}-{run}.log")
                record.update(case=case, variant=variant, run=run)
                if variant != PEER:
                    record["code"] = code_version()  # another engineer may commit while this runs
                if variant != PEER:
                    record["manifest"] = ours_manifest(out)
                data["runs"].append(record)
                dirs[variant] = out
                print(f"  {case:9} run {run} {variant:16} rc={record['rc']} wall {record['wall_s']:6.1f} s  "
                      f"cpu {record['cpu_s']:6.1f} s  peak RSS {record['peak_rss_bytes'] / 1e6:6.0f} MB  "
                      f"(load {record['loadavg_1m_before']:.1f})", flush=True)
        data["pr"] = pr_bytes(case, checkpoint, LOGS / case / "ours-pr.log")
        print(f"  {case:9} what a PR adds (fp32 ONNX + TorchScript): {data['pr']['bytes'] / 1e6:.0f} MB = "
              f"{data['pr']['bytes'] / results['checkpoints'][case]['bytes']:.2f} x checkpoint", flush=True)
        print(f"  {case}: sizes, ORT latency and max diff of the last run's graphs ...", flush=True)
        data["analysis"] = analyze(case, {v: d for v, d in dirs.items() if d.is_dir()}, args.latency_iters,
                                   args.threads)
        if "error" in data["analysis"]:
            print(f"  analysis failed: {data['analysis']['error'][-500:]}", flush=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a crash
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["code_at_end"] = code_version()
    results["summary"] = summarize(results)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(f"medians of {args.runs} runs; ratios are ours / peer (< 1: ours is better); ORT latency with "
          f"{args.threads} intra-op threads")
    print(render(results["summary"]))
    print(f"\nraw numbers: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
