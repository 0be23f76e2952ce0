"""Shared benchmark helpers: timing with alternating repetitions, ratios with their spread, memory
bandwidth, peak RSS, the machine's description, a transformers twin sharing our weights, and writing
one section of ``benchmarks/RESULTS.md`` without touching the others.

Timing on a shared host: run the variants being compared in alternation (A B A B ...), so that a
burst of load slows both, and report the median of the per-repetition ratios with their min-max and
interquartile range. On CUDA every timed call ends with a synchronisation.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# ------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall time covers the work, not just its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Seconds one call of ``fn`` takes (synchronised on CUDA)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(
    variants: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    rotate: bool = False,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, called in turn ``reps`` times (after ``warmup`` rounds).

    ``rotate``: round ``i`` starts at the ``i``-th variant (mod their number), so that no variant always
    runs right after the same other one (what the one before leaves behind, such as a freed cache,
    then falls on each variant alike).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(reps):
        shift = round_ % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(variants[name], device))
    return times


@dataclass
class Spread:
    """Median of a sample with its min, max and quartiles."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        ordered = sorted(values)
        n = len(ordered)
        if n == 0:
            raise ValueError("no values to summarise")
        q1, q3 = (
            (statistics.quantiles(ordered, n=4, method="inclusive")[::2])
            if n >= 2
            else (ordered[0], ordered[0])
        )
        return cls(statistics.median(ordered), ordered[0], ordered[-1], q1, q3, n)

    def text(self, digits: int = 3) -> str:
        return (
            f"{self.median:.{digits}f} (IQR {self.q1:.{digits}f}-{self.q3:.{digits}f}, "
            f"range {self.low:.{digits}f}-{self.high:.{digits}f}, n={self.n})"
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "q1": self.q1,
            "q3": self.q3,
            "n": self.n,
        }


def ratio_spread(numerators: list[float], denominators: list[float]) -> Spread:
    """Spread of the per-repetition ratios ``numerators[i] / denominators[i]`` (paired, same round)."""
    return Spread.of([a / b for a, b in zip(numerators, denominators, strict=True)])


# ---------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's description elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a reader needs to compare figures: CPU, cores, threads, torch, device, GPU, load, date."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average": tuple(round(x, 2) for x in os.getloadavg()),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ bandwidth


def read_bandwidth_gbps(
    device: torch.device | str = "cpu", n_bytes: int = 1 << 30, repeats: int = 5
) -> float:
    """Best memory bandwidth (GB/s) over ``repeats`` passes over ``n_bytes``.

    CPU: read bandwidth of an all-thread ``torch.sum`` over float32 (what batch-1 decode needs: read
    every weight once). CUDA: a device-to-device copy, counting bytes read plus bytes written.
    """
    device = torch.device(device)
    best = float("inf")
    if device.type == "cuda":
        source = torch.ones(n_bytes // 2, dtype=torch.bfloat16, device=device)
        target = torch.empty_like(source)
        target.copy_(source)
        for _ in range(repeats):
            best = min(best, timed(lambda: target.copy_(source), device))
        del source, target
        return 2 * n_bytes / best / 1e9
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the limit is what all cores together can read
    try:
        data = torch.ones(n_bytes // 4, dtype=torch.float32)
        data.sum()  # touch every page
        for _ in range(repeats):
            best = min(best, timed(data.sum))
        del data
    finally:
        torch.set_num_threads(threads)
    return n_bytes / best / 1e9


def distinct_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's parameter tensors with distinct storage (tied embeddings once), in module order."""
    seen: set[int] = set()
    found = []
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            found.append(p.detach())
    return found


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct parameter storage (tied embeddings once): what one decode step must read."""
    return sum(p.numel() * p.element_size() for p in distinct_weights(model))


# ---------------------------------------------------------------------------------------- transformers


def transformers_twin(model: Any, attn: str = "eager", dtype: torch.dtype | None = None) -> Any:
    """``transformers.LlamaForCausalLM`` whose parameters ARE ``model``'s tensors (no copy: an 8B twin
    costs no memory). Built on the meta device, then given our tensors under Hugging Face's names.

    With a ``dtype`` other than the model's (a float32 reference for bf16 weights), it holds cast copies.
    """
    import transformers

    from llama3_lab.loading.hf import hf_config_dict, hf_name

    dtype = dtype or model.dtype
    config = transformers.LlamaConfig(**hf_config_dict(model.cfg))
    state = {hf_name(name): p.detach().to(dtype) for name, p in model.named_parameters()}  # no-op cast
    with torch.device("meta"):
        twin = transformers.LlamaForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    twin.load_state_dict(state, strict=True, assign=True)
    twin.tie_weights()
    with torch.device(model.device):  # RoPE buffers were made on the meta device: build them for real
        twin.model.rotary_emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    return twin.eval()


def transformers_greedy(twin: Any, prompt: list[int], n: int) -> list[int]:
    """Exactly ``n`` greedy tokens from transformers ``generate`` (no stop token), as a list of ids."""
    input_ids = torch.tensor([prompt], device=twin.device)
    return transformers_greedy_batch(twin, input_ids, torch.ones_like(input_ids), n)[0]


def exactly_n_greedy(n: int) -> dict[str, Any]:
    """transformers ``generate`` keywords for exactly ``n`` greedy tokens: no stop token, no sampling."""
    return dict(
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        temperature=None,
        top_p=None,
        top_k=None,
    )


def transformers_greedy_batch(twin: Any, ids: torch.Tensor, mask: torch.Tensor, n: int) -> list[list[int]]:
    """Exactly ``n`` greedy tokens per row from transformers ``generate`` on a (left-padded) batch."""
    with torch.inference_mode():
        out = twin.generate(ids, attention_mask=mask.long(), **exactly_n_greedy(n))
    return out[:, ids.shape[1] :].tolist()


# -------------------------------------------------------------------------------------- RESULTS.md


def write_section(key: str, body: str, path: Path = RESULTS) -> None:
    """Put ``body`` between this key's markers in ``path``, keeping every other section as it is."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each section is one run.\n"
    )
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
