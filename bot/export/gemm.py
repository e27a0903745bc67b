"""Rewrite `MatMul(x, Transpose(W))` on a stored 2-D weight as `Gemm(x, W, transB=1)`, between two Reshapes.

Why: exporters write a linear layer whose weight they do not fold as a Transpose of that weight feeding a MatMul.
A tied language-model head always takes this form, since folding the Transpose would store the tied weight twice.
A session without graph optimisations, as validation uses above 2 GB, then transposes the weight on every run
(GPT-2 at 2.2 GB: 0.41 GB each time, the peak of its validation); Gemm reads the weight transposed as stored.
Default sessions, the clients', fold and pre-pack either form to the same memory (2.70 GB for both at 2.2 GB).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def transposed_weights_to_gemm(model: onnx.ModelProto) -> None:
    """Rewrite the graph in place. Reads only the weights' shapes, so the model may be loaded without its external
    data."""
    graph = model.graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    transposed = {n.output[0]: n for n in graph.node if n.op_type == "Transpose" and len(dims.get(n.input[0], ())) == 2
                  and [a.ints for a in n.attribute if a.name == "perm"] in ([], [[1, 0]])}
    taken = {name for n in graph.node for name in (*n.input, *n.output)} | set(dims)
    nodes = []
    for node in graph.node:
        source = transposed.get(node.input[1]) if node.op_type == "MatMul" else None
        if source is None:
            nodes.append(node)
            continue
        weight = source.input[0]
        out_features, in_features = dims[weight]
        prefix = _fresh(node.output[0] + "_gemm", taken)

        def names(suffix: str, prefix=prefix) -> str:
            return f"{prefix}_{suffix}"

        graph.initializer.extend([
            numpy_helper.from_array(np.array([-1, in_features], np.int64), names("rows_shape")),
            numpy_helper.from_array(np.array([0], np.int64), names("zero")),
            numpy_helper.from_array(np.array([-1], np.int64), names("last")),
            numpy_helper.from_array(np.array([out_features], np.int64), names("features")),
        ])
        nodes += [
            helper.make_node("Reshape", [node.input[0], names("rows_shape")], [names("rows")]),
            helper.make_node("Gemm", [names("rows"), weight], [names("product")], transB=1),
            helper.make_node("Shape", [node.input[0]], [names("input_shape")]),
            helper.make_node("Slice", [names("input_shape"), names("zero"), names("last")], [names("leading")]),
            helper.make_node("Concat", [names("leading"), names("features")], [names("output_shape")], axis=0),
            helper.make_node("Reshape", [names("product"), names("output_shape")], [node.output[0]]),
        ]
    used = _inputs(nodes) | {o.name for o in graph.output}
    nodes = [n for n in nodes if not (n.op_type == "Transpose" and n.output[0] in transposed
                                       and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(nodes)
    values = {name for n in nodes for name in n.output} | set(dims)
    kept = [v for v in graph.value_info if v.name in values]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _inputs(nodes) -> set[str]:
    """Every value the nodes read, subgraphs (If, Loop) included."""
    names = set()
    for node in nodes:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                names |= _inputs(subgraph.node)
    return names


def _fresh(prefix: str, taken: set[str]) -> str:
    """A prefix no name in the graph starts with, so the new values never shadow the graph's own."""
    while any(name.startswith(prefix) for name in taken):
        prefix += "_"
    taken.add(prefix)
    return prefix
