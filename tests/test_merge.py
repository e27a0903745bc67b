"""decoder_model_merged.onnx: the two decoding steps of an encoder-decoder model in one graph, weights stored once.

The split decoders are exported from lively tiny T5 and BART checkpoints exactly as the pipeline exports each graph
(the seq2seq spec's graphs through `export_onnx`), merged, and run in onnxruntime against the split files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bot.errors import ExportError
from bot.export.merge import merge_decoders
from bot.layout import USE_CACHE_BRANCH
from bot.export.onnx import export_onnx
from bot.specs import spec_for
from tests.tiny import build_checkpoint

FEATURE = "seq2seq-lm-with-past"
NEW_TOKENS = 8
SEEDS = {"t5": 0, "bart": 3}  # checkpoints whose greedy decoding of the test prompt varies its tokens


class Split:
    """A tiny checkpoint, its model, its split ONNX graphs and their merge (one self-contained file)."""

    def __init__(self, folder: Path, model_type: str):
        from transformers import AutoModelForSeq2SeqLM

        checkpoint = build_checkpoint(folder / "checkpoint", model_type, "seq2seq-lm", seed=SEEDS[model_type],
                                      lively=True)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
        self.paths: dict[str, Path] = {}
        for graph in spec_for("seq2seq", FEATURE).graphs(self.model, FEATURE):
            path = self.paths[graph.name] = folder / "onnx" / f"{graph.name}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(lambda attention, g=graph: g.wrapper.eval(), graph.example, graph.inputs, graph.output_names,
                        path, exporter="torchscript", output_axes=_output_axes(graph))
        self.merged = folder / "onnx" / "decoder_model_merged.onnx"
        merge_decoders(self.paths["decoder_model"], self.paths["decoder_with_past_model"], self.merged)
        self.sessions: dict[Path, onnxruntime.InferenceSession] = {}

    def session(self, path: Path) -> onnxruntime.InferenceSession:
        if path not in self.sessions:
            self.sessions[path] = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return self.sessions[path]

    def run(self, path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named outputs; feeds the graph does not take are left out."""
        session = self.session(path)
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        return dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Past inputs of length 0, as a client feeds them on the first step (heads and head size are fixed dims)."""
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
                for i in self.session(self.merged).get_inputs() if i.name.startswith("past_key_values.")}

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        hidden = self.run(self.paths["encoder_model"], {"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
        return {"encoder_attention_mask": mask, "encoder_hidden_states": hidden}

    def steps(self):
        """Feeds of a first step (batch 3, padded, 5 decoder tokens) and of the cached step after it."""
        config, rng = self.model.config, np.random.default_rng(0)
        ids = rng.integers(5, config.vocab_size, (3, 13))
        mask = np.ones((3, 13), np.int64)
        mask[1, 7:] = 0
        base = self.encode(ids, mask)
        decoded = rng.integers(5, config.vocab_size, (3, 6))
        decoded[:, 0] = config.decoder_start_token_id
        first = {"input_ids": decoded[:, :5], **base}
        presents = self.run(self.paths["decoder_model"], first)
        past = {n.replace("present.", "past_key_values."): v for n, v in presents.items() if n.startswith("present.")}
        return first, {"input_ids": decoded[:, 5:], **base, **past}


def _output_axes(graph) -> dict[str, dict[int, str]]:
    """The input axis each output dimension follows over the example and validation inputs, as the pipeline finds
    them, so the outputs carry the same dim names as in published files."""
    runs = [graph.example] + [inputs for _, inputs in graph.cases]
    with torch.no_grad():
        outputs = [graph.wrapper.eval()(*(run[i.name] for i in graph.inputs)) for run in runs]
    sizes = {axis: [run[i.name].shape[k] for run in runs] for i in graph.inputs for k, axis in i.dynamic_axes.items()}
    axes = {}
    for index, name in enumerate(graph.output_names):
        observed = [[out[index].shape[d] for out in outputs] for d in range(outputs[0][index].dim())]
        axes[name] = {d: next(a for a, s in sizes.items() if s == seen) for d, seen in enumerate(observed)
                      if seen in sizes.values()}
    return axes


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    built: dict[str, Split] = {}

    def get(model_type: str) -> Split:
        if model_type not in built:
            built[model_type] = Split(tmp_path_factory.mktemp(model_type), model_type)
        return built[model_type]

    return get


@pytest.fixture(params=["t5", "bart"])
def split(request, exports) -> Split:
    return exports(request.param)


def _flag(value: bool) -> dict[str, np.ndarray]:
    return {USE_CACHE_BRANCH: np.array([value])}


def _assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        assert np.abs(actual[name] - value).max(initial=0.0) <= atol, name


def _weights(model: onnx.ModelProto) -> list[tuple]:
    """Content keys of every initializer, nested subgraphs included."""
    keys = []

    def walk(graph):
        keys.extend((t.data_type, tuple(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())
                    for t in graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    walk(subgraph)

    walk(model.graph)
    return keys


def test_each_branch_reproduces_its_split_decoder(split):
    first, cached = split.steps()
    expected = split.run(split.paths["decoder_model"], first)
    merged = split.run(split.merged, {**first, **split.empty_past(3), **_flag(False)})
    assert list(merged) == list(expected)  # the no-past decoder's outputs, in its order
    _assert_same(merged, expected)

    expected = split.run(split.paths["decoder_with_past_model"], cached)
    merged = split.run(split.merged, {**cached, **_flag(True)})
    _assert_same(merged, expected)
    encoder_presents = [n for n in merged if ".encoder." in n]
    assert encoder_presents and not set(encoder_presents) & set(expected)
    for name in encoder_presents:  # the cached step passes the cross-attention cache through
        np.testing.assert_array_equal(merged[name], cached[name.replace("present.", "past_key_values.")])
    # the flag really switches: the first-step branch on the same feeds computes something else
    other = split.run(split.merged, {**cached, **_flag(False)})
    assert np.abs(other["logits"] - merged["logits"]).max() > 1e-3


def test_interface_is_the_with_past_inputs_and_the_decoder_outputs(split):
    merged = onnx.load(str(split.merged))
    decoder, with_past = (onnx.load(str(split.paths[n])) for n in ("decoder_model", "decoder_with_past_model"))
    assert [i.name for i in merged.graph.input] == [i.name for i in with_past.graph.input] + [USE_CACHE_BRANCH]
    assert list(merged.graph.input)[:-1] == list(with_past.graph.input)  # element types and shapes as declared
    flag = merged.graph.input[-1].type.tensor_type
    assert flag.elem_type == TensorProto.BOOL and [d.dim_value for d in flag.shape.dim] == [1]
    assert [o.name for o in merged.graph.output] == [o.name for o in decoder.graph.output]

    cached = {i.name.replace("past_key_values.", "present."): i for i in with_past.graph.input}
    cached.update({o.name: o for o in with_past.graph.output})  # with the past inputs standing in for the rest
    differing = 0
    for outer, first in zip(merged.graph.output, decoder.graph.output):
        assert outer.type.tensor_type.elem_type == first.type.tensor_type.elem_type
        dims = [list(v.type.tensor_type.shape.dim) for v in (outer, first, cached[outer.name])]
        assert len(dims[0]) == len(dims[1]) == len(dims[2])
        for mine, a, b in zip(*dims):
            if a == b and (a.dim_value or a.dim_param):
                assert mine == a, outer.name
            else:  # the branches disagree: a symbolic dim of its own
                differing += 1
                assert mine.dim_param and mine not in (a, b), outer.name
    assert differing  # the decoder presents grow by one token in cached steps
    assert {o.domain: o.version for o in merged.opset_import} == {o.domain: o.version for o in decoder.opset_import}


def test_weights_are_stored_once(split):
    merged = onnx.load(str(split.merged))
    weights = _weights(merged)
    assert len(weights) == len(set(weights))
    split_weights = [_weights(onnx.load(str(split.paths[n]))) for n in ("decoder_model", "decoder_with_past_model")]
    assert set(weights) == set(split_weights[0]) | set(split_weights[1])
    assert len(set(split_weights[0]) & set(split_weights[1])) > 10  # there was something to share
    (switch,) = merged.graph.node
    assert switch.op_type == "If" and all(not a.g.initializer for a in switch.attribute)
    sizes = [split.paths[n].stat().st_size for n in ("decoder_model", "decoder_with_past_model")]
    assert split.merged.stat().st_size < sum(sizes)


def _decode(split: Split, prompt: np.ndarray, merged: bool) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding with the encoder and either the merged decoder alone (feeding back every present, as a
    client does) or the two split decoders: the tokens and each step's last logits."""
    mask = np.ones_like(prompt)
    base = split.encode(prompt, mask)
    start = split.model.config.decoder_start_token_id
    decoded, tokens, logits, past = np.array([[start]]), [], [], {}
    for step in range(NEW_TOKENS):
        if merged:
            feeds = {"input_ids": decoded[:, -1:] if step else decoded, **base,
                     **(past if step else split.empty_past(1)), **_flag(step > 0)}
            outputs = split.run(split.merged, feeds)
        elif step:
            outputs = split.run(split.paths["decoder_with_past_model"], {"input_ids": decoded[:, -1:], **base, **past})
        else:
            outputs = split.run(split.paths["decoder_model"], {"input_ids": decoded, **base})
        logits.append(outputs["logits"][0, -1])
        tokens.append(int(logits[-1].argmax()))
        decoded = np.concatenate([decoded, [[tokens[-1]]]], axis=1)
        past.update({n.replace("present.", "past_key_values."): v for n, v in outputs.items()
                     if n.startswith("present.")})
    return tokens, logits


