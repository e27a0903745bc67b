"""config.json edits: only the bot's `transformers.js_config` keys change, and hashing ignores exactly those."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper, numpy_helper

from bot import jsconfig
from bot.checkpoint import source_sha256
from bot.errors import ExportError
from bot.export import external

WANTED = {"use_external_data_format": {"model.onnx": 3}, "dtype": "fp32"}
CONFIGS = [
    '{\n  "architectures": ["GPT2LMHeadModel"],\n  "n_embd": 768\n}\n',  # transformers' own layout
    '{"n_embd": 768}',  # minified, no trailing newline
    '{\r\n    "n_embd": 768,\r\n    "transformers.js_config": {\r\n        "device": "webgpu"\r\n    }\r\n}',
    '{\n  "transformers.js_config": {"dtype": "q4"},\n  "n_embd": 768\n}\n',  # the maintainer's dtype
    '{\n  "name": "caf\u00e9 \\u00e9",\n  "transformers.js_config": {}\n}\n',
]


@pytest.mark.parametrize("text", CONFIGS)
def test_the_edit_adds_the_keys_keeps_every_other_byte_and_hashes_as_the_original(text, tmp_path):
    edited = jsconfig.with_bot_keys(text, WANTED)
    config = json.loads(edited)
    assert {k: v for k, v in config.items() if k != "transformers.js_config"} == \
        {k: v for k, v in json.loads(text).items() if k != "transformers.js_config"}
    section = config["transformers.js_config"]
    assert section["use_external_data_format"] == {"model.onnx": 3}
    assert section["dtype"] == json.loads(text).get("transformers.js_config", {}).get("dtype", "fp32")
    assert jsconfig.without_bot_keys(edited) == jsconfig.without_bot_keys(text)
    # an updated declaration, and none at all, hash the same again: merging the PR triggers nothing
    for later in (jsconfig.with_bot_keys(edited, {"use_external_data_format": {"model.onnx": 4}}),
                  jsconfig.with_bot_keys(edited, {})):
        assert jsconfig.without_bot_keys(later) == jsconfig.without_bot_keys(text)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "config.json").write_text(text, encoding="utf-8", newline="")
    (tmp_path / "b" / "config.json").write_text(edited, encoding="utf-8", newline="")
    assert source_sha256(tmp_path / "a" / "config.json") == source_sha256(tmp_path / "b" / "config.json")


def test_an_untouched_config_hashes_as_its_bytes_and_needs_no_edit(tmp_path):
    text = CONFIGS[0]
    (tmp_path / "config.json").write_text(text)
    assert source_sha256(tmp_path / "config.json") == hashlib.sha256(text.encode()).hexdigest()
    assert jsconfig.with_bot_keys(text, {}) == text
    assert jsconfig.with_bot_keys(CONFIGS[0], WANTED).endswith(
        '  "transformers.js_config": {\n    "use_external_data_format": {\n      "model.onnx": 3\n    },\n'
        '    "dtype": "fp32"\n  }\n}\n')


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(ValueError):
        jsconfig.with_bot_keys("[1, 2]", WANTED)
    with pytest.raises(ValueError):
        jsconfig.with_bot_keys('{"transformers.js_config": 1}', WANTED)
    assert jsconfig.without_bot_keys("not json") == "not json"


def _graph(tensors: int, size: int) -> onnx.ModelProto:
    """Sum of `tensors` float initializers of `size` floats each."""
    weights = [numpy_helper.from_array(np.full(size, i + 1, np.float32), f"w{i}") for i in range(tensors)]
    nodes = [helper.make_node("Sum", [w.name for w in weights], ["y"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size])],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_weights_are_written_in_chunks_named_for_transformers_js_and_read_by_onnxruntime(tmp_path):
    path = tmp_path / "model.onnx"
    chunks = external.save(_graph(5, 1000), path, chunk_bytes=10_000)  # 4 KB each, two per chunk
    assert [c.name for c in chunks] == ["model.onnx_data", "model.onnx_data_1", "model.onnx_data_2"]
    assert all(c.stat().st_size <= 10_000 for c in chunks) and external.data_files(path) == chunks
    (y,) = onnxruntime.InferenceSession(str(path)).run(None, {})
    assert np.all(y == 15)
    moved = external.move(path, tmp_path / "renamed.onnx")
    assert [p.name for p in moved] == ["renamed.onnx", "renamed.onnx_data", "renamed.onnx_data_1",
                                       "renamed.onnx_data_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in moved)
    (y,) = onnxruntime.InferenceSession(str(moved[0])).run(None, {})
    assert np.all(y == 15)


def test_more_chunks_than_transformers_js_loads_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "MAX_CHUNKS", 2)
    with pytest.raises(ExportError, match="3 external-data chunks"):
        external.save(_graph(3, 1000), tmp_path / "model.onnx", chunk_bytes=4000)
    assert list(tmp_path.iterdir()) == []
