"""Where a model's parameters and memory go: parameter counts by part, and memory against context length.

All numbers come from :class:`~llama3_lab.config.LlamaConfig` (``parameter_breakdown``, ``weights_bytes``,
``kv_cache_bytes``); this module only draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..config import LlamaConfig
from ..units import format_bytes
from ._common import bare_figure, root_figure

GIB = 1024**3


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def config_breakdown(
    cfg: LlamaConfig,
    axes: Sequence[Axes] | None = None,
    *,
    dtype: Any = "bf16",
    context_lengths: Sequence[int] | None = None,
    title: str | None = None,
    batch: int = 1,
) -> Figure:
    """Two panels: parameters by part (embedding, attention, MLP, norms, unembedding), and memory in
    ``dtype`` against context length (weights, KV cache with GQA, KV cache if every query head had its own
    K/V, i.e. without GQA). The dashed line marks ``max_position_embeddings``.
    """
    parts = cfg.parameter_breakdown()
    layers = cfg.num_hidden_layers
    counts = {
        "embedding": parts["embedding"],
        "attention": layers * parts["attention_per_layer"],
        "MLP": layers * parts["mlp_per_layer"],
        "norms": layers * parts["norms_per_layer"] + parts["final_norm"],
        "unembedding": parts["unembedding"],
    }
    total = parts["total"]

    if axes is None:
        fig = bare_figure((9.0, 3.4))
        param_ax, memory_ax = fig.subplots(1, 2, width_ratios=(1, 1.2))
    else:
        param_ax, memory_ax = axes
        fig = root_figure(param_ax)
    names = list(counts)
    param_ax.barh(names, [counts[n] for n in names], color="#4c72b0")
    param_ax.invert_yaxis()
    top = max(counts.values())
    for i, name in enumerate(names):
        n = counts[name]
        text = (
            "tied to embedding"
            if name == "unembedding" and n == 0
            else f"{_count(n)} ({100 * n / total:.1f}%)"
        )
        param_ax.text(n + 0.01 * top, i, text, va="center", fontsize=7)
    param_ax.set_xlim(0, top * 1.45)
    param_ax.xaxis.set_major_formatter(FuncFormatter(lambda n, _: _count(n) if n > 0 else "0"))
    param_ax.set_xlabel("parameters")
    param_ax.set_title(f"{_count(total)} parameters ({total:,})", fontsize=9)
    param_ax.spines[["top", "right"]].set_visible(False)

    max_context = cfg.max_position_embeddings
    if context_lengths is None:
        context_lengths = np.unique(np.geomspace(128, max_context, 40).astype(int))
    lengths = np.asarray(context_lengths)
    no_gqa = cfg.replace(num_key_value_heads=cfg.num_attention_heads)
    weights = cfg.weights_bytes(dtype)
    kv = np.array([cfg.kv_cache_bytes(int(t), batch=batch, dtype=dtype) for t in lengths])
    kv_full = np.array([no_gqa.kv_cache_bytes(int(t), batch=batch, dtype=dtype) for t in lengths])
    memory_ax.plot(lengths, np.full(lengths.shape, weights / GIB), label=f"weights ({format_bytes(weights)})")
    memory_ax.plot(lengths, kv / GIB, label=f"KV cache, GQA ({cfg.num_key_value_heads} KV heads)")
    if cfg.num_key_value_heads != cfg.num_attention_heads:
        memory_ax.plot(
            lengths,
            kv_full / GIB,
            linestyle="--",
            label=f"KV cache without GQA ({cfg.num_attention_heads} KV heads)",
        )
    memory_ax.plot(lengths, (weights + kv) / GIB, color="0.2", linewidth=1.5, label="weights + KV (GQA)")
    memory_ax.axvline(max_context, color="0.5", linestyle=":", linewidth=1)
    memory_ax.set_xscale("log", base=2)
    memory_ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:,.0f}"))
    memory_ax.tick_params(axis="x", labelsize=7)
    memory_ax.set_yscale("log")
    memory_ax.set_xlabel(f"context length (tokens, batch {batch})")
    memory_ax.set_ylabel(f"GiB in {dtype}")
    full_kv = format_bytes(cfg.kv_cache_bytes(max_context, batch=batch, dtype=dtype))
    memory_ax.set_title(
        f"memory; KV cache {full_kv} at {max_context} tokens",
        fontsize=9,
    )
    memory_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
