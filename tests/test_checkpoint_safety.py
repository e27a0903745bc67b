"""Hostile or broken checkpoints: every file read stays inside the checkpoint, bad tokenizers are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

from bot import checkpoint as ckpt
from bot.cli import main
from bot.errors import UnsafeCheckpointError, UsageError


def sharded_copy(tiny, tmp_path: Path) -> Path:
    """The tiny BERT saved in three shards with a model.safetensors.index.json."""
    from transformers import AutoModel

    target = tmp_path / "sharded"
    AutoModel.from_pretrained(tiny("bert")).save_pretrained(target, max_shard_size="30KB")
    assert len(list(target.glob("model-*.safetensors"))) == 3
    return target


def point_index_at(checkpoint: Path, shard: str) -> None:
    """Make the index send its first shard's tensors to `shard`."""
    index_file = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: shard if v == first else v for k, v in index["weight_map"].items()}
    index_file.write_text(json.dumps(index))


def export_cli(checkpoint: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["export", "--model", str(checkpoint), "--format", "torchscript", *extra, str(out)])
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str, out: Path, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("[")]  # progress lines start with a time
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and all(needle in lines[0] for needle in needles), err
    assert not out.exists()


# -- shard index ----------------------------------------------------------------------------------------------------

def test_a_sharded_checkpoint_hashes_and_loads_exactly_the_shards_its_index_names(tiny, tmp_path):
    path = sharded_copy(tiny, tmp_path)
    (path / "stray.safetensors").write_bytes((path / "model-00001-of-00003.safetensors").read_bytes())
    checkpoint = ckpt.open_checkpoint(path, "sharded")
    assert [w.name for w in checkpoint.weights] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert {w.name for w in checkpoint.weights} | {"model.safetensors.index.json"} <= set(checkpoint.source_files)
    assert ckpt.load_for_feature(checkpoint, "default").missing == []


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "backslash", "missing", "not-safetensors"])
def test_a_shard_index_entry_outside_the_checkpoint_is_refused(tiny, tmp_path, capsys, kind):
    path = sharded_copy(tiny, tmp_path)
    outside = tmp_path / "host" / "secret.safetensors"  # a host file with tensors of the right names and shapes
    outside.parent.mkdir()
    shutil.copy(path / "model-00001-of-00003.safetensors", outside)
    shard = {"absolute": str(outside), "dotdot": "../host/secret.safetensors", "backslash": "..\\secret.safetensors",
             "missing": "model-00009-of-00003.safetensors", "not-safetensors": "config.json"}[kind]
    point_index_at(path, shard)
    with pytest.raises(UsageError, match="names the shard") as refused:
        ckpt.open_checkpoint(path, "escape")
    assert repr(shard) in str(refused.value) or shard in str(refused.value)
    code, err = export_cli(path, tmp_path / "out", capsys)
    assert_one_line_refusal(code, err, tmp_path / "out", "names the shard")


def test_config_transformers_weights_outside_the_checkpoint_is_refused(tiny_copy, tmp_path):
    path = tiny_copy("bert")
    config = json.loads((path / "config.json").read_text())
    config["transformers_weights"] = "../elsewhere.safetensors"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="transformers_weights"):
        ckpt.open_checkpoint(path, "escape")


# -- symlinks and names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "chat_template.jinja"])
def test_a_symlink_leading_outside_the_checkpoint_is_refused(tiny_copy, tmp_path, capsys, name):
    path = tiny_copy("bert")
    secret = tmp_path / "secret"
    secret.write_bytes((path / "model.safetensors").read_bytes() if name.endswith("safetensors") else b"{}")
    (path / name).unlink(missing_ok=True)
    (path / name).symlink_to(secret)
    with pytest.raises(UnsafeCheckpointError, match="leads outside the checkpoint"):
        ckpt.open_checkpoint(path, "link")
    with pytest.raises(UnsafeCheckpointError, match="leads outside the checkpoint"):
        ckpt.hash_source_files(path)  # the publish path of a checkout hashes before opening
    code, err = export_cli(path, tmp_path / "out", capsys)
    assert_one_line_refusal(code, err, tmp_path / "out", name, "leads outside the checkpoint")


def test_symlinks_inside_the_checkpoint_and_hub_cache_snapshots_are_fine(tiny_copy, tmp_path):
    path = tiny_copy("bert")
    (path / "weights").mkdir()
    (path / "model.safetensors").rename(path / "weights" / "real.safetensors")
    (path / "model.safetensors").symlink_to(path / "weights" / "real.safetensors")
    assert ckpt.open_checkpoint(path, "inside").source_files["model.safetensors"]

    repo = tmp_path / "cache" / "models--acme--tiny"  # huggingface_hub's layout: snapshot files link to blobs
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for file in (path / "config.json", path / "weights" / "real.safetensors"):
        blob = repo / "blobs" / file.name
        shutil.copy(file, blob)
        (snapshot / ("config.json" if file.name == "config.json" else "model.safetensors")).symlink_to(blob)
    assert ckpt.open_checkpoint(snapshot, "acme/tiny").weights == [snapshot / "model.safetensors"]


@pytest.mark.parametrize("name", ["..\\x.safetensors", "a\nb.safetensors", "tab\t.safetensors", "*.safetensors",
                                  ".hidden.safetensors"])
