"""How a user loads the published files in each client: the facts the card's and PR's code snippets are built from.

The snippets themselves live in templates/usage.md.j2; this module only decides what they need: which kind of
model it is (embeddings, text encoder head, text generation, text-to-text), the transformers.js and optimum class
names, the files and input order, and, for a sentence-transformers model, the pooling its embeddings really use
(all-MiniLM-L6-v2's `pooler_output` is not its embedding: cosine -0.09 with it; mean pooling is).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from bot import layout

log = logging.getLogger(__name__)

# feature (without -with-past) -> (transformers.js class, optimum class, snippet kind)
CLIENT_CLASSES = {
    "default": ("AutoModel", "ORTModelForFeatureExtraction", "encoder"),
    "masked-lm": ("AutoModelForMaskedLM", "ORTModelForMaskedLM", "encoder"),
    "sequence-classification": ("AutoModelForSequenceClassification", "ORTModelForSequenceClassification", "encoder"),
    "token-classification": ("AutoModelForTokenClassification", "ORTModelForTokenClassification", "encoder"),
    "question-answering": ("AutoModelForQuestionAnswering", "ORTModelForQuestionAnswering", "encoder"),
    "causal-lm": ("AutoModelForCausalLM", "ORTModelForCausalLM", "generation"),
    "seq2seq-lm": ("AutoModelForSeq2SeqLM", "ORTModelForSeq2SeqLM", "seq2seq"),
}
# sentence-transformers pooling mode -> transformers.js feature-extraction pooling (it has no max pooling)
_TJS_POOLING = {"mean": "mean", "cls": "cls", "lasttoken": "last_token"}
_POOLING_FOLDER = re.compile(r"[0-9]+_Pooling")


def sentence_transformers_pooling(checkpoint_dir: Path) -> dict | None:
    """{"mode": "mean" | "cls" | "max" | "lasttoken", "normalize": bool} for a sentence-transformers model, else None.

    Read from `modules.json` and its Pooling module's `config.json`; a malformed file means "not known", never a
    failed export.
    """
    try:
        modules = json.loads((checkpoint_dir / "modules.json").read_text(encoding="utf-8"))
        pooling = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        if not _POOLING_FOLDER.fullmatch(str(pooling.get("path", ""))):
            return None
        config = json.loads((checkpoint_dir / pooling["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, TypeError, AttributeError) as exc:
        if (checkpoint_dir / "modules.json").exists():
            log.info("sentence-transformers pooling not readable: %s", exc)
        return None
    mode = next((m for m in ("mean", "cls", "max", "lasttoken") if config.get(f"pooling_mode_{m}_tokens")
                 or config.get(f"pooling_mode_{m}_token") or config.get(f"pooling_mode_{m}")), None)
    if mode is None:
        return None
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    return {"mode": mode, "normalize": normalize}


def usage_context(result, repo_id: str, has_tokenizer: bool) -> dict:
    """The `usage` object templates/usage.md.j2 renders, for the primary feature's files in `result`."""
    primary = [a for a in result.artifacts if a.feature == result.primary]
    base = result.primary.removesuffix("-with-past")
    tjs_class, optimum_class, kind = CLIENT_CLASSES.get(base, (None, None, None))
    onnx = {a.component: a for a in primary if a.format == "onnx"}
    torchscript = {a.component: a for a in primary if a.format == "torchscript"}
    model = onnx.get(layout.MODEL)
    if model is not None and "pixel_values" in model.inputs:
        kind = None  # vision snippets need an image processor and an image: not shown yet
    if kind == "generation" and (model is None or not any(i.startswith("past_key_values.") for i in model.inputs)):
        kind = None  # the clients generate with a cache; a graph without one is for scoring only
    if kind == "seq2seq" and not {layout.ENCODER, layout.MERGED_DECODER} <= set(onnx):
        kind = None
    pooling = getattr(result, "pooling", None)
    if kind == "encoder" and base == "default" and pooling:
        kind = "embeddings"
    ts_model = torchscript.get(layout.MODEL)
    others = sorted({layout.stem(a.feature, a.component, result.primary) for a in result.artifacts
                     if a.format == "onnx" and a.feature != result.primary and a.component == layout.MODEL})
    return {
        "repo_id": repo_id,
        "kind": kind if has_tokenizer else None,
        "tjs_class": tjs_class, "optimum_class": optimum_class,
        "pooling": pooling, "tjs_pooling": _TJS_POOLING.get(pooling["mode"]) if pooling else None,
        "onnx_path": model.path if model is not None else None,
        "onnx_data": sorted(p for p in model.files if p != model.path) if model is not None else [],
        # optimum fetches one `<graph>_data` file by itself; a graph in several chunks needs the repo's snapshot
        "external_chunks": any(len(a.files) > 2 for a in onnx.values()),
        "onnx_inputs": model.inputs if model is not None else [],
        "onnx_outputs": model.outputs if model is not None else [],
        "torchscript_path": ts_model.path if ts_model is not None else None,
        "torchscript_inputs": ts_model.inputs if ts_model is not None else [],
        "torchscript_outputs": ts_model.outputs if ts_model is not None else [],
        # one file of several graphs (an encoder-decoder): called as `module.<name>(...)`
        "torchscript_submodules": [s.component for s in getattr(ts_model, "submodules", [])],
        "other_onnx_stems": others,
    }
