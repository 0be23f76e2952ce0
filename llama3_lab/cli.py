"""The ``llama3-lab`` command: fetch | explain | plan | generate | chat | compile | sae | lab.

An error is one or two lines on stderr, ``error: <what is wrong and what to do>``, and exit status 2
(1 for an exception nobody foresaw, which also names its type); ``llama3-lab --debug ...`` shows the
traceback as well.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from .cli_generate import add_cli_commands, dtype_arg

#: Exit status of an error the command explains (a bad argument, a missing file, a model that does not
#: fit), as argparse uses for its own; an unexpected exception exits with 1.
EXIT_ERROR, EXIT_UNEXPECTED = 2, 1


class CommandError(ValueError):
    """A command's argument that the command itself refuses; the message says what to give instead."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse itself prints the whole usage, often five lines or more)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"error: {message} ({self.prog} --help lists the options)\n")


# --------------------------------------------------------------------------------------------------
# Commands


def _cmd_fetch(args: argparse.Namespace) -> int:
    if args.repair:  # verify everything by content and rebuild what fails (converted models, sidecars)
        from .loading import repair

        for line in repair(progress=not args.quiet):
            print(line)
        return 0
    from .assets import fetch_assets

    paths = fetch_assets(progress=not args.quiet)  # every cached file is checked by content
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_sae(args: argparse.Namespace) -> int:
    from .sae.cli import main as sae_main

    return sae_main(args.args)


def explain_path(path: str | Path) -> str:
    """The text explanation of the config found at ``path`` (what ``llama3-lab explain PATH`` prints)."""
    from .config_explain import explain_config
    from .loading import load_config

    return explain_config(load_config(path), title=f"Llama config from {path}").to_text()


def _cmd_explain(args: argparse.Namespace) -> int:
    print(explain_path(args.path))
    return 0


def plan_text(
    config: str, gpus: str, cpu: str | None = None, dtype: str = "bfloat16", context: int = 8192
) -> str:
    """What ``llama3-lab plan`` prints: where each layer of ``config`` (a config file or a known model's
    short name, e.g. ``"llama3.1-70b"``) goes on ``gpus`` (``"2x80GB"``) and ``cpu``, with the KV cache
    per token and at ``context`` tokens, and what a full attention-pattern cache would cost there.

    Raises ``PlacementError`` (with the ways out) when the model does not fit.
    """
    import torch

    from .placement import plan_from_hardware
    from .units import format_bytes

    name, cfg = _plan_config(config)
    if context > cfg.max_position_embeddings:
        raise CommandError(
            f"--context {context:,} is beyond {name}'s context of {cfg.max_position_embeddings:,} tokens: "
            f"give --context {cfg.max_position_embeddings} or less."
        )
    plan = plan_from_hardware(cfg, gpus=gpus, cpu=cpu, dtype=getattr(torch, dtype))
    parameters = cfg.parameter_breakdown()["total"]
    kv = plan.kv_bytes_per_token()
    kv_total = sum(kv.values())
    kv_at_context = ", ".join(
        f"{_device_name(device)} {format_bytes(per_token * context)}" for device, per_token in kv.items()
    )
    return "\n".join(
        [
            f"{name}: {parameters:,} parameters, {format_bytes(sum(plan.module_bytes.values()))} of {dtype} "
            f"weights, on {gpus}" + (f" + cpu {cpu}" if cpu else ""),
            plan.table(seq_len=context),
            f"KV cache (batch 1, {dtype}): {format_bytes(kv_total)} per token; at {context:,} tokens "
            f"{format_bytes(kv_total * context)} ({kv_at_context}). The patterns@{context} column is a cache "
            "of every layer's attention pattern [B, H, T, T] at that length.",
        ]
    )


def _device_name(device: Any) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def _plan_config(config: str) -> tuple[str, Any]:
    """``(display name, LlamaConfig)`` of a config path or a known model's short name."""
    from .known_configs import KNOWN_CONFIGS, known_config, short_name
    from .loading import load_config

    if Path(config).expanduser().exists():
        return config, load_config(config)
    try:
        return config, known_config(config)
    except KeyError:
        names = ", ".join(short_name(display) for display in KNOWN_CONFIGS)
        raise CommandError(
            f"{config!r} is neither a config file nor a known model: give a config.json, params.json or "
            f".gguf path, or one of {names}."
        ) from None


def _cmd_plan(args: argparse.Namespace) -> int:
    print(plan_text(args.config, args.gpus, args.cpu, args.dtype, args.context))
    return 0


