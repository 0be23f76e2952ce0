"""The teaching text of :meth:`LlamaConfig.explain`: what each field means, how each figure is derived.

:func:`explain_config` builds a :class:`ConfigExplanation` (one row per field, then the derived figures),
which renders as an HTML table in Jupyter, as Markdown and as plain text. The numbers themselves come from
:class:`~llama3_lab.config.LlamaConfig`, whose ``explain()`` calls in here: so this module imports neither
config nor anything above it, and ``c`` below is a LlamaConfig by duck typing.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from .units import format_bytes

__all__ = ["ConfigExplanation", "ExplanationRow", "explain_config"]

LlamaConfig = Any  # a llama3_lab.config.LlamaConfig (not imported: config.py imports this module)


def explain_config(c: LlamaConfig, title: str | None = None) -> ConfigExplanation:
    """Every field of ``c`` with its value and meaning, then the derived figures and how they are derived."""
    d = c.to_dict()
    rows = []
    for name in [f.name for f in fields(c) if f.init and f.name != "extra"] + list(c.extra):
        explain_field = _FIELD_EXPLANATIONS.get(name)
        text = explain_field(c) if explain_field else _UNKNOWN_EXTRA
        rows.append(ExplanationRow(name, json.dumps(d[name]), text))
    return ConfigExplanation(
        title=title or f"Llama config: {c.num_parameters() / 1e9:.3g}B parameters",
        rows=rows,
        derived=_derived_rows(c),
    )


class ExplanationRow(NamedTuple):
    field: str
    value: str
    explanation: str


@dataclass
class ConfigExplanation:
    """What :meth:`LlamaConfig.explain` returns: one row per config field, then the derived figures."""

    title: str
    rows: list[ExplanationRow]
    derived: list[ExplanationRow]

    def __getitem__(self, name: str) -> ExplanationRow:
        for row in self.rows + self.derived:
            if row.field == name:
                return row
        raise KeyError(f"No row named {name!r}; fields: {[r.field for r in self.rows]}.")

    @property
    def fields(self) -> list[str]:
        return [row.field for row in self.rows]

    def to_text(self, width: int = 100) -> str:
        """Plain text: ``field = value`` lines with the explanation wrapped and indented under each."""
        lines = [self.title, "=" * len(self.title)]
        for heading, rows in (("Fields", self.rows), ("Derived figures", self.derived)):
            lines += ["", heading, "-" * len(heading)]
            for row in rows:
                lines.append(f"{row.field} = {row.value}")
                lines += textwrap.wrap(
                    row.explanation, width, initial_indent="    ", subsequent_indent="    "
                )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()

    def to_markdown(self) -> str:
        """Two GitHub-flavoured Markdown tables (fields, derived figures)."""

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        out = [f"### {self.title}", ""]
        for heading, rows, cols in (
            ("Fields", self.rows, ("field", "value", "meaning")),
            ("Derived figures", self.derived, ("figure", "value", "how it is derived")),
        ):
            out += [f"**{heading}**", "", f"| {' | '.join(cols)} |", "|---|---|---|"]
            out += [f"| `{r.field}` | `{cell(r.value)}` | {cell(r.explanation)} |" for r in rows]
            out.append("")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        style = "text-align:left;vertical-align:top;padding:2px 8px"
        parts = [f"<div><h4>{html.escape(self.title)}</h4>"]
        for heading, rows, cols in (
            ("Fields", self.rows, ("field", "value", "meaning")),
            ("Derived figures", self.derived, ("figure", "value", "how it is derived")),
        ):
            parts.append(f"<table><caption style='text-align:left'><b>{heading}</b></caption><thead><tr>")
            parts += [f"<th style='{style}'>{c}</th>" for c in cols]
            parts.append("</tr></thead><tbody>")
            for r in rows:
                parts.append(
                    f"<tr><td style='{style}'><code>{html.escape(r.field)}</code></td>"
                    f"<td style='{style}'><code>{html.escape(r.value)}</code></td>"
                    f"<td style='{style}'>{html.escape(r.explanation)}</td></tr>"
                )
            parts.append("</tbody></table>")
        parts.append("</div>")
        return "".join(parts)


_UNKNOWN_EXTRA = "Not used by llama3-lab; kept in `extra` and written back unchanged by to_dict()."


def _explain_vocab(c: LlamaConfig) -> str:
    text = f"V: number of token ids; the embedding is a [V, D] = [{c.vocab_size:,}, {c.hidden_size:,}] table."
    if c.vocab_size == 128256:
        text += " Llama 3: 128,000 byte-level BPE tokens (tiktoken) + 256 special tokens (128000-128255)."
    return text


def _explain_head_dim(c: LlamaConfig) -> str:
    how = (
        "given explicitly in the config"
        if c._head_dim_given and c.head_dim * c.num_attention_heads != c.hidden_size
        else f"hidden_size / num_attention_heads = {c.hidden_size} / {c.num_attention_heads}"
    )
    return (
        f"d = {c.head_dim}: width of each attention head ({how}). Scores are scaled by 1/√d = "
        f"{1 / math.sqrt(c.head_dim):.4f}; RoPE rotates d/2 = {c.head_dim // 2} pairs of each q and k vector."
    )


def _explain_kv_heads(c: LlamaConfig) -> str:
    K, H, G = c.num_key_value_heads, c.num_attention_heads, c.gqa_group
    if K == H:
        return f"K = {K} = H: one key/value head per query head (plain multi-head attention, no sharing)."
    kind = "multi-query attention (one K/V head for all)" if K == 1 else "grouped-query attention (GQA)"
    return (
        f"K = {K} key/value heads: {kind}. Each K/V head is shared by a group of G = H/K = {G} query heads, "
        f"so k_proj and v_proj are {c.kv_width:,} wide instead of {c.q_width:,} and the KV cache is {G}× "
        "smaller than with one K/V head per query head. Implementations either repeat K/V G times or group "
        "the queries."
    )


def _explain_max_position(c: LlamaConfig) -> str:
    return (
        f"{c.max_position_embeddings:,} tokens: the context length the model was trained for (Llama 3: 8192; "
        "3.1/3.2: 131072). Not a hard-coded buffer or a learned position table: RoPE is computed for any "
        "position, so longer inputs run, but quality degrades past it. llama3-lab sizes a default KV cache "
        "with it."
    )


def _explain_eps(c: LlamaConfig) -> str:
    return (
        f"ε = {c.rms_norm_eps:g} inside every RMSNorm: x · rsqrt(mean(x²) + ε) · weight, computed in "
        "float32; ε only guards against division by ~0. Llama 3 uses 1e-5. Trap: transformers' LlamaRMSNorm "
        "and many from-scratch RMSNorm classes default to 1e-6; building a norm without passing this value "
        "gives no error, only slightly wrong activations and logits everywhere."
    )


def _explain_theta(c: LlamaConfig) -> str:
    freqs = c.rope_inv_freq_unscaled()
    longest = 2 * math.pi / freqs[-1]
    return (
        f"θ = {c.rope_theta:,g}: base of the rotary position frequencies. Pair i of each head is rotated by "
        "angle p · inv_freq_i at position p, with inv_freq_i = θ^(−2i/d). Wavelengths 2π/inv_freq_i run "
        f"from 2π ≈ 6.3 tokens (pair 0) to ≈ {longest:,.0f} tokens (pair {len(freqs) - 1}). A larger θ "
        "stretches the slow pairs (Llama 2: 10,000; Llama 3: 500,000)."
    )


def _explain_rope_scaling(c: LlamaConfig) -> str:
    if c.rope_scaling is None:
        return (
            "null: no RoPE scaling, the frequencies are exactly θ^(−2i/d) (Llama 3 8B/70B). Llama 3.1/3.2 "
            "set a dict with rope_type 'llama3' here."
        )
    s, r = c.rope_scaling, c.rope_pair_regimes()
    orig = s["original_max_position_embeddings"]

    def span(ids: list[int]) -> str:
        return f"{len(ids)} pairs ({ids[0]}-{ids[-1]})" if ids else "0 pairs"

    return (
        f"Llama 3.1/3.2 'llama3' frequency scaling (factor {s['factor']:g}, low_freq_factor "
        f"{s['low_freq_factor']:g}, high_freq_factor {s['high_freq_factor']:g}, original context {orig:,}), "
        f"how the {orig:,}-token pretraining context was extended. With wavelength λ = 2π/f: pairs with λ < "
        f"{orig / s['high_freq_factor']:,g} keep f, pairs with λ > {orig / s['low_freq_factor']:,g} use "
        f"f/{s['factor']:g}, those between are interpolated. Here {span(r['unchanged'])} unchanged, "
        f"{span(r['smoothed'])} smoothed, {span(r['divided'])} divided."
    )


def _explain_tie(c: LlamaConfig) -> str:
    VD = c.vocab_size * c.hidden_size
    if c.tie_word_embeddings:
        return (
            "true: the unembedding (lm_head) reuses the token-embedding matrix, logits = ln_final(x) · Eᵀ; "
            f"saves {VD:,} parameters (Llama 3.2 1B/3B, SmolLM2). The loaded model has no separate output "
            "weight."
        )
    return (
        f"false: a separate [V, D] unembedding matrix ({VD:,} parameters) maps the final residual to logits "
        "(Llama 3 8B/70B, 3.1). Llama 3.2 1B/3B tie it to the embedding."
    )


def _explain_eos(c: LlamaConfig) -> str:
    ids = c.eos_token_id if isinstance(c.eos_token_id, list) else [c.eos_token_id]
    names = {128001: "<|end_of_text|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>"}
    named = ", ".join(f"{i} {names[i]}" if i in names else str(i) for i in ids)
    return (
        f"Token(s) that end generation: {named}. Llama 3 base models end documents with 128001 "
        "<|end_of_text|>; chat models end a turn with 128009 <|eot_id|> (3.1 also 128008 <|eom_id|>), so "
        "Instruct configs list several and generation must stop on any of them."
    )


_FIELD_EXPLANATIONS: dict[str, Any] = {
    "vocab_size": _explain_vocab,
    "hidden_size": lambda c: (
        f"D = {c.hidden_size:,}: width of the residual stream. Every token is a D-vector between blocks; "
        "each block reads it through an RMSNorm and adds its attention and MLP outputs back to it."
    ),
    "intermediate_size": lambda c: (
        f"M = {c.intermediate_size:,}: width of the SwiGLU MLP, down(silu(gate(x)) · up(x)) with gate, up: "
        "D→M and down: M→D. Meta's params.json does not store it: 4·dim → ⌊2/3⌋ → × ffn_dim_multiplier → "
        "round up to multiple_of (Llama 3 8B: 16384 → 10922 → 14198 → 14336)."
    ),
    "num_hidden_layers": lambda c: (
        f"L = {c.num_hidden_layers}: transformer blocks, each h = x + attn(ln1(x)); out = h + mlp(ln2(h))."
    ),
    "num_attention_heads": lambda c: (
        f"H = {c.num_attention_heads} query heads per layer, each attending with its own d = {c.head_dim} "
        f"dimensional queries; q_proj is D→H·d = {c.hidden_size:,}→{c.q_width:,}."
    ),
    "num_key_value_heads": _explain_kv_heads,
    "head_dim": _explain_head_dim,
    "max_position_embeddings": _explain_max_position,
    "rms_norm_eps": _explain_eps,
    "rope_theta": _explain_theta,
    "rope_scaling": _explain_rope_scaling,
    "tie_word_embeddings": _explain_tie,
    "attention_bias": lambda c: (
        f"{str(c.attention_bias).lower()}: whether q_proj, k_proj, v_proj and o_proj add bias vectors "
        "(Llama: none). It has nothing to do with attention masks or positional biases such as ALiBi."
    ),
    "mlp_bias": lambda c: (
        f"{str(c.mlp_bias).lower()}: whether gate_proj, up_proj and down_proj add bias vectors (Llama: none)."
    ),
    "initializer_range": lambda c: (
        f"{c.initializer_range:g}: standard deviation of the normal distribution that initialises weights "
        "when a model is created untrained. Irrelevant for a trained checkpoint: loading overwrites every "
        "weight."
    ),
    "bos_token_id": lambda c: (
        f"{c.bos_token_id}: beginning-of-sequence token"
        + (" <|begin_of_text|>, which starts every Llama 3 prompt" if c.bos_token_id == 128000 else "")
        + ". Add it exactly once: a tokenizer that adds it plus a chat template that writes it gives a "
        "double BOS, a silent quality loss."
    ),
    "eos_token_id": _explain_eos,
    "hidden_act": lambda c: (
        "silu: the MLP's gate activation, silu(x) = x · σ(x); with the gate·up product this is SwiGLU."
    ),
    "torch_dtype": lambda c: (
        f"{c.torch_dtype}: the dtype the checkpoint's weights are stored in. A storage fact, not a "
        "requirement: run in float32 for exact comparisons, bf16 for half the memory."
        if c.torch_dtype
        else "null: no single storage dtype (e.g. a quantised GGUF file); weights are dequantised on load."
    ),
    "model_type": lambda c: (
        "llama: the Hugging Face architecture family; selects LlamaForCausalLM in transformers."
    ),
    "architectures": lambda c: (
        "Class names transformers instantiates for this checkpoint (LlamaForCausalLM: the decoder plus the "
        "LM head). Informational here."
    ),
    "attention_dropout": lambda c: (
        "Dropout on attention probabilities during training (0.0 for Llama 3); never applied at inference."
    ),
    "pretraining_tp": lambda c: (
        "Tensor-parallel degree used in pretraining. transformers can split the projections into that many "
        "slices to reproduce pretraining numerics exactly; 1 means there is nothing to emulate. Ignored here."
    ),
    "transformers_version": lambda c: "Version of transformers that wrote this file. Informational.",
    "use_cache": lambda c: (
        "Whether transformers returns past keys/values by default to speed up generation: a runtime default, "
        "not part of the model. llama3-lab always takes an explicit KVCache."
    ),
    "pad_token_id": lambda c: (
        "Padding token id used when batching sequences of different lengths; Llama 3 defines none (null)."
    ),
    "_name_or_path": lambda c: "Where transformers loaded this config from. Informational.",
    "gguf_general_name": lambda c: "The model name stored in the GGUF file's general.name. Informational.",
    "max_seq_len": lambda c: "Meta params.json runtime maximum sequence length. Informational.",
}


def _derived_rows(c: LlamaConfig) -> list[ExplanationRow]:
    p = c.parameter_breakdown()
    D, M, V, L, H, K, d = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    )
    bias_a = " + biases" if c.attention_bias else ""
    bias_m = " + biases" if c.mlp_bias else ""
    kv_token = c.kv_cache_bytes_per_token("bf16")
    T = min(1024, c.max_position_embeddings)
    rows = [
        ("head_dim", f"{d}", "d = hidden_size / num_attention_heads unless given explicitly."),
        ("gqa_group", f"{c.gqa_group}", f"G = H / K = {H} / {K} query heads per key/value head."),
        (
            "q_width / kv_width",
            f"{c.q_width:,} / {c.kv_width:,}",
            "H·d and K·d: widths of q_proj and k_proj/v_proj.",
        ),
        ("params.embedding", f"{p['embedding']:,}", f"V · D = {V:,} · {D:,}."),
        (
            "params.attention_per_layer",
            f"{p['attention_per_layer']:,}",
            f"q and o: 2 · D · H·d, k and v: 2 · D · K·d{bias_a}.",
        ),
        (
            "params.mlp_per_layer",
            f"{p['mlp_per_layer']:,}",
            f"gate, up, down: 3 · D · M = 3 · {D:,} · {M:,}{bias_m}.",
        ),
        ("params.norms_per_layer", f"{p['norms_per_layer']:,}", "ln1 and ln2 weights: 2 · D."),
        ("params.per_layer", f"{p['per_layer']:,}", "attention + MLP + norms."),
        ("params.all_layers", f"{p['all_layers']:,}", f"L · per layer = {L} · {p['per_layer']:,}."),
        ("params.final_norm", f"{p['final_norm']:,}", "ln_final weight: D."),
        (
            "params.unembedding",
            f"{p['unembedding']:,}",
            "0: tied to the embedding." if c.tie_word_embeddings else "V · D, a separate lm_head matrix.",
        ),
        ("num_parameters", f"{p['total']:,}", "embedding + all layers + final norm + unembedding."),
        (
            "weights_bytes(bf16)",
            format_bytes(c.weights_bytes("bf16"), digits=2, exact=True),
            "num_parameters · 2 bytes.",
        ),
        (
            "weights_bytes(float32)",
            format_bytes(c.weights_bytes("float32"), digits=2, exact=True),
            "num_parameters · 4 bytes.",
        ),
        (
            "kv_cache_bytes_per_token(bf16)",
            f"{kv_token:,} B",
            f"2 (K and V) · L · K · d · 2 bytes = 2 · {L} · {K} · {d} · 2"
            + (f"; {c.gqa_group}× less than without GQA." if c.gqa_group > 1 else "."),
        ),
        (
            f"kv_cache_bytes({c.max_position_embeddings}, bf16)",
            format_bytes(c.kv_cache_bytes(c.max_position_embeddings), digits=2, exact=True),
            "per token · max_position_embeddings, batch 1.",
        ),
        (
            f"flops_per_token({T})",
            f"{c.flops_per_token(T):,}",
            f"2 · {c.matmul_parameters():,} matmul weights (projections + unembedding) + attention "
            f"4 · L · T · H·d (q·k and pattern·v) for a token attending to T = {T} positions.",
        ),
        (
            f"attention_pattern_bytes({T}, bf16)",
            format_bytes(c.attention_pattern_bytes(T), digits=2, exact=True),
            f"every layer's [B, H, T, T] pattern: L · H · T² · 2 bytes, T = {T}, batch 1.",
        ),
        (
            f"activation_bytes({T}, bf16)",
            format_bytes(c.activation_bytes(T)["total"], digits=2, exact=True),
            "every hook of one forward (residuals, q/k/v, scores, patterns, MLP, logits), batch 1: "
            "capture selectively.",
        ),
    ]
    return [ExplanationRow(*row) for row in rows]
