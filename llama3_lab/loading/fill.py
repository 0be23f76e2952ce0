"""Fill a model built on the meta device tensor by tensor: peak memory stays near one copy of the weights."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..assets import atomic_path, write_atomic
from ..config import LlamaConfig
from .errors import LoadError

if TYPE_CHECKING:  # pragma: no cover
    from ..placement import PlacementRequest


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
    placement: PlacementRequest | None = None,
    allow_nonfinite: bool = False,
) -> Any:
    """A ``LlamaModel`` for ``cfg`` whose parameters are the given ``(our name, tensor, label)`` triples.

    Each tensor is converted to ``dtype`` on ``device`` as it arrives and becomes the parameter, so no
    randomly initialised copy ever exists. ``label`` (file and original name) goes into every error.
    Missing, unexpected and misshapen tensors are reported together. Every format's tensors pass here,
    so here is where each is refused when it is not a floating-point tensor (an integer or bool tensor
    would be cast to float without a word) or holds NaN or ±inf (one NaN weight turns every logit NaN:
    ``generate`` would return '' as if it had met a stop token), unless ``allow_nonfinite``.

    ``placement`` (a ``placement.PlacementRequest``: a device map or ``"auto"``, memory budgets, an offload
    folder) puts each tensor on its module's device instead of ``device``; tensors of disk-placed modules
    are written once into the offload folder (accelerate's format) and never held in memory. The model
    is then dispatched: accelerate's hooks move weights and activations at run time.
    """
    from ..model import LlamaModel, matvec_layout
    from ..placement import module_device, torch_device

    offload_index: dict[str, Any] = {}

    model = LlamaModel(cfg, tokenizer=tokenizer, device="meta")
    plan = placement.plan(cfg, dtype, model, progress=progress) if placement is not None else None
    offload_folder = placement.offload_folder if placement is not None else None
    if plan is not None and "disk" in plan.device_map.values():
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
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
            check_weight(tensor, name, label, allow_nonfinite)
            module_name, _, leaf = name.rpartition(".")
            where = module_device(plan.device_map, name) if plan is not None else None
            if where == "disk":
                offload_index[name] = _offload(tensor.to(dtype), name, Path(offload_folder))
                value = torch.empty(want, dtype=dtype, device="meta")
            else:
                target = torch_device(where) if where is not None else device
                value = matvec_layout(tensor.to(device=target, dtype=dtype))
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
    if plan is None:
        model.rope.to_empty(device=device)  # rebuilds the float32 RoPE table on the device
        model.tie_weights()
        return model.eval()
    from ..placement import dispatch

    if offload_index:
        write_atomic(Path(offload_folder) / "index.json", json.dumps(offload_index, indent=1).encode())
    rope_device = plan.execution_device(module_device(plan.device_map, "rope.inv_freq"))
    model.rope.to_empty(device=torch_device(rope_device))
    model.tie_weights()
    return dispatch(model.eval(), plan, offload_folder, offload_index)


def check_weight(tensor: torch.Tensor, name: str, label: str, allow_nonfinite: bool = False) -> None:
    """Refuse a tensor that cannot be the float weight ``name``: an integer/bool dtype, or NaN/±inf values."""
    if not tensor.dtype.is_floating_point:
        raise LoadError(
            f"{label}: dtype {str(tensor.dtype).removeprefix('torch.')} where the floating-point weight "
            f"{name} belongs; casting it to float would silently change the model. This checkpoint stores "
            "integers (a quantized or mislabelled file?): load a floating-point (bf16/fp16/fp32) copy, or "
            "dequantize it first."
        )
    if allow_nonfinite or _all_finite(tensor):
        return
    bad = ~torch.isfinite(tensor)
    first = [int(i) for i in bad.nonzero()[0]]
    raise LoadError(
        f"{label}: {int(bad.sum()):,} of {tensor.numel():,} values of {name} are NaN or infinite (the first, "
        f"{float(tensor[tuple(first)])}, at index {first}); such a weight makes every later activation NaN. "
        "The file is broken or corrupt: download or copy it again (for the embedded model, `llama3-lab "
        "fetch --repair` rebuilds it); to study a broken checkpoint on purpose, pass "
        "load_model(..., allow_nonfinite=True)."
    )


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite: ``np.isfinite(a).all()`` on CPU (one SIMD pass, ~10 ms per 100 MB,
    single-threaded: torch's parallel reductions wait on busy cores), else one torch reduction."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float16, torch.float32, torch.float64):
        return bool(np.isfinite(tensor.detach().numpy()).all())
    # bfloat16 (numpy has none) and other devices: NaN and ±inf survive a sum, which accumulates bf16 in
    # float32 (same range, no overflow); only a sum that is not finite needs the exact element test.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _offload(tensor: torch.Tensor, name: str, folder: Path) -> dict[str, str]:
    """Write one disk-placed tensor to ``folder/name.safetensors``; its entry in accelerate's offload index.

    One small safetensors file per tensor (not accelerate's ``.dat`` memmaps, whose reads keep copies
    resident): accelerate's ``OffloadedWeightsLoader`` reads these with ``safe_open`` at each forward.
    """
    from safetensors.torch import save_file

    path = folder / f"{name}.safetensors"
    with atomic_path(path) as tmp:
        save_file({name: tensor.contiguous()}, str(tmp))
    return {
        "safetensors_file": str(path),
        "weight_name": name,
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }
