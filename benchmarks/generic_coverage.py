"""How many transformers model types export and validate: every one with a text or vision AutoModel class.

For every model type transformers knows whose family the registry names or bot.custom.generic_family infers (text
encoder, decoder-only, encoder-decoder, vision), build a tiny random checkpoint with bot.tinyconfig (the default
config shrunk the way the type requires), export the feature a real checkpoint of that family would make primary in
both formats with the default exporter chain, validate at unseen shapes and, for generative features, check greedy
decoding of a left-padded batch against generate(). Each model type runs in its own process with a time and memory
budget; results are written after every model type, so the run can be stopped and resumed:

    nice -n 10 python benchmarks/generic_coverage.py [--timeout SECONDS] [--only TYPE ...] [--resume] &

Writes docs/generic-coverage.json (each result with its stage and cause, plus counts per family and per cause) and
regenerates docs/support-matrix.md from it (`hub-export-bot features --markdown`).

Model types whose cache is not a key/value cache (Mamba-style conv/ssm states, linear-attention states, recurrent
states) are recorded as unsupported without an export: the decoder layout has `past_key_values.{i}.key/value` only.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "generic-coverage.json"
PRIMARY = {"text-encoder": "default", "decoder": "causal-lm-with-past", "seq2seq": "seq2seq-lm-with-past",
           "vision": "image-classification", "perceiver": "masked-lm"}
MEMORY = 6 * 1024**3  # address-space cap per model type

CHILD = r"""
import json, sys, tempfile, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import torch, transformers
transformers.logging.set_verbosity_error()
model_type, feature = sys.argv[1], sys.argv[2]

def report(stage, error="", **extra):
    print("RESULT " + json.dumps({"stage": stage, "error": error[:600], **extra}), flush=True)
    sys.exit(0)

def first_line(exc):
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"

def state_layers(layers):
    # the decoder layout has key/value tensors per layer: full or sliding-window attention caches
    kinds = sorted({type(layer).__name__ for layer in layers} - {"DynamicLayer", "DynamicSlidingWindowLayer"})
    linear = [k for k in kinds if "Linear" in k or "Mamba" in k or "Conv" in k]
    if linear:
        report("unsupported", f"conv/ssm or linear-attention state layers ({', '.join(linear)})")
    if "DynamicIndexedLayer" in kinds:
        report("unsupported", "sparse attention with an index-key cache beside keys and values (DynamicIndexedLayer)")
    if kinds:
        report("unsupported", f"layers without a key/value cache of their own ({', '.join(kinds)})")

from transformers import AutoConfig, DynamicCache
from transformers.cache_utils import LinearAttentionCacheLayerMixin
if feature.endswith("-with-past") and feature != "seq2seq-lm-with-past":
    try:  # layer kinds the default config declares (before shrinking, which may fail for them)
        default = AutoConfig.for_model(model_type).get_text_config(decoder=True)
        declared = DynamicCache(config=default).layers
    except Exception:
        declared = []
    if any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in declared):
        state_layers(declared)

try:
    from bot.tinyconfig import tiny_config
    config = tiny_config(model_type)
    config.architectures = []
    if feature.startswith("causal-lm") and getattr(config, "is_decoder", None) is False and \
            not config.is_encoder_decoder:
        config.is_decoder = True  # an encoder stack used as a decoder (BertGeneration...): causal, with a cache
except Exception as exc:
    report("config", first_line(exc))
if feature.endswith("-with-past") and feature != "seq2seq-lm-with-past":
    try:  # and the tiny config (which keeps one layer of each kind)
        declared = DynamicCache(config=config.get_text_config(decoder=True)).layers
    except Exception:
        declared = []
    state_layers(declared)
try:
    from bot.checkpoint import auto_class
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp())
    model = auto_class(feature).from_config(config).eval()
    if feature in ("causal-lm-with-past", "seq2seq-lm-with-past"):
        from tests.tiny import widen
        widen(model)  # varied greedy tokens, so generation parity means something
    model.save_pretrained(root / "ckpt")
except Exception as exc:
    report("model", first_line(exc))
