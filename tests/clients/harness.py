"""Client harness: installs transformers.js and optimum-onnx once, builds merged repos, runs both clients on them.

    python -m tests.clients.harness versions [--markdown]   # install if needed, print the client versions

Installs are cached under $HUB_EXPORT_BOT_CLIENTS_CACHE (default ~/.cache/hub-export-bot/clients):
- transformers.js-<version>/node_modules: `npm install @huggingface/transformers@<TJS_VERSION>` with
  ONNXRUNTIME_NODE_INSTALL=skip (the CPU binaries ship inside the onnxruntime-node package; its install script would
  download GPU ones);
- optimum-venv/: a venv with `torch==2.13.0` (first: the CPU wheel) then `optimum-onnx[onnxruntime]==<pin>`;
  optimum-onnx pins transformers < 4.58, so it cannot share the project's venv.
Each install writes `versions.json` last; a folder without it is wiped and installed again. A file lock keeps two
test sessions from installing into the same folder at once. Failures raise `InstallError` with the tool's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TJS_RUNNER = HERE / "tjs_runner.mjs"
OPTIMUM_RUNNER = HERE / "optimum_runner.py"

CACHE_ENV = "HUB_EXPORT_BOT_CLIENTS_CACHE"
TJS_VERSION = "4.3.2"
TJS_PACKAGE = "@huggingface/transformers"
TORCH_REQUIREMENT = "torch==2.13.0"
OPTIMUM_REQUIREMENT = "optimum-onnx[onnxruntime]==0.1.0"
OPTIMUM_PACKAGES = ("optimum-onnx", "optimum", "transformers", "onnxruntime", "onnx", "torch", "huggingface_hub")
RUN_TIMEOUT = 600  # seconds for one client process
INSTALL_TIMEOUT = 1800


class InstallError(RuntimeError):
    """A client could not be installed (network, registry, disk): the tests fail, they do not skip."""


class ClientError(AssertionError):
    """A client failed to load or run a model; the message carries the client's own error."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hub-export-bot" / "clients").expanduser()


@contextlib.contextmanager
def _locked(root: Path, name: str):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_install(command: list[str], what: str, **kwargs) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what}: {' '.join(command)} could not run: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise InstallError(f"{what}: {' '.join(command)} exited {done.returncode}:\n{output}")


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "versions.json").read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# transformers.js (Node)


def node_binary() -> str | None:
    return shutil.which("node")


def ensure_tjs() -> tuple[Path, dict]:
    """The folder holding node_modules/@huggingface/transformers, and the installed versions."""
    root = cache_root()
    folder = root / f"transformers.js-{TJS_VERSION}"
    with _locked(root, folder.name):
        marker = _read_marker(folder)
        if marker and marker.get("requested") == TJS_VERSION and (folder / "node_modules").is_dir():
            return folder, marker["versions"]
        npm = shutil.which("npm")
        if npm is None:
            raise InstallError("npm is not on PATH: it is needed to install transformers.js (node is present)")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "package.json").write_text(json.dumps({"name": "hub-export-bot-clients", "private": True}) + "\n")
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip", "npm_config_update_notifier": "false"}
        _run_install([npm, "install", "--no-audit", "--no-fund", f"{TJS_PACKAGE}@{TJS_VERSION}"],
                     "installing transformers.js", cwd=folder, env=env)
        modules = folder / "node_modules"
        versions = {"transformers.js": _npm_version(modules / TJS_PACKAGE),
                    "onnxruntime-node": _npm_version(modules / "onnxruntime-node"),
                    "node": subprocess.run([node_binary() or "node", "--version"], capture_output=True,
                                           text=True).stdout.strip()}
        binding = _onnxruntime_node_binding(modules / "onnxruntime-node")
        if binding is None:
            raise InstallError(f"onnxruntime-node {versions['onnxruntime-node']} ships no CPU binding for "
                               f"{sys.platform}/{platform.machine()} under {modules / 'onnxruntime-node' / 'bin'}")
        (folder / "versions.json").write_text(json.dumps({"requested": TJS_VERSION, "versions": versions}) + "\n")
        return folder, versions


def _npm_version(package: Path) -> str:
    try:
        return json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError) as exc:
        raise InstallError(f"{package.name} is missing after npm install ({exc})") from exc


def _onnxruntime_node_binding(package: Path) -> Path | None:
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    found = sorted(package.glob(f"bin/napi-v*/{sys.platform}/{arch}/onnxruntime_binding.node"))
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------------------------
# optimum-onnx (its own venv)


