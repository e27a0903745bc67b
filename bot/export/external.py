"""External data of ONNX graphs over 2 GB, written in chunks that transformers.js, onnxruntime and optimum all load.

Why chunks: protobuf caps a graph file at 2 GB, so larger weights go to side files, and a browser cannot hold one
ArrayBuffer of 2 GB or more. transformers.js fetches `<file>.onnx_data`, `<file>.onnx_data_1`, ... (at most 100)
when the repo's config.json declares how many there are (bot.jsconfig), and hands each to onnxruntime under its
name. onnxruntime (Python, Node) reads each tensor at the location its graph names, so the same files load in every
client. A tensor is never split: a single tensor over the chunk size gets a chunk of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from bot.errors import ExportError
from bot.layout import external_data_name

CHUNK_BYTES = 2_000_000_000  # under 2^31 - 1, the largest ArrayBuffer browsers allow, with room for alignment
MAX_CHUNKS = 100  # transformers.js refuses more (MAX_EXTERNAL_DATA_CHUNKS)
ALIGNMENT = 4096  # each tensor starts on a page boundary, so onnxruntime can map it instead of copying it
INLINE_BYTES = 1024  # smaller tensors (shapes, scalars) stay in the graph


def data_files(graph: Path) -> list[Path]:
    """The chunks beside `graph`, in order (empty for a self-contained graph)."""
    found = []
    while (chunk := graph.with_name(external_data_name(graph.name, len(found)))).exists():
        found.append(chunk)
    return found


def save(model: onnx.ModelProto, path: Path, chunk_bytes: int | None = None,
         source: Path | None = None) -> list[Path]:
    """Write `model` to `path` with its weights in chunks of at most `chunk_bytes` (CHUNK_BYTES); return them.

    The weights come from the proto (moved out of it as they are written, so memory does not double) or, for
    tensors already external, from their files in the folder `source`, copied a block at a time: re-chunking an
    exporter's 2.2 GB side file this way holds one block, where loading it first held the whole model again.
    """
    limit = chunk_bytes or CHUNK_BYTES
    for stale in data_files(path):
        stale.unlink()
    chunks: list[Path] = []
    handle, offset = None, 0
    try:
        for tensor in _get_all_tensors(model):
            stored = _stored_at(tensor, source) if uses_external_data(tensor) else None
            if stored is None and (not tensor.HasField("raw_data") or len(tensor.raw_data) < INLINE_BYTES):
                continue
            size = stored[2] if stored else len(tensor.raw_data)
            start = -(-offset // ALIGNMENT) * ALIGNMENT
            if handle is None or (offset and start + size > limit):
                if handle is not None:
                    handle.close()
                chunks.append(path.with_name(external_data_name(path.name, len(chunks))))
                handle, start = open(chunks[-1], "wb"), 0
            handle.write(b"\0" * (start - handle.tell()))
            if stored:
                _copy(*stored, handle)
            else:
                handle.write(tensor.raw_data)
            _point(tensor, chunks[-1].name, start, size)
            offset = start + size
    finally:
        if handle is not None:
            handle.close()
    if len(chunks) > MAX_CHUNKS:
        for chunk in chunks:
            chunk.unlink()
        raise ExportError(f"{path.name} needs {len(chunks)} external-data chunks of at most {limit:,} bytes; "
                          f"transformers.js loads at most {MAX_CHUNKS}")
    onnx.save_model(model, str(path))
    return chunks


COPY_BLOCK = 64 << 20


def _point(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """The tensor's bytes are now at `offset` in the chunk `location` (and no longer in the proto)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


def _stored_at(tensor: onnx.TensorProto, source: Path | None) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor's bytes in the folder `source`."""
    if source is None:
        raise ExportError(f"tensor {tensor.name} is stored outside the graph, and no folder was given to read it")
    entries = {entry.key: entry.value for entry in tensor.external_data}
    file = source / entries["location"]
    if file.resolve().parent != source.resolve():  # exporter output only: never a path outside its folder
        raise ExportError(f"tensor {tensor.name} is stored outside the export folder: {entries['location']}")
    offset = int(entries.get("offset", 0))
    length = int(entries["length"]) if "length" in entries else file.stat().st_size - offset
    return file, offset, length


def _copy(file: Path, offset: int, length: int, handle) -> None:
    with open(file, "rb") as data:
        data.seek(offset)
        while length:
            block = data.read(min(COPY_BLOCK, length))
            if not block:
                raise ExportError(f"{file.name} ends before the tensor it holds")
            handle.write(block)
            length -= len(block)


def locations(model: onnx.ModelProto) -> set[str]:
    """The external-data files a graph reads."""
    return {entry.value for tensor in _get_all_tensors(model) if uses_external_data(tensor)
            for entry in tensor.external_data if entry.key == "location"}


def move(source: Path, target: Path) -> list[Path]:
    """Move a graph and its chunks to a new file name; the chunks are renamed with it and the graph points at them."""
    chunks = data_files(source)
    if not chunks:
        os.replace(source, target)
        return [target]
    renamed = {chunk.name: external_data_name(target.name, index) for index, chunk in enumerate(chunks)}
    model = onnx.load(str(source), load_external_data=False)  # the small graph only
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = renamed[entry.value]
    for chunk in chunks:
        os.replace(chunk, target.with_name(renamed[chunk.name]))
    onnx.save_model(model, str(target))
    source.unlink()
    return [target, *(target.with_name(name) for name in renamed.values())]