if feature == "causal-lm-with-past":  # the cache the model really returns
    try:
        with torch.no_grad():
            out = model(input_ids=torch.full((1, 2), 5), use_cache=True, return_dict=True)
    except Exception as exc:
        report("model", first_line(exc))
    cache = out.get("past_key_values", None) if "past_key_values" in out else out.get("cache", None)
    if cache is None and any(name in out for name in ("state", "cache_params", "mems", "ssm_states")):
        report("unsupported", "recurrent state, no key/value cache (outputs: " + ", ".join(out.keys()) + ")")
    if cache is None:
        report("model", "no cache returned with use_cache=True (outputs: " + ", ".join(out.keys()) + ")")
    if getattr(cache, "layers", None) is None:
        report("unsupported", f"a cache of its own kind ({type(cache).__name__})")
    state_layers(cache.layers)
del model
try:
    from bot.job import Job, make_options
    from bot.pipeline import run_export
    result = run_export(Job(model=str(root / "ckpt"), output_dir=root / "out", options=make_options([feature])))
except Exception as exc:
    report("pipeline", first_line(exc))
if result.ok:
    report("passed", exporters=sorted({a.exporter for a in result.artifacts}))
failure = result.failures[0]
stage = "generation" if "greedy decoding" in failure.error else (
    "validation" if failure.error.startswith("validation failed") else "export")
detail = failure.error
if failure.validation is not None and stage != "export":
    report_ = failure.validation.to_dict()
    if stage == "generation":
        detail += f" ({(report_.get('generation') or {}).get('error') or 'tokens differ'})"
    else:
        worst = report_.get("errors") or [f"max diff {report_['max_abs_diff']}"]
        detail += f" ({worst[0]})"
