"""The README's onnxruntime decoding loop runs as written and decodes a left-padded batch like generate()."""

import re
from pathlib import Path

import numpy as np

from bot.checkpoint import load_model, open_checkpoint
from bot.generation import _reference, padded_prompts
from bot.job import Job, make_options
from bot.pipeline import run_export
from tests.tiny import build_checkpoint

README = Path(__file__).resolve().parent.parent / "README.md"


def _loop_snippet() -> str:
    blocks = re.findall(r"^  ```python\n(.*?)^  ```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if "def generate(ids, mask" in b]
    return "\n".join(line[2:] for line in block.splitlines())


def test_the_readme_decoding_loop_matches_generate_on_a_left_padded_batch(tmp_path, monkeypatch):
    checkpoint = build_checkpoint(tmp_path / "gpt2", "gpt2", "causal-lm", lively=True)
    out = tmp_path / "out"
    result = run_export(Job(model=str(checkpoint), output_dir=out,
                            options=make_options(["causal-lm-with-past"], ["onnx"])))
    assert result.ok
    monkeypatch.chdir(out)
    namespace: dict = {}
    exec(_loop_snippet(), namespace)  # noqa: S102 - the README's own code, run as a user would
    model, _ = load_model(open_checkpoint(checkpoint, "tiny"), "causal-lm")
    ids, mask, _ = padded_prompts(model.config, "left")
    decoded = namespace["generate"](ids, mask, steps=8)
    assert decoded[:, ids.shape[1]:].tolist() == _reference(model, ids, mask)
    assert (mask == 0).any()  # the batch really is padded
    assert np.array_equal(decoded[:, :ids.shape[1]], ids)