def _cmd_lab(args: argparse.Namespace) -> int:
    import subprocess

    notebooks = Path(args.notebooks)
    if not notebooks.is_dir():
        raise CommandError(
            f"notebooks folder {notebooks} not found; run from the repository root or pass --notebooks DIR"
        )
    command = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={notebooks}", *args.extra]
    return subprocess.call(command)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llama3-lab", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the full traceback too (before the command)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download and verify the pinned assets into the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--repair",
        action="store_true",
        help="verify the whole cache by content and rebuild what fails: assets (a corrupt copy is kept as "
        "<name>.corrupt and fetched again), converted models and tokenizer sidecars",
    )
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser(
        "explain", help="explain every field of a config (config.json, params.json, .gguf or a dir)"
    )
    p.add_argument("path", nargs="?", default="config.json")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "plan",
        help="where a model's layers would go on GPUs you describe (e.g. llama3.1-70b on 2x80GB)",
        description="Place a model over devices you may not have, from its config alone: layers, weights, "
        "KV cache per token and an attention-pattern cache per device.",
    )
    p.add_argument(
        "config",
        nargs="?",
        default="config.json",
        help="a config file (config.json, params.json, .gguf, a checkpoint dir) or a known model: "
        "llama3-8b, llama3-70b, llama3.1-8b, llama3.1-70b, llama3.1-405b, llama3.2-1b, llama3.2-3b",
    )
    p.add_argument("--gpus", required=True, help="the GPUs, e.g. 2x80GB or 80GB,40GB (decimal GB)")
    p.add_argument("--cpu", default=None, help="host memory the CPU may hold weights in, e.g. 256GB")
    p.add_argument("--dtype", type=dtype_arg, default="bfloat16", help="weights dtype (default bf16)")
    p.add_argument(
        "--context", type=_positive_int, default=8192, help="tokens for the cache figures (default 8192)"
    )
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "sae", help="sparse autoencoders: 'llama3-lab sae train --help' trains one on CPU into the cache"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on to llama3_lab.sae.cli")
    p.set_defaults(func=_cmd_sae)

    p = sub.add_parser("lab", help="start JupyterLab on the notebooks folder")
    p.add_argument("--notebooks", default="notebooks")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed on to jupyter lab")
    p.set_defaults(func=_cmd_lab)

    add_cli_commands(sub)  # generate, chat, compile: cli_generate.py (torch is imported only when they run)
    return parser


# --------------------------------------------------------------------------------------------------
# Errors: one line with the fix


def error_message(error: BaseException) -> str:
    """The error's message on one line (a KeyError's message without the quotes ``str`` adds)."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]
    else:
        text = str(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _cuda_unavailable(error: BaseException) -> bool:
    """torch's ways of saying there is no usable GPU (a CPU build, no driver, no device)."""
    message = str(error)
    return isinstance(error, (RuntimeError, AssertionError)) and bool(
        re.search(r"not compiled with CUDA|NVIDIA driver|No CUDA GPUs|CUDA.*not available", message, re.I)
    )


def explained_error(error: BaseException) -> str | None:
    """The ``error: ...`` line of an error the command knows, None for an unexpected one.

    Known: every exception class of this package (``GenerationError``, ``ConfigError``, ``LoadError``,
    ``AssetError``, ``MemoryBudgetError``, ``PlacementError``, ...: their messages name the fix), missing
    files and permissions, and torch's errors for a GPU that is not there or out of memory.
    """
    message = error_message(error)
    if type(error).__module__.split(".")[0] == __name__.split(".")[0]:
        return f"error: {message}"
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return f"error: {message}"
    if _cuda_unavailable(error):
        return (
            f"error: no usable CUDA GPU ({message}); use --device cpu, or leave --device out (a GPU is "
            "used when torch sees one)"
        )
    if type(error).__name__ == "OutOfMemoryError":
        return (
            "error: the GPU ran out of memory; try --dtype bfloat16, a shorter prompt or --max-new-tokens, "
            f"or --device cpu ({message[:160]})"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a bad argument (already reported in one line)
        return exit.code if isinstance(exit.code, int) else EXIT_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        line = explained_error(error)
        if line is not None:
            print(line, file=sys.stderr)
            return EXIT_ERROR
        print(f"error: unexpected {type(error).__name__}: {error_message(error)}", file=sys.stderr)
        if not args.debug:
            print("run with --debug for the traceback: llama3-lab --debug <command> ...", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