def _generate(model, prompt: np.ndarray) -> list[int]:
    """model.generate() as plain greedy decoding: no forced tokens, n-gram blocking or end-of-sequence stop."""
    from transformers import GenerationConfig

    plain = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             pad_token_id=model.config.pad_token_id,
                             decoder_start_token_id=model.config.decoder_start_token_id)
    saved, model.generation_config = model.generation_config, plain
    try:
        with torch.no_grad():
            ids = torch.from_numpy(prompt)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=plain)
    finally:
        model.generation_config = saved
    return out[0, 1:].tolist()


def test_greedy_decoding_with_the_merged_decoder_alone(split):
    prompt = np.random.default_rng(2).integers(5, split.model.config.vocab_size, (1, 6))
    expected, expected_logits = _decode(split, prompt, merged=False)
    assert len(set(expected)) > 1  # varied tokens: a wrongly wired cache would show
    tokens, logits = _decode(split, prompt, merged=True)
    assert tokens == expected
    assert max(np.abs(a - b).max() for a, b in zip(logits, expected_logits)) <= 1e-5
    assert _generate(split.model, prompt) == expected


def test_external_data_inputs_and_output(exports, tmp_path):
    split = exports("t5")
    inputs = {}
    for name in ("decoder_model", "decoder_with_past_model"):  # inputs with their weights outside the graph
        inputs[name] = tmp_path / "in" / f"{name}.onnx"
        inputs[name].parent.mkdir(exist_ok=True)
        onnx.save_model(onnx.load(str(split.paths[name])), str(inputs[name]), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{name}.onnx_data", size_threshold=0)
    output = tmp_path / "out" / "decoder_model_merged.onnx"
    merge_decoders(inputs["decoder_model"], inputs["decoder_with_past_model"], output, external_data_threshold=1)
    data = output.with_name("decoder_model_merged.onnx_data")
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name, data.name]
    graph = onnx.load(str(output), load_external_data=False)
    locations = [e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"]
    assert locations and set(locations) == {data.name}
    assert output.stat().st_size < split.merged.stat().st_size

    first, cached = split.steps()
    for feeds in ({**first, **split.empty_past(3), **_flag(False)}, {**cached, **_flag(True)}):
        _assert_same(split.run(output, feeds), split.run(split.merged, feeds), atol=0.0)

    size = data.stat().st_size
    merge_decoders(inputs["decoder_model"], inputs["decoder_with_past_model"], output, external_data_threshold=1)
    assert data.stat().st_size == size  # written afresh, not appended to
    merge_decoders(inputs["decoder_model"], inputs["decoder_with_past_model"], output)
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name]  # below the threshold: one file


