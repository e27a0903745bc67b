"""Dtype recipes: how an fp32 ONNX graph becomes its fp16, q8, q4 or q4f16 variant (bot.export.variants gates them).

Recipes, onnxruntime's own tools (no other dependency), tried in order until one passes the gate:
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`: inputs and outputs stay
  fp32 (clients feed fp32 and transformers.js builds the empty cache from the graph's declared input types). It
  needs no op blocked to run on the CPU provider: onnxruntime inserts fp32 casts around ops without fp16 CPU
  kernels (on x86: MatMul, Gemm, Add, Mul, Softmax, ...), so on CPU fp16 halves the download, not the compute.
  The converter's default op_block_list is kept as is: blocking more ops (e.g. a T5 RMS norm's Pow and
  ReduceMean) makes it write invalid If branches in the merged decoder.
- q8: (1) `quantize_dynamic`: int8 weights of MatMul/Gemm (per output channel) and of the embedding tables, uint8
  activations quantized on the fly with one range per tensor (MatMulInteger): the fastest on CPU. One range per
  tensor costs accuracy where activations have outliers (all-MiniLM-L6-v2: worst cosine 0.973), so when that fails
  the gate, (2) int8 in blocks of 32: MatMulNBits with 8-bit weights, one scale per 32 weights, and activations
  quantized per block of 32 too (accuracy_level 4: int8 compute), embeddings as in (1): the same size, faster than
  fp32 on CPU, worst cosine 0.998 on MiniLM.
- q4: MatMulNBits with 4 bits in blocks of 32 (asymmetric) for MatMul weights and GatherBlockQuantized for the
  embedding tables. Gemm nodes with a constant weight are rewritten as MatMul + Add first, so GPT-2's Conv1D
  layers are quantized too.
- q4f16: the fp16 graph, then q4 on it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bot.layout import external_data_name


class _QuantizerAdvice(logging.Filter):
    """quantize_dynamic advises pre-processing through the root logger on every call; the gate judges the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_root():
    root, advice = logging.getLogger(), _QuantizerAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def nbits_quantizer():
    """MatMulNBitsQuantizer, imported without the logging.basicConfig(level=INFO) its module runs on import."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    return MatMulNBitsQuantizer


def load(path: Path):
    import onnx

    return onnx.load(str(path))  # with external data, if any


def save(model, path: Path) -> None:
    """One self-contained file below 2 GB, else the graph plus its external-data chunks (bot.export.external)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    # ByteSize() itself fails over 2 GB: add up the tensors (each below 2 GB), subgraphs' included
    if sum(tensor.ByteSize() for tensor in _get_all_tensors(model)) < 2**31 - 2**26:
        onnx.save_model(model, str(path))
        return
    from bot.export import external

    external.save(model, path)


def to_fp16(source: Path):
    """By path: the converter then infers shapes from the file (in memory, that fails over 2 GB)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(str(source), keep_io_types=True)  # its default op_block_list


def gemm_to_matmul(model):
    """Gemm(A, W, C) with a constant 2-D W (transA 0, alpha and beta 1) -> MatMul(A, W') + C: the n-bit quantizer
    only reads MatMul, and GPT-2's Conv1D layers export as Gemm."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (weight is None or len(weight.dims) != 2 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or consumers.get(weight.name, 0) != 1):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):
            transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name)
            weight.CopyFrom(transposed)
        product = node.output[0] + "_matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight.name], [product], name=node.name + "_matmul"))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def nbits(model, bits: int, symmetric: bool, embeddings: bool, accuracy_level: int | None = None):
    ops = ("MatMul", "Gather") if embeddings else ("MatMul",)
    quantizer = nbits_quantizer()(gemm_to_matmul(model), bits=bits, block_size=32, is_symmetric=symmetric,
                                  accuracy_level=accuracy_level, op_types_to_quantize=ops,
                                  quant_axes=(("MatMul", 0), ("Gather", 1)))
    with quiet_root():
        quantizer.process()
    return quantizer.model.model


def dynamic(source: Path, target: Path, op_types: list[str], per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = source.with_name(external_data_name(source.name)).exists()
    with quiet_root():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=op_types, use_external_data_format=external)
    if external:  # it names its data `<file>.data`: one file below 2 GB, else `<file>_data` (bot.layout)
        model = load(target)
        target.with_name(target.name + ".data").unlink(missing_ok=True)
        save(model, target)


def fp16(source: Path, target: Path) -> None:
    save(to_fp16(source), target)


def dynamic_int8(source: Path, target: Path) -> None:
    dynamic(source, target, ["MatMul", "Gemm", "Gather"], per_channel=True)


def block_int8(source: Path, target: Path) -> None:
    embeddings = target.with_name(target.stem + ".embeddings.onnx")
    try:
        dynamic(source, embeddings, ["Gather"], per_channel=False)
        save(nbits(load(embeddings), 8, symmetric=True, embeddings=False, accuracy_level=4), target)
    finally:
        remove(embeddings)


def int4(source: Path, target: Path) -> None:
    save(nbits(load(source), 4, symmetric=False, embeddings=True), target)


def int4_fp16(source: Path, target: Path) -> None:
    save(nbits(to_fp16(source), 4, symmetric=False, embeddings=True), target)


@dataclass(frozen=True)
class Recipe:
    name: str  # shown in the manifest, the PR and the log
    build: Callable[[Path, Path], None]  # fp32 graph -> variant graph (files)


RECIPES: dict[str, tuple[Recipe, ...]] = {
    "fp16": (Recipe("fp16 (fp32 inputs and outputs)", fp16),),
    "q8": (Recipe("dynamic int8", dynamic_int8), Recipe("int8 in blocks of 32", block_int8)),
    "q4": (Recipe("int4 in blocks of 32", int4),),
    "q4f16": (Recipe("int4 in blocks of 32, on fp16", int4_fp16),),
}


def remove(path: Path) -> None:
    """Delete an ONNX file and its external-data chunks, if any."""
    from bot.export import external

    for file in [path, *external.data_files(path)]:
        file.unlink(missing_ok=True)
