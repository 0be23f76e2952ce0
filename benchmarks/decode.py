"""Greedy decode speed on the embedded SmolLM2-135M-Instruct, CPU, float32, against its physical limit.

In one run, on the same weights and prompt:

1. transformers ``LlamaForCausalLM.generate`` (greedy) tokens/s, and ours (``generation.generate_tokens``,
   the loop under ``generate``); both must produce the same tokens;
2. the memory-bandwidth limit: the maximum of several ``torch.sum`` over ~1 GB with all threads, divided
   by the bytes of weights one decode step reads (every parameter once), and our fraction of it;
3. the cost of a ``Session`` step with its full ``StepRecord`` (attention rows, residuals, top-k,
   entropy) relative to a plain decode step, and with the logit lens materialised too.

Run: ``.venv/bin/python benchmarks/decode.py [--new-tokens 64] [--repeats 3] [--threads N]``.
The numbers move with the load of a shared host: compare only numbers from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the path set-up
    read_bandwidth_gbps,
    transformers_greedy,
    weight_bytes,
)


@contextmanager
def linear_kernel(model: torch.nn.Module, kind: str) -> Iterator[None]:
    """Temporarily compute every ``nn.Linear`` of ``model`` another way: ``"matmul"`` (``x @ W.T``) or
    ``"mkl_packed"`` (MKL's pre-packed weights, what Inductor uses for float32 on CPU). A measurement of
    what a model-side fast path would give, not a fast path itself."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is None]
    for linear in linears:
        weight = linear.weight
        if kind == "matmul":
            linear.forward = lambda x, weight=weight: x @ weight.T
        else:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 1)
            linear.forward = lambda x, w=weight, p=packed: torch.ops.mkl._mkl_linear(x, p, w, None, 1)
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward  # back to the class's forward


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--prompt", default="Once upon a time, in a small village by the sea,")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also time the model with its nn.Linear layers computed as x @ W.T and as MKL pre-packed "
        "matmuls (model-side options; the model is restored afterwards)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from llama3_lab.generation import generate_tokens
    from llama3_lab.loading import converted_model_dir, load_model
    from llama3_lab.session import Session

    name = "smollm2-135m-instruct"
    model = load_model(name, device="cpu", dtype=torch.float32, progress=False)
    reference = transformers.LlamaForCausalLM.from_pretrained(
        converted_model_dir(name, progress=False), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prompt = model.tokenizer.encode(args.prompt)
    n = args.new_tokens

    # Same tokens first: greedy, no stop token on either side, exactly n new tokens.
    ours_tokens = list(generate_tokens(model, prompt, n, temperature=0))

    def reference_generate() -> list[int]:
        return transformers_greedy(reference, prompt, n)

    reference_tokens = reference_generate()
    same = ours_tokens == reference_tokens
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(ours_tokens, reference_tokens)) if a != b), None
    )

    # Per-step costs after the prefill: a plain decode step vs a Session step with its record.
    steps = min(n, 32)

    def decode(n_tokens: int) -> Callable[[], object]:
        return lambda: list(generate_tokens(model, prompt, n_tokens, temperature=0))

    def session_steps(with_lens: bool) -> Callable[[], None]:
        def run() -> None:
            session = Session(model, prompt, temperature=0)
            for _ in range(steps):
                record = session.step()
                if with_lens:
                    record.logit_lens  # noqa: B018 - materialise the lazily computed lens

        return run

    kinds = ("matmul", "mkl_packed") if args.what_if else ()
    what_if = {}
    for kind in kinds:
        with linear_kernel(model, kind):
            what_if[f"what_if_{kind}_same_tokens"] = decode(n)() == reference_tokens

    # Interleaved rounds, best of each: every variant sees the host's (shared, moving) load alike.
    best: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

    bandwidth = max(read_bandwidth_gbps() for _ in range(3))
    for _ in range(args.repeats):
        timed("ours", decode(n))
        timed("transformers", reference_generate)
        timed("first_token", decode(1))
        timed("plain_steps", decode(steps + 1))
        timed("prefill", lambda: Session(model, prompt, temperature=0))
        timed("session_steps", session_steps(False))
        timed("session_steps_lens", session_steps(True))
        for kind in kinds:
            with linear_kernel(model, kind):  # weights packed before the clock starts
                timed(kind, decode(n))
        bandwidth = max(bandwidth, read_bandwidth_gbps())
    ours_s, reference_s = best["ours"], best["transformers"]
    plain_step = (best["plain_steps"] - best["first_token"]) / steps  # the first token is the prefill's
    session_step = (best["session_steps"] - best["prefill"]) / steps
    session_lens_step = (best["session_steps_lens"] - best["prefill"]) / steps
    for kind in kinds:
        what_if[f"what_if_{kind}_tok_s"] = round(n / best[kind], 2)

    n_bytes = weight_bytes(model)
    limit_tok_s = bandwidth * 1e9 / n_bytes
    ours_tok_s, reference_tok_s = n / ours_s, n / reference_s
    results = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "new_tokens": n,
        "prompt_tokens": len(prompt),
        "same_tokens_as_transformers": same,
        "first_difference": first_difference,
        "ours_tok_s": round(ours_tok_s, 2),
        "transformers_tok_s": round(reference_tok_s, 2),
        "speedup_vs_transformers": round(ours_tok_s / reference_tok_s, 3),
        "bandwidth_gb_s": round(bandwidth, 1),
        "weight_bytes": n_bytes,
        "bandwidth_limit_tok_s": round(limit_tok_s, 1),
        "fraction_of_limit": round(ours_tok_s / limit_tok_s, 3),
        "plain_step_ms": round(plain_step * 1e3, 2),
        "session_step_ms": round(session_step * 1e3, 2),
        "session_step_with_lens_ms": round(session_lens_step * 1e3, 2),
        "session_over_plain": round(session_step / plain_step, 3),
        "session_with_lens_over_plain": round(session_lens_step / plain_step, 3),
        **what_if,
    }
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(
        f"\nours {ours_tok_s:.1f} tok/s = {ours_tok_s / reference_tok_s:.2f}x transformers (goal >= 2x), "
        f"{100 * ours_tok_s / limit_tok_s:.0f}% of the {limit_tok_s:.0f} tok/s bandwidth limit "
        "(goal >= 60%); "
        f"session step {session_step / plain_step:.2f}x a plain step (goal <= 1.2), "
        f"{session_lens_step / plain_step:.2f}x with the logit lens."
    )
    if not same:
        print(f"WARNING: tokens differ from transformers from new token {first_difference} on.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
