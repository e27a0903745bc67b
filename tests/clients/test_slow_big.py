"""Over 2 GB end to end: a generated 2.2 GB checkpoint, published to the emulated Hub with its weights in external-data
chunks of at most 2 GB, loads in transformers.js (Node, by repo id), onnxruntime and optimum from the same files,
and decodes like PyTorch; after the merge, publishing again finds it up to date (one PR in all).

Slow (minutes, ~12 GB of RAM with the emulator holding every upload in memory): not in the default suite.
Run it with `python -m pytest -m slow tests/clients/test_slow_big.py -s`; it prints sizes, peak RSS and load times.
"""

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.emulators.hub import HubEmulator

pytestmark = pytest.mark.slow
REPO = "acme/big-gpt2"
PROMPT = [[464, 2068, 7586, 21831, 18045, 625]]


def test_a_checkpoint_over_2gb_loads_in_every_client_from_chunked_external_data(tmp_path, tjs_client,
                                                                                 optimum_client):
    from huggingface_hub import snapshot_download
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.clients import harness
    from tests.clients.test_snippets import run_snippets

    config = GPT2Config(n_embd=1024, n_layer=40, n_head=16, n_positions=256)  # ~554M parameters, 2.2 GB
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "big")
    files = {p.name: p.read_bytes() for p in (tmp_path / "big").iterdir() if p.is_file()}
    size = sum(len(b) for b in files.values())
    assert size > 2 * 1024**3
    command = [sys.executable, "-m", "bot", "publish", REPO, "--feature", "causal-lm-with-past", "--format", "onnx",
               "--dtype", "fp32"]
    with HubEmulator() as hub:
        hub.create_repo(REPO, files)
        del files
        started = time.perf_counter()
        proc = subprocess.run(command + ["--work-dir", str(tmp_path / "work")], env={**os.environ, **hub.env()},
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        pr = hub.files(REPO, "refs/pr/1")
        chunks = sorted((p for p in pr if p.startswith("onnx/model.onnx_data")), key=len)
        assert len(chunks) >= 2 and all(len(pr[c]) <= 2_000_000_000 for c in chunks)
        declared = json.loads(pr["config.json"])["transformers.js_config"]
        assert declared == {"use_external_data_format": {"model.onnx": len(chunks)}, "dtype": "fp32"}
        print(f"\ncheckpoint {size / 1024**3:.2f} GB; publish {seconds:.0f} s, peak RSS {peak / 1024**3:.2f} GB "
              f"({peak / size:.2f}x); chunks " + ", ".join(f"{c.split('/')[-1]} {len(pr[c]):,} B" for c in chunks))
        del pr
        hub.merge_pr(REPO, 1)
        again = subprocess.run(command + ["--work-dir", str(tmp_path / "work2")], env={**os.environ, **hub.env()},
                               capture_output=True, text=True, timeout=3600)
        assert again.returncode == 0 and "up to date" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
        assert len([d for d in hub.discussions(REPO) if d.is_pull_request]) == 1

        mask = [[1] * len(PROMPT[0])]
        expected = harness.torch_generate(tmp_path / "big", "AutoModelForCausalLM", np.array(PROMPT),
                                          np.array(mask), 4)
        harness.torch_model.cache_clear()
        card = (
            "```js\n"
            'import { AutoModelForCausalLM, Tensor } from "@huggingface/transformers";\n'
            "const started = performance.now();\n"
            f"const model = await AutoModelForCausalLM.from_pretrained({json.dumps(REPO)});\n"
            "const loaded = (performance.now() - started) / 1000;\n"
            f"const ids = new Tensor('int64', BigInt64Array.from({PROMPT[0]}.map(BigInt)), [1, {len(PROMPT[0])}]);\n"
            "const out = await model.generate({ input_ids: ids, max_new_tokens: 4, do_sample: false });\n"
            "console.log(JSON.stringify({ loaded, tokens: out.tolist().map((row) => row.map(Number)) }));\n"
            "```\n"
            "```python\n"
            "import json, time\n"
            "from huggingface_hub import snapshot_download\n"
            "from optimum.onnxruntime import ORTModelForCausalLM\n"
            "import torch\n"
            f"folder = snapshot_download({REPO!r})\n"
            "started = time.perf_counter()\n"
            "model = ORTModelForCausalLM.from_pretrained(folder, subfolder='onnx')\n"
            "loaded = time.perf_counter() - started\n"
            f"out = model.generate(input_ids=torch.tensor({PROMPT}), attention_mask=torch.tensor({mask}),\n"
            "                      max_new_tokens=4, do_sample=False)\n"
            "print(json.dumps({'loaded': loaded, 'tokens': out.tolist()}))\n"
            "```\n")
        (_, tjs_out), (_, optimum_out) = run_snippets(card, hub, tjs_client, optimum_client)
        folder = snapshot_download(REPO, endpoint=hub.url, cache_dir=str(tmp_path / "hf"), token=False)
    tjs, optimum = (json.loads(out.strip().splitlines()[-1]) for out in (tjs_out, optimum_out))
    assert tjs["tokens"] == expected and optimum["tokens"] == expected

    import onnxruntime

    started = time.perf_counter()
    session = onnxruntime.InferenceSession(os.path.join(folder, "onnx", "model.onnx"))
    ort_seconds = time.perf_counter() - started
    assert "logits" in [output.name for output in session.get_outputs()]
    print(f"load: transformers.js {tjs['loaded']:.1f} s, optimum {optimum['loaded']:.1f} s, "
          f"onnxruntime {ort_seconds:.1f} s; tokens {expected}")
