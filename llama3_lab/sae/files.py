"""SAEs on disk in the layout SAELens writes: a directory with ``cfg.json`` and ``sae_weights.safetensors``.

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_out]   b_dec [d_out]   threshold [d_sae] (JumpReLU)

``d_out`` is ``d_in`` for an SAE. A TopK SAE's ``k`` is in ``cfg.json``; an ``expected_average_only_in`` SAE's
scaling factor is read from ``norm_scaling_factor`` in ``cfg.json`` or SAELens's ``activation_scaler.json``.
Every tensor is checked by name and shape before anything is built; files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..assets import atomic_path, write_atomic
from .config import SAEConfig, SAEConfigError
from .sae import SAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SCALER_FILENAME = "activation_scaler.json"  # SAELens's home of the dataset norm scaling factor


class SAELoadError(ValueError):
    """An SAE directory that cannot be read as written; the message names the file or tensor."""


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor an SAE with ``cfg`` has."""
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.output_size),
        "b_dec": (cfg.output_size,),
    }
    if cfg.activation == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


def load_sae(directory: str | Path, device: torch.device | str | None = "cpu", **overrides: Any) -> SAE:
    """The SAE (or transcoder) saved in ``directory`` (SAELens layout). ``overrides`` replace ``cfg.json``
    fields (e.g. ``hook_name=...``, ``norm_scaling_factor=...``, ``dtype="float64"``)."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILENAME, directory / WEIGHTS_FILENAME
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory: an SAE is a directory with {CFG_FILENAME} and "
            f"{WEIGHTS_FILENAME} (the layout SAELens's save_model writes)."
        )
    for path in (cfg_path, weights_path):
        if not path.is_file():
            found = sorted(p.name for p in directory.iterdir()) or ["nothing"]
            raise FileNotFoundError(
                f"{directory} has no {path.name}; an SAE directory holds {CFG_FILENAME} and "
                f"{WEIGHTS_FILENAME}. "
                f"Found: {', '.join(found)}. Save it again with save_sae or SAELens's save_model."
            )
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SAEConfigError(f"{cfg_path} is not valid JSON ({error}); write the config again.") from None
    scaler = directory / SCALER_FILENAME
    if "norm_scaling_factor" not in data and "norm_scaling_factor" not in overrides and scaler.is_file():
        overrides["norm_scaling_factor"] = float(json.loads(scaler.read_text())["scaling_factor"])
    cfg = SAEConfig.from_dict(data, **overrides)
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise SAELoadError(
            f"{weights_path} is not a readable safetensors file ({error}); it may be truncated. "
            "Copy or save it again."
        ) from None
    _check_tensors(tensors, cfg, weights_path)
    sae = SAE(cfg, device="meta")
    sae.load_state_dict(
        {name: tensor.to(cfg.torch_dtype) for name, tensor in tensors.items() if name in sae.state_dict()},
        assign=True,
    )
    sae.requires_grad_(False)  # like a loaded model: forwards build no graph unless an input asks
    return sae.to(device) if device is not None else sae


def _check_tensors(tensors: dict[str, torch.Tensor], cfg: SAEConfig, path: Path) -> None:
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise SAELoadError(
            f"{path.name} has no {', '.join(missing)}; a {cfg.architecture} SAE needs {', '.join(expected)}. "
            f"Found: {', '.join(sorted(tensors))}. Check the architecture in {CFG_FILENAME}."
        )
    for name, shape in expected.items():
        found = tuple(tensors[name].shape)
        if found != shape:
            raise SAELoadError(
                f"{path.name}: {name} has shape {list(found)}, but {CFG_FILENAME} (d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}{f', d_out={cfg.d_out}' if cfg.is_transcoder else ''}) says "
                f"{list(shape)}. "
                f"Check d_in/d_sae in {CFG_FILENAME}: SAELens stores W_enc as [d_in, d_sae] and W_dec as "
                "[d_sae, d_in] (transpose a [d_sae, d_in] W_enc)."
            )


def save_sae(sae: SAE, directory: str | Path) -> Path:
    """Write ``sae`` to ``directory`` as ``cfg.json`` + ``sae_weights.safetensors`` (SAELens layout)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().cpu().contiguous() for name, p in sae.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILENAME) as tmp:
        save_file(tensors, str(tmp))
    write_atomic(directory / CFG_FILENAME, json.dumps(sae.cfg.to_dict(), indent=2).encode())
    return directory