def ensure_optimum() -> tuple[Path, dict]:
    """The optimum venv's python, and the installed versions."""
    root = cache_root()
    folder = root / "optimum-venv"
    python = folder / "bin" / "python"
    requested = [TORCH_REQUIREMENT, OPTIMUM_REQUIREMENT]
    with _locked(root, folder.name):
        marker = _read_marker(folder)
        if marker and marker.get("requested") == requested and python.is_file():
            return python, marker["versions"]
        shutil.rmtree(folder, ignore_errors=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run_install([base, "-m", "venv", str(folder)], "creating the optimum venv")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        # torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build
        _run_install(pip + [TORCH_REQUIREMENT], "installing torch into the optimum venv")
        _run_install(pip + [OPTIMUM_REQUIREMENT], "installing optimum-onnx into the optimum venv")
        code = ("import json, importlib.metadata as m\n"
                f"print(json.dumps({{n: m.version(n) for n in {list(OPTIMUM_PACKAGES)!r}}}))")
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            raise InstallError(f"the optimum venv is incomplete: {done.stderr[-2000:]}")
        versions = json.loads(done.stdout)
        (folder / "versions.json").write_text(json.dumps({"requested": requested, "versions": versions}) + "\n")
        return python, versions


def markdown_matrix(tjs: dict, optimum: dict) -> str:
    rows = [("transformers.js", tjs.get("transformers.js")), ("onnxruntime-node", tjs.get("onnxruntime-node")),
            ("Node.js", tjs.get("node")), ("optimum-onnx", optimum.get("optimum-onnx")),
            ("optimum", optimum.get("optimum")), ("transformers (optimum venv)", optimum.get("transformers")),
            ("onnxruntime (optimum venv)", optimum.get("onnxruntime")), ("torch (optimum venv)", optimum.get("torch"))]
    return "\n".join(["| client | version |", "|---|---|"] + [f"| {name} | {version} |" for name, version in rows])


# ---------------------------------------------------------------------------------------------------------------
# merged repos


def build_repo(checkpoint_dir: Path, export_dir: Path, dest: Path) -> Path:
    """`dest` laid out as the Hub repo looks once the bot's PR is merged: the checkpoint's files plus everything the
    export wrote (onnx/, torchscript/, export_manifest.json). Leftover staging folders are not part of it."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in (Path(checkpoint_dir), Path(export_dir)):
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_dir() or any(part.startswith(".hub-export-bot-") for part in relative.parts):
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def repo_files(repo_dir: Path) -> list[str]:
    return sorted(p.relative_to(repo_dir).as_posix() for p in Path(repo_dir).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------
# requests and answers


def tensor(array) -> dict:
    """A numpy array as the runners' JSON tensor."""
    array = np.asarray(array)
    dtype = {"i": "int64", "u": "int64", "f": "float32", "b": "bool"}[array.dtype.kind]
    return {"dtype": dtype, "dims": list(array.shape), "data": array.astype(dtype).reshape(-1).tolist()}


def array(spec: dict) -> np.ndarray:
    """A runner's JSON tensor as a numpy array."""
    dtype = {"int64": np.int64, "int32": np.int32, "bool": np.bool_}.get(spec["dtype"], np.float32)
    return np.asarray(spec["data"], dtype=dtype).reshape(spec["dims"])


def forward(inputs: dict) -> dict:
    return {"kind": "forward", "inputs": {name: tensor(value) for name, value in inputs.items()}}


def generate(input_ids, attention_mask, max_new_tokens: int = 8) -> dict:
    return {"kind": "generate", "inputs": {"input_ids": tensor(input_ids), "attention_mask": tensor(attention_mask)},
            "max_new_tokens": max_new_tokens}


def result(answer: dict, index: int) -> dict:
    """Run `index` of a client's answer; a run the client could not do raises ClientError with its message."""
    item = answer["results"][index]
    if "error" in item:
        detail = item.get("stack") or item.get("traceback") or ""
        raise ClientError(f"{answer['client']} loaded the model but run {index} failed: {item['error']}\n"
                          f"{detail[-2500:]}")
    return item


def outputs(answer: dict, index: int = 0) -> dict[str, np.ndarray]:
    return {name: array(spec) for name, spec in result(answer, index)["outputs"].items()}


def sequences(answer: dict, index: int) -> list[list[int]]:
    return result(answer, index)["sequences"]


def _run_client(name: str, command: list[str], request: dict, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as scratch:
        request_path, result_path = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_path.write_text(json.dumps(request))
        try:
            done = subprocess.run(command + [str(request_path), str(result_path)], capture_output=True, text=True,
                                  env=env, timeout=RUN_TIMEOUT, cwd=scratch)
        except subprocess.TimeoutExpired as exc:
            raise ClientError(f"{name} did not answer within {RUN_TIMEOUT} s") from exc
        try:
            answer = json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise ClientError(f"{name} exited {done.returncode} without an answer:\n"
                              f"{(done.stdout + done.stderr)[-3000:]}") from None
    answer["log"] = (done.stdout + done.stderr)[-3000:]
    answer["client"] = name
    if not answer.get("ok"):
        detail = answer.get("stack") or answer.get("traceback") or ""
        raise ClientError(f"{name} failed to load or run {request.get('model') or request.get('model_dir')} "
                          f"with {request['class']} {request.get('options') or ''}: {answer.get('error')}\n"
                          f"{detail[-2500:]}")
    return answer


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update({"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env


def run_tjs(repo_dir: Path, request: dict) -> dict:
    """Run tjs_runner.mjs on `repo_dir` (a local folder: transformers.js is kept off the network).

    `request`: {"class": "AutoModel…", "options": {...}, "runs": [...]} (see tjs_runner.mjs)."""
    node = node_binary()
    if node is None:
        raise ClientError("node is not on PATH")
    folder, _ = ensure_tjs()
    return _run_client("transformers.js", [node, str(TJS_RUNNER)], {**request, "model_dir": str(repo_dir)},
                       _clean_env({"TJS_DIR": str(folder)}))


def run_optimum(repo_dir_or_id, request: dict, env: dict | None = None) -> dict:
    """Run optimum_runner.py in the optimum venv on a local folder, or on a Hub repo id when `env` points
    HF_ENDPOINT at a Hub (e.g. `hub.env()` of the emulator). A Hub load gets a fresh, private HF cache unless
    `env` sets one; a local load is offline."""
    python, _ = ensure_optimum()
    extra = dict(env or {})
    with tempfile.TemporaryDirectory(prefix="optimum-hf-home-") as home:
        extra.setdefault("HF_HOME", home)
        extra.setdefault("HF_HUB_CACHE", str(Path(home) / "hub"))
        extra.setdefault("HF_HUB_OFFLINE", "0" if "HF_ENDPOINT" in extra else "1")
        return _run_client("optimum-onnx", [str(python), str(OPTIMUM_RUNNER)],
                           {**request, "model": str(repo_dir_or_id)}, _clean_env(extra))


# ---------------------------------------------------------------------------------------------------------------
# PyTorch references (transformers 5, this venv)


@lru_cache(maxsize=8)
def torch_model(checkpoint_dir: str, auto_class: str):
    import transformers

    return getattr(transformers, auto_class).from_pretrained(checkpoint_dir).eval()


def torch_forward(checkpoint_dir: Path, auto_class: str, inputs: dict) -> dict[str, np.ndarray]:
    """Eager PyTorch outputs (every tensor output, by name) of `auto_class` on numpy `inputs`."""
    import torch

    model = torch_model(str(checkpoint_dir), auto_class)
    with torch.no_grad():
        output = model(**{name: torch.from_numpy(np.asarray(value)) for name, value in inputs.items()})
    return {name: value.numpy() for name, value in output.items() if isinstance(value, torch.Tensor)}


def torch_generate(checkpoint_dir: Path, auto_class: str, input_ids, attention_mask,
                   max_new_tokens: int = 8) -> list[list[int]]:
    """`generate(do_sample=False)` with the checkpoint's own generation config: full sequences, as the clients
    return them (decoder-only: prompt + new tokens; encoder-decoder: start token + new tokens)."""
    import torch

    model = torch_model(str(checkpoint_dir), auto_class)
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(np.asarray(input_ids, dtype=np.int64)),
                             attention_mask=torch.from_numpy(np.asarray(attention_mask, dtype=np.int64)),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return out.tolist()


def eos_ids(checkpoint_dir: Path, auto_class: str) -> set[int]:
    config = torch_model(str(checkpoint_dir), auto_class).generation_config
    eos = config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def new_tokens(sequences: list[list[int]], skip: int, eos: set[int]) -> list[list[int]]:
    """The generated part of each row, cut after its first end-of-sequence token: what follows differs by design
    (PyTorch and optimum pad finished rows, transformers.js keeps decoding them until every row is done)."""
    rows = []
    for row in sequences:
        tokens = [int(t) for t in row[skip:]]
        cut = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
        rows.append(tokens[:cut])
    return rows


def max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    assert expected.shape == actual.shape, f"shape {actual.shape} != reference {expected.shape}"
    return float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64)))) if expected.size else 0.0


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "versions":
        print("usage: python -m tests.clients.harness versions [--markdown]", file=sys.stderr)
        return 2
    tjs = ensure_tjs()[1] if node_binary() else {"transformers.js": "not installed: node is not on PATH"}
    optimum = ensure_optimum()[1]
    if "--markdown" in argv:
        print(markdown_matrix(tjs, optimum))
    else:
        print(json.dumps({"transformers.js": tjs, "optimum-onnx": optimum}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
