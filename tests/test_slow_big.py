"""Over 2 GB end to end: a generated 2.2 GB checkpoint published to the emulated Hub as model.onnx + model.onnx_data.

Slow (minutes, ~10 GB of RAM with the emulator holding every upload in memory): not in the default suite.
Run it with `python -m pytest -m slow tests/test_slow_big.py -s`; it prints peak RSS / checkpoint size.
"""

import os
import resource
import subprocess
import sys

import pytest
import torch

from tests.emulators.hub import HubEmulator

pytestmark = pytest.mark.slow


def test_a_checkpoint_over_2gb_is_published_with_one_external_data_file(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=1024, n_layer=40, n_head=16, n_positions=256)  # ~554M parameters, 2.2 GB
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "big")
    files = {p.name: p.read_bytes() for p in (tmp_path / "big").iterdir() if p.is_file()}
    size = sum(len(b) for b in files.values())
    assert size > 2 * 1024**3
    with HubEmulator() as hub:
        hub.create_repo("acme/big-gpt2", files)
        del files
        proc = subprocess.run([sys.executable, "-m", "bot", "publish", "acme/big-gpt2", "--feature", "causal-lm",
                               "--format", "onnx", "--work-dir", str(tmp_path / "work")],
                              env={**os.environ, **hub.env()}, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        pr = hub.files("acme/big-gpt2", "refs/pr/1")
        assert {"onnx/model.onnx", "onnx/model.onnx_data"} <= set(pr)
        assert len(pr["onnx/model.onnx_data"]) > 2 * 1024**3 and len(pr["onnx/model.onnx"]) < 50 * 1024**2
        print(f"\ncheckpoint {size / 1024**3:.2f} GB, publish peak RSS {peak / 1024**3:.2f} GB, "
              f"ratio {peak / size:.2f}")
