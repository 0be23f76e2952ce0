"""Where a compiled decode step's time goes, kernel by kernel, against the memory bandwidth beside it.

    .venv/bin/python benchmarks/decode_kernels.py [--dtype float32] [--capacity 512] [--steps 20]

Compiles the package's step of the embedded SmolLM2-135M (``packaged.step_to_compile``; float32 ends at
the final norm) in this process the way a package is compiled (``packaged.INDUCTOR_CONFIGS`` and, for
float32, no projection + add fusion: what ``llama3-lab compile`` builds, 2-4 minutes on two cores),
with Inductor's per-kernel profiling on, and times ``--steps`` steps under ``torch.profiler``. Prints
each kernel's mean time per step and, for the matrix products (``gemm_m{rows}n{N}k{K}``), the rate at
which it streams its weight matrix, beside an all-thread ``torch.sum`` over 1 GB measured just before
and after. A product at the sum's rate is as fast as the host's memory allows; the rest of the step
(attention over the cache, norms, RoPE) is what is left to win.

A diagnostic, not a benchmark with goals: ``benchmarks/run.py`` times the package itself.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import read_bandwidth_gbps  # noqa: E402 - after the path set-up

GEMM = re.compile(r"gemm_m(\d+)n(\d+)k(\d+)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--capacity", type=int, default=512, help="cache positions (the package's default)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    from llama3_lab.hook_points import hide_context_hooks_from_compiler
    from llama3_lab.kv_cache import KVCache
    from llama3_lab.loading import load_model
    from llama3_lab.packaged import INDUCTOR_CONFIGS, _no_linear_add_fusion, step_to_compile

    dtype = getattr(torch, args.dtype)
    model = load_model("smollm2-135m-instruct", device="cpu", dtype=dtype, progress=False)
    hide_context_hooks_from_compiler()
    step = step_to_compile(model, args.capacity)  # what a package compiles (float32: no unembedding)
    cache = KVCache.allocate(model, batch_size=1, max_length=args.capacity)
    for tensor in cache.keys + cache.values:
        tensor.zero_()
    token, position = torch.tensor([[42]]), torch.tensor(args.capacity // 4)
    inductor_config.cpp.enable_kernel_profile = True
    with (
        torch.inference_mode(),
        inductor_config.patch(dict(INDUCTOR_CONFIGS)),
        _no_linear_add_fusion(dtype),
    ):
        compiled = torch.compile(step, fullgraph=True, dynamic=False)
        print("compiling (the package's configs: max-autotune, frozen weights) ...", flush=True)
        for _ in range(3):
            compiled(token, position, cache.keys, cache.values)
        before = read_bandwidth_gbps()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                compiled(token, position, cache.keys, cache.values)
        after = read_bandwidth_gbps()

    events = [e for e in prof.key_averages() if e.key.startswith("graph_")]
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    element = torch.finfo(dtype).bits // 8
    print(
        f"\nSmolLM2-135M {args.dtype}, capacity {args.capacity}, {torch.get_num_threads()} threads; "
        f"all-thread sum over 1 GB: {before:.1f} GB/s before, {after:.1f} GB/s after"
    )
    print(f"compiled kernels: {total_ms:.2f} ms per step\n")
    print(f"{'kernel':<60} {'calls/step':>10} {'ms/step':>8} {'µs/call':>8} {'GB/s (weights)':>15}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]:
        per_call_s = e.self_cpu_time_total / e.count / 1e6
        match = GEMM.search(e.key)
        rate = ""
        if match and int(match.group(1)) <= 16:  # a matrix-vector product: it streams N x K weights
            n, k = int(match.group(2)), int(match.group(3))
            rate = f"{n * k * element / per_call_s / 1e9:.1f}"
        ms_per_step = e.self_cpu_time_total / 1e3 / args.steps
        calls = e.count / args.steps
        print(f"{e.key[:60]:<60} {calls:>10.0f} {ms_per_step:>8.2f} {per_call_s * 1e6:>8.1f} {rate:>15}")


if __name__ == "__main__":
    main()
