"""A graph whose weights are split into external-data chunks loads in the clients, and its PR loops never.

The 2 GB limits are lowered (a graph from 4 KB on gets external data, in chunks of at most 64 KB) so a tiny GPT-2
takes the path of a checkpoint of many GB: `model.onnx` plus `model.onnx_data`, `model.onnx_data_1`, ... The PR
declares the chunks in config.json's `transformers.js_config`; transformers.js, loading the merged repo by id from
the Hub emulator, downloads them because of that declaration and decodes like PyTorch. optimum loads the same files
from a snapshot of the repo. Publishing again after the merge finds the exports up to date: one PR in all.
The real > 2 GB run is tests/test_slow_big.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bot.export import external
from bot.export import onnx as onnx_export
from bot.job import PublishJob, make_options
from bot.publish import OPENED, UP_TO_DATE, publish
from tests.clients import harness
from tests.clients.test_snippets import run_snippets
from tests.emulators.hub import HubEmulator
from tests.tiny import build_checkpoint

REPO = "acme/chunked-gpt2"
CHUNK = 64 * 1024
PROMPT = [[11, 42, 7, 93, 5, 60]]


@pytest.fixture
def chunked(monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 4096)
    monkeypatch.setattr(external, "CHUNK_BYTES", CHUNK)


def test_chunked_external_data_loads_in_the_clients_and_the_pr_does_not_loop(tmp_path, chunked, tjs_client,
                                                                              optimum_client):
    checkpoint = build_checkpoint(tmp_path / "gpt2", "gpt2", "causal-lm", lively=True)
    original_config = (checkpoint / "config.json").read_bytes()
    job = PublishJob(repo_id=REPO, options=make_options(["causal-lm-with-past"], ["onnx"]))
    with HubEmulator() as hub:
        hub.create_repo(REPO, {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})
        first = publish(job, endpoint=hub.url, token="hf_test_token", work_dir=tmp_path / "run1")
        assert first.status == OPENED, first.message
        pr_files = hub.files(REPO, "refs/pr/1")
        chunks = sorted(p for p in pr_files if p.startswith("onnx/model.onnx_data"))
        assert len(chunks) >= 2 and all(len(pr_files[p]) <= CHUNK for p in chunks), chunks
        assert chunks == ["onnx/model.onnx_data"] + [f"onnx/model.onnx_data_{i}" for i in range(1, len(chunks))]
        graph = onnx.load_model_from_string(pr_files["onnx/model.onnx"]).graph  # the clients below run this form
        embedding = {t.name for t in graph.initializer if list(t.dims) == [99, 32]}  # vocab x n_embd
        assert [n.op_type for n in graph.node if embedding & set(n.input[1:])] == ["Gemm"], \
            "the tied head reads the embedding as stored (bot.export.gemm)"

        # config.json: the maintainer's bytes, plus exactly the declaration transformers.js needs
        config = json.loads(pr_files["config.json"])
        assert config["transformers.js_config"] == {"use_external_data_format": {"model.onnx": len(chunks)},
                                                    "dtype": "fp32"}  # fp32 only: no 8-bit file for browsers
        assert pr_files["config.json"].startswith(original_config.rstrip()[:-1].rstrip())
        assert "transformers.js_config" in first.description and "```diff" in first.description

        hub.merge_pr(REPO, 1)
        again = publish(job, endpoint=hub.url, token="hf_test_token", work_dir=tmp_path / "run2")
        assert again.status == UP_TO_DATE, again.message
        assert len([d for d in hub.discussions(REPO) if d.is_pull_request]) == 1

        mask = [[1] * len(PROMPT[0])]
        expected = harness.torch_generate(checkpoint, "AutoModelForCausalLM", np.array(PROMPT), np.array(mask), 8)
        card = (
            "```js\n"
            'import { AutoModelForCausalLM, Tensor } from "@huggingface/transformers";\n'
            f"const model = await AutoModelForCausalLM.from_pretrained({json.dumps(REPO)});\n"
            f"const ids = new Tensor('int64', BigInt64Array.from({PROMPT[0]}.map(BigInt)), [1, {len(PROMPT[0])}]);\n"
            "const out = await model.generate({ input_ids: ids, max_new_tokens: 8, do_sample: false });\n"
            "console.log(JSON.stringify(out.tolist().map((row) => row.map(Number))));\n"
            "```\n"
            "```python\n"
            "import json\n"
            "from huggingface_hub import snapshot_download\n"
            "from optimum.onnxruntime import ORTModelForCausalLM\n"
            "import torch\n"
            f"model = ORTModelForCausalLM.from_pretrained(snapshot_download({REPO!r}), subfolder='onnx')\n"
            f"out = model.generate(input_ids=torch.tensor({PROMPT}), attention_mask=torch.tensor({mask}),\n"
            "                      max_new_tokens=8, do_sample=False)\n"
            "print(json.dumps(out.tolist()))\n"
            "```\n")
        (js, tjs_out), (client, optimum_out) = run_snippets(card, hub, tjs_client, optimum_client)
        resolved = [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in hub.requests
                    if method == "GET" and path.startswith(f"/{REPO}/resolve/")]
        downloaded = {path.split("?")[0] for path in resolved if path.startswith("onnx/model.onnx_data")}
    assert json.loads(tjs_out.strip().splitlines()[-1]) == expected
    assert downloaded == set(chunks)  # transformers.js fetched every declared chunk
    assert (client, json.loads(optimum_out.strip().splitlines()[-1])) == ("optimum", expected)


def test_every_card_snippet_runs_with_chunked_external_data(tmp_path, chunked, monkeypatch, tjs_client,
                                                            optimum_client):
    """The card's snippets as users copy them: optimum from a snapshot, onnxruntime after downloading each chunk."""
    from bot.card import END, START
    from tests.clients.test_snippets import _tiny

    monkeypatch.setattr(external, "CHUNK_BYTES", 1024**2)
    checkpoint = _tiny(tmp_path, "bert", "AutoModelForSequenceClassification")  # 30522 x 32 embeddings: 3.9 MB, a chunk of their own
    job = PublishJob(repo_id="acme/chunked-bert", options=make_options(["sequence-classification"]))
    with HubEmulator() as hub:
        hub.create_repo("acme/chunked-bert", {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})
        assert publish(job, endpoint=hub.url, token="hf_test_token", work_dir=tmp_path / "run").status == OPENED
        hub.merge_pr("acme/chunked-bert", 1)
        files = hub.files("acme/chunked-bert")
        readme = files["README.md"].decode("utf-8")
        results = run_snippets(readme[readme.index(START):readme.index(END)], hub, tjs_client, optimum_client)
    assert len([p for p in files if p.startswith("onnx/model.onnx_data")]) >= 2
    assert [client for client, _ in results] == ["js", "optimum", "python", "python"]
    assert all(stdout.strip() for _, stdout in results), results
