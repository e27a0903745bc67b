"""SIGTERM (a cancelled CI job, a stopped service) ends an export like Ctrl-C: exit 143, nothing half-written."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.tiny import build_checkpoint


def test_sigterm_during_an_export_removes_staging_and_exits_143(tmp_path):
    checkpoint = build_checkpoint(tmp_path / "gpt2", "gpt2", "causal-lm")
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())",
                                "export", "--model", str(checkpoint), str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 120
    while not any(out.glob(".hub-export-bot-*")) and time.monotonic() < deadline:  # staging exists: work started
        time.sleep(0.05)
    assert any(out.glob(".hub-export-bot-*")), "the export never started"
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "terminated" and "Traceback" not in stderr
    assert not out.exists() or not any(out.iterdir())  # no staging folder, no artifact, no manifest


def test_a_sigterm_swallowed_by_a_finalizer_stops_at_the_next_progress_message():
    """Python ignores an exception raised in __del__, which is where a signal handler's exception lands when the
    garbage collector is running: the request is kept, and the next progress message raises it again."""
    import io

    import pytest

    from bot.progress import STOP, Reporter, Terminated, terminate

    class Finalized:
        def __del__(self):
            terminate()

    try:
        Finalized()  # the handler runs inside __del__: its exception is printed and ignored
        with pytest.raises(Terminated):
            Reporter(stream=io.StringIO())("next step")
    finally:
        STOP.clear()
