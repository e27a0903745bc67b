"""Command line: argument parsing, exit codes (0 ok, 1 failed, 2 bad input, 3 partial publish) and progress display.

Imports are lazy: `features bert` must answer without loading torch or transformers (about 2 s here), so only the
commands that export import them.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from bot import __version__
from bot.errors import BotError, UsageError
from bot.progress import Terminated, terminate
from bot.jobs_cli import JOBS_COMMANDS, add_jobs_parsers
from bot.server.serve import add_serve_parser, run_server


_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx.experimental.symbolic_shapes",
                  "onnxscript", "onnx_ir", "transformers")


def _quiet_libraries(debug: bool, bars: bool) -> None:
    """transformers, torch.onnx and onnxscript talk a lot (FutureWarnings, an optimizer's traceback logged at
    warning level); the user wants our log, not theirs. `--debug` lets everything through. Download bars from
    huggingface_hub stay on when ours are (a TTY)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "debug" if debug else "error")
    if not bars:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if debug:
        return
    warnings.filterwarnings("ignore", module="transformers|torch|onnxscript|onnx_ir")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    _silence_loggers()


def _silence_loggers() -> None:
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary on stdout instead of the log and table (progress stays on stderr)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo (default: its default branch)")
    parser.add_argument("--feature", action="append", default=[], metavar="F",
                        help="feature to export, repeatable (default: every feature whose weights are present); "
                             "seed names (masked-lm) and task names (fill-mask) are accepted")
    parser.add_argument("--format", action="append", default=[], choices=["onnx", "torchscript"],
                        help="artifact format, repeatable (default: both)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--atol", type=float, help="absolute tolerance for validation (default: per family, 1e-4)")
    parser.add_argument("--rtol", type=float, help="relative tolerance for validation: close when "
                        "|diff| <= atol + rtol * |reference| (default 1e-3)")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                        help="ONNX exporter: auto tries the TorchScript-based exporter (fastest, measured), then "
                             "dynamo, then dynamo with eager attention (default auto)")
    parser.add_argument("--dtype", action="append", default=[], choices=["fp32", "fp16", "q8", "q4", "q4f16"],
                        help="ONNX dtype variant to add, repeatable; each is published only if it passes its quality "
                             "gate against PyTorch (default: fp32 only for export, fp32 and q8 for publish)")
    parser.add_argument("--allow-random-heads", action="store_true",
                        help="export an explicitly requested --feature even if its head weights are not stored")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle weights (pytorch_model.bin) with torch.load(weights_only=True)")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="memory budget, e.g. 16G: a checkpoint whose export needs more is refused before "
                             "loading (default: the memory available; env HUB_EXPORT_BOT_MAX_MEMORY)")
    _add_spec_option(parser)


def _add_spec_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", action="append", default=[], metavar="MODULE:OBJECT",
                        help="register a custom architecture (a bot.custom.Architecture) before running; repeatable")


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """--debug and -v, accepted before and after the subcommand: the subcommand's copies default to SUPPRESS so
    they never overwrite a flag given before it."""
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else False
    parent.add_argument("--debug", action="store_true", default=default,
                        help="show tracebacks, debug logs and the libraries' warnings")
    parent.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="the full validation log (every output of every input shape), not one line per shape")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub-export-bot", parents=[_global_options(suppress=False)],
        description="Export Hugging Face checkpoints to validated ONNX and TorchScript artifacts.")
    parser.add_argument("--version", action="version", version=f"hub-export-bot {__version__}")
    commands = _GlobalSubparsers(parser.add_subparsers(dest="command", required=True))

    export = commands.add_parser("export", help="export a checkpoint into OUTPUT_DIR",
                                 description="Export every supported feature of a checkpoint, validate each "
                                             "artifact against PyTorch, and write export_manifest.json.")
    export.add_argument("-m", "--model", required=True, help="checkpoint directory or Hub repo id")
    export.add_argument("output", metavar="OUTPUT_DIR", help="where to write onnx/, torchscript/ and the manifest")
    export.add_argument("--force", action="store_true",
                        help="export into an OUTPUT_DIR that holds files hub-export-bot did not write (they are kept)")
    _add_export_options(export)

    publish = commands.add_parser(
        "publish", help="export a Hub repo and offer the artifacts to it as one PR",
        description="Export a Hub model repo at one commit, validate every artifact and open (or update) one PR "
                    "with the artifacts, export_manifest.json and a model-card section. HF_ENDPOINT and HF_TOKEN "
                    "are read from the environment; the token is never taken from the command line.")
    publish.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, owner/name")
    publish.add_argument("--dry-run", action="store_true", help="do everything except the commit; print the PR")
    publish.add_argument("--template", type=Path, help="model-card section template (jinja2) to use instead of ours")
    publish.add_argument("--work-dir", type=Path, help="where downloads and exports go (default: a temporary folder)")
    _add_export_options(publish)

    commands.add_parser("action", help="run as the step of the GitHub Action (action.yml)",
                        description="Read the GITHUB_* and INPUT_* variables of a GitHub Actions step, export the "
                                    "checkout at INPUT_MODEL_PATH and offer it to INPUT_HUB_REPO as one PR.")

    features = commands.add_parser("features", help="list the features a model type or checkpoint supports")
    features.add_argument("target", metavar="MODEL_TYPE_OR_PATH", nargs="?",
                          help="a model type, a checkpoint directory or a Hub repo id (only its config.json is "
                               "fetched; HF_ENDPOINT and HF_TOKEN are honoured); omit with --markdown")
    output = features.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument("--markdown", action="store_true",
                        help="the support matrix of every registered architecture (docs/support-matrix.md)")
    _add_spec_option(features)
    add_serve_parser(commands)
    add_jobs_parsers(commands)
    return parser


