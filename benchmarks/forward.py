"""Forward speed of llama3-lab's model against transformers on the same weights, plus load time and memory.

    .venv/bin/python benchmarks/forward.py [--tokens 128] [--reps 15] [--decode 32]

The embedded SmolLM2-135M-Instruct in float32 on CPU, no hooks. Both models are timed in the same
process, alternating repetitions so that a busy host slows both alike; the result is the median of
the per-pair ratios (ours / transformers eager) with the spread of those ratios. Load time and peak
RSS are measured in fresh subprocesses that only call ``load_model`` on the cached conversion.
With ``--decode N`` it also times N greedy one-token steps with the KV cache (model calls only, no
sampling code) against transformers' own cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

LOAD_SNIPPET = """
import json, resource, time
t0 = time.perf_counter()
from llama3_lab.loading import load_model
t1 = time.perf_counter()
model = load_model("smollm2-135m-instruct", device="cpu", dtype=__import__("torch").float32, progress=False)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_load(runs: int) -> list[dict]:
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", LOAD_SNIPPET], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def timed(fn, *args, **kwargs) -> float:  # noqa: ANN001, ANN002, ANN003
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def summarize(name: str, ours: list[float], theirs: list[float]) -> None:
    ratios = sorted(o / t for o, t in zip(ours, theirs))
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    print(
        f"{name}: ours median {statistics.median(ours) * 1e3:.1f} ms, transformers median "
        f"{statistics.median(theirs) * 1e3:.1f} ms; ratio median {statistics.median(ratios):.3f} "
        f"(IQR {q1:.3f}-{q3:.3f}, min {ratios[0]:.3f}, max {ratios[-1]:.3f}, n={len(ratios)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--decode", type=int, default=0, help="also time this many cached one-token steps")
    parser.add_argument("--load-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from conftest import transformers_twin

    from llama3_lab.kv_cache import KVCache
    from llama3_lab.loading import converted_model_dir, load_model

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    converted_model_dir("smollm2-135m-instruct")  # the one-time conversion, if not cached yet
    print(f"conversion ready in {time.perf_counter() - start:.1f} s (0 if it was cached)")
    loads = measure_load(args.load_runs)
    print(
        "load from cache: "
        + ", ".join(f"{r['load_s']:.2f} s" for r in loads)
        + f" (median {statistics.median(r['load_s'] for r in loads):.2f} s); peak RSS "
        + ", ".join(f"{r['peak_rss_mb']:.0f} MB" for r in loads)
        + " (weights: 538 MB in float32)"
    )

    model = load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32, progress=False)
    hf = transformers_twin(model, attn="eager")  # row-major copies, as transformers loads them
    tokens = torch.randint(
        0, model.cfg.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0)
    )

    with torch.inference_mode():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
        print(f"max |Δlogit| ours vs transformers: {diff:.2e}")
        for _ in range(2):  # warm-up
            model(tokens), hf(tokens)
        ours, theirs = [], []
        for _ in range(args.reps):
            ours.append(timed(model, tokens))
            theirs.append(timed(hf, tokens))
        summarize(f"forward of {args.tokens} tokens", ours, theirs)

        if args.decode:
            from transformers import DynamicCache

            prompt = tokens[:, :16]
            ours, theirs = [], []
            for _ in range(3):
                cache = KVCache.allocate(model, max_length=16 + args.decode)
                model(prompt, cache=cache)
                hf_cache = DynamicCache()
                hf(prompt, past_key_values=hf_cache, use_cache=True)
                step = tokens[:, 16:17]
                for i in range(args.decode):
                    ours.append(timed(model, step, cache=cache))
                    position = torch.tensor([[16 + i]])
                    theirs.append(
                        timed(hf, step, past_key_values=hf_cache, use_cache=True, position_ids=position)
                    )
            summarize("decode step (model call)", ours, theirs)
            rates = f"{1 / statistics.median(ours):.1f} vs {1 / statistics.median(theirs):.1f}"
            print(f"  steps/s, ours vs transformers: {rates}")


if __name__ == "__main__":
    main()
