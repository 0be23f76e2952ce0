"""Gradients on the embedded SmolLM2-135M, float32 on CPU: their overhead, and attribution vs actual patching.

    .venv/bin/python benchmarks/gradients.py [--tokens 64] [--reps 5] [--threads N]

- ``run_with_cache_and_grads`` of every hook point / a forward + backward without hooks (goal <= 1.3), the
  variants alternated in each repetition;
- attribution patching of every head (2 forwards + 1 backward) / actual patching of every head (one forward
  per head), wall time, and the correlation of the two estimates, on one clean/corrupted pair (names swapped).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Spread, alternate, ratio_spread

from llama3_lab import load_model
from llama3_lab.analysis import attribution_patching, logit_diff_metric, patch_head_z
from llama3_lab.gradients import embeddings_require_grad, run_with_cache_and_grads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32, progress=False)
    tokens = torch.randint(
        17, model.cfg.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0)
    )

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1].logsumexp(-1).mean()

    def plain_backward() -> None:
        with embeddings_require_grad(model):
            metric(model(tokens)).backward()

    times = alternate(
        {
            "forward + backward": plain_backward,
            "run_with_cache_and_grads, every hook": lambda: run_with_cache_and_grads(model, tokens, metric),
        },
        reps=args.reps,
    )
    ratio = ratio_spread(times["run_with_cache_and_grads, every hook"], times["forward + backward"])
    print(f"forward + backward: {Spread.of(times['forward + backward']).text()} s")
    print(f"gradient cache of all {len(model.hook_names())} hook points / forward + backward: {ratio.text()}")

    tok = model.tokenizer
    clean = model.to_tokens("When Mary and John went to the store, John gave a drink to")
    corrupted = model.to_tokens("When Mary and John went to the store, Mary gave a drink to")
    diff = logit_diff_metric(tok.encode(" Mary")[0], tok.encode(" John")[0])
    start = time.perf_counter()
    estimate = attribution_patching(model, clean, corrupted, diff, components=("heads",))
    attribution_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        actual = patch_head_z(model, clean, corrupted, diff) - float(diff(model(corrupted)))
    patching_s = time.perf_counter() - start
    correlation = torch.corrcoef(torch.stack([estimate.heads.flatten(), actual.flatten()]))[0, 1]
    heads = actual.numel()
    print(
        f"every head ({heads}): attribution patching {attribution_s:.2f} s, "
        f"actual patching {patching_s:.2f} s "
        f"({patching_s / attribution_s:.0f}x faster); correlation {float(correlation):.3f}"
    )


if __name__ == "__main__":
    main()
