"""Merge `decoder_model.onnx` and `decoder_with_past_model.onnx` into one `decoder_model_merged.onnx`.

transformers.js and optimum's ORTModelForSeq2SeqLM load an encoder-decoder model as `encoder_model.onnx` plus ONE
decoder graph, which takes every input of the with-past decoder and a boolean `use_cache_branch` ([1]) selecting, via
an `If` node, the first decoding step (no cache) or a cached step. Shipping one file instead of two halves the download,
but only if the weights the two decoders share are stored once: they move to the outer graph, found by content since
two exports of one model may name the same weight differently. Every other name inside a branch gets the branch's
prefix, so the two graphs can never collide.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from bot.errors import ExportError
from bot.export import external as external_data
from bot.layout import USE_CACHE_BRANCH

NO_PAST, WITH_PAST = "no_past/", "with_past/"


def merge_decoders(decoder: Path, decoder_with_past: Path, output: Path, *,
                   external_data_threshold: int = 2 * 1024**3) -> None:
    """Write the merged decoder to `output`: external-data chunks beside it from `external_data_threshold` weight
    bytes on (protobuf cannot serialise 2 GB), one self-contained file below. Raises ExportError when the two graphs
    are not the two steps of one decoder. Weights are copied straight into the merged model and dropped from the
    inputs as they are read, so memory peaks at about the two loaded inputs."""
    first, cached = onnx.load(str(decoder)), onnx.load(str(decoder_with_past))  # external data pulled in
    _check_mergeable(first.graph, cached.graph)
    model = onnx.ModelProto(ir_version=max(first.ir_version, cached.ir_version), producer_name=first.producer_name,
                            producer_version=first.producer_version)
    graph = model.graph
    graph.name = first.graph.name or "decoder_model_merged"
    declared = {i.name: i for i in first.graph.input}
    graph.input.extend(_outer_input(i, declared.get(i.name)) for i in cached.graph.input)
    graph.input.append(helper.make_tensor_value_info(USE_CACHE_BRANCH, TensorProto.BOOL, [1]))
    renames = _share_initializers([first.graph, cached.graph], {i.name for i in graph.input}, graph.initializer)
    outputs = [o.name for o in first.graph.output]
    no_past = _branch(first.graph, NO_PAST, renames[0], outputs, {})
    past_of = {i.name.replace("past_key_values.", "present.", 1): i for i in cached.graph.input
               if i.name.startswith("past_key_values.")}
    with_past = _branch(cached.graph, WITH_PAST, renames[1], outputs, past_of)
    graph.output.extend(_outer_output(a, b) for a, b in zip(first.graph.output, with_past.output))
    graph.node.append(helper.make_node("If", [USE_CACHE_BRANCH], outputs, name="use_cache_branch/If",
                                       then_branch=with_past, else_branch=no_past))
    opsets: dict[str, int] = {}
    for opset in [*first.opset_import, *cached.opset_import]:
        opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    functions = {(f.domain, f.name, getattr(f, "overload", "")): f for f in [*cached.functions, *first.functions]}
    model.functions.extend(functions.values())
    helper.set_model_props(model, {p.key: p.value for p in [*cached.metadata_props, *first.metadata_props]})
    weight_bytes = sum(len(t.raw_data) or t.ByteSize() for t in graph.initializer)
    _save(model, Path(output), external=weight_bytes >= external_data_threshold)


def _check_mergeable(first: onnx.GraphProto, cached: onnx.GraphProto) -> None:
    """The no-past graph's inputs are a subset of the with-past graph's, and the heads return the same outputs."""
    cached_inputs = {i.name: i.type for i in cached.input}
    if USE_CACHE_BRANCH in cached_inputs or USE_CACHE_BRANCH in {i.name for i in first.input}:
        raise ExportError(f"a decoder already takes {USE_CACHE_BRANCH}: it is merged already")
    if not set(cached_inputs) - {i.name for i in first.input}:
        raise ExportError("the decoder with past has no past inputs: pass decoder_model, then decoder_with_past_model")
    for value in first.input:
        if value.name not in cached_inputs:
            raise ExportError(f"decoder input {value.name!r} is not an input of the decoder with past")
        if _kind(value.type) != _kind(cached_inputs[value.name]):
            raise ExportError(f"decoder input {value.name!r} is {_kind(value.type)} in decoder_model but "
                              f"{_kind(cached_inputs[value.name])} in decoder_with_past_model")
    heads = [[o.name for o in g.output if not o.name.startswith("present.")] for g in (first, cached)]
    if heads[0] != heads[1]:
        raise ExportError(f"the two decoders return different head outputs: {heads[0]} vs {heads[1]}")
    extra = {o.name for o in cached.output} - {o.name for o in first.output}
    if extra:
        raise ExportError(f"the decoder with past returns outputs the decoder does not: {sorted(extra)}")


def _kind(value_type: onnx.TypeProto) -> tuple[int, int | None]:
    """(element type, rank) of a tensor type; rank None when no shape is declared."""
    tensor = value_type.tensor_type
    return tensor.elem_type, len(tensor.shape.dim) if tensor.HasField("shape") else None


def _share_initializers(graphs: list[onnx.GraphProto], taken: set[str], into) -> list[dict[str, str]]:
    """Add every distinct weight (by dtype, dims and bytes) once to `into`, named after its first occurrence; for
    each graph, the map from its own initializer names to the shared ones. The graphs lose their initializers."""
    by_content: dict[tuple, str] = {}
    renames: list[dict[str, str]] = []
    for graph in graphs:
        renames.append({})
        for tensor in graph.initializer:
            data = tensor.raw_data if tensor.HasField("raw_data") else _without_name(tensor).SerializeToString()
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest())
            if key not in by_content:
                name, n = tensor.name, 0
                while name in taken:
                    n += 1
                    name = f"{tensor.name}_{n}"
                taken.add(name)
                by_content[key] = name
                into.add().CopyFrom(tensor)
                into[-1].name = name
            renames[-1][tensor.name] = by_content[key]
            tensor.ClearField("raw_data")
        del graph.initializer[:]
    return renames


def _without_name(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    return copy


def _branch(graph: onnx.GraphProto, prefix: str, shared: dict[str, str], outputs: list[str],
            past_of: dict[str, onnx.ValueInfoProto]) -> onnx.GraphProto:
    """`graph` as an If branch: no inputs or initializers of its own (they live in the outer graph), every local name
    prefixed, and `outputs` in order; an output it does not compute is an Identity of the past input it stands for."""
    outer = {i.name for i in graph.input}

    def rename(name: str) -> str:
        return shared.get(name) or (name if not name or name in outer else prefix + name)

    branch = onnx.GraphProto()
    branch.CopyFrom(graph)  # its initializers are already in the outer graph
    del branch.input[:], branch.output[:], branch.value_info[:]
    branch.name = prefix.rstrip("/")
    branch.value_info.extend(v for v in graph.value_info if v.name not in outer and v.name not in shared)
    _rename(branch, rename, prefix)
    declared = {o.name: o for o in graph.output}
    for name in outputs:
        value = onnx.ValueInfoProto()
        if name in declared:
            value.CopyFrom(declared[name])
            source = rename(name)
        elif name in past_of:
            value.CopyFrom(past_of[name])
            source = past_of[name].name
        else:
            raise ExportError(f"decoder output {name!r} has no counterpart in the decoder with past")
        value.name = prefix + name
        if source != value.name:  # a pass-through of an outer value, or a past input standing in for a present
            branch.node.append(helper.make_node("Identity", [source], [value.name], name=f"{prefix}{name}/Identity"))
        branch.output.append(value)
    return branch


def _rename(graph: onnx.GraphProto, rename, prefix: str) -> None:
    """Apply `rename` to every value name of `graph` and of the subgraphs nested in its nodes."""
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer,
                  *(sparse.values for sparse in graph.sparse_initializer)]:
        value.name = rename(value.name)
    for node in graph.node:
        node.name = prefix + node.name if node.name else node.name
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                _rename(subgraph, rename, prefix)


def _outer_input(cached: onnx.ValueInfoProto, first: onnx.ValueInfoProto | None) -> onnx.ValueInfoProto:
    """A with-past input as declared, except a dim the no-past graph declares otherwise for the same input (dynamo
    fixes input_ids to one token in the cached step): symbolic, so the first step still takes a whole prompt."""
    if first is None or first.type == cached.type:
        return cached
    value = onnx.ValueInfoProto()
    value.CopyFrom(cached)
    for axis, (a, b) in enumerate(zip(first.type.tensor_type.shape.dim, value.type.tensor_type.shape.dim)):
        if a != b:
            b.dim_param = a.dim_param or b.dim_param or f"{cached.name}_dim_{axis}"  # clears a static dim_value
    return value


def _outer_output(first: onnx.ValueInfoProto, cached: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The If output: a dim both branches declare alike is kept; any other gets its own symbolic name."""
    (elem_type, rank), (other_type, other_rank) = _kind(first.type), _kind(cached.type)
    if elem_type != other_type or (None not in (rank, other_rank) and rank != other_rank):
        raise ExportError(f"decoder output {first.name!r} is {_kind(first.type)} without past but "
                          f"{_kind(cached.type)} with past")
    if rank is None or other_rank is None:
        return helper.make_tensor_value_info(first.name, elem_type, None)
    dims = []
    for axis, (a, b) in enumerate(zip(first.type.tensor_type.shape.dim, cached.type.tensor_type.shape.dim)):
        agreed = (a.dim_value and a.dim_value == b.dim_value) or (a.dim_param and a.dim_param == b.dim_param)
        dims.append((a.dim_value or a.dim_param) if agreed else f"{first.name}_dim_{axis}")
    return helper.make_tensor_value_info(first.name, elem_type, dims)


def _save(model: onnx.ModelProto, output: Path, external: bool) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in external_data.data_files(output):  # an earlier, larger write's chunks
        stale.unlink()
    if external:
        external_data.save(model, output)
    else:
        onnx.save_model(model, str(output))
    onnx.checker.check_model(str(output))  # by path: works with external data too
