"""The one source of the names a published repo shows: file names, folders and axis names.

The clients decide them, not us:
- transformers.js loads `onnx/<name><dtype suffix>.onnx` with `<name>` = `model`, or `encoder_model` +
  `decoder_model_merged` for encoder-decoder language models, with no fallback; when it builds the first, empty
  key/value cache from a graph's input metadata it fills only a dim named exactly `batch_size` (any other symbolic
  dim becomes 0), so heads and head size must be fixed numbers.
- optimum's `ORTModelFor...` finds a file by its base name anywhere in the repo and takes the first match.
So each base name a client resolves occurs once, for the primary feature (the checkpoint's own head); every other
feature carries its name in the file name (`onnx/model_sequence_classification.onnx`), which clients load by name
(transformers.js `model_file_name`, optimum `file_name`).
"""

from __future__ import annotations

FOLDERS = {"onnx": "onnx", "torchscript": "torchscript"}
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
# ONNX dtype variants: transformers.js's `dtype` option -> the suffix it appends to a graph's name, for every graph
# (`model_quantized.onnx`, `encoder_model_q4.onnx`, `decoder_model_merged_fp16.onnx`), with no fallback.
FP32 = "fp32"
DTYPE_SUFFIXES = {FP32: "", "fp16": "_fp16", "q8": "_quantized", "q4": "_q4", "q4f16": "_q4f16"}
EXTERNAL_DATA_SUFFIX = "_data"  # onnx/model.onnx -> onnx/model.onnx_data (what optimum and onnxruntime look for)

# Graph components: one graph per feature, or an encoder and decoders for encoder-decoder language models.
MODEL = "model"
ENCODER = "encoder_model"
DECODER = "decoder_model"
DECODER_WITH_PAST = "decoder_with_past_model"
MERGED_DECODER = "decoder_model_merged"  # DECODER and DECODER_WITH_PAST in one graph, switched by USE_CACHE_BRANCH
USE_CACHE_BRANCH = "use_cache_branch"

# Axis names (the ones transformers.js and optimum use).
BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST_SEQUENCE = "past_sequence_length"
TOTAL_SEQUENCE = "total_sequence_length"  # past + new tokens: the attention mask of a cached decoding step
ENCODER_SEQUENCE = "encoder_sequence_length"
DECODER_SEQUENCE = "decoder_sequence_length"
CHOICES = "num_choices"


def stem(feature: str, component: str, primary: str) -> str:
    """The file name without suffix: the component's own name for the primary feature, else with the feature."""
    return component if feature == primary else f"{component}_{feature.replace('-', '_')}"


def artifact_path(fmt: str, feature: str, component: str, primary: str, dtype: str = FP32) -> str:
    """Where an artifact lives in the published repo (posix, relative to its root); dtype variants are ONNX only."""
    return f"{FOLDERS[fmt]}/{stem(feature, component, primary)}{DTYPE_SUFFIXES[dtype]}{SUFFIXES[fmt]}"


def external_data_name(graph_file_name: str, chunk: int = 0) -> str:
    """`model.onnx_data`, then `model.onnx_data_1`, `model.onnx_data_2`, ...: the names transformers.js fetches."""
    return graph_file_name + EXTERNAL_DATA_SUFFIX + (f"_{chunk}" if chunk else "")
