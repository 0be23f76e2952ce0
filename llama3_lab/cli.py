"""The ``llama3-lab`` command: fetch | explain | generate | chat | lab."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_generate import add_cli_commands


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .assets import fetch_assets

    paths = fetch_assets(progress=not args.quiet)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def explain_path(path: str | Path) -> str:
    """The text explanation of the config found at ``path`` (what ``llama3-lab explain PATH`` prints)."""
    from .config_explain import explain_config
    from .loading import load_config

    return explain_config(load_config(path), title=f"Llama config from {path}").to_text()


def _cmd_explain(args: argparse.Namespace) -> int:
    print(explain_path(args.path))
    return 0


def _cmd_lab(args: argparse.Namespace) -> int:
    import subprocess

    notebooks = Path(args.notebooks)
    if not notebooks.is_dir():
        print(
            f"error: notebooks folder {notebooks} not found; "
            "run from the repository root or pass --notebooks DIR"
        )
        return 2
    command = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={notebooks}", *args.extra]
    return subprocess.call(command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama3-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download and verify the pinned assets into the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser(
        "explain", help="explain every field of a config (config.json, params.json, .gguf or a dir)"
    )
    p.add_argument("path", nargs="?", default="config.json")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("lab", help="start JupyterLab on the notebooks folder")
    p.add_argument("--notebooks", default="notebooks")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed on to jupyter lab")
    p.set_defaults(func=_cmd_lab)

    add_cli_commands(sub)  # generate, chat: cli_generate.py (torch is imported only when they run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
