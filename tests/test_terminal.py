"""Everyday use of the CLI: progress on a terminal and in logs, compact and JSON output, quiet libraries, global
flags anywhere, a fast `features`, and OUTPUT_DIR safety (foreign files refused, stale files and manifests gone)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from bot.cli import main

REPO = "acme/tiny-bert"


def _env(**extra) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # as a user's shell has it: the CLI decides
    return env


def _run_in_pty(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (what a person sees) and stdout on a pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    proc = subprocess.Popen([sys.executable, "-m", "bot", *args], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.wait(timeout=600)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_progress_bars_and_a_log_gets_plain_lines(hub, tiny, tmp_path):
    files = {p.name: p.read_bytes() for p in tiny("bert").iterdir() if p.is_file()}
    hub.create_repo(REPO, files)
    env = _env(**hub.env(), HF_HOME=str(tmp_path / "hf"))
    code, out, err = _run_in_pty(["export", "--model", REPO, "--format", "onnx", str(tmp_path / "tty")], env)
    assert code == 0, err
    assert "export: 1/1 feature |" in err and "\r" in err  # our bar, redrawn in place
    assert "Fetching" in err and "100%" in err  # huggingface_hub's download bar
    assert "[   " not in err  # no timestamped lines on a terminal
    assert "All good" in out

    proc = subprocess.run([sys.executable, "-m", "bot", "export", "--model", REPO, "--format", "onnx",
                           str(tmp_path / "log")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "export: " not in proc.stderr and "Fetching" not in proc.stderr
    assert any(line.startswith("[") and "s] [1/1] default: loading bert weights" in line for line in lines)
    assert all(line.startswith("[") and "s] " in line for line in lines), proc.stderr


def test_features_of_a_model_type_imports_neither_torch_nor_transformers():
    code = ("import sys, time; t = time.perf_counter(); from bot.cli import main; main(['features', 'bert']); "
            "print(round(time.perf_counter() - t, 3), 'torch' in sys.modules, 'transformers' in sys.modules)")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert "masked-lm" in proc.stdout
    *_, last = proc.stdout.splitlines()
    seconds, torch_loaded, transformers_loaded = last.split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")
    print(f"features bert: {float(seconds):.3f} s in process, {wall:.2f} s with interpreter start")


def test_features_of_a_hub_repo_fetches_only_its_config(hub, tiny, capsys, monkeypatch):
    files = {p.name: p.read_bytes() for p in tiny("bert").iterdir() if p.is_file()}
    hub.create_repo(REPO, files)
    for name, value in hub.env().items():
        monkeypatch.setenv(name, value)
    hub.requests.clear()
    assert main(["features", REPO, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["repo_id"] == REPO and data["model_type"] == "bert" and "masked-lm" in data["supported"]
    fetched = [path for _, path in hub.requests]
    assert fetched and all("config.json" in path for path in fetched), fetched
    assert main(["features", "acme/missing"]) == 2
    assert "acme/missing" in capsys.readouterr().err


def test_compact_log_by_default_full_with_v_after_the_subcommand_and_json(tiny, tmp_path, capsys):
    args = ["export", "--model", str(tiny("bert")), "--format", "onnx", "--exporter", "torchscript"]
    assert main([*args, str(tmp_path / "a")]) == 0
    compact = capsys.readouterr().out
    assert "outputs close, max abs diff" in compact and "Validating ONNX Model output" not in compact
    # six heads missing for the same reason: one line
    assert sum("skipped:" in line for line in compact.splitlines()) == 1
    assert main([*args, "-v", "--debug", str(tmp_path / "b")]) == 0
    full = capsys.readouterr().out
    assert 'Validating ONNX Model output "last_hidden_state"' in full
    assert len(full.splitlines()) > 2 * len(compact.splitlines())
    assert main([*args, "--json", str(tmp_path / "c")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and [a["path"] for a in data["artifacts"]] == ["onnx/model.onnx"]
    assert data["manifest"] == str(tmp_path / "c" / "export_manifest.json")


def test_no_third_party_warnings_on_stderr(tiny, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bot", "export", "--model", str(tiny("gpt2", "causal-lm")),
                           "--feature", "causal-lm-with-past", "--format", "onnx", "--exporter", "dynamo",
                           str(tmp_path / "out")], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    for line in proc.stderr.splitlines():
        assert line.startswith("[") and "s] " in line, f"not ours: {line}"


def test_foreign_files_are_refused_unless_forced(tiny, tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["export", "--model", str(tiny("bert")), "--format", "torchscript"]
    assert main([*args, str(out)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
    assert main([*args, "--force", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "torchscript" / "model.pt").is_file()


def test_a_rerun_removes_stale_files_and_a_failed_rerun_leaves_no_manifest(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    model = ["--model", str(tiny("bert")), "--exporter", "torchscript"]
    assert main(["export", *model, str(out)]) == 0
    assert (out / "torchscript" / "model.pt").is_file()
    capsys.readouterr()
    # bad input is found before the earlier export is touched
    assert main(["export", "--model", str(tmp_path / "typo"), str(out)]) == 2
    assert main(["export", *model, "--feature", "summarize", str(out)]) == 2
    assert (out / "torchscript" / "model.pt").is_file() and (out / "export_manifest.json").is_file()
    capsys.readouterr()
    assert main(["export", *model, "--format", "onnx", str(out)]) == 0
    assert "removed 3 file(s) of an earlier export" in capsys.readouterr().err
    assert not (out / "torchscript").exists()  # stale: not part of this export
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["onnx/model.onnx"]

    (out / "onnx" / "model.onnx").write_bytes(b"edited by hand")  # no longer the bot's file
    assert main(["export", *model, "--format", "onnx", str(out)]) == 2
    assert "onnx/model.onnx" in capsys.readouterr().err
    (out / "onnx" / "model.onnx").unlink()

    assert main(["export", *model, str(out)]) == 0
    # every artifact fails: nothing may still claim the earlier export's success
    assert main(["export", *model, "--atol", "1e-12", "--rtol", "0", "--format", "onnx", str(out)]) == 1
    assert not (out / "export_manifest.json").exists()
    assert not any(p.is_file() for p in Path(out).rglob("*"))


def test_publish_json_is_one_machine_readable_summary(hub, tiny, tmp_path):
    files = {p.name: p.read_bytes() for p in tiny("bert").iterdir() if p.is_file()}
    hub.create_repo(REPO, files)
    env = _env(**hub.env(), HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-m", "bot", "publish", REPO, "--dry-run", "--format", "onnx", "--json",
                           "--dtype", "fp32"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert data["status"] == "dry-run" and data["pr_url"] is None and data["revision"] == hub.head(REPO)
    assert [a["path"] for a in data["export"]["artifacts"]] == ["onnx/model.onnx"]
    assert "onnx/model.onnx" in data["files"]