report(stage, f"{failure.component}/{failure.format}: {detail}")
"""

# Causes, first match wins: (cause, stage or None, pattern on the error).
CAUSES = [
    ("cache is not per-layer keys and values (conv/ssm, recurrent or index state)", "unsupported", r""),
    ("timed out", "timeout", r""),
    ("out of memory (default config did not shrink)", None, r"can't allocate memory|MemoryError|Cannot allocate|"
                                                            r"std::bad_alloc|mmap"),
    ("config could not be shrunk", "config", r""),
    ("multimodal model: needs non-text inputs", None, r"pixel_values|input_features|image|audio|vision|"
                                                      r"has no attribute 'vocab_size'|input_values"),
    ("model could not be built from the tiny config", "model", r""),
    ("exporter: operator or construct not supported", "export", r"Unsupported|not supported|unsupported|"
                                                                r"Could not export|export failed"),
    ("TorchScript: tracing failed", "export", r"torchscript"),
    ("export failed", "export", r""),
    ("outputs differ from PyTorch at unseen shapes", "validation", r""),
    ("greedy decoding differs from generate()", "generation", r""),
    ("the pipeline refused or crashed", "pipeline", r""),
    ("crashed", None, r""),
]


def cause_of(stage: str, error: str) -> str:
    for cause, wanted, pattern in CAUSES:
        if (wanted is None or wanted == stage) and re.search(pattern, error or ""):
            return cause
    return "crashed"


def candidates() -> list[tuple[str, str, str]]:
    """(model_type, family, support origin) for every model type with a family, in name order."""
    import warnings

    warnings.filterwarnings("ignore")
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    from bot.custom import generic_family
    from bot.features import SUPPORT

    found = []
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        if model_type in SUPPORT:
            found.append((model_type, SUPPORT[model_type].family, SUPPORT[model_type].origin))
            continue
        try:
            family = generic_family(model_type, AutoConfig.for_model(model_type))
        except Exception:  # noqa: BLE001 - configs that cannot even be built without arguments
            continue
        if family:
            found.append((model_type, family, "generic"))
    return found


def feature_for(model_type: str, family: str) -> str:
    from transformers.models.auto import modeling_auto

    from bot.features import FEATURES

    def has(feature):
        return model_type in getattr(modeling_auto, FEATURES[feature].mapping)

    wanted = PRIMARY[family]
    if has(wanted):
        return wanted
    if family == "decoder" and has("default"):
        return "default-with-past"
    return next((f for f in ("default", "masked-lm", "image-classification", "sequence-classification")
                 if has(f)), wanted)


def run_one(model_type: str, feature: str, timeout: float) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, model_type, feature], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=_cap_memory)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            outcome = json.loads(lines[-1][len("RESULT "):])
        else:
            tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or \
                [f"exit code {proc.returncode}"]
            outcome = {"stage": "crashed", "error": tail[0][:600]}
    except subprocess.TimeoutExpired:
        outcome = {"stage": "timeout", "error": f"timed out after {timeout:.0f} s"}
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    return outcome


def summary(results: list[dict]) -> dict:
    families: dict[str, dict[str, int]] = {}
    causes: dict[str, list[str]] = {}
    for r in results:
        counts = families.setdefault(r["family"], {"tried": 0, "passed": 0})
        counts["tried"] += 1
        counts["passed"] += r["passed"]
        if not r["passed"]:
            causes.setdefault(r["cause"], []).append(r["model_type"])
    return {"passed": sum(r["passed"] for r in results), "tried": len(results),
            "families": dict(sorted(families.items())),
            "causes": dict(sorted(causes.items(), key=lambda item: (-len(item[1]), item[0])))}


def write(results: list[dict], total: int, timeout: float, out: Path = OUT) -> None:
    import transformers

    # Passed first, then failures grouped by cause, so the support matrix lists them grouped.
    order = {cause: i for i, (cause, _, _) in enumerate(CAUSES)}
    results.sort(key=lambda r: (not r["passed"], order.get(r.get("cause", ""), len(order)), r["model_type"]))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/generic_coverage.py", "transformers": transformers.__version__,
        "timeout_seconds": timeout, "candidates": total, "summary": summary(results), "results": results,
    }, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model type (default 300)")
    parser.add_argument("--only", nargs="*", default=[], help="these model types only (merged into the results)")
    parser.add_argument("--resume", action="store_true", help="keep recorded results and try only the others")
    parser.add_argument("--no-matrix", action="store_true", help="do not regenerate docs/support-matrix.md")
    parser.add_argument("--out", type=Path, default=OUT, help=f"results file (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    everything = candidates()
    out = args.out
    recorded = json.loads(out.read_text())["results"] if (args.resume or args.only) and out.is_file() else []
    recorded = [r for r in recorded if "cause" in r]  # results of an older format are redone
    done = {r["model_type"] for r in recorded}
    todo = [c for c in everything if c[0] in args.only] if args.only else [c for c in everything if c[0] not in done]
    results = [r for r in recorded if r["model_type"] not in {c[0] for c in todo}]
    for index, (model_type, family, origin) in enumerate(todo, 1):
        feature = feature_for(model_type, family)
        outcome = run_one(model_type, feature, args.timeout)
        passed = outcome["stage"] == "passed"
        cause = "" if passed else cause_of(outcome["stage"], outcome["error"])
        reason = "" if passed else f"{cause}: {outcome['error']}"
        results.append({"model_type": model_type, "family": family, "support": origin, "feature": feature,
                        "passed": passed, "stage": outcome["stage"], "cause": cause, "reason": reason[:300],
                        "exporters": outcome.get("exporters", []), "seconds": outcome["seconds"]})
        print(f"[{index}/{len(todo)}] {model_type:<28} {family:<12} {outcome['seconds']:>6.1f}s "
              f"{'ok' if passed else reason[:110]}", flush=True)
        write(results, len(everything), args.timeout, out)
    write(results, len(everything), args.timeout, out)
    if not args.no_matrix and out == OUT:
        from bot.matrix import support_matrix

        (ROOT / "docs" / "support-matrix.md").write_text(support_matrix(), encoding="utf-8")
    counts = summary(results)
    print(f"{counts['passed']} of {counts['tried']} model types pass; wrote {out}")
    for family, c in counts["families"].items():
        print(f"  {family:<13} {c['passed']:>4} / {c['tried']}")
    for cause, types in counts["causes"].items():
        print(f"  {len(types):>4}  {cause}: {', '.join(types[:12])}{' ...' if len(types) > 12 else ''}")
    return 0


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


if __name__ == "__main__":
    raise SystemExit(main())