class _GlobalSubparsers:
    """The subparsers action, adding the global options to every subcommand it creates."""

    def __init__(self, action) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs):
        kwargs["parents"] = [*kwargs.get("parents", []), _global_options(suppress=True)]
        return self.action.add_parser(name, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """The command line; `argv` None means this process's own arguments (the console script, `python -m bot`)."""
    try:
        return _main(argv)
    finally:
        if argv is None:
            # A process that imported torch and transformers spends ~1.2 s in the interpreter's last garbage
            # collections at exit (MiniLM export: 8.1 -> 6.9 s wall); frozen objects are not traversed. Only at
            # the end of the process: a caller in the same process keeps its collectable garbage.
            gc.freeze()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _quiet_libraries(args.debug, bars=sys.stderr.isatty() and not getattr(args, "json", False))
        if getattr(args, "max_memory", None):  # read by bot.budget, in this process and in its children
            from bot.budget import MEMORY_ENV, parse_size

            os.environ[MEMORY_ENV] = str(parse_size(args.max_memory, "--max-memory"))
        for reference in getattr(args, "spec", []):
            from bot.custom import load_spec

            load_spec(reference)
        return COMMANDS[args.command](args)
    except BotError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def _quiet_exporters(reporter, debug: bool) -> None:
    """For the commands that export. transformers draws a weight-loading bar per model load (one per feature):
    noise beside ours; its switch also turns off huggingface_hub's download bars, which a terminal keeps. Importing
    torch resets the levels of its loggers (torch._logging), so they are silenced again afterwards."""
    import transformers

    if not debug:
        _silence_loggers()
    transformers.utils.logging.disable_progress_bar()
    if reporter.tty and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()


def _export(args) -> int:
    from bot.job import Job, make_options
    from bot.outputdir import check
    from bot.pipeline import run_export
    from bot.progress import Reporter
    from bot.render import export_data, summary, validation_log

    options = make_options(args.feature, args.format, args.opset, args.atol, args.exporter, args.allow_random_heads,
                           args.rtol, dtypes=args.dtype)
    output = Path(args.output)
    reporter = Reporter(tty=sys.stderr.isatty() and not args.json)
    _quiet_exporters(reporter, args.debug)
    check(output, force=args.force)
    job = Job(model=args.model, output_dir=output, revision=args.revision, options=options,
              allow_pickle=args.allow_pickle)
    try:
        result = run_export(job, progress=reporter, endpoint=os.environ.get("HF_ENDPOINT"),
                            token=os.environ.get("HF_TOKEN"))
    finally:
        reporter.close()
    if args.json:
        print(json.dumps(export_data(result), indent=2, default=str))
        return 0 if result.ok else 1
    for artifact in result.artifacts:
        print(validation_log(artifact.validation, str(output / artifact.path), args.verbose))
    for failure in result.failures:
        if failure.validation:
            print(validation_log(failure.validation, f"{failure.feature} ({failure.format}, not written)"))
    print(summary(result))
    return 0 if result.ok else 1


def _features(args) -> int:
    if args.markdown:
        from bot.matrix import support_matrix

        print(support_matrix(), end="")
        return 0
    if not args.target:
        raise UsageError("name a model type, a checkpoint directory or a Hub repo id, or pass --markdown")
    data = _features_of(args.target)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{data['model_type']} ({data['family']}, {data['origin']}):")
    for feature in data["supported"]:
        print(f"  {feature}{'  (primary)' if feature == data.get('primary') else ''}")
    for feature, reason in data.get("skipped", {}).items():
        print(f"  {feature}  skipped: {reason}")
    return 0


def _features_of(target: str) -> dict:
    """A checkpoint directory: probed (loads torch); a Hub repo id: its config.json's model type; a model type:
    the registry, which needs no torch for the architectures it ships."""
    from bot.features import SUPPORT

    if Path(target).is_dir():
        from bot import checkpoint as ckpt

        checkpoint = ckpt.open_checkpoint(Path(target), target)
        supported, skipped = ckpt.probe_features(checkpoint)
        return {"model_type": checkpoint.model_type, "family": checkpoint.support.family,
                "origin": checkpoint.support.origin,
                "primary": ckpt.primary_feature(checkpoint.config, supported) if supported else None,
                "supported": supported, "skipped": skipped}
    repo = None
    if target.count("/") == 1 and not target.startswith((".", "/", "~")):
        from bot.hub import read_model_type

        repo, target = target, read_model_type(target, endpoint=os.environ.get("HF_ENDPOINT"),
                                               token=os.environ.get("HF_TOKEN"))
    elif os.sep in target or target.startswith("."):
        raise UsageError(f"{target} is not a directory; pass a checkpoint directory, a Hub repo id or a model type")
    if target in SUPPORT:
        support = SUPPORT[target]
    else:
        from bot.custom import resolve_support

        support = resolve_support(target)
    data = {"model_type": support.model_type, "family": support.family, "origin": support.origin,
            "supported": list(support.features)}
    return {"repo_id": repo, **data} if repo else data


def _publish(args) -> int:
    import tempfile

    from bot.job import PUBLISH_DTYPES, PublishJob, make_options
    from bot.progress import Reporter
    from bot.publish import publish
    from bot.render import publish_data, publish_summary

    if args.allow_pickle:
        raise UsageError("--allow-pickle is not available for publish: convert the repo's weights to safetensors")
    options = make_options(args.feature, args.format, args.opset, args.atol, args.exporter, args.allow_random_heads,
                           args.rtol, dtypes=args.dtype, default_dtypes=PUBLISH_DTYPES)
    if args.template is not None and not args.template.is_file():
        raise UsageError(f"template {args.template} not found")
    if "/" not in args.repo_id or args.repo_id.count("/") != 1:
        raise UsageError(f"{args.repo_id!r} is not a Hub repo id; use owner/name")
    job = PublishJob(repo_id=args.repo_id, revision=args.revision, options=options, template=args.template,
                     dry_run=args.dry_run)
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    token = os.environ.get("HF_TOKEN")
    if not token and not args.dry_run:
        raise UsageError("HF_TOKEN is not set; export a token with write access (or use --dry-run)")
    reporter = Reporter(tty=sys.stderr.isatty() and not args.json)
    _quiet_exporters(reporter, args.debug)
    with tempfile.TemporaryDirectory(prefix="hub-export-bot-") as scratch:
        try:
            result = publish(job, endpoint=endpoint, token=token, work_dir=args.work_dir or Path(scratch),
                             progress=reporter)
        finally:
            reporter.close()
    print(json.dumps(publish_data(result), indent=2, default=str) if args.json
          else publish_summary(result, args.verbose))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return result.exit_code  # 0 done, 1 failed, 3 partial (see bot.job); bad input raised UsageError: 2


def _action(args) -> int:
    from bot.action import run_action

    return run_action(os.environ)


COMMANDS = {"export": _export, "publish": _publish, "features": _features, "action": _action, "serve": run_server,
            **JOBS_COMMANDS}
