"""What the bot publishes loads and runs in the tools people use, and agrees with PyTorch (transformers 5).

Each family: a tiny random checkpoint, exported with `hub-export-bot export`, merged with the checkpoint's own files
into the repo a merged PR leaves behind, then loaded by
- transformers.js v4 under Node (onnxruntime-node), with the `Auto…` class a user would pick, and
- optimum-onnx's `ORTModelFor…` class (its own venv, transformers 4.x),
with no file names given, as users load a repo. Outputs must match eager PyTorch within 1e-4; generative models must
decode token for token like PyTorch's `generate(do_sample=False)`: one prompt, and a batch of prompts of different
lengths (left-padded for decoder-only models, padded encoder inputs for encoder-decoder ones).

One client process per family and client answers every run of that family; a run the client cannot do fails its own
test only. A client that cannot load the repo fails every test of that family with the client's error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.clients import harness
from tests.clients.harness import ClientError
from tests.tiny import build_checkpoint

ATOL = 1e-4
NEW_TOKENS = 8
TJS, OPTIMUM = "transformers.js", "optimum"
CLIENTS = (TJS, OPTIMUM)


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[Path], Path]
    kind: str  # "encoder", "vision", "decoder" or "seq2seq"
    torch_class: str
    tjs_class: str
    optimum_class: str
    compare: tuple[str, ...]  # outputs compared with PyTorch
    features: tuple[str, ...] = field(default=())  # --feature flags; empty: every feature the checkpoint supports
    clients: tuple[str, ...] = CLIENTS  # the clients that can run this kind of checkpoint at all

    @property
    def generative(self) -> bool:
        return self.kind in ("decoder", "seq2seq")


FAMILIES = {f.name: f for f in [
    Family("bert", lambda d: build_checkpoint(d, "bert", "default"), "encoder", "AutoModel", "AutoModel",
           "ORTModelForFeatureExtraction", ("last_hidden_state",)),
    Family("bert-classifier", lambda d: build_checkpoint(d, "bert", "sequence-classification"), "encoder",
           "AutoModelForSequenceClassification", "AutoModelForSequenceClassification",
           "ORTModelForSequenceClassification", ("logits",)),
    Family("vit", lambda d: build_checkpoint(d, "vit", "image-classification"), "vision",
           "AutoModelForImageClassification", "AutoModelForImageClassification", "ORTModelForImageClassification",
           ("logits",)),
    Family("gpt2", lambda d: build_checkpoint(d, "gpt2", "causal-lm", lively=True), "decoder",
           "AutoModelForCausalLM", "AutoModelForCausalLM", "ORTModelForCausalLM", ("logits",)),
    # the architectures people publish today, one per family: tiny configs from bot.tinyconfig keep grouped-query
    # attention, sliding windows shorter than the prompts plus new tokens, soft-capping and q/k norms
    *[Family(model_type, lambda d, m=model_type: build_checkpoint(d, m, "causal-lm", lively=True), "decoder",
             "AutoModelForCausalLM", "AutoModelForCausalLM", "ORTModelForCausalLM", ("logits",))
      for model_type in ("llama", "qwen3")],
    # Gemma scales its tied embeddings by sqrt(hidden size): with random weights the head echoes the last token, so
    # the tiny Gemma 3 gets its own head, or there would be no varied tokens to compare
    Family("gemma3_text", lambda d: build_checkpoint(d, "gemma3_text", "causal-lm", lively=True,
                                                     tie_word_embeddings=False), "decoder",
           "AutoModelForCausalLM", "AutoModelForCausalLM", "ORTModelForCausalLM", ("logits",)),
    # Phi-3-mini's shape (as many key/value heads as query heads) in both clients; Phi-4-mini's grouped-query
    # attention (also model type phi3) in transformers.js only: optimum-onnx 0.1.0 sizes a phi3 cache with
    # num_attention_heads, so it cannot run a grouped-query phi3 graph, whoever exported it (README, Use the exports)
    Family("phi3", lambda d: build_checkpoint(d, "phi3", "causal-lm", lively=True, num_key_value_heads=4), "decoder",
           "AutoModelForCausalLM", "AutoModelForCausalLM", "ORTModelForCausalLM", ("logits",)),
    Family("phi3-gqa", lambda d: build_checkpoint(d, "phi3", "causal-lm", lively=True), "decoder",
           "AutoModelForCausalLM", "AutoModelForCausalLM", "ORTModelForCausalLM", ("logits",), clients=(TJS,)),
    Family("modernbert", lambda d: build_checkpoint(d, "modernbert", "default"), "encoder", "AutoModel", "AutoModel",
           "ORTModelForFeatureExtraction", ("last_hidden_state",)),
    Family("t5", lambda d: build_checkpoint(d, "t5", "seq2seq-lm", lively=True), "seq2seq", "AutoModelForSeq2SeqLM",
           "AutoModelForSeq2SeqLM", "ORTModelForSeq2SeqLM", ("logits",)),
    Family("bart", lambda d: build_checkpoint(d, "bart", "seq2seq-lm", lively=True), "seq2seq",
           "AutoModelForSeq2SeqLM", "AutoModelForSeq2SeqLM", "ORTModelForSeq2SeqLM", ("logits",)),
]}


# ---------------------------------------------------------------------------------------------------------------
# exports


@dataclass
class Exported:
    checkpoint: Path
    out: Path
    repo: Path | None
    returncode: int
    log: str

    def ready(self) -> Path:
        """The merged repo; fails the calling test with the bot's own output when the export failed."""
        assert self.returncode == 0 and self.repo is not None, (
            f"hub-export-bot export {self.checkpoint.name} exited {self.returncode}:\n{self.log[-4000:]}")
        return self.repo

    @property
    def manifest(self) -> dict:
        return json.loads((self.out / "export_manifest.json").read_text())