def test_odd_source_file_names_stop_the_run_naming_the_file(tiny_copy, tmp_path, capsys, name):
    path = tiny_copy("bert")
    try:
        (path / name).write_bytes(b"x")
    except OSError:
        pytest.skip(f"the file system refuses the name {name!r}")
    with pytest.raises(UnsafeCheckpointError, match="has a file named") as refused:
        ckpt.open_checkpoint(path, "odd")
    assert repr(name) in str(refused.value)
    code, err = export_cli(path, tmp_path / "out", capsys)
    assert_one_line_refusal(code, err, tmp_path / "out", "has a file named")


def test_odd_names_of_files_that_are_never_read_are_ignored(tiny_copy):
    path = tiny_copy("bert")
    (path / "notes\nfor me.txt").write_text("not a source file")
    assert set(ckpt.open_checkpoint(path, "ok").source_files) == {"config.json", "model.safetensors"}


def test_odd_names_in_a_hub_repo_are_refused_before_downloading():
    with pytest.raises(UnsafeCheckpointError, match=r"'\.\.\\\\x\.safetensors'"):
        ckpt.select_source_files(["config.json", "model.safetensors", "..\\x.safetensors"])
    with pytest.raises(UnsafeCheckpointError, match="glob character"):
        ckpt.select_source_files(["config.json", "*.safetensors"])
    with pytest.raises(UnsafeCheckpointError, match="control characters"):
        ckpt.select_source_files(["config.json", "model.safetensors", "x\n.safetensors"])


def test_only_the_weight_files_a_load_reads_are_downloaded():
    names = ["config.json", "model.safetensors", "model.fp16.safetensors", "adapter_model.safetensors",
             "pytorch_model.bin", "vocab.txt", "onnx/model.onnx"]
    assert ckpt.select_source_files(names) == ["config.json", "model.safetensors", "vocab.txt"]
    sharded = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "junk.safetensors", "pytorch_model.bin"]
    assert ckpt.select_source_files(sharded) == sharded[:4]
    assert ckpt.select_source_files(["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]) == \
        ["config.json", "pytorch_model.bin"]


# -- tokenizers -----------------------------------------------------------------------------------------------------

def save_tokenizer(directory: Path, size: int = 99, pad: bool = True, letters_first: bool = True) -> None:
    """A word-level tokenizer splitting text into characters; `size` ids, letters at the low or the high end."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = list(string.ascii_letters + string.digits + " .,!?'-")
    fillers = [f"w{i}" for i in range(max(0, size - len(special) - len(characters)))]
    words = special + (characters + fillers if letters_first else fillers + characters)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]" if pad else None,
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(directory)


@pytest.mark.parametrize("content", ['{"version": "1.0", "model": {"type": "WordLevel", "vocab": 3}}',
                                     "{not json", "", "[1, 2]"])
def test_a_malformed_tokenizer_json_is_a_one_line_usage_error(tiny_copy, tmp_path, capsys, content):
    path = tiny_copy("bert")
    save_tokenizer(path, size=99)
    (path / "tokenizer.json").write_text(content)
    with pytest.raises(UsageError, match="tokenizer.json .* is malformed"):
        ckpt.load_tokenizer(ckpt.open_checkpoint(path, "bad"))
    code, err = export_cli(path, tmp_path / "out", capsys)
    assert_one_line_refusal(code, err, tmp_path / "out", "tokenizer.json", "malformed")


def test_a_tokenizer_without_pad_token_validates_on_config_built_padded_inputs(tiny_copy, tmp_path, capsys):
    path = tiny_copy("bert")
    save_tokenizer(path, size=99, pad=False)
    code = main(["export", "--model", str(path), "--format", "torchscript", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and "real text" not in captured.out
    manifest = json.loads((tmp_path / "out" / "export_manifest.json").read_text())
    assert any("padded" in shape for shape in manifest["artifacts"][0]["validation"]["shapes_tried"])


def test_a_tokenizer_with_ids_beyond_the_embedding_is_a_usage_error(tiny_copy, tmp_path, capsys):
    path = tiny_copy("bert")  # vocab_size 99
    save_tokenizer(path, size=500, letters_first=False)  # real text maps to ids 405..499, the model embeds 99
    with pytest.raises(UsageError, match="token ids up to 499, but the model embeds only 99"):
        ckpt.load_tokenizer(ckpt.open_checkpoint(path, "big"))
    code, err = export_cli(path, tmp_path / "out", capsys)
    assert_one_line_refusal(code, err, tmp_path / "out", "resize_token_embeddings")


def test_a_well_formed_tokenizer_is_used_for_real_text(tiny_copy):
    path = tiny_copy("bert")
    save_tokenizer(path, size=99)
    tokenizer = ckpt.load_tokenizer(ckpt.open_checkpoint(path, "ok"))
    assert tokenizer is not None and tokenizer.pad_token == "[PAD]"


def test_the_cli_refuses_an_escaping_index_in_a_subprocess_without_traceback(tiny, tmp_path):
    """As a user sees it: exit 2, one line, nothing written."""
    path = sharded_copy(tiny, tmp_path)
    point_index_at(path, "/etc/passwd")
    proc = subprocess.run([sys.executable, "-m", "bot", "export", "--model", str(path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
    assert "'/etc/passwd'" in proc.stderr and not (tmp_path / "out").exists()
