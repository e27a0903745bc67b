"""The dtype table: size, export time, quality and onnxruntime latency of every variant, per checkpoint.

    python benchmarks/variants.py [--cases minilm bert-base tiny-gpt2 tiny-t5] [--latency-iters N]

Run it with the project's venv. For each case it
1. builds the checkpoint (benchmarks/checkpoints.py: the real all-MiniLM-L6-v2 and a bert-base-sized random
   sequence classifier; tests/tiny.py: a tiny GPT-2 and T5 with widened weights, `lively=True`, so greedy decoding
   varies its tokens);
2. runs `hub-export-bot export --format onnx --dtype fp16 --dtype q8 --dtype q4 --dtype q4f16` once as a whole
   process, and `--dtype fp32` once for the fp32-only wall time; every variant's gate (the bot's own, the one
   that decides what is published) is read from export_manifest.json: recipe, figures, thresholds and the seconds
   spent building and judging it, including recipes refused before the one published;
3. for the encoders, measures onnxruntime latency of every published file on one batch of 1 x 128 token ids
   (intra-op 2 threads, sequential, ORT_ENABLE_ALL, 3 warm-up runs, then the median of N runs, files interleaved);
4. for all-MiniLM-L6-v2, also checks what the cosine figure means for retrieval: 40 sentences (20 paraphrase
   pairs) embedded as sentence-transformers does (mean pooling, normalized) by PyTorch and by each file, plus
   recipes the bot does not publish for reference (dynamic int8 on MiniLM, symmetric int4 in blocks of 128,
   2-bit): worst and mean cosine with PyTorch's embedding, how many sentences keep PyTorch's nearest neighbour,
   and the Spearman correlation of all pairwise similarities with PyTorch's;
5. prints the tables (markdown) and writes benchmarks/results-variants.json (machine, versions, raw figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from checkpoints import CACHE, build  # noqa: E402

DTYPES = ("fp16", "q8", "q4", "q4f16")
CASES = {  # name -> feature
    "minilm": "default",
    "bert-base": "sequence-classification",
    "tiny-gpt2": "causal-lm-with-past",
    "tiny-t5": "seq2seq-lm-with-past",
}
PARAPHRASES = [
    ("A man is playing a guitar.", "Someone plays the guitar."),
    ("The cat sleeps on the sofa.", "A cat is napping on the couch."),
    ("How do I reset my password?", "What are the steps to change my password?"),
    ("The stock market fell sharply today.", "Shares dropped steeply on the exchange today."),
    ("She is cooking pasta for dinner.", "Pasta is what she's making for supper."),
    ("The train to Berlin is delayed.", "The Berlin train is running late."),
    ("Drink plenty of water when it is hot.", "Stay hydrated in hot weather."),
    ("The meeting was moved to Friday.", "We rescheduled the meeting for Friday."),
    ("This phone's battery lasts two days.", "The battery of this phone holds for 48 hours."),
    ("Kids are playing football in the park.", "Children play soccer in the park."),
    ("The museum is closed on Mondays.", "On Mondays the museum does not open."),
    ("He fixed the bug in the parser.", "The parser bug was repaired by him."),
    ("It will rain tomorrow afternoon.", "Showers are expected tomorrow after lunch."),
    ("Vaccines prevent many diseases.", "Many illnesses can be avoided through vaccination."),
    ("The recipe needs two eggs.", "You need a couple of eggs for this recipe."),
    ("Our flight was cancelled.", "The airline cancelled our plane."),
    ("Turn left at the next corner.", "At the following corner, go left."),
    ("The library has thousands of books.", "Thousands of books are in the library."),
    ("Quantum computers use qubits.", "Qubits are the basic unit of quantum computing."),
    ("She won the chess tournament.", "The chess championship was won by her."),
]


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(memory / 2**20, 1), "python": platform.python_version(),
            "load_average": os.getloadavg()}


def versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime")}


def checkpoint(name: str) -> Path:
    if not name.startswith("tiny-"):
        return build(name)
    target = CACHE / "ckpt" / name
    if not (target / "config.json").is_file():
        from tests.tiny import build_checkpoint

        model_type = name.removeprefix("tiny-")
        build_checkpoint(target, model_type, "causal-lm" if model_type == "gpt2" else "seq2seq-lm", lively=True)
    return target


def export(model: Path, feature: str, out: Path, dtypes: tuple[str, ...]) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "bot", "export", "--model", str(model), "--feature", feature, "--format", "onnx"]
    command += [arg for dtype in dtypes for arg in ("--dtype", dtype)]
    started = time.perf_counter()
    done = subprocess.run(command + [str(out)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"export of {model} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds, json.loads((out / "export_manifest.json").read_text())


def rows_from(manifest: dict) -> list[dict]:
    """One row per dtype: published (recipe, files, size, figures) or refused (why), and the seconds spent."""
    fp32 = sum(a["size"] for a in manifest["artifacts"])
    rows = [{"dtype": "fp32", "published": True, "size": fp32, "files": [a["path"] for a in manifest["artifacts"]]}]
    for dtype in DTYPES:
        group = [a for a in manifest["variants"] if a["dtype"] == dtype]
        if group:
            validation = group[0]["validation"]
            quality, earlier = validation["quality"], validation.get("refused_recipes", [])
            rows.append({"dtype": dtype, "published": True, "size": sum(a["size"] for a in group),
                         "files": [a["path"] for a in group], "recipe": quality["recipe"],
                         "criteria": quality["criteria"], "measured": quality.get("details", {}).get("measured"),
                         "seconds": quality["seconds"] + sum(g["seconds"] for g in earlier),
                         "refused_recipes": [{"recipe": g["recipe"], "criteria": g["criteria"], "error": g["error"]}
                                             for g in earlier]})
            continue
        refusal = next(r for r in manifest["refused_variants"] if r["dtype"] == dtype)
        rows.append({"dtype": dtype, "published": False, "reason": refusal["reason"],
                     "seconds": sum(g["seconds"] for g in refusal["attempts"]),
                     "attempts": refusal["attempts"]})
    return rows


def latency(paths: dict[str, Path], iterations: int) -> dict[str, float]:
    """Median seconds per run of each file on 1 x 128 token ids, the files' runs interleaved."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(1, 128), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(3):
        for name, session in sessions.items():
            session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    for turn in range(iterations):
        order = list(sessions)[turn % len(sessions):] + list(sessions)[:turn % len(sessions)]
        for name in order:
            session = sessions[name]
            started = time.perf_counter()
            session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def retrieval(model_dir: Path, files: dict[str, Path]) -> dict[str, dict]:
    """all-MiniLM-L6-v2's embeddings of the paraphrase sentences, PyTorch vs each file."""
    import numpy as np
    import onnxruntime
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoModel, AutoTokenizer

    sentences = [s for pair in PARAPHRASES for s in pair]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    mask = batch["attention_mask"][..., None].astype(np.float64)

    def embed(hidden):
        pooled = (hidden.astype(np.float64) * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    with torch.no_grad():
        reference = embed(AutoModel.from_pretrained(model_dir).eval()(
            **{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy())
    upper = np.triu_indices(len(sentences), 1)

    def neighbours(embeddings):
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(1), similarity

    expected, reference_similarity = neighbours(reference)
    results = {}
    for name, path in files.items():
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        hidden = session.run(["last_hidden_state"], {i.name: batch[i.name] for i in session.get_inputs()})[0]
        embeddings = embed(hidden)
        cosine = (embeddings * reference).sum(1)
        found, similarity = neighbours(embeddings)
        results[name] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
                         "same_nearest_neighbour": int((found == expected).sum()), "sentences": len(sentences),
                         "paraphrase_found": int(sum(found[i] == (i ^ 1) for i in range(len(sentences)))),
                         "spearman_pairwise": float(spearmanr(reference_similarity[upper], similarity[upper])[0])}
    return results


def reference_recipes(fp32: Path, folder: Path) -> dict[str, Path]:
    """Recipes the bot does not publish for MiniLM, built here to show what lower cosines mean."""
    from bot.export import recipes

    folder.mkdir(parents=True, exist_ok=True)
    built = {"dynamic int8 (refused)": folder / "dynamic_int8.onnx", "int4 symmetric, blocks of 128": folder /
             "int4_sym128.onnx", "2-bit, blocks of 32": folder / "int2.onnx"}
    recipes.dynamic_int8(fp32, built["dynamic int8 (refused)"])
    quantizer = recipes.nbits_quantizer()(recipes.load(fp32), bits=4, block_size=128, is_symmetric=True,
                                          op_types_to_quantize=("MatMul", "Gather"),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    recipes.save(quantizer.model.model, built["int4 symmetric, blocks of 128"])
    recipes.save(recipes.nbits(recipes.load(fp32), 2, symmetric=False, embeddings=False),
                 built["2-bit, blocks of 32"])
    return built


def figures(row: dict) -> str:
    if not row.get("published"):
        return "refused: " + row["reason"]
    if row["dtype"] == "fp32":
        return "(reference: validated within atol)"
    text = ", ".join(f"{c['name']} {c['value']:.4f}" for c in row["criteria"])
    measured = row.get("measured") or {}
    if "mean cosine" in measured:
        text += f" (mean {measured['mean cosine']:.4f})"
    for earlier in row.get("refused_recipes", []):
        text += f"; {earlier['recipe']} refused: " + (earlier["error"] or ", ".join(
            f"{c['name']} {c['value']:.4f}" for c in earlier["criteria"]))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--latency-iters", type=int, default=30)
    args = parser.parse_args(argv)
    work = CACHE / "variants"
    report = {"machine": machine(), "versions": versions(), "cases": {}}
    for case in args.cases:
        model = checkpoint(case)
        print(f"{case}: exporting fp32 only, then fp32 + {', '.join(DTYPES)}", file=sys.stderr, flush=True)
        fp32_seconds, _ = export(model, CASES[case], work / f"{case}-fp32", ())
        seconds, manifest = export(model, CASES[case], work / case, DTYPES)
        rows = rows_from(manifest)
        entry = {"feature": CASES[case], "fp32_export_seconds": fp32_seconds, "all_dtypes_export_seconds": seconds,
                 "rows": rows}
        out = work / case
        if case in ("minilm", "bert-base"):
            paths = {row["dtype"]: out / row["files"][0] for row in rows if row.get("published")}
            entry["latency_seconds"] = latency(paths, args.latency_iters)
        if case == "minilm":
            files = {row["dtype"]: out / row["files"][0] for row in rows if row.get("published")}
            files.update(reference_recipes(out / "onnx" / "model.onnx", work / "minilm-reference"))
            entry["retrieval"] = retrieval(model, files)
        report["cases"][case] = entry
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (HERE / "results-variants.json").write_text(json.dumps(report, indent=1) + "\n")
    print_tables(report)
    return 0


def print_tables(report: dict) -> None:
    for case, entry in report["cases"].items():
        print(f"\n### {case} (`{entry['feature']}`): fp32-only export {entry['fp32_export_seconds']:.1f} s, "
              f"with every dtype {entry['all_dtypes_export_seconds']:.1f} s\n")
        print("| dtype | size | vs fp32 | added export time | ORT latency 1x128 | quality vs PyTorch fp32 |")
        print("|---|---|---|---|---|---|")
        fp32 = entry["rows"][0]["size"]
        for row in entry["rows"]:
            size = f"{row['size'] / 2**20:.1f} MB" if row.get("published") else "—"
            ratio = f"{row['size'] / fp32:.0%}" if row.get("published") else "—"
            added = f"{row['seconds']:.1f} s" if "seconds" in row else "—"
            speed = entry.get("latency_seconds", {}).get(row["dtype"])
            speed = f"{speed * 1000:.1f} ms" if speed is not None else "—"
            print(f"| {row['dtype']} | {size} | {ratio} | {added} | {speed} | {figures(row)} |")
        if "retrieval" in entry:
            print("\n| all-MiniLM-L6-v2, 40 sentences | worst cosine | mean cosine | same nearest neighbour "
                  "| paraphrase found | Spearman of pairwise similarities |")
            print("|---|---|---|---|---|---|")
            for name, r in entry["retrieval"].items():
                print(f"| {name} | {r['min_cosine']:.4f} | {r['mean_cosine']:.4f} | "
                      f"{r['same_nearest_neighbour']}/{r['sentences']} | {r['paraphrase_found']}/{r['sentences']} | "
                      f"{r['spearman_pairwise']:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
