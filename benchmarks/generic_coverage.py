"""How many transformers model types outside the registry export and validate with their family's generic spec.

For every model type transformers knows and the registry does not, infer the family (bot.custom.generic_family);
build a tiny random checkpoint by shrinking the usual size attributes of its default config; export the feature a
real checkpoint of that family would make primary, in both formats (TorchScript-based ONNX exporter, for time), and
record whether it validated. Each model type runs in its own process with a time limit. Writes
docs/generic-coverage.json, which `hub-export-bot features --markdown` summarises.

    python benchmarks/generic_coverage.py [--limit N] [--timeout SECONDS] [--resume]

Children are capped at 6 GB of address space (a default config that does not shrink can otherwise take the machine's
memory); results are written after every model type, and --resume skips the ones already recorded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRIMARY = {"text-encoder": "default", "decoder": "causal-lm-with-past", "seq2seq": "seq2seq-lm-with-past",
           "vision": "image-classification"}
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
             vocab_size=99, max_position_embeddings=64, d_model=32, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
             num_layers=2, num_heads=4, d_ff=37, d_kv=8, n_embd=32, n_layer=2, n_head=4, image_size=32, patch_size=8,
             head_dim=8, embedding_size=32, num_labels=2)

CHILD = r"""
import sys, tempfile, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import torch, transformers
transformers.logging.set_verbosity_error()
from transformers import AutoConfig
from bot.checkpoint import auto_class
from bot.job import Job, make_options
from bot.pipeline import run_export
model_type, feature, small = sys.argv[1], sys.argv[2], eval(sys.argv[3])
config = AutoConfig.for_model(model_type)
for key, value in small.items():
    if hasattr(config, key) and isinstance(getattr(config, key), int) and not isinstance(getattr(config, key), bool):
        setattr(config, key, value)
config.architectures = []
torch.manual_seed(0)
root = Path(tempfile.mkdtemp())
auto_class(feature).from_config(config).eval().save_pretrained(root / "ckpt")
result = run_export(Job(model=str(root / "ckpt"), output_dir=root / "out",
                        options=make_options([feature], exporter="torchscript")))
if not result.ok:
    print("FAILED:", "; ".join(f"{f.component}/{f.format}: {f.error}" for f in result.failures)[:300])
    sys.exit(1)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="try at most N model types (0: all)")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--resume", action="store_true", help="keep recorded results and try only the others")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from bot.custom import generic_family
    from bot.features import SUPPORT

    candidates = []
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        if model_type in SUPPORT:
            continue
        try:
            family = generic_family(model_type, AutoConfig.for_model(model_type))
        except Exception:  # configs that cannot even be built without arguments
            continue
        if family:
            candidates.append((model_type, family))
    out = ROOT / "docs" / "generic-coverage.json"
    results = json.loads(out.read_text())["results"] if args.resume and out.is_file() else []
    done = {r["model_type"] for r in results}
    candidates = [c for c in candidates if c[0] not in done]
    if args.limit:
        candidates = candidates[: args.limit]
    for index, (model_type, family) in enumerate(candidates, 1):
        feature = PRIMARY[family]
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, model_type, feature, repr(SMALL)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=args.timeout, preexec_fn=_cap_memory)
            passed = proc.returncode == 0
            reason = "" if passed else ([l for l in proc.stdout.splitlines() if l.startswith("FAILED")] or
                                        proc.stderr.strip().splitlines()[-1:] or ["crashed"])[0]
        except subprocess.TimeoutExpired:
            passed, reason = False, f"timed out after {args.timeout:.0f} s"
        results.append({"model_type": model_type, "family": family, "feature": feature, "passed": passed,
                        "reason": reason.strip()[:300], "seconds": round(time.perf_counter() - started, 1)})
        print(f"[{index}/{len(candidates)}] {model_type:<28} {family:<12} {'ok' if passed else reason[:100]}",
              flush=True)
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"command": "python benchmarks/generic_coverage.py",
                                   "transformers": transformers.__version__, "candidates": len(done) + len(candidates),
                                   "results": results}, indent=1) + "\n")
    print(f"{sum(r['passed'] for r in results)} of {len(results)} model types pass; wrote {out}")
    return 0


def _cap_memory() -> None:
    limit = 6 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    raise SystemExit(main())
