"""Gradients on the embedded SmolLM2-135M, float32 on CPU: their overhead, and attribution vs actual patching.

    .venv/bin/python benchmarks/gradients.py [--tokens 64] [--reps 5] [--threads N]

- ``run_with_cache_and_grads`` of every hook point / a forward + backward without hooks (goal <= 1.3), the
  variants alternated in each repetition;
- attribution patching of every head (2 forwards + 1 backward) / actual patching of every head (one forward
  per head), wall time, and the correlation of the two estimates, on one clean/corrupted pair (names swapped).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import Spread, alternate, ratio_spread  # noqa: E402 - after the path set-up
from llama3_lab import load_model  # noqa: E402
from llama3_lab.analysis import attribution_patching, logit_diff_metric, patch_head_z  # noqa: E402
from llama3_lab.gradients import embeddings_require_grad, run_with_cache_and_grads  # noqa: E402


def measure(model, n_tokens: int = 64, reps: int = 5) -> dict:
    """The figures above for ``model`` (SmolLM2 or a model with its tokenizer), as a dict."""
    tokens = torch.randint(
        17, model.cfg.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(0)
    )

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1].logsumexp(-1).mean()

    def plain_backward() -> None:
        with embeddings_require_grad(model):
            metric(model(tokens)).backward()

    times = alternate(
        {"plain": plain_backward, "cached": lambda: run_with_cache_and_grads(model, tokens, metric)},
        reps=reps,
    )
    tok = model.tokenizer
    if tok is not None:  # a name swapped: who receives the drink
        clean = model.to_tokens("When Mary and John went to the store, John gave a drink to")
        corrupted = model.to_tokens("When Mary and John went to the store, Mary gave a drink to")
        diff = logit_diff_metric(tok.encode(" Mary")[0], tok.encode(" John")[0])
    else:  # a model without a tokenizer (the benchmark's smoke test): one token changed
        clean = tokens[:, :16]
        corrupted = clean.clone()
        corrupted[0, 3] = (int(corrupted[0, 3]) + 1) % model.cfg.vocab_size
        diff = logit_diff_metric(1, 2)
    start = time.perf_counter()
    estimate = attribution_patching(model, clean, corrupted, diff, components=("heads",))
    attribution_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        actual = patch_head_z(model, clean, corrupted, diff) - float(diff(model(corrupted)))
    patching_s = time.perf_counter() - start
    correlation = float(torch.corrcoef(torch.stack([estimate.heads.flatten(), actual.flatten()]))[0, 1])
    return {
        "plain": Spread.of(times["plain"]),
        "ratio": ratio_spread(times["cached"], times["plain"]),
        "hooks": len(model.hook_names()),
        "heads": actual.numel(),
        "attribution_s": attribution_s,
        "patching_s": patching_s,
        "correlation": correlation,
    }


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
    m = measure(model, args.tokens, args.reps)
    print(f"forward + backward: {m['plain'].text()} s")
    print(f"gradient cache of all {m['hooks']} hook points / forward + backward: {m['ratio'].text()}")
    print(
        f"every head ({m['heads']}): attribution patching {m['attribution_s']:.2f} s, "
        f"actual patching {m['patching_s']:.2f} s ({m['patching_s'] / m['attribution_s']:.0f}x faster); "
        f"correlation {m['correlation']:.3f}"
    )


if __name__ == "__main__":
    main()
