"""One-GPU check at Llama 3 8B scale: numerics and speed against transformers on the same weights.

    python benchmarks/gpu_check.py            # one CUDA GPU with ~50 GB free (H100 80 GB); < 8 minutes
    python benchmarks/gpu_check.py --tiny     # the whole script on CPU with a tiny config (a dry run)

1. Builds a Llama-3-8B-shaped model (the repository's ``config.json``) with random bf16 weights
   directly on the GPU, and a transformers ``LlamaForCausalLM`` that shares the very same tensors
   (built on the meta device, weights assigned: no second copy).
2. Numerics on a 512-token prompt: a float32 transformers reference (a temporary float32 copy of the
   weights, freed afterwards); the distance of our bf16 logits and of transformers' bf16 logits to
   it (max and mean |Δ|), their top-1 agreement with it; our eager path (forced by a pattern hook)
   against our fused path; cached decoding against the full forward.
3. Speed (issue 8), all in this run:
   - the HBM bandwidth (best device-to-device copy of 1 GiB, bytes read + written) and the decode
     limit it implies, weights bytes / bandwidth per token;
   - prefill of 2,048 tokens, ours (fused SDPA) / transformers SDPA (goal ≤ 1.05);
   - 256 greedy decode tokens after that prompt: ours eager (``generate_tokens``, what
     ``model.generate`` runs), ours fast (``FastDecoder``: static cache, CUDA graph), transformers
     ``generate``; decode rate = 255 / (time for 256 tokens − time for 1 token), so the prefill cancels.
     Goals: eager ≥ transformers; fast ≥ 70 % of the bandwidth limit; greedy tokens compared;
   - caching every layer's residual stream to CPU: blocking ``run_with_cache(device="cpu")`` against
     ``fast.run_with_cache_offloaded`` (pinned buffers, asynchronous copies).
   On a GPU the figures go into ``benchmarks/RESULTS.md`` (section ``gpu-check``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the path set-up above
    machine_info,
    markdown_table,
    read_bandwidth_gbps,
    synchronize,
    timed,
    transformers_greedy,
    transformers_twin,
    weight_bytes,
    write_section,
)

#: ``--tiny``: a small GQA model that runs the whole script on a CPU in seconds.
TINY = dict(
    vocab_size=256, hidden_size=128, intermediate_size=256, max_position_embeddings=512, rope_theta=500000.0
)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def distance(logits: torch.Tensor, reference: torch.Tensor) -> str:
    delta = (logits.float() - reference).abs()
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return f"max |Δ| {delta.max().item():.4f}, mean |Δ| {delta.mean().item():.5f}, top-1 agreement {top1:.1%}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_numerics(model: Any, hf: Any, cfg: Any, args: argparse.Namespace, report: list[str]) -> None:
    """Issue 3: bf16 distances to a float32 reference, eager vs fused, cached vs full."""
    from llama3_lab.kv_cache import KVCache

    device = model.device
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (1, args.check_tokens), generator=generator).to(device)
    with torch.inference_mode():
        ours = model(tokens)
        theirs = hf(tokens).logits
        reference_model = transformers_twin(model, attn="sdpa", dtype=torch.float32)
        reference = reference_model(tokens).logits.float()
    del reference_model
    free_memory(device)
    ours_error = (ours.float() - reference).abs().mean().item()
    theirs_error = (theirs.float() - reference).abs().mean().item()
    report += [
        f"ours bf16 vs float32 reference:         {distance(ours, reference)}",
        f"transformers bf16 vs float32 reference: {distance(theirs, reference)}",
        f"mean-error ratio ours / transformers: {ours_error / theirs_error:.3f} (goal ≤ 1.25)",
    ]
    with torch.inference_mode():
        handle = model.blocks[0].attn.hook_pattern.register_forward_hook(lambda m, i, o: None)
        model.attn_impl = "eager"
        try:
            eager = model(tokens)
        finally:
            model.attn_impl = "sdpa"
            handle.remove()
        cache = KVCache.allocate(model, max_length=args.check_tokens)
        half = args.check_tokens // 2
        pieces = [model(tokens[:, :half], cache=cache)]
        pieces += [model(tokens[:, p : p + 1], cache=cache) for p in range(half, half + 8)]
        cached = torch.cat(pieces, dim=1)
    report += [
        f"eager path vs fused path (ours, bf16):  {distance(eager, ours.float())}",
        f"cached vs full forward (ours, bf16):    {distance(cached, ours[:, : half + 8].float())}",
    ]
    for line in report[-5:]:
        print(line, flush=True)
    del ours, theirs, reference, eager, cached, pieces, cache
    free_memory(device)


def check_speed(model: Any, hf: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Issue 8: bandwidth limit, prefill, eager/fast/transformers decode, pinned offload."""
    from llama3_lab.fast import FastDecoder, run_with_cache_offloaded
    from llama3_lab.generation import generate_tokens

    device = model.device
    figures: dict[str, Any] = {}
    bandwidth = max(
        read_bandwidth_gbps(device, n_bytes=1 << (30 if device.type == "cuda" else 26)) for _ in range(3)
    )
    n_bytes = weight_bytes(model)
    figures.update(bandwidth_gb_s=bandwidth, weight_bytes=n_bytes, limit_tok_s=bandwidth * 1e9 / n_bytes)
    print(
        f"bandwidth {bandwidth:.0f} GB/s; {n_bytes / 1e9:.2f} GB of weights → "
        f"limit {figures['limit_tok_s']:.1f} tok/s"
    )

    generator = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prefill), generator=generator).to(device)
    with torch.inference_mode():
        figures["ours_prefill_s"] = median_seconds(lambda: model(prompt), device)
        figures["hf_prefill_s"] = median_seconds(lambda: hf(prompt, use_cache=False), device)
    figures["prefill_ratio"] = figures["ours_prefill_s"] / figures["hf_prefill_s"]
    print(
        f"prefill {args.prefill}: ours {figures['ours_prefill_s'] * 1e3:.1f} ms, transformers SDPA "
        f"{figures['hf_prefill_s'] * 1e3:.1f} ms, ratio {figures['prefill_ratio']:.3f} (goal ≤ 1.05)",
        flush=True,
    )
    free_memory(device)

    prompt_ids = prompt[0].tolist()
    n = args.decode
    decoder = FastDecoder(model, max_length=len(prompt_ids) + n, compile=None)  # CUDA graph on a GPU
    start = time.perf_counter()
    decoder.generate_greedy(prompt_ids, 2)  # captures the CUDA graph
    synchronize(device)
    figures["fast_capture_s"] = time.perf_counter() - start

    runners: dict[str, Callable[[int], list[int]]] = {
        "eager": lambda k: list(generate_tokens(model, prompt_ids, k, temperature=0)),
        "fast": functools.partial(decoder.generate_greedy, prompt_ids),
        "transformers": functools.partial(transformers_greedy, hf, prompt_ids),
    }
    tokens = {}
    for name, run in runners.items():
        tokens[name] = run(n)  # warm-up, and the tokens to compare
        one = median_seconds(lambda run=run: run(1), device, repeats=3, warmup=0)
        full = median_seconds(lambda run=run: run(n), device, repeats=args.repeats, warmup=0)
        figures[f"{name}_tok_s"] = (n - 1) / max(full - one, 1e-9)
        print(f"decode {n} after {args.prefill}: {name} {figures[f'{name}_tok_s']:.1f} tok/s", flush=True)
        free_memory(device)
    for name in ("fast", "transformers"):
        same = sum(a == b for a, b in zip(tokens["eager"], tokens[name]))
        first = next((i for i, (a, b) in enumerate(zip(tokens["eager"], tokens[name])) if a != b), None)
        figures[f"{name}_same_as_eager"] = f"{same}/{n}" + (
            f" (first difference at {first})" if first is not None else ""
        )
    figures["fast_fraction"] = figures["fast_tok_s"] / figures["limit_tok_s"]
    figures["eager_fraction"] = figures["eager_tok_s"] / figures["limit_tok_s"]
    del decoder
    free_memory(device)

    names = [f"blocks.{layer}.hook_resid_post" for layer in range(cfg.num_hidden_layers)]
    with torch.inference_mode():
        blocking = lambda: model.run_with_cache(prompt, names_filter=names, device="cpu")  # noqa: E731
        offloaded = lambda: run_with_cache_offloaded(model, prompt, names_filter=names)  # noqa: E731
        figures["cache_cpu_blocking_s"] = median_seconds(blocking, device)
        figures["cache_cpu_offloaded_s"] = median_seconds(offloaded, device)
        _, a = blocking()
        _, b = offloaded()
        figures["offload_equal"] = all(torch.equal(a[name], b[name]) for name in names)
        figures["offload_pinned"] = (
            all(b[name].is_pinned() for name in names) if device.type == "cuda" else None
        )
    print(
        f"resid_post of {len(names)} layers to CPU: blocking {figures['cache_cpu_blocking_s'] * 1e3:.1f} ms, "
        f"offloaded {figures['cache_cpu_offloaded_s'] * 1e3:.1f} ms, equal {figures['offload_equal']}"
    )
    return figures


