"""llama.cpp's GGUF files: dequantize every tensor to float32 and map llama.cpp names to ours.

GGUF lists tensor shapes innermost first (``[in, out]``); ``gguf.quants.dequantize`` returns arrays
in PyTorch's ``(out, in)`` order. llama.cpp's converter stores ``attn_q``/``attn_k`` rows in Meta's
interleaved-pair RoPE layout; ``layouts.gguf_to_hf_qk`` undoes that (H query heads for q, K heads
for k). Nothing else is permuted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import LlamaConfig
from ..gguf_metadata import GGUFError, open_gguf
from .errors import LoadError
from .fill import fill_model
from .gguf_config import config_from_gguf

__all__ = ["dequantized_tensors", "load_gguf", "open_gguf", "our_name"]
from .layouts import gguf_to_hf_qk

# llama.cpp tensor name → ours; {l} is the layer.
_GGUF_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "ln_final.weight",
    "output.weight": "unembed.weight",
    "blk.{l}.attn_norm.weight": "blocks.{l}.ln1.weight",
    "blk.{l}.attn_q.weight": "blocks.{l}.attn.q_proj.weight",
    "blk.{l}.attn_k.weight": "blocks.{l}.attn.k_proj.weight",
    "blk.{l}.attn_v.weight": "blocks.{l}.attn.v_proj.weight",
    "blk.{l}.attn_output.weight": "blocks.{l}.attn.o_proj.weight",
    "blk.{l}.ffn_norm.weight": "blocks.{l}.ln2.weight",
    "blk.{l}.ffn_gate.weight": "blocks.{l}.mlp.gate_proj.weight",
    "blk.{l}.ffn_up.weight": "blocks.{l}.mlp.up_proj.weight",
    "blk.{l}.ffn_down.weight": "blocks.{l}.mlp.down_proj.weight",
}
_PATTERNS = [
    (re.compile(re.escape(g).replace(r"\{l\}", r"(?P<l>\d+)") + "$"), ours) for g, ours in _GGUF_NAMES.items()
]
#: Tensors that carry no weights of ours (Llama 3.1 GGUFs store the RoPE scaling as ``rope_freqs``,
#: which the config already describes).
_IGNORED = {"rope_freqs.weight"}


def our_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` → ``blocks.3.attn.q_proj.weight`` (None if unknown)."""
    for regex, template in _PATTERNS:
        match = regex.match(gguf_name)
        if match:
            return template.format(**match.groupdict())
    return None


def dequantized_tensors(
    reader: Any, cfg: LlamaConfig, source: str = "gguf"
) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(our name, float32 tensor in our layout, label ``source:gguf_name``) for each tensor of the file."""
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        if tensor.name in _IGNORED:
            continue
        label = f"{source}:{tensor.name}"
        name = our_name(tensor.name)
        try:
            array = dequantize(tensor.data, tensor.tensor_type)
        except Exception as e:
            raise LoadError(f"{label}: cannot dequantize {tensor.tensor_type.name} data: {e}") from e
        weight = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a writable copy
        if name is not None and name.endswith("attn.q_proj.weight"):
            weight = gguf_to_hf_qk(weight, cfg.num_attention_heads)
        elif name is not None and name.endswith("attn.k_proj.weight"):
            weight = gguf_to_hf_qk(weight, cfg.num_key_value_heads)
        yield (name or tensor.name), weight, label


def load_gguf(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    tokenizer: bool = True,
    placement: Any = None,
    allow_nonfinite: bool = False,
) -> Any:
    """A model from a GGUF file, dequantized to ``dtype`` (with the file's own tokenizer if ``tokenizer``)."""
    try:
        reader = open_gguf(path)
    except GGUFError as e:
        raise LoadError(str(e)) from e
    cfg = config_from_gguf(reader)
    tok = None
    if tokenizer and "tokenizer.ggml.tokens" in reader.fields:
        from ..tokenizer_gguf import GGUFByteBPETokenizer

        tok = GGUFByteBPETokenizer(reader)  # shares the open reader: the file is parsed once
    return fill_model(
        cfg,
        dequantized_tensors(reader, cfg, Path(path).name),
        device,
        dtype,
        source=str(path),
        progress=progress,
        tokenizer=tok,
        placement=placement,
        allow_nonfinite=allow_nonfinite,
    )
