"""Half-precision safetensors rewritten as float32 files, a block at a time, so that loading maps them.

Why: the exported graphs are float32 (bot.checkpoint.load_model), and transformers loads a bfloat16 or float16
checkpoint as float32 by mapping its files and converting every tensor into new memory, keeping the mapped pages
until it returns: a 2.22 GB bfloat16 checkpoint in 3 shards peaked at 6.94 GB while loading (the 4.45 GB float32
model plus the 2.2 GB of mapped shards). Float32 files are mapped as they are, so loading the copy holds the float32
weights once. The copy is read with plain reads (the page cache, not this process's memory) and written a block at a
time; it costs disk, the float32 size, until the loaded model is released (the files are unlinked at once, their
mapped pages stay valid). Made only from FLOAT32_COPY_BYTES of float32 weights on, where the memory matters, in the
temporary folder (TMPDIR); with too little disk there, the checkpoint is loaded as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

FLOAT32_COPY_BYTES = 2 * 1024**3
BLOCK_BYTES = 64 * 1024**2  # of stored half-precision bytes converted at once
HALF = {"BF16": torch.bfloat16, "F16": torch.float16}
ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2, "U16": 2,
              "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and where its data starts."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size)), 8 + size


def _float32_size(entry: dict) -> int:
    """Bytes of a header entry once its half-precision data is float32."""
    return (entry["data_offsets"][1] - entry["data_offsets"][0]) * (2 if entry["dtype"] in HALF else 1)


def _float32_dtype(entry: dict) -> str:
    return "F32" if entry["dtype"] in HALF else entry["dtype"]


def _float32_layout(header: dict) -> tuple[dict, list[tuple[str, dict]]]:
    """The float32 file's header, and the source entries in the order their data is written (widest items first,
    as safetensors writes them, so every tensor stays aligned)."""
    entries = sorted(((name, entry) for name, entry in header.items() if name != "__metadata__"),
                     key=lambda item: -ITEM_BYTES.get(_float32_dtype(item[1]), 1))
    layout, offset = {}, 0
    for name, entry in entries:
        size = _float32_size(entry)
        layout[name] = {"dtype": _float32_dtype(entry), "shape": entry["shape"],
                        "data_offsets": [offset, offset + size]}
        offset += size
    if "__metadata__" in header:
        layout["__metadata__"] = header["__metadata__"]
    return layout, entries


def _write_float32(source: Path, target: Path) -> None:
    header, start = _header(source)
    layout, entries = _float32_layout(header)
    encoded = json.dumps(layout, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 64)  # the data starts 64-byte aligned
    with open(source, "rb") as reading, open(target, "wb") as writing:
        writing.write(len(encoded).to_bytes(8, "little") + encoded)
        for _, entry in entries:
            begin, end = entry["data_offsets"]
            reading.seek(start + begin)
            half = HALF.get(entry["dtype"])
            for position in range(begin, end, BLOCK_BYTES):
                block = bytearray(min(BLOCK_BYTES, end - position))
                reading.readinto(block)
                if half is None:
                    writing.write(block)
                else:
                    writing.write(torch.frombuffer(block, dtype=half).to(torch.float32).numpy().data)


def _float32_bytes(weights: list[Path]) -> int:
    """The float32 size of half-precision safetensors weights; 0 when there is nothing to convert."""
    if not weights or any(path.suffix != ".safetensors" for path in weights):
        return 0
    entries = [entry for path in weights for name, entry in _header(path)[0].items() if name != "__metadata__"]
    return sum(map(_float32_size, entries)) if any(entry["dtype"] in HALF for entry in entries) else 0


@contextlib.contextmanager
def float32_files(directory: Path, weights: list[Path]) -> Iterator[Path]:
    """The folder to load the checkpoint from: `directory`, or a scratch copy whose half-precision tensors are float32
    (the other files linked), removed when the block ends."""
    size = _float32_bytes(weights)
    if size < FLOAT32_COPY_BYTES:
        yield directory
        return
    if shutil.disk_usage(tempfile.gettempdir()).free < size * 1.05:
        log.warning("not enough free disk in %s for float32 copies of the weights (%.1f GB); loading them as stored",
                    tempfile.gettempdir(), size / 1e9)
        yield directory
        return
    scratch = Path(tempfile.mkdtemp(prefix="hub-export-bot-float32-"))
    try:
        try:
            for path in weights:
                _write_float32(path, scratch / path.name)
        except OSError as exc:  # the disk filled up meanwhile: load the half-precision files as transformers does
            log.warning("could not write float32 copies of the weights (%s); loading them as stored", exc)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch_ready = False
        else:
            copied = {path.name for path in weights}
            for other in directory.iterdir():
                if other.is_file() and other.name not in copied:
                    (scratch / other.name).symlink_to(other.resolve())
            scratch_ready = True
        yield scratch if scratch_ready else directory
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