def export_command() -> list[str]:
    script = Path(sys.executable).parent / "hub-export-bot"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bot"]


def export(checkpoint: Path, out: Path, features=(), formats=("onnx",)) -> Exported:
    command = export_command() + ["export", "--model", str(checkpoint)]
    command += [arg for feature in features for arg in ("--feature", feature)]
    command += [arg for fmt in formats for arg in ("--format", fmt)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command + [str(out)], capture_output=True, text=True, env=env, timeout=900)
    log = done.stdout + done.stderr
    repo = None
    if done.returncode == 0:
        repo = harness.build_repo(checkpoint, out, out.parent / f"{checkpoint.name}-repo" / checkpoint.name)
    return Exported(checkpoint, out, repo, done.returncode, log)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`exported(family_name)` -> Exported, built and exported once per session."""
    root = tmp_path_factory.mktemp("clients")
    done: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in done:
            family = FAMILIES[name]
            checkpoint = family.build(root / name)
            done[name] = export(checkpoint, root / f"{name}-export", family.features)
        return done[name]

    return get


# ---------------------------------------------------------------------------------------------------------------
# inputs: one set per family, shared by the clients and the PyTorch reference


def _ids(rng, vocab: int, *shape) -> np.ndarray:
    return rng.integers(5, vocab, size=shape, dtype=np.int64)


def _padded(rng, vocab: int, lengths, pad: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    width = max(lengths)
    ids = np.full((len(lengths), width), pad, dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, length in enumerate(lengths):
        span = slice(width - length, width) if side == "left" else slice(0, length)
        ids[row, span] = _ids(rng, vocab, length)
        mask[row, span] = 1
    return ids, mask


@dataclass
class Inputs:
    forward: dict[str, np.ndarray]
    single: tuple[np.ndarray, np.ndarray] | None = None  # input_ids, attention_mask
    batch: tuple[np.ndarray, np.ndarray] | None = None


def family_inputs(family: Family, checkpoint: Path) -> Inputs:
    config = json.loads((checkpoint / "config.json").read_text())
    rng = np.random.default_rng(7)
    if family.kind == "vision":
        return Inputs({"pixel_values": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)})
    vocab = config["vocab_size"]
    pad = config.get("pad_token_id") or 0
    if family.kind == "encoder":
        ids, mask = _padded(rng, vocab, (9, 6), pad, "right")
        types = {"token_type_ids": np.zeros_like(ids)} if "type_vocab_size" in config else {}  # BERT, not ModernBERT
        return Inputs({"input_ids": ids, "attention_mask": mask, **types})
    single = _ids(rng, vocab, 1, 6)
    single = (single, np.ones_like(single))
    if family.kind == "decoder":
        ids = _ids(rng, vocab, 2, 7)
        batch = _padded(rng, vocab, (6, 3, 4), pad, "left")
        return Inputs({"input_ids": ids, "attention_mask": np.ones_like(ids)}, single, batch)
    start = config.get("decoder_start_token_id")
    start = pad if start is None else start
    ids, mask = _padded(rng, vocab, (8, 5), pad, "right")
    decoder_ids = np.concatenate([np.full((2, 1), start, dtype=np.int64), _ids(rng, vocab, 2, 3)], axis=1)
    batch = _padded(rng, vocab, (7, 4, 5), pad, "right")
    return Inputs({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}, single, batch)


def client_request(family: Family, client: str, inputs: Inputs) -> dict:
    runs = [harness.forward(inputs.forward)]
    if family.generative:
        runs += [harness.generate(*inputs.single, NEW_TOKENS), harness.generate(*inputs.batch, NEW_TOKENS)]
    return {"class": family.tjs_class if client == TJS else family.optimum_class, "runs": runs}


FORWARD, SINGLE, BATCH = 0, 1, 2  # run indexes in client_request


@pytest.fixture(scope="session")
def answers(exported):
    """`answers(family_name, client)` -> (Inputs, the client's answer); one client process per pair, kept for the
    session. A client that could not load the repo raises its ClientError in every test that asks."""
    done: dict[tuple[str, str], tuple] = {}

    def get(name: str, client: str):
        key = (name, client)
        if key not in done:
            family, export_result = FAMILIES[name], exported(name)
            repo = export_result.ready()
            inputs = family_inputs(family, export_result.checkpoint)
            try:
                if client == TJS:
                    answer = harness.run_tjs(repo, client_request(family, client, inputs))
                else:
                    answer = harness.run_optimum(repo, client_request(family, client, inputs))
            except ClientError as exc:
                answer = exc
            done[key] = (inputs, answer)
        inputs, answer = done[key]
        if isinstance(answer, Exception):
            raise answer
        return inputs, answer

    return get


def _client_fixture(request, client: str):
    return request.getfixturevalue("tjs_client" if client == TJS else "optimum_client")


def _params(families):
    return [pytest.param(name, client, id=f"{name}-{client}") for name in families
            for client in FAMILIES[name].clients]


# ---------------------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("name, client", _params(FAMILIES))
def test_outputs_match_pytorch(name, client, answers, exported, request):
    _client_fixture(request, client)
    family = FAMILIES[name]
    inputs, answer = answers(name, client)
    checkpoint = exported(name).checkpoint
    reference = harness.torch_forward(checkpoint, family.torch_class, inputs.forward)
    got = harness.outputs(answer, FORWARD)
    for output in family.compare:
        assert output in got, f"{client} returned {sorted(got)}, not {output}"
        diff = harness.max_abs_diff(reference[output], got[output])
        assert diff <= ATOL, f"{client} {output}: max abs diff {diff:.2e} > {ATOL} vs PyTorch"
    if client == OPTIMUM:  # the file optimum picked without being told
        files = {component: info["file"] for component, info in answer["sessions"].items()}
        expected = ({"encoder": "onnx/encoder_model.onnx", "decoder": "onnx/decoder_model_merged.onnx"}
                    if family.kind == "seq2seq" else {"model": "onnx/model.onnx"})
        assert {k: files.get(k) for k in expected} == expected, f"optimum loaded {files}"


def _check_generation(name: str, client: str, run: int, answers, exported, request) -> None:
    _client_fixture(request, client)
    family = FAMILIES[name]
    inputs, answer = answers(name, client)
    checkpoint = exported(name).checkpoint
    ids, mask = inputs.single if run == SINGLE else inputs.batch
    reference = harness.torch_generate(checkpoint, family.torch_class, ids, mask, NEW_TOKENS)
    got = harness.sequences(answer, run)
    skip = ids.shape[1] if family.kind == "decoder" else 1  # the prompt, or the decoder start token
    eos = harness.eos_ids(checkpoint, family.torch_class)
    expected_tokens = harness.new_tokens(reference, skip, eos)
    got_tokens = harness.new_tokens(got, skip, eos)
    assert len(got) == len(reference), f"{client} returned {len(got)} rows for {len(reference)} prompts"
    assert [row[:skip] for row in got] == [row[:skip] for row in reference], f"{client} changed the prompt: {got}"
    assert got_tokens == expected_tokens, (
        f"{client} greedy tokens differ from PyTorch generate() (after the first EOS {sorted(eos)} rows are "
        f"not compared)\n  input_ids      {ids.tolist()}\n  attention_mask {mask.tolist()}\n"
        f"  PyTorch        {expected_tokens}\n  {client:<14} {got_tokens}")
    assert all(expected_tokens) and len({t for row in expected_tokens for t in row}) > 1, (
        f"the reference is degenerate, nothing meaningful to compare: {expected_tokens}")


GENERATIVE = [name for name, family in FAMILIES.items() if family.generative]


@pytest.mark.parametrize("name, client", _params(GENERATIVE))
def test_greedy_generation_matches_pytorch(name, client, answers, exported, request):
    _check_generation(name, client, SINGLE, answers, exported, request)


@pytest.mark.parametrize("name, client", _params(GENERATIVE))
def test_greedy_generation_of_a_padded_batch_matches_pytorch(name, client, answers, exported, request):
    """Prompts of different lengths in one batch: left-padded for decoder-only models (pad token, attention mask 0),
    right-padded encoder inputs for encoder-decoder models."""
    _check_generation(name, client, BATCH, answers, exported, request)


# ---------------------------------------------------------------------------------------------------------------
# a repo with several features, published to the (emulated) Hub and loaded by repo id

PUBLISHED = "acme/tiny-bert-classifier"


def test_a_published_multi_feature_repo_loads_its_primary_feature_by_default(tiny, tmp_path, optimum_client,
                                                                             tjs_client):
    """A BertForSequenceClassification checkpoint exports `sequence-classification` (its own head, the primary
    feature) and `default`. Published with `hub-export-bot publish`, the PR merged, then loaded by repo id from the
    Hub (whose file listing is sorted by path) with no file name: optimum must take the classifier. The other
    feature loads by its name in both clients."""
    from tests.emulators.hub import HubEmulator

    checkpoint = tiny("bert", "sequence-classification")
    inputs = family_inputs(FAMILIES["bert-classifier"], checkpoint).forward
    logits = harness.torch_forward(checkpoint, "AutoModelForSequenceClassification", inputs)["logits"]
    hidden = harness.torch_forward(checkpoint, "AutoModel", inputs)["last_hidden_state"]
    with HubEmulator() as hub:
        hub.create_repo(PUBLISHED, {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})
        done = subprocess.run(export_command() + ["publish", PUBLISHED], capture_output=True, text=True, timeout=900,
                              cwd=tmp_path, env={**os.environ, **hub.env()})
        assert done.returncode == 0, f"hub-export-bot publish exited {done.returncode}:\n{done.stderr[-4000:]}"
        (pr,) = [d for d in hub.discussions(PUBLISHED) if d.is_pull_request]
        hub.merge_pr(PUBLISHED, pr.num)
        files = hub.files(PUBLISHED)
        manifest = json.loads(files["export_manifest.json"])
        paths = {(a["feature"], a["format"]): a["path"] for a in manifest["artifacts"]}
        assert manifest["primary_feature"] == "sequence-classification"
        assert paths.get(("sequence-classification", "onnx")) == "onnx/model.onnx", paths

        answer = harness.run_optimum(PUBLISHED, {"class": "ORTModelForSequenceClassification",
                                                 "runs": [harness.forward(inputs)]}, env=hub.env())
        assert answer["sessions"]["model"]["file"] == "onnx/model.onnx", (
            f"optimum picked {answer['sessions']['model']['file']} among "
            f"{sorted(p for p in files if p.endswith('.onnx'))}")
        got = harness.outputs(answer)
        assert "logits" in got, f"optimum returned {sorted(got)}"
        assert harness.max_abs_diff(logits, got["logits"]) <= ATOL

        assert paths.get(("default", "onnx")) == "onnx/model_default.onnx", paths
        answer = harness.run_optimum(PUBLISHED, {"class": "ORTModelForFeatureExtraction",
                                                 "options": {"file_name": "model_default.onnx"},
                                                 "runs": [harness.forward(inputs)]}, env=hub.env())
        assert answer["sessions"]["model"]["file"] == "onnx/model_default.onnx"
        assert harness.max_abs_diff(hidden, harness.outputs(answer)["last_hidden_state"]) <= ATOL

    repo = tmp_path / "download" / PUBLISHED.split("/")[1]  # the merged repo's files, for transformers.js
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    answer = harness.run_tjs(repo, {"class": "AutoModelForSequenceClassification", "runs": [harness.forward(inputs)]})
    assert harness.max_abs_diff(logits, harness.outputs(answer)["logits"]) <= ATOL
    answer = harness.run_tjs(repo, {"class": "AutoModel", "options": {"model_file_name": "model_default"},
                                    "runs": [harness.forward(inputs)]})
    assert harness.max_abs_diff(hidden, harness.outputs(answer)["last_hidden_state"]) <= ATOL