def render(info: dict[str, Any], numerics: list[str], f: dict[str, Any], args: argparse.Namespace) -> str:
    n = args.decode
    rows = [
        ["HBM bandwidth (device copy, read + write)", f"{f['bandwidth_gb_s']:.0f} GB/s", ""],
        [
            "decode limit = bandwidth / weights bytes",
            f"{f['limit_tok_s']:.1f} tok/s ({f['weight_bytes'] / 1e9:.2f} GB)",
            "",
        ],
        [
            f"prefill {args.prefill} tokens, ours / transformers SDPA",
            f"{f['prefill_ratio']:.3f} ({f['ours_prefill_s'] * 1e3:.1f} / {f['hf_prefill_s'] * 1e3:.1f} ms)",
            "≤ 1.05",
        ],
        [f"decode {n} tokens, transformers generate", f"{f['transformers_tok_s']:.1f} tok/s", ""],
        [
            f"decode {n} tokens, ours eager / transformers",
            f"{f['eager_tok_s'] / f['transformers_tok_s']:.2f} ({f['eager_tok_s']:.1f} tok/s, "
            f"{f['eager_fraction']:.0%} of limit)",
            "≥ 1",
        ],
        [
            f"decode {n} tokens, ours fast (CUDA graph) fraction of limit",
            f"{f['fast_fraction']:.2f} ({f['fast_tok_s']:.1f} tok/s; capture {f['fast_capture_s']:.1f} s)",
            "≥ 0.70",
        ],
        [
            "greedy tokens equal to ours eager: fast / transformers",
            f"{f['fast_same_as_eager']} / {f['transformers_same_as_eager']}",
            "",
        ],
        [
            "all resid_post to CPU: blocking / pinned async",
            f"{f['cache_cpu_blocking_s'] * 1e3:.0f} / {f['cache_cpu_offloaded_s'] * 1e3:.0f} ms "
            f"(equal: {f['offload_equal']}, pinned: {f['offload_pinned']})",
            "",
        ],
    ]
    device = info.get("gpu", "CPU dry run (tiny config: figures are meaningless)")
    return "\n".join(
        [
            f"## `benchmarks/gpu_check.py` on {device}",
            "",
            f"- date: {info['date']}; torch {info['torch']}, transformers {info['transformers']}; "
            f"host CPU {info['cpu']}",
            f"- model: {args.model_description}, random bf16 weights, transformers sharing the same tensors",
            "",
            "Numerics (512 tokens):",
            "",
            *[f"    {line}" for line in numerics],
            "",
            markdown_table(["metric", "value", "goal"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "config.json"))
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=256)
    parser.add_argument("--check-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tiny",
        "--dry-run",
        action="store_true",
        help="run every step on CPU with a tiny config (checks the script, not the GPU)",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="with --config: run that config on CPU")
    parser.add_argument(
        "--output", default=None, help="results file (default: benchmarks/RESULTS.md on a GPU)"
    )
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available() and not args.tiny
    if not on_gpu and not (args.tiny or args.allow_cpu):
        sys.exit(
            "gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False here: "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run it on a machine with one "
            "NVIDIA GPU and ~50 GB of free GPU memory; on a CPU, `--tiny` dry-runs the whole script with a "
            "tiny config."
        )
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16

    from llama3_lab.config import LlamaConfig
    from llama3_lab.model import LlamaModel

    if args.tiny:
        cfg = LlamaConfig.tiny(**TINY)
        args.prefill, args.decode, args.check_tokens, args.repeats = 48, 8, 24, 1
        args.model_description = "tiny GQA config"
    else:
        cfg = LlamaConfig.from_json(args.config)
        args.model_description = (
            f"{Path(args.config).name}: {cfg.num_hidden_layers} layers, D {cfg.hidden_size}"
        )
    info = machine_info(device)
    print(f"device: {info.get('gpu', 'CPU (dry run)')}; torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = LlamaModel.from_config(cfg, seed=0, device=device, dtype=dtype)
    synchronize(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {n_params:,} random bf16 parameters on {device} in {time.perf_counter() - t0:.1f} s")
    hf = transformers_twin(model, attn="sdpa")
    shared = (
        hf.model.layers[0].self_attn.q_proj.weight.data_ptr() == model.blocks[0].attn.q_proj.weight.data_ptr()
    )
    assert shared, "the transformers twin must share our tensors (no second copy of the weights)"
    if device.type == "cuda":
        print(f"GPU memory after building both: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB")

    numerics: list[str] = []
    check_numerics(model, hf, cfg, args, numerics)
    figures = check_speed(model, hf, cfg, args)
    if device.type == "cuda":
        figures["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory: {figures['peak_gpu_gib']:.2f} GiB")
    text = render(info, numerics, figures, args)
    print()
    print(text)
    output = args.output or (str(ROOT / "benchmarks" / "RESULTS.md") if device.type == "cuda" else None)
    if output:
        write_section("gpu-check", text, Path(output))
        print(f"written to {output}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
