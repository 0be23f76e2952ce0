"""Placing a model over several devices: GPUs, the CPU and disk, through Hugging Face ``accelerate``.

No placement code of our own: ``accelerate`` decides where each top-level module goes
(``infer_auto_device_map``, balanced over GPUs with ``get_balanced_memory`` as ``transformers`` does for
``device_map="auto"``), writes disk-offloaded weights in its own format (``offload_weight``) and moves
weights and activations at run time (``dispatch_model``'s ``AlignDevicesHook``). What this module adds:

- a ``Plan`` (which blocks go where, weight bytes per device, KV-cache bytes per token per device, what a
  full attention-pattern cache would cost) computed from the config alone, on the meta device, so
  ``llama3-lab plan`` can say where Llama 3 70B or 405B would go on hardware you do not have;
- a refusal with advice when the model does not fit;
- the rule that a block is never split (``no_split_module_classes=["Block"]``): every hook point of a layer
  lives on one device, so user hooks see the tensors of one device.

Devices are accelerate's: an int is a GPU index, ``"cpu"`` is host memory, ``"disk"`` is the offload
folder. A CPU- or disk-placed block *executes* on the main device (the first GPU, or the CPU when there
is none): its weights are brought there just before its forward.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .units import format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .config import LlamaConfig
    from .model import LlamaModel

Device = int | str
#: Fraction of each GPU that a plan from hardware sizes (``plan_from_hardware``, ``device_map="auto"``)
#: gives to weights; the rest (4 GB of an 80 GB GPU) stays free for the KV cache (Llama 3 70B: 2.5 GiB at
#: 8,192 tokens), activations and the CUDA context.
GPU_WEIGHT_FRACTION = 0.95
#: Modules that are never split over devices: a whole layer, with all its hook points, lives on one.
NO_SPLIT = ["Block"]


class PlacementError(ValueError):
    """A device map or memory budget that cannot hold the model; the message says what would."""


# --------------------------------------------------------------------------------------------------
# Sizes typed by people: "80GB", "24GiB", "2x80GB"

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in ``"80GB"`` (decimal, 80·10⁹, as GPU vendors count), ``"24GiB"`` (binary) or an int."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise PlacementError(f"cannot read the size {text!r}: write e.g. '80GB', '24GiB' or '512MB'.")
    number, prefix, binary = match.groups()
    power = "KMGT".find(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def parse_gpus(text: str) -> list[int]:
    """``"2x80GB"`` → two GPUs of 80 GB; ``"80GB,40GB"`` → one of each."""
    sizes: list[int] = []
    for part in str(text).split(","):
        count, _, size = part.strip().rpartition("x")
        if count and not count.strip().isdigit():
            raise PlacementError(f"cannot read {part!r}: write the GPUs as e.g. '2x80GB' or '80GB,40GB'.")
        sizes += [parse_size(size)] * (int(count) if count else 1)
    return sizes


# --------------------------------------------------------------------------------------------------
# The plan


def _device_name(device: Device) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


@dataclass
class Plan:
    """Where each top-level module of a model goes, and what each device then holds.

    ``device_map``: module name (``"embed"``, ``"blocks.12"``, ...) → accelerate device (GPU index,
    ``"cpu"``, ``"disk"``). ``module_bytes``: the weight bytes of each of those modules in ``dtype``.
    """

    cfg: LlamaConfig
    dtype: torch.dtype
    device_map: dict[str, Device]
    module_bytes: dict[str, int]
    budget: dict[Device, int] = field(default_factory=dict)

    @property
    def main_device(self) -> Device:
        """Where CPU- and disk-placed blocks execute: the first GPU of the map, else the CPU."""
        gpus = sorted(d for d in self.device_map.values() if isinstance(d, int))
        return gpus[0] if gpus else "cpu"

    @property
    def devices(self) -> list[Device]:
        """The devices used, GPUs first, then the CPU, then disk."""
        used = set(self.device_map.values())
        return sorted(d for d in used if isinstance(d, int)) + [d for d in ("cpu", "disk") if d in used]

    def layers_on(self, device: Device) -> list[int]:
        return [
            int(m.split(".")[1])
            for m, d in self.device_map.items()
            if d == device and m.startswith("blocks.")
        ]

    def execution_device(self, device: Device) -> Device:
        """Where a module placed on ``device`` computes: CPU and disk weights travel to the main device."""
        return self.main_device if device in ("cpu", "disk") else device

    def layer_device(self, layer: int) -> torch.device:
        """The torch device block ``layer`` computes on (and keeps its KV cache on)."""
        return torch_device(self.execution_device(self.device_map[f"blocks.{layer}"]))

    def weight_bytes(self) -> dict[Device, int]:
        """Weight bytes stored on each device (tied weights counted once, where accelerate keeps them)."""
        totals = dict.fromkeys(self.devices, 0)
        for module, device in self.device_map.items():
            totals[device] += self.module_bytes.get(module, 0)
        return totals

    def kv_bytes_per_token(self) -> dict[Device, int]:
        """KV-cache bytes per token (batch 1) on each execution device: its layers' keys and values."""
        per_layer = 2 * self.cfg.num_key_value_heads * self.cfg.head_dim * _element_size(self.dtype)
        totals: dict[Device, int] = {}
        for device in self.devices:
            where = self.execution_device(device)
            totals[where] = totals.get(where, 0) + per_layer * len(self.layers_on(device))
        return totals

    def pattern_cache_bytes(self, seq_len: int, batch: int = 1) -> dict[Device, int]:
        """Bytes of every attention pattern [B, H, T, T] of each device's layers at ``seq_len``."""
        per_layer = batch * self.cfg.num_attention_heads * seq_len * seq_len * _element_size(self.dtype)
        return {device: per_layer * len(self.layers_on(device)) for device in self.devices}

    def table(self, seq_len: int = 4096) -> str:
        """The plan as text: one row per device."""
        weights, kv, patterns = (
            self.weight_bytes(),
            self.kv_bytes_per_token(),
            self.pattern_cache_bytes(seq_len),
        )
        patterns_title = f"patterns@{seq_len}"
        header = f"{'device':<8} {'layers':<14} {'weights':>12} {'budget':>12} {'KV/token':>10} "
        header += f"{patterns_title:>16}"
        rows = [header]
        for device in self.devices:
            layers = self.layers_on(device)
            span = f"{layers[0]}-{layers[-1]} ({len(layers)})" if layers else "-"
            budget = format_bytes(self.budget[device]) if device in self.budget else "-"
            kv_here = format_bytes(kv[device]) if device in kv else "-"
            rows.append(
                f"{_device_name(device):<8} {span:<14} {format_bytes(weights[device]):>12} {budget:>12} "
                f"{kv_here:>10} {format_bytes(patterns[device]):>16}"
            )
        others = [m for m, d in self.device_map.items() if not m.startswith("blocks.")]
        rows.append(
            "non-layer modules: " + ", ".join(f"{m} → {_device_name(self.device_map[m])}" for m in others)
        )
        if any(d in ("cpu", "disk") for d in self.devices):
            rows.append(
                f"CPU- and disk-placed layers compute on {_device_name(self.main_device)}: their weights are "
                "copied there at every forward (each token of generation reads them again)."
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _module_bytes(model: torch.nn.Module, names: list[str]) -> dict[str, int]:
    seen: set[int] = set()
    sizes = {}
    for name in names:
        total = 0
        for param in model.get_submodule(name).parameters():
            if id(param) not in seen:  # a tied weight counts once, with the first module holding it
                seen.add(id(param))
                total += param.numel() * param.element_size()
        sizes[name] = total
    return sizes


def meta_model(cfg: LlamaConfig, dtype: torch.dtype) -> LlamaModel:
    """The model's module tree on the meta device, in ``dtype``: shapes and sizes without memory."""
    from .model import LlamaModel

    return LlamaModel(cfg, device="meta").to(dtype)


def plan_placement(
    cfg: LlamaConfig,
    max_memory: Mapping[Device, int | str],
    dtype: torch.dtype = torch.bfloat16,
    *,
    allow_disk: bool = True,
    model: torch.nn.Module | None = None,
) -> Plan:
    """Where ``cfg``'s model would go within ``max_memory`` (device → bytes or ``"80GB"``), by accelerate.

    Several GPUs are balanced as ``transformers``' ``device_map="auto"`` does; what does not fit the GPUs
    goes to ``"cpu"`` (if given) and then to ``"disk"`` (unless ``allow_disk=False``). Raises
    ``PlacementError`` with advice when nothing can hold it.
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    budget = {device: parse_size(size) for device, size in max_memory.items()}
    model = model if model is not None else meta_model(cfg, dtype)
    with warnings.catch_warnings(), _quiet_accelerate():
        warnings.simplefilter("ignore")  # "Device 0 is not available": planning for GPUs this host lacks
        if sum(isinstance(d, int) for d in budget) > 1:
            balanced = get_balanced_memory(model, dict(budget), no_split_module_classes=NO_SPLIT, dtype=dtype)
        else:
            balanced = dict(budget)
        device_map = dict(
            infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=NO_SPLIT, dtype=dtype)
        )
    plan = Plan(cfg, dtype, device_map, _module_bytes(model, list(device_map)), budget)
    if "disk" in device_map.values() and not allow_disk:
        need = sum(plan.module_bytes.values())
        given = ", ".join(f"{_device_name(d)} {format_bytes(b)}" for d, b in budget.items())
        have = sum(budget.values())
        raise PlacementError(
            f"the model's {format_bytes(need)} of {str(dtype).removeprefix('torch.')} weights do not fit "
            f"the {format_bytes(have)} given ({given}). "
            "Ways out: more or larger GPUs, a CPU budget (cpu='256GB'), disk offload (an offload_folder), or "
            "a smaller dtype."
        )
    return plan


class _quiet_accelerate:
    """Silence accelerate's logger while planning (it warns about every GPU this host does not have)."""

    def __enter__(self) -> None:
        import logging

        self._logger = logging.getLogger("accelerate")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self._logger.setLevel(self._level)


def plan_from_hardware(
    cfg: LlamaConfig,
    gpus: str | list[int] = (),
    cpu: str | int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    allow_disk: bool = False,
) -> Plan:
    """``plan_placement`` for hardware described as people write it: ``gpus="2x80GB"``, ``cpu="256GB"``.

    Each GPU gives ``GPU_WEIGHT_FRACTION`` (95%) of its memory to weights; the rest stays free for the KV
    cache and activations. The CPU size is taken as given.
    """
    sizes = parse_gpus(gpus) if isinstance(gpus, str) else list(gpus)
    budget: dict[Device, int] = {i: int(size * GPU_WEIGHT_FRACTION) for i, size in enumerate(sizes)}
    if cpu is not None:
        budget["cpu"] = parse_size(cpu)
    if not budget:
        raise PlacementError("give at least one device: gpus='2x80GB' and/or cpu='256GB'.")
    return plan_placement(cfg, budget, dtype, allow_disk=allow_disk)


# --------------------------------------------------------------------------------------------------
# What load_model was asked for, and dispatch: a filled model onto its devices


@dataclass(frozen=True)
class PlacementRequest:
    """``load_model``'s placement arguments: ``device_map`` (``"auto"`` or module → device), ``max_memory``
    (device → bytes or ``"80GB"``; default: what accelerate finds free) and ``offload_folder`` (needed for
    ``"disk"``)."""

    device_map: str | Mapping[str, Device]
    max_memory: Mapping[Device, int | str] | None = None
    offload_folder: str | Path | None = None

    def plan(
        self, cfg: LlamaConfig, dtype: torch.dtype, model: torch.nn.Module, progress: bool = True
    ) -> Plan:
        """The plan for ``model`` (built on the meta device), printed when ``progress``."""
        if isinstance(self.device_map, str):
            if self.device_map != "auto":
                raise PlacementError(
                    f"device_map={self.device_map!r}: give 'auto' or a dict of module → device "
                    "(e.g. {'embed': 0, 'blocks.0': 0, ..., 'blocks.31': 'cpu', 'unembed': 0, ...})."
                )
            if self.max_memory is None:
                from accelerate.utils import get_max_memory

                found = get_max_memory()  # free memory per device, as accelerate sees it
                max_memory: Mapping[Device, int | str] = {
                    d: int(b * GPU_WEIGHT_FRACTION) if isinstance(d, int) else b for d, b in found.items()
                }
            else:
                max_memory = self.max_memory
            plan = plan_placement(
                cfg, max_memory, dtype, allow_disk=self.offload_folder is not None, model=model
            )
        else:
            device_map = {name: _accelerate_device(device) for name, device in self.device_map.items()}
            plan = Plan(cfg, dtype, device_map, _module_bytes(model, list(device_map)))
            for parameter, _ in model.named_parameters():
                module_device(device_map, parameter)  # raises if a parameter is not covered
        if "disk" in plan.device_map.values() and self.offload_folder is None:
            raise PlacementError(
                f"the plan offloads blocks {plan.layers_on('disk')} to disk but no offload_folder was given: "
                "pass offload_folder='path/with/room' to load_model, or more memory (max_memory)."
            )
        misplaced = [m for m, d in plan.device_map.items() if d == "disk" and not m.startswith("blocks.")]
        if misplaced:
            raise PlacementError(
                f"{', '.join(misplaced)} would be offloaded to disk: only whole blocks go to disk (the "
                "embedding, final norm and unembedding are used at every step). Give the GPU or the CPU room "
                "for them (max_memory) or place them explicitly."
            )
        if progress:
            print(f"llama3-lab: placing the model ({str(dtype).removeprefix('torch.')}):\n{plan.table()}")
        return plan


def _accelerate_device(device: Device | torch.device) -> Device:
    """``"cuda:1"``/``torch.device`` → 1; ``"cpu"``/``"disk"`` as they are; anything else is refused."""
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    if str(device) in ("cpu", "disk"):
        return str(device)
    parsed = torch.device(device)
    if parsed.type == "cuda":
        return parsed.index or 0
    raise PlacementError(
        f"unknown device {device!r} in the device map: use a GPU index, 'cuda:N', 'cpu' or 'disk'."
    )


def module_device(device_map: Mapping[str, Device], parameter: str) -> Device:
    """The device of the module that holds ``parameter`` (longest matching module name in the map)."""
    best, device = -1, None
    for module, where in device_map.items():
        if (parameter == module or parameter.startswith(module + ".") or module == "") and len(module) > best:
            best, device = len(module), where
    if device is None:
        raise PlacementError(f"the device map places no module holding {parameter}: it must cover the model.")
    return device


def torch_device(device: Device) -> torch.device:
    """The torch device a module computes on for an accelerate device (disk-held weights live on the CPU)."""
    return torch.device("cuda", device) if isinstance(device, int) else torch.device("cpu")


def dispatch(
    model: LlamaModel,
    plan: Plan,
    offload_folder: str | Path | None,
    offload_index: dict[str, dict[str, str]] | None = None,
) -> LlamaModel:
    """Attach accelerate's hooks so every module computes on its device; records the plan on the model."""
    from accelerate import dispatch_model

    devices = set(plan.device_map.values())
    if "disk" in devices and offload_folder is None:
        raise PlacementError(
            "the device map offloads blocks to disk but no offload_folder was given: pass "
            "offload_folder='path/with/room' to load_model."
        )
    if len(devices) > 1:
        dispatch_model(
            model,
            plan.device_map,
            main_device=plan.main_device,
            offload_dir=str(offload_folder) if offload_folder is not None else None,
            offload_index=offload_index or None,
        )
    model.placement = plan
    return model
