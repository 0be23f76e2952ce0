"""``llama3-lab generate`` and ``llama3-lab chat``: text generation from the terminal, streamed."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

DEFAULT_MODEL = "smollm2-135m-instruct"


def _add_model_and_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name, checkpoint directory or .gguf (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: float32 on CPU)")
    # Sampling defaults (None here) are Sampling's own, so they live in one place: llama3_lab.sampling.
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0.6)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus mass, 1 = off (default 0.9)")
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep the k most probable tokens (default off)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="(default 256)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="compiled decoding (CUDA graph on a GPU; on CPU the first call compiles for a minute or more)",
    )


def add_cli_commands(subparsers: Any) -> None:
    """Register ``generate`` and ``chat`` on the ``llama3-lab`` argument parser."""
    p = subparsers.add_parser("generate", help="continue a prompt, streaming the text")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (read from stdin when omitted)")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message in the chat template"
    )
    p.add_argument("--system", default=None, help="system message (with --chat)")
    _add_model_and_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser(
        "chat", help="talk with the model; /reset forgets the conversation, /exit ends it"
    )
    p.add_argument("--system", default=None, help="system message for the conversation")
    _add_model_and_sampling(p)
    p.set_defaults(func=cmd_chat)


def _generate_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate()``'s keywords from the command line; the sampling settings become one ``Sampling``
    (which raises ``GenerationError`` for a value out of range)."""
    from .sampling import Sampling

    given = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    return dict(
        max_new_tokens=args.max_new_tokens,
        sampling=Sampling(**{name: value for name, value in given.items() if value is not None}),
        seed=args.seed,
        fast=args.fast,
    )


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model and ``generate()``'s keywords; bad sampling settings fail before the model loads."""
    from . import loading

    options = _generate_options(args)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    return loading.load_model(args.model, device=args.device, dtype=args.dtype, progress=False), options


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def _stream(model: Any, prompt: Any, options: dict[str, Any], out: TextIO) -> str:
    from .generation import generate

    stream = generate(model, prompt, stream=True, **options)
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return stream.text


def cmd_generate(args: argparse.Namespace) -> int:
    from .sampling import GenerationError

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    try:
        model, options = _load(args)
        if args.chat:
            system = [{"role": "system", "content": args.system}] if args.system else []
            prompt = [*system, {"role": "user", "content": prompt}]
        _stream(model, prompt, options, sys.stdout)
    except GenerationError as error:
        return _fail(error)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .sampling import GenerationError

    try:
        model, options = _load(args)
    except GenerationError as error:
        return _fail(error)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            "chat with the model: /reset forgets the conversation, /exit (or Ctrl-D) ends it", file=sys.stderr
        )
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages = list(start)
            print("(conversation reset)", file=sys.stderr, flush=True)
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = _stream(model, messages, options, sys.stdout)
        except GenerationError as error:
            messages.pop()
            print(f"error: {error} (/reset starts a new conversation)", file=sys.stderr, flush=True)
            continue
        messages.append({"role": "assistant", "content": reply})
    return 0
