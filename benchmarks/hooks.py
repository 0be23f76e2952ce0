"""Overhead of hooks and caching on the embedded SmolLM2-135M, float32 on CPU.

    .venv/bin/python benchmarks/hooks.py [--tokens 128] [--reps 15] [--threads N] [--profile]

One process, the variants alternated in every repetition (so a busy host slows them alike); the
median and the fastest wall time of each (on a shared host the fastest is the steadier figure).
Ratios are to our own forward without hooks (fused attention). Goals: caching every hook point
≤ 1.25× (TransformerLens measured 1.83×, nnsight 1.34× on this kind of machine), caching a few names
≤ 1.05×. ``--profile`` prints a cProfile of caching everything.

It also times the one "is it hooked" check that the forward makes at every hook point (~20 per layer):
``_hook(point, x)`` on a point with no hook, in nanoseconds (it reads the thread's context hooks and
the module's hook dictionaries; a module call would cost ~600 ns).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

from llama3_lab import load_model  # noqa: E402
from llama3_lab.hook_points import _hook  # noqa: E402
from llama3_lab.units import format_bytes  # noqa: E402

FEW = ["blocks.5.hook_resid_post", "blocks.15.hook_resid_post", "blocks.29.hook_resid_post"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32, progress=False)
    tokens = torch.randint(17, model.cfg.vocab_size, (1, args.tokens))
    n_hooks = len(model.hook_names())

    variants: dict[str, Callable[[], object]] = {
        "forward, no hooks": lambda: model(tokens),
        f"run_with_cache, {len(FEW)} names": lambda: model.run_with_cache(tokens, names_filter=FEW),
        "run_with_cache, all but scores/pattern": lambda: model.run_with_cache(
            tokens, names_filter=lambda n: "attn_scores" not in n and "pattern" not in n
        ),
        f"run_with_cache, all {n_hooks} hook points": lambda: model.run_with_cache(tokens),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up: allocator, RoPE tables, oneDNN primitives
            fn()
        for _ in range(args.reps):
            for name, fn in variants.items():
                start = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - start)
                del result

        _, cache = model.run_with_cache(tokens)
        print(f"SmolLM2-135M float32, CPU ({torch.get_num_threads()} threads), {args.tokens} tokens, "
              f"{args.reps} alternating repetitions, median")  # fmt: skip
        print(f"full cache: {len(cache)} tensors, {format_bytes(cache.nbytes)} "
              f"(estimated {format_bytes(model.estimate_cache_bytes(args.tokens))})")  # fmt: skip
        del cache
        base = times["forward, no hooks"]
        print(f"  {'':<42} {'median':>9}  ratio   {'min':>9}  ratio")
        for name, samples in times.items():
            median, fastest = statistics.median(samples), min(samples)
            print(
                f"  {name:<42} {median * 1e3:6.1f} ms  {median / statistics.median(base):5.2f}x"
                f"  {fastest * 1e3:6.1f} ms  {fastest / min(base):5.2f}x"
            )

        point, x = model.hook_dict["blocks.5.hook_resid_post"], tokens
        calls = 200_000
        empty = min(timeit.repeat(lambda: x, number=calls, repeat=7)) / calls
        check = min(timeit.repeat(lambda: _hook(point, x), number=calls, repeat=7)) / calls
        print(f"  unused hook point: {(check - empty) * 1e9:.0f} ns per _hook(point, x), best of 7 "
              f"({n_hooks} points: {(check - empty) * n_hooks * 1e6:.1f} µs per forward)")  # fmt: skip

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(3):
                model.run_with_cache(tokens)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
