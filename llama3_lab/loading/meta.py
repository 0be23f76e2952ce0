"""Meta's original checkpoints: ``params.json`` + ``consolidated.00.pth`` .. ``consolidated.NN.pth``.

Each shard holds one tensor-parallel slice. Column-parallel matrices (``wq``, ``wk``, ``wv``, ``w1``,
``w3``, ``output``) are split along their output rows (dim 0), row-parallel ones (``wo``, ``w2``) along
their input columns (dim 1); norms are replicated. ``tok_embeddings`` moved from dim 1 (Llama 2's
``ParallelEmbedding``) to dim 0 (Llama 3's ``VocabParallelEmbedding``), so its axis is read from the
shapes. Shards are opened with ``torch.load(weights_only=True, mmap=True)``: no pickled code runs and
nothing is read until a tensor is used. Then q/k rows go from Meta's interleaved-pair RoPE layout to
Hugging Face's (``layouts.meta_to_hf_qk``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import LlamaConfig
from .errors import LoadError
from .fill import fill_model
from .layouts import meta_to_hf_qk
from .meta_params import config_from_params_json

# Meta name → (ours, the axis shards are concatenated along; None = replicated).
_META_NAMES: dict[str, tuple[str, int | None]] = {
    "tok_embeddings.weight": ("embed.weight", -1),  # -1: read the axis from the shapes
    "norm.weight": ("ln_final.weight", None),
    "output.weight": ("unembed.weight", 0),
    "layers.{l}.attention_norm.weight": ("blocks.{l}.ln1.weight", None),
    "layers.{l}.attention.wq.weight": ("blocks.{l}.attn.q_proj.weight", 0),
    "layers.{l}.attention.wk.weight": ("blocks.{l}.attn.k_proj.weight", 0),
    "layers.{l}.attention.wv.weight": ("blocks.{l}.attn.v_proj.weight", 0),
    "layers.{l}.attention.wo.weight": ("blocks.{l}.attn.o_proj.weight", 1),
    "layers.{l}.ffn_norm.weight": ("blocks.{l}.ln2.weight", None),
    "layers.{l}.feed_forward.w1.weight": ("blocks.{l}.mlp.gate_proj.weight", 0),
    "layers.{l}.feed_forward.w3.weight": ("blocks.{l}.mlp.up_proj.weight", 0),
    "layers.{l}.feed_forward.w2.weight": ("blocks.{l}.mlp.down_proj.weight", 1),
}
_PATTERNS = [
    (re.compile(re.escape(m).replace(r"\{l\}", r"(?P<l>\d+)") + "$"), ours, axis)
    for m, (ours, axis) in _META_NAMES.items()
]
_IGNORED = {"rope.freqs"}  # Llama 2 checkpoints keep a copy of the RoPE frequencies


def our_name_and_axis(meta_name: str) -> tuple[str, int | None] | None:
    """``layers.3.attention.wq.weight`` → (``blocks.3.attn.q_proj.weight``, 0)."""
    for regex, template, axis in _PATTERNS:
        match = regex.match(meta_name)
        if match:
            return template.format(**match.groupdict()), axis
    return None


def shard_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("consolidated.*.pth"))
    if not files:
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"{directory} has params.json but no consolidated.NN.pth shards (found: {found}). A Meta "
            "checkpoint directory holds params.json, consolidated.00.pth .. and tokenizer.model."
        )
    return files


def meta_config(directory: Path, files: list[Path] | None = None) -> LlamaConfig:
    """The config of a Meta checkpoint: ``params.json``, with the tying read from the shards.

    params.json does not say whether the output matrix is tied; the checkpoint does: tied exactly when
    its shards hold no ``output.weight`` (opening a shard reads only its index: it is memory-mapped).
    A params.json without shards (``load_config`` on a bare file) leaves the tying to a guess that warns.
    """
    files = sorted(directory.glob("consolidated.*.pth")) if files is None else files
    tied = "output.weight" not in _open_shard(files[0]) if files else None
    return config_from_params_json(directory / "params.json", tie_word_embeddings=tied)


def _open_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise LoadError(
            f"{path} could not be read as a PyTorch checkpoint of tensors (truncated, corrupt, or holding "
            f"objects other than tensors, which are never unpickled here): {e}"
        ) from e


def _merge(
    name: str, pieces: list[torch.Tensor], axis: int | None, full: tuple[int, ...], label: str
) -> torch.Tensor:
    if len(pieces) == 1 or axis is None:
        return pieces[0]
    if axis == -1:  # find the one axis along which the shards are slices
        axes = [a for a in range(len(full)) if pieces[0].shape[a] != full[a]]
        if len(axes) != 1:
            raise LoadError(
                f"{label}: shards of shape {list(pieces[0].shape)} do not tile {name} {list(full)} "
                "along one axis."
            )
        axis = axes[0]
    return torch.cat(pieces, dim=axis)


def meta_tensors(
    files: list[Path], cfg: LlamaConfig, shapes: dict[str, tuple[int, ...]]
) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(our name, merged tensor in the HF layout, label), one tensor at a time across all shards."""
    shards = [_open_shard(f) for f in files]
    names = list(shards[0])
    for i, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            odd = sorted(set(shard) ^ set(names))[:5]
            raise LoadError(
                f"{files[i]} and {files[0]} hold different tensors (e.g. {odd}): mixed checkpoints?"
            )
    for meta_name in names:
        if meta_name in _IGNORED:
            continue
        label = f"{files[0].parent.name}/consolidated.*.pth:{meta_name}"
        mapped = our_name_and_axis(meta_name)
        if mapped is None:
            yield meta_name, shards[0][meta_name], label
            continue
        name, axis = mapped
        pieces = [shard[meta_name] for shard in shards]
        full = shapes.get(name, tuple(pieces[0].shape))
        weight = _merge(name, pieces, axis, full, label)
        if name.endswith("attn.q_proj.weight"):
            weight = meta_to_hf_qk(weight, cfg.num_attention_heads)
        elif name.endswith("attn.k_proj.weight"):
            weight = meta_to_hf_qk(weight, cfg.num_key_value_heads)
        yield name, weight, label


def load_meta_dir(
    directory: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    placement: Any = None,
    allow_nonfinite: bool = False,
) -> Any:
    """A model from a Meta checkpoint directory (with the tokenizer from ``tokenizer.model`` if present)."""
    from ..model import LlamaModel

    directory = Path(directory)
    files = shard_files(directory)
    cfg = meta_config(directory, files)
    shapes = {name: tuple(p.shape) for name, p in LlamaModel(cfg, device="meta").named_parameters()}
    tokenizer = None
    if (directory / "tokenizer.model").is_file():
        from ..tokenizer import load_tokenizer

        tokenizer = load_tokenizer(directory / "tokenizer.model")
    return fill_model(
        cfg,
        meta_tensors(files, cfg, shapes),
        device,
        dtype,
        source=str(directory),
        progress=progress,
        tokenizer=tokenizer,
        placement=placement,
        allow_nonfinite=allow_nonfinite,
    )
