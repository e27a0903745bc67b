"""Fixtures of the client suite: transformers.js and optimum-onnx installed once (cached across sessions), and the
versions they run, printed at the end of the session."""

from __future__ import annotations

import shutil

import pytest

from tests.clients import harness

INSTALLED: dict[str, dict] = {}


@pytest.fixture(scope="session")
def tjs_client():
    """transformers.js under Node: the install folder. The one skip of this suite: no `node` on PATH."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: install Node.js (>= 18) to run the transformers.js client tests")
    folder, versions = harness.ensure_tjs()  # an install failure fails the tests, it does not skip them
    INSTALLED["transformers.js"] = versions
    return folder


@pytest.fixture(scope="session")
def optimum_client():
    """optimum-onnx in its own venv: that venv's python."""
    python, versions = harness.ensure_optimum()
    INSTALLED["optimum-onnx"] = versions
    return python


def pytest_terminal_summary(terminalreporter):
    if not INSTALLED:
        return
    terminalreporter.section("client versions")
    for client, versions in INSTALLED.items():
        terminalreporter.write_line(f"{client}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    terminalreporter.write_line(f"installs cached under {harness.cache_root()} (${harness.CACHE_ENV})")
