"""Budgets before allocation: a checkpoint is sized from its weights' headers and a meta-device build before any
model is built, and a Hub checkpoint from the Hub's metadata before any file is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import budget
from bot import checkpoint as ckpt
from bot.cli import main
from bot.errors import UsageError
from bot.job import Job
from bot.pipeline import resolve_checkpoint

REPO = "acme/tiny-bert"


def inflate(path: Path, **sizes) -> Path:
    """Keep the tiny weights, make config.json declare a bigger model."""
    config = json.loads((path / "config.json").read_text())
    config.update(sizes)
    (path / "config.json").write_text(json.dumps(config))
    return path


# -- memory bomb ----------------------------------------------------------------------------------------------------

def test_a_huge_config_over_tiny_weights_is_refused_before_anything_is_built(tiny_copy):
    path = inflate(tiny_copy("bert"), hidden_size=65536, num_hidden_layers=200, num_attention_heads=64,
                   intermediate_size=4 * 65536, vocab_size=10_000_000)
    assert sum(f.stat().st_size for f in path.iterdir()) < 100_000  # a 92 kB checkpoint, as reported
    with pytest.raises(UsageError, match=r"describes a model of [\d,]+ parameters but the weights hold only 19,978"):
        ckpt.open_checkpoint(path, "bomb")


def test_the_memory_bomb_exits_2_with_one_line_and_stays_small(tiny_copy, tmp_path):
    """Building this config's 635M random parameters takes 2.8 GB before the missing weights show; sizing the
    model first refuses it far below that."""
    path = inflate(tiny_copy("bert"), hidden_size=1024, num_hidden_layers=48, num_attention_heads=16,
                   intermediate_size=4096, vocab_size=30000)
    probe = ("import resource, sys\nfrom bot.cli import main\ncode = main(sys.argv[1:])\n"
             "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, "export", "--model", str(path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert proc.returncode == 2 and lines[0].startswith("error: config.json describes a model of"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    assert int(lines[-1].split()[1]) * 1024 < 1.5 * 1024**3  # kB on Linux


def test_a_config_with_absurdly_many_layers_is_refused_without_building_them(tiny_copy):
    path = inflate(tiny_copy("bert"), num_hidden_layers=1_000_000)
    with pytest.raises(UsageError, match="declares num_hidden_layers = 1000000"):
        ckpt.open_checkpoint(path, "deep")


def test_stored_parameters_come_from_the_safetensors_headers(tiny):
    stored = budget.stored_weights([tiny("bert") / "model.safetensors"], pickle=False)
    from safetensors.torch import load_file

    assert stored.parameters == sum(t.numel() for t in load_file(tiny("bert") / "model.safetensors").values())
    assert stored.element_size == pytest.approx(4, rel=0.05)  # fp32, plus the small header


def test_corrupt_safetensors_are_a_usage_error_when_sized(tiny_copy):
    path = tiny_copy("bert")
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        ckpt.open_checkpoint(path, "corrupt")


def test_every_registered_head_checkpoint_fits_the_consistency_rule(tiny):
    """Head and decoder-only checkpoints store a different part of the model than the base model counts."""
    for model_type, feature in [("bert", "token-classification"), ("bart", "causal-lm"), ("vit", "masked-im"),
                                ("t5", "seq2seq-lm"), ("gpt2", "causal-lm"), ("perceiver", "image-classification")]:
        ckpt.open_checkpoint(tiny(model_type, feature), model_type)


# -- memory budget --------------------------------------------------------------------------------------------------

def test_a_model_over_the_memory_budget_is_refused(tiny, monkeypatch):
    monkeypatch.setenv(budget.MEMORY_ENV, "100K")
    with pytest.raises(UsageError, match=r"more than the budget of 100\.0 KiB \(HUB_EXPORT_BOT_MAX_MEMORY"):
        ckpt.open_checkpoint(tiny("bert"), "tiny")
    monkeypatch.setenv(budget.MEMORY_ENV, "1G")
    ckpt.open_checkpoint(tiny("bert"), "tiny")


def test_max_memory_on_the_command_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(budget.MEMORY_ENV, "64G")  # restored after the test: the CLI exports --max-memory there
    out = tmp_path / "out"
    assert main(["export", "--model", str(tiny("bert")), "--max-memory", "100K", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: exporting needs about") and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["export", "--model", str(tiny("bert")), "--max-memory", "plenty", str(out)]) == 2
    assert "--max-memory='plenty' is not a size" in capsys.readouterr().err


@pytest.mark.parametrize("text, size", [("16G", 16 * 1024**3), ("512MiB", 512 * 1024**2), ("1.5t", int(1.5 * 1024**4)),
                                        ("1000", 1000), (" 2 gb ", 2 * 1024**3)])
def test_sizes_are_parsed_with_binary_units(text, size):
    assert budget.parse_size(text, "X") == size


@pytest.mark.parametrize("text", ["", "-1G", "0", "lots", "16Q"])
def test_bad_sizes_are_usage_errors(text):
    with pytest.raises(UsageError, match="is not a size"):
        budget.parse_size(text, "X")


def test_the_default_budget_is_the_memory_available(monkeypatch):
    monkeypatch.delenv(budget.MEMORY_ENV, raising=False)
    size, source = budget.memory_budget()
    assert 0 < size <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert "available" in source


def test_an_address_space_limit_lowers_the_default_budget():
    code = ("import resource\nfrom bot import budget\n"
            "resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, resource.RLIM_INFINITY))\n"
            "print(budget.available_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert 0 <= int(out.stdout) <= 6 * 1024**3


# -- downloads ------------------------------------------------------------------------------------------------------

def files_of(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def fetched(hub) -> list[str]:
    return [path for method, path in hub.requests if method in ("GET", "HEAD") and
            ("/resolve/" in path or path.startswith("/lfs/"))]


def resolve(hub, tmp_path):
    return resolve_checkpoint(Job(model=REPO, output_dir=tmp_path / "out"), endpoint=hub.url, token="hf_test_token",
                              cache_dir=tmp_path / "cache")


def test_only_the_weights_a_load_reads_are_downloaded(hub, tiny, tmp_path):
    weights = (tiny("bert") / "model.safetensors").read_bytes()
    hub.create_repo(REPO, {**files_of(tiny("bert")), "model.fp16.safetensors": weights,
                           "adapter_model.safetensors": weights, "pytorch_model.bin": weights})
    checkpoint = resolve(hub, tmp_path)
    assert sorted(p.name for p in checkpoint.path.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in fetched(hub) if "fp16" in p or "adapter" in p or "pytorch_model" in p]


def test_a_sharded_repo_downloads_its_index_and_shards_only(hub, tiny, tmp_path):
    from transformers import AutoModel

    sharded = tmp_path / "sharded"
    AutoModel.from_pretrained(tiny("bert")).save_pretrained(sharded, max_shard_size="30KB")
    files = files_of(sharded)
    hub.create_repo(REPO, {**files, "junk.safetensors": files["model-00001-of-00003.safetensors"]})
    checkpoint = resolve(hub, tmp_path)
    assert sorted(p.name for p in checkpoint.path.iterdir()) == sorted(files)
    assert [w.name for w in checkpoint.weights] == sorted(n for n in files if n.startswith("model-"))


def test_a_download_over_the_cap_is_refused_before_fetching(hub, tiny, tmp_path, monkeypatch):
    hub.create_repo(REPO, files_of(tiny("bert")))
    monkeypatch.setenv(budget.DOWNLOAD_ENV, "10K")
    with pytest.raises(UsageError, match=r"more than the download cap of .*HUB_EXPORT_BOT_MAX_DOWNLOAD"):
        resolve(hub, tmp_path)
    assert fetched(hub) == []


def test_weights_over_the_memory_budget_are_refused_before_fetching(hub, tiny, tmp_path, monkeypatch):
    hub.create_repo(REPO, files_of(tiny("bert")))
    monkeypatch.setenv(budget.MEMORY_ENV, "100K")
    with pytest.raises(UsageError, match="acme/tiny-bert's weights are"):
        resolve(hub, tmp_path)
    assert fetched(hub) == []


def test_the_download_cap_in_a_cli_run(hub, tiny, tmp_path):
    hub.create_repo(REPO, files_of(tiny("bert")))
    env = {**os.environ, **hub.env(), "HF_HUB_CACHE": str(tmp_path / "cache"), budget.DOWNLOAD_ENV: "10K"}
    proc = subprocess.run([sys.executable, "-m", "bot", "export", "--model", REPO, str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: acme/tiny-bert would download") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and fetched(hub) == []
