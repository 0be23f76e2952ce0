"""``llama3-lab generate`` and ``llama3-lab chat``: text generation from the terminal, streamed."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

DEFAULT_MODEL = "smollm2-135m-instruct"

#: The dtypes a model computes in, by every name the command line accepts (torch's names as values).
COMPUTE_DTYPES = {
    **dict.fromkeys(("float32", "fp32", "f32", "float"), "float32"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float16", "fp16", "f16", "half"), "float16"),
    **dict.fromkeys(("float64", "fp64", "f64", "double"), "float64"),
}


def dtype_arg(text: str) -> str:
    """``--dtype``: a floating dtype the model can compute in, as torch names it (``bf16`` → ``bfloat16``)."""
    name = COMPUTE_DTYPES.get(text.lower().removeprefix("torch."))
    if name is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dtype the model computes in: use float32, bfloat16 (bf16) or float16 (fp16)"
        )
    return name


def device_arg(text: str) -> str:
    """``--device``: a torch device that exists here (checked before the model loads)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "is a CPU-only build" if torch.version.cuda is None else "sees no GPU (or no driver)"
            raise argparse.ArgumentTypeError(
                f"{text} asked for, but torch {torch.__version__} {why}: use --device cpu, or leave "
                "--device out (a GPU is used when torch sees one)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text} asked for, but torch sees {torch.cuda.device_count()} GPU(s): "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return text


def _add_model_and_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name, checkpoint directory or .gguf (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--device", type=device_arg, default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    parser.add_argument(
        "--dtype",
        type=dtype_arg,
        default=None,
        help="float32, bfloat16 (bf16), float16 (fp16) (default: float32 on CPU, bfloat16 on CUDA)",
    )
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
        help="compiled decoding even without a package from `llama3-lab compile` (CUDA graph on a GPU; on "
        "CPU the first call then compiles for a minute or more). By default a compiled package is used "
        "when one was built for the model",
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

    p = subparsers.add_parser(
        "compile",
        help="compile a model's decode step once (minutes) into the cache; generate then uses it by default",
        description="Build the ahead-of-time compiled decode step (AOTInductor, CPU) that generate, chat "
        "and model.generate use by default when nothing is hooked: 2.3x transformers' decoding "
        "in the run in benchmarks/RESULTS.md (a shared 2-core CPU), loaded in seconds.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"model name, checkpoint directory or .gguf (default {DEFAULT_MODEL})",
    )
    p.add_argument("--dtype", type=dtype_arg, default=None, help="float32 (default) or bfloat16")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="positions the package holds, prompt + new tokens, a multiple of 64 (default 512)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when a package is already built")
    p.add_argument(
        "--at-setup",
        action="store_true",
        help="as `make lab` runs it: where no package can be built or serve (a CUDA GPU, which decodes "
        "with CUDA graphs; no C++ compiler; too little memory) say why and exit 0 instead of failing",
    )
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    """``llama3-lab compile``: build (or find) the model's compiled decode package; print its path."""
    import torch

    from . import loading, packaged

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.at_setup and torch.cuda.is_available():
        say(
            "a CUDA GPU is here: decoding on it uses CUDA graphs, so no CPU package is built "
            "(`llama3-lab compile` builds one for CPU decoding)."
        )
        return 0
    capacity = packaged.DEFAULT_CAPACITY if args.max_length is None else args.max_length
    say(f"loading {args.model} ...")
    model = loading.load_model(args.model, device="cpu", dtype=args.dtype, progress=False)
    try:
        path = packaged.build_package(model, capacity, force=args.force, echo=say)
    except packaged.PackageError as error:
        if not args.at_setup:
            raise
        say(
            f"no compiled decode step: {error} Generation takes the hookable path (exact, slower) until "
            "`llama3-lab compile` succeeds."
        )
        return 0
    print(path)
    return 0


def _generate_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate()``'s keywords from the command line; the sampling settings become one ``Sampling``
    (which raises ``GenerationError`` for a value out of range)."""
    from .sampling import Sampling

    given = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    return dict(
        max_new_tokens=args.max_new_tokens,
        sampling=Sampling(**{name: value for name, value in given.items() if value is not None}),
        seed=args.seed,
        fast=True if args.fast else "auto",
    )


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model and ``generate()``'s keywords; bad sampling settings fail before the model loads."""
    from . import loading

    options = _generate_options(args)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    return loading.load_model(args.model, device=args.device, dtype=args.dtype, progress=False), options


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
    """Errors (bad settings, a model that does not load, non-finite logits) propagate to ``cli.main``,
    which prints them in one line."""
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    model, options = _load(args)
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompt = [*system, {"role": "user", "content": prompt}]
    _stream(model, prompt, options, sys.stdout)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """A failed turn (e.g. a conversation longer than the context) is reported and the chat goes on."""
    from .cli import error_message
    from .sampling import GenerationError

    model, options = _load(args)
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
            print(
                f"error: {error_message(error)} (/reset starts a new conversation)",
                file=sys.stderr,
                flush=True,
            )
            continue
        messages.append({"role": "assistant", "content": reply})
    return 0