def _edited(source: Path, target: Path, edit) -> Path:
    model = onnx.load(str(source))
    edit(model.graph)
    onnx.save_model(model, str(target))
    return target


def _rename_output(graph, old, new):
    for node in graph.node:
        node.output[:] = [new if n == old else n for n in node.output]
    next(o for o in graph.output if o.name == old).name = new


MISMATCHES = {
    "swapped files": (None, None, "no past inputs"),
    "a decoder input missing with past": (
        lambda g: setattr(g.input[2], "name", "hidden_states"), None, "'hidden_states' is not an input"),
    "input types differ": (None, lambda g: setattr(g.input[0].type.tensor_type, "elem_type", TensorProto.INT32),
                           "'input_ids' is"),
    "head outputs differ": (lambda g: _rename_output(g, "logits", "last_hidden_state"), None,
                            "different head outputs"),
    "present types differ": (None, lambda g: setattr(g.output[1].type.tensor_type, "elem_type", TensorProto.FLOAT16),
                             "'present.0.decoder.key'"),
    "present ranks differ": (None, lambda g: g.output[1].type.tensor_type.shape.dim.pop(), "'present.0.decoder.key'"),
    "an extra output with past": (None, lambda g: _rename_output(g, "present.1.decoder.value", "present.9.x"),
                                  "outputs the decoder does not"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_mismatched_graphs_are_refused(exports, tmp_path, case):
    split = exports("t5")
    edit_first, edit_cached, message = MISMATCHES[case]
    decoder, with_past = split.paths["decoder_model"], split.paths["decoder_with_past_model"]
    if case == "swapped files":
        decoder, with_past = with_past, decoder
    if edit_first:
        decoder = _edited(decoder, tmp_path / "decoder_model.onnx", edit_first)
    if edit_cached:
        with_past = _edited(with_past, tmp_path / "decoder_with_past_model.onnx", edit_cached)
    output = tmp_path / "decoder_model_merged.onnx"
    with pytest.raises(ExportError, match=message):
        merge_decoders(decoder, with_past, output)
    assert not output.exists()


def test_one_graph_twice_or_a_merged_graph_is_refused(exports, tmp_path):
    split, output = exports("t5"), tmp_path / "decoder_model_merged.onnx"
    with pytest.raises(ExportError, match="no past inputs"):  # one graph twice is no pair of steps
        merge_decoders(split.paths["decoder_model"], split.paths["decoder_model"], output)
    with pytest.raises(ExportError, match="merged already"):
        merge_decoders(split.paths["decoder_model"], split.merged, output)
    assert not output.exists()


def _toy(graph_name: str, with_past: bool, weight_name: str) -> onnx.ModelProto:
    """A decoder-shaped graph with an If node whose branches read the outer weight and an outer local value, with
    the same local names in both graphs: what the branch prefixes must keep apart. The with-past graph declares a
    batch of 1, as dynamo fixes a cached step's input_ids to one token."""
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), weight_name)
    x = helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1 if with_past else "batch", 2])
    past = [helper.make_tensor_value_info(f"past_key_values.0.{p}.key", TensorProto.FLOAT, ["batch", "past"])
            for p in ("decoder", "encoder")]
    inner = helper.make_graph([helper.make_node("Add", ["h", weight_name], ["inner"])], "then", [],
                              [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Sub", ["h", weight_name], ["inner2"])], "else", [],
                              [helper.make_tensor_value_info("inner2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("MatMul", ["input_ids", weight_name], ["h"]),
             helper.make_node("ReduceSum", ["h"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["logits"], then_branch=inner, else_branch=other)]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])]
    if with_past:
        nodes.append(helper.make_node("Concat", [past[0].name, "h"], ["present.0.decoder.key"], axis=1))
        outputs.append(helper.make_tensor_value_info("present.0.decoder.key", TensorProto.FLOAT, ["batch", "total"]))
    else:
        nodes += [helper.make_node("Identity", ["h"], ["present.0.decoder.key"]),
                  helper.make_node("Neg", ["h"], ["present.0.encoder.key"])]
        outputs += [helper.make_tensor_value_info(f"present.0.{p}.key", TensorProto.FLOAT, ["batch", 2])
                    for p in ("decoder", "encoder")]
    graph = helper.make_graph(nodes, graph_name, [x] + (past if with_past else []), outputs, [weight, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    model.metadata_props.add(key="source", value=graph_name)
    return model


def test_nested_subgraphs_and_colliding_names(tmp_path):
    paths = {}
    for name, with_past, weight in (("decoder_model", False, "w"), ("decoder_with_past_model", True, "onnx::w_7")):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save_model(_toy(name, with_past, weight), str(paths[name]))
    output = tmp_path / "decoder_model_merged.onnx"
    merge_decoders(paths["decoder_model"], paths["decoder_with_past_model"], output)
    merged = onnx.load(str(output))
    assert sorted(t.name for t in merged.graph.initializer) == ["w", "zero"]  # one weight under two names
    assert {p.key: p.value for p in merged.metadata_props} == {"source": "decoder_model"}
    dims = [d.dim_param or d.dim_value for d in merged.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 2]  # the first step takes any batch: the no-past graph's dim

    def run(path, feeds):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        return dict(zip([o.name for o in session.get_outputs()],
                        session.run(None, {k: v for k, v in feeds.items() if k in wanted})))

    for sign in (1.0, -1.0):  # both branches of the inner If
        x = sign * np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)  # a batch of 2 on the first step
        past = {"past_key_values.0.decoder.key": np.ones((1, 3), np.float32),
                "past_key_values.0.encoder.key": np.full((1, 2), 7.0, np.float32)}
        first = run(output, {"input_ids": x, **past, **_flag(False)})
        _assert_same(first, run(paths["decoder_model"], {"input_ids": x}), atol=0.0)
        cached = run(output, {"input_ids": x[:1], **past, **_flag(True)})
        _assert_same(cached, run(paths["decoder_with_past_model"], {"input_ids": x[:1], **past}), atol=0.0)
        np.testing.assert_array_equal(cached["present.0.encoder.key"], past["past_key_values.0.encoder.key"])
