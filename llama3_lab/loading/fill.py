"""Fill a model built on the meta device tensor by tensor: peak memory stays near one copy of the weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import LlamaConfig
from .errors import LoadError


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


def fill_model(
    cfg: LlamaConfig,
    tensors: Iterable[tuple[str, torch.Tensor, str]],
    device: torch.device,
    dtype: torch.dtype,
    source: str,
    progress: bool = True,
    tokenizer: Any = None,
) -> Any:
    """A ``LlamaModel`` for ``cfg`` whose parameters are the given ``(our name, tensor, label)`` triples.

    Each tensor is converted to ``dtype`` on ``device`` as it arrives and becomes the parameter, so no
    randomly initialised copy ever exists. ``label`` (file and original name) goes into every error.
    Missing, unexpected and misshapen tensors are reported together.
    """
    from ..model import LlamaModel, matvec_layout

    model = LlamaModel(cfg, tokenizer=tokenizer, device="meta")
    expected = dict(model.named_parameters())  # tied weights appear once, as embed.weight
    loaded: set[str] = set()
    unexpected: list[str] = []
    bar = _progress(len(expected), progress, f"loading {source}")
    try:
        for name, tensor, label in tensors:
            if name not in expected:
                if not (name == "unembed.weight" and cfg.tie_word_embeddings):  # a tied copy some files keep
                    unexpected.append(label)
                continue
            want = tuple(expected[name].shape)
            if tuple(tensor.shape) != want:
                raise LoadError(
                    f"{label}: shape {list(tensor.shape)} does not match {name} {list(want)} "
                    f"expected from the config ({source}). Does the config belong to these weights?"
                )
            module_name, _, leaf = name.rpartition(".")
            value = matvec_layout(tensor.to(device=device, dtype=dtype))
            setattr(model.get_submodule(module_name), leaf, nn.Parameter(value, requires_grad=False))
            loaded.add(name)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    missing = [name for name in expected if name not in loaded]
    if missing or unexpected:
        parts = []
        if missing:
            more = " ..." if len(missing) > 8 else ""
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}{more}")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:8])}"
                f"{' ...' if len(unexpected) > 8 else ''}"
            )
        raise LoadError(
            f"{source}: the weights do not match the config ({'; '.join(parts)}). Check that the config and "
            "the weight files belong to the same model and that no shard is missing."
        )
    model.rope.to_empty(device=device)  # rebuilds the float32 RoPE table on the device
    model.tie_weights()
    return model.eval()
