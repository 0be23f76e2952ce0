"""One-GPU check at Llama 3 8B scale: numerics and speed against transformers on the same weights.

    python benchmarks/gpu_check.py            # needs one CUDA GPU with ~50 GB free; < 8 minutes

1. Builds a Llama-3-8B-shaped model (the repository's ``config.json``) with random bf16 weights
   directly on the GPU, and a transformers ``LlamaForCausalLM`` that shares the very same tensors
   (built on the meta device, weights assigned: no second copy).
2. Numerics on a 512-token prompt: a float32 transformers reference (a temporary float32 copy of the
   weights, freed afterwards); the distance of our bf16 logits and of transformers' bf16 logits to
   it (max and mean |Δ|), their top-1 agreement with it; our eager path (forced by a pattern hook)
   against our fused path; cached decoding against the full forward.
3. Speed: prefill of 2,048 tokens and 128 greedy decode steps with the KV cache, ours and
   transformers' (SDPA attention for both), median of a few runs after warm-up.

``--config`` and ``--allow-cpu`` exist to dry-run the script's logic with a tiny config on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int = 3, warmup: int = 1) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def transformers_sharing(model, attn: str, dtype: torch.dtype | None = None):  # noqa: ANN001, ANN201
    """transformers' LlamaForCausalLM on ``model``'s tensors (cast to ``dtype`` if given: then a copy)."""
    import transformers

    from llama3_lab.loading.hf import hf_config_dict, hf_name

    config = transformers.LlamaConfig(**hf_config_dict(model.cfg))
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM._from_config(
            config, attn_implementation=attn, dtype=dtype or model.dtype
        )
    state = {hf_name(n): (p if dtype is None else p.to(dtype)) for n, p in model.named_parameters()}
    if model.cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    with torch.device(model.device):
        hf.model.rotary_emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    return hf.eval()


def distance(logits: torch.Tensor, reference: torch.Tensor) -> str:
    delta = (logits.float() - reference).abs()
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return f"max |Δ| {delta.max().item():.4f}, mean |Δ| {delta.mean().item():.5f}, top-1 agreement {top1:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "config.json"))
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--check-tokens", type=int, default=512)
    parser.add_argument("--allow-cpu", action="store_true", help="dry-run on CPU (use with a tiny --config)")
    args = parser.parse_args()

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit(
            "gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False here: "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run it on a machine with one "
            "NVIDIA GPU and ~50 GB of free GPU memory; on a CPU, only a dry run with --allow-cpu and a tiny "
            "--config is possible."
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16

    from llama3_lab.config import LlamaConfig
    from llama3_lab.kv_cache import KVCache
    from llama3_lab.model import LlamaModel

    cfg = LlamaConfig.from_json(args.config)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device: {where}; torch {torch.__version__}")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = LlamaModel.from_config(cfg, seed=0, device=device, dtype=dtype)
    sync(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {n_params:,} random bf16 parameters on {device} in {time.perf_counter() - t0:.1f} s")
    hf = transformers_sharing(model, attn="sdpa")
    assert (
        hf.model.layers[0].self_attn.q_proj.weight.data_ptr() == model.blocks[0].attn.q_proj.weight.data_ptr()
    )
    if device.type == "cuda":
        print(f"GPU memory after building both: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB")

    # -- numerics ---------------------------------------------------------------------------------------
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (1, args.check_tokens), generator=generator).to(device)
    with torch.inference_mode():
        ours = model(tokens)
        theirs = hf(tokens).logits
        reference_model = transformers_sharing(model, attn="sdpa", dtype=torch.float32)
        reference = reference_model(tokens).logits.float()
    del reference_model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"ours bf16 vs float32 reference:         {distance(ours, reference)}")
    print(f"transformers bf16 vs float32 reference: {distance(theirs, reference)}")
    ours_error = (ours.float() - reference).abs().mean().item()
    theirs_error = (theirs.float() - reference).abs().mean().item()
    print(f"mean-error ratio ours / transformers: {ours_error / theirs_error:.3f} (goal ≤ 1.25)")

    with torch.inference_mode():
        handle = model.blocks[0].attn.hook_pattern.register_forward_hook(lambda m, i, o: None)
        model.attn_impl = "eager"
        eager = model(tokens)
        model.attn_impl = "sdpa"
        handle.remove()
        print(f"eager path vs fused path (ours, bf16):  {distance(eager, ours.float())}")
        cache = KVCache.allocate(model, max_length=args.check_tokens)
        half = args.check_tokens // 2
        pieces = [model(tokens[:, :half], cache=cache)]
        pieces += [model(tokens[:, p : p + 1], cache=cache) for p in range(half, half + 8)]
        cached = torch.cat(pieces, dim=1)
        print(f"cached vs full forward (ours, bf16):    {distance(cached, ours[:, : half + 8].float())}")
    del ours, theirs, reference, eager, cached, pieces, cache

    # -- speed ------------------------------------------------------------------------------------------
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prefill), generator=generator).to(device)
    with torch.inference_mode():
        ours_prefill = median_seconds(lambda: model(prompt), device)
        theirs_prefill = median_seconds(lambda: hf(prompt, use_cache=False), device)
    print(
        f"prefill {args.prefill} tokens: ours {ours_prefill * 1e3:.1f} ms, "
        f"transformers {theirs_prefill * 1e3:.1f} ms (ratio {ours_prefill / theirs_prefill:.3f})"
    )

    short = prompt[:, :128]

    def ours_decode() -> list[int]:
        cache = KVCache.allocate(model, max_length=short.shape[1] + args.decode)
        logits = model(short, cache=cache)
        out = []
        for _ in range(args.decode):
            next_id = logits[:, -1].argmax(-1, keepdim=True)  # stays on the GPU: no sync per step
            out.append(next_id)
            logits = model(next_id, cache=cache)
        return torch.cat(out, dim=1)[0].tolist()

    def theirs_decode() -> list[int]:
        out = hf.generate(
            short,
            attention_mask=torch.ones_like(short),
            max_new_tokens=args.decode,
            min_new_tokens=args.decode,
            do_sample=False,
            pad_token_id=0,
        )
        return out[0, short.shape[1] :].tolist()

    with torch.inference_mode():
        ours_seconds = median_seconds(ours_decode, device)
        theirs_seconds = median_seconds(theirs_decode, device)
        same = sum(a == b for a, b in zip(ours_decode(), theirs_decode()))
    print(
        f"decode {args.decode} steps after a 128-token prompt: ours {args.decode / ours_seconds:.1f} tok/s, "
        f"transformers generate {args.decode / theirs_seconds:.1f} tok/s "
        f"(ratio {theirs_seconds / ours_seconds:.2f}x); greedy tokens identical: {same}/{args.decode}"
    )
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
