"""Environment failures and options: a full disk is one line and exit 1 with nothing left behind; the opset in the
manifest is the one in the file, and an opset the exporter cannot write is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bot.cli import main
from bot.diskfull import DiskFull, is_disk_full
from bot.errors import ExportError, UsageError
from bot.export.onnx import export_onnx, graph_opset
from bot.job import make_options
from bot.specs import InputSpec


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=8k tmpfs {probe}"],
                          capture_output=True).returncode == 0


def export_on_a_small_disk(checkpoint: Path, tmp_path: Path, size: str, *args: str):
    """Run the CLI with OUTPUT_DIR on a fresh tmpfs of `size` (in a user and mount namespace); returns the process
    and the files left on that disk when the run ended."""
    disk, left = tmp_path / "disk", tmp_path / "left.txt"
    disk.mkdir()
    command = (f'mount -t tmpfs -o size={size} tmpfs "{disk}" && "{sys.executable}" -m bot export --model '
               f'"{checkpoint}" {" ".join(args)} "{disk}/out"; code=$?; find "{disk}" -mindepth 1 > "{left}"; '
               f'exit $code')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=600,
                          env={**os.environ}, cwd=Path(__file__).parent.parent)
    return proc, left.read_text().split()


@pytest.mark.parametrize("args", [("--format", "torchscript"),
                                  ("--format", "onnx", "--exporter", "torchscript"),
                                  ("--format", "onnx", "--exporter", "dynamo")])
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing(tiny, tmp_path, args):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs unshare and a user namespace that may mount a tmpfs")
    proc, left = export_on_a_small_disk(tiny("bert"), tmp_path, "40k", *args)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith(("[", "W1"))]  # progress, torch logs
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: no space left on the device of "), proc.stderr
    assert errors[0].split(" of ", 1)[1].startswith(str(tmp_path / "disk" / "out") + " ")
    assert "Traceback" not in proc.stderr and left == []


def test_disk_full_is_recognised_however_a_library_reports_it(tmp_path):
    assert is_disk_full(OSError(28, "No space left on device"), tmp_path)
    assert is_disk_full(RuntimeError("[enforce fail] ... [Errno 28] No space left on device"), tmp_path)
    wrapped = ExportError("ONNX export failed")
    wrapped.__cause__ = OSError(122, "Disk quota exceeded")
    assert is_disk_full(wrapped, tmp_path)
    assert not is_disk_full(OSError("problem writing element 1024 to file"), tmp_path)  # plenty of space here
    assert not is_disk_full(ValueError("unsupported operator"), tmp_path)
    assert issubclass(DiskFull, Exception) and DiskFull("x").exit_code == 1


def test_dynamo_with_an_opset_below_18_is_refused_up_front(tiny, tmp_path, capsys):
    with pytest.raises(UsageError, match="dynamo exporter writes opset 18 or later"):
        make_options(exporter="dynamo", opset=14)
    out = tmp_path / "out"
    assert main(["export", "--model", str(tiny("bert")), "--exporter", "dynamo", "--opset", "14", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the dynamo exporter") and "--exporter torchscript" in err and not out.exists()


class Normed(torch.nn.Module):
    """LayerNormalization exists from opset 17: a graph the version converter cannot take down to 14."""

    def __init__(self):
        super().__init__()
        self.linear, self.norm = torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)

    def forward(self, x):
        return (self.norm(self.linear(x)),)


def test_an_exporter_that_writes_another_opset_fails_instead_of_being_recorded_as_asked(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="wrote opset 18, not the requested 14"):
        export_onnx(lambda attention: Normed().eval(), {"x": torch.randn(2, 4)}, [InputSpec("x", ("batch", 4), "ids")],
                    ["y"], path, opset=14, exporter="dynamo")
    assert not path.exists()


def test_the_manifest_records_the_opset_the_file_has(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--model", str(tiny("bert")), "--format", "onnx", "--exporter", "torchscript",
                 "--opset", "17", str(out)]) == 0, capsys.readouterr().err
    (artifact,) = json.loads((out / "export_manifest.json").read_text())["artifacts"]
    assert artifact["opset"] == graph_opset(out / artifact["path"]) == 17
