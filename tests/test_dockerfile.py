"""The container image a Hugging Face Job runs, checked statically (no Docker daemon here: the image is not built).

What can be checked without building it: the Dockerfile's instructions (CPU torch, non-root user, the `job` entry),
that it copies everything the package needs, and that it installs with the same script CI runs.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_image_runs_the_job_entry_as_a_non_root_user_with_cpu_torch():
    steps = instructions()
    kinds = [kind for kind, _ in steps]
    assert kinds[0] == "FROM" and kinds[-1] == "CMD"
    assert json.loads(steps[-1][1]) == ["hub-export-bot", "job"]
    users = [arg for kind, arg in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_run = max(i for i, kind in enumerate(kinds) if kind == "RUN")
    assert kinds.index("USER") > last_run  # nothing runs as root after the switch
    env = " ".join(arg for kind, arg in steps if kind == "ENV")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in env
    assert any(kind == "RUN" and arg.startswith("scripts/install.sh") for kind, arg in steps)


def test_the_image_copies_what_the_package_needs_and_installs_like_ci():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {part for arg in (a for k, a in instructions() if k == "COPY") for part in shlex.split(arg)[:-1]}
    needed = {"pyproject.toml", project["project"]["readme"], "scripts/install.sh"}
    needed |= {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"] if p != "bot.templates"}
    needed |= set(project["tool"]["setuptools"]["package-dir"].values())
    assert needed <= copied
    install = (ROOT / "scripts" / "install.sh").read_text()
    import torch

    pinned = re.search(r"TORCH_VERSION=(\S+)", install).group(1)
    assert torch.__version__.split("+")[0] == pinned  # the image gets the torch the tests ran with
    assert "scripts/install.sh test" in (ROOT / ".ci" / "run").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored
