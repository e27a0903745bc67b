"""Peak memory of one export the GitHub Action runs, on a bert-base-sized random checkpoint, for the runner-memory
note in docs/github-action.md.

The checkpoint is BertConfig()'s defaults (12 layers, hidden 768, 110M parameters, 438 MB of fp32 safetensors) with
random weights and a BertModel class, so the export is the Action's default: `default` in ONNX and TorchScript, plus
the q8 variant publish adds. The figure is the peak RSS of the `hub-export-bot export` child process (getrusage
RUSAGE_CHILDREN), next to the size of the weights it loaded: a ratio, so other checkpoints can be estimated.

    python benchmarks/action_memory.py   # writes benchmarks/results-action-memory.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch
    from transformers import BertConfig, BertModel

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "bert-base"
        torch.manual_seed(0)
        BertModel(BertConfig()).eval().save_pretrained(checkpoint)
        weights = (checkpoint / "model.safetensors").stat().st_size
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bot", "export", "--model", str(checkpoint), "--dtype", "q8",
                               "--json", str(Path(scratch) / "out")], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        summary = json.loads(proc.stdout)
    result = {"checkpoint": "BertConfig() defaults, random weights (bert-base-sized)",
              "weights_bytes": weights, "peak_rss_bytes": peak, "peak_rss_over_weights": round(peak / weights, 2),
              "seconds": round(seconds, 1), "artifacts": [a["path"] for a in summary["artifacts"]],
              "torch": torch.__version__}
    out = Path(__file__).with_name("results-action-memory.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
