"""``load_model`` and ``load_config``: one entry point for every format, each format in its own file.

- a name: ``"smollm2-135m-instruct"`` (the embedded model: its GGUF is fetched, dequantized and
  converted once into a cached Hugging Face directory, which later loads read directly);
- a Hugging Face directory (``config.json`` + ``model.safetensors`` or shards with an index): ``hf.py``;
- a Meta directory (``params.json`` + ``consolidated.NN.pth``): ``meta.py``, its config ``meta_params.py``;
- a ``.gguf`` file: ``gguf.py``, its config ``gguf_config.py`` (metadata read by ``gguf_metadata``).

:func:`find_checkpoint` tells them apart, for both loaders. Every weight loader builds the model on the
meta device and fills it tensor by tensor (``fill.py``), so peak memory stays near one copy of the weights.
Layout permutations live in ``layouts.py``. Importing this package imports no torch: each format's
module is imported when it is used.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from ..config import ConfigNotFoundError, LlamaConfig, is_meta_params, read_json
from .converted import NAMED_MODELS, converted_model_dir, repair
from .errors import ChecksumError, LoadError

if TYPE_CHECKING:
    import torch

    from ..model import LlamaModel

__all__ = [
    "ChecksumError",
    "LoadError",
    "load_model",
    "load_config",
    "find_checkpoint",
    "converted_model_dir",
    "repair",
    "NAMED_MODELS",
]
LLAMA3_VOCAB_SIZE = 128256


class Checkpoint(NamedTuple):
    """What a name or path holds: ``format`` and where (a directory, a .gguf file, or the model's name)."""

    format: Literal["named", "hf", "meta", "gguf"]
    path: Path | str


def find_checkpoint(name_or_path: str | Path) -> Checkpoint:
    """Which format ``name_or_path`` is: a named model, a Hugging Face or Meta directory, or a GGUF file.

    A ``config.json``, ``params.json`` or ``model.safetensors`` file stands for its directory. Raises
    :class:`~llama3_lab.config.ConfigNotFoundError` (a ``FileNotFoundError``) saying what was expected.
    """
    if isinstance(name_or_path, str) and name_or_path in NAMED_MODELS:
        return Checkpoint("named", name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and (path.suffix == ".gguf" or _has_gguf_magic(path)):
        return Checkpoint("gguf", path)
    if path.is_file() and path.name in ("config.json", "params.json", "model.safetensors"):
        path = path.parent
    if path.is_dir():
        if (path / "config.json").is_file():
            return Checkpoint("hf", path)
        if (path / "params.json").is_file():
            return Checkpoint("meta", path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Checkpoint("gguf", ggufs[0])
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        found = f"{len(ggufs)} .gguf files (pass one of them)" if ggufs else found
        raise ConfigNotFoundError(
            f"{path} is not a model directory: found {found}; expected config.json, params.json or one .gguf "
            "file (Hugging Face: config.json + model.safetensors; Meta: params.json + consolidated.00.pth)."
        )
    if path.is_file():
        raise ConfigNotFoundError(
            f"Cannot tell the format of {path}: not a config.json, params.json or model.safetensors, and no "
            "GGUF magic. Pass a Hugging Face or Meta checkpoint directory, its config.json or params.json, "
            "or a .gguf file."
        )
    known = ", ".join(repr(n) for n in NAMED_MODELS)
    raise ConfigNotFoundError(
        f"{str(name_or_path)!r} does not exist: it is neither a known model name ({known}) nor an existing "
        "file or directory. Pass a Hugging Face or Meta checkpoint directory, or a .gguf file."
    )


def _has_gguf_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def load_config(name_or_path: str | Path) -> LlamaConfig:
    """The config of what ``name_or_path`` holds, without loading weights (``LlamaConfig.from_pretrained``).

    Everything :func:`load_model` accepts, and any ``.json`` file (Hugging Face or Meta format, told apart
    by its keys).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        d = read_json(path)
        if is_meta_params(d):
            from .meta_params import config_from_params

            return config_from_params(d)
        return LlamaConfig.from_dict(d)
    checkpoint = find_checkpoint(name_or_path)
    if checkpoint.format == "hf":
        return LlamaConfig.from_json(checkpoint.path / "config.json")
    if checkpoint.format == "meta":
        from .meta import meta_config

        return meta_config(checkpoint.path)
    from .gguf_config import config_from_gguf

    if checkpoint.format == "named":
        from ..assets import asset_path

        return config_from_gguf(asset_path(NAMED_MODELS[checkpoint.path][0]))
    return config_from_gguf(checkpoint.path)


def load_model(
    name_or_path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    *,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    allow_nonfinite: bool = False,
) -> LlamaModel:
    """Load a Llama model with its tokenizer (``model.tokenizer``).

    ``device`` defaults to CUDA when available, else CPU; ``dtype`` to bfloat16 on CUDA and float32 on
    CPU. Parameters are frozen (``requires_grad=False``). Pickled ``.bin`` weights are never executed.

    A model larger than one device: ``device_map="auto"`` (accelerate places whole blocks on the GPUs,
    then the CPU, then disk, within ``max_memory``, e.g. ``{0: "70GB", 1: "70GB", "cpu": "200GB"}``) or an
    explicit ``{module: device}`` map (``"embed"``, ``"blocks.N"``, ``"ln_final"``, ``"unembed"``, ``"rope"``,
    ``"hook_embed"``; devices a GPU index, ``"cpu"`` or ``"disk"``). Disk needs ``offload_folder``. The plan
    is printed (``progress``) and kept as ``model.placement``; weights are streamed in once. See
    ``llama3_lab.placement``.

    Every tensor is checked as it arrives: an integer or bool tensor where a float weight belongs, or one
    holding NaN or ±inf, raises :class:`LoadError` naming the tensor and the file. To study a broken
    checkpoint on purpose, ``allow_nonfinite=True`` loads NaN/inf weights as they are. The embedded
    model's converted files are verified by their sha256 as they are read (:class:`ChecksumError`;
    ``llama3-lab fetch --repair`` rebuilds them).
    """
    import torch

    from ..model import default_device, default_dtype

    device = torch.device(device) if device is not None else default_device()
    dtype = _weight_dtype(dtype) or default_dtype(device)
    placement = None
    if device_map is not None:
        from ..placement import PlacementRequest

        placement = PlacementRequest(device_map, max_memory, offload_folder)
    elif max_memory is not None or offload_folder is not None:
        raise ValueError("max_memory and offload_folder place a model over devices: pass device_map too.")

    checkpoint = find_checkpoint(name_or_path)
    options = dict(progress=progress, placement=placement, allow_nonfinite=allow_nonfinite)
    if checkpoint.format == "named":
        from .converted import converted_model
        from .hf import load_hf_dir

        directory, sha256 = converted_model(checkpoint.path, progress=progress)
        model = load_hf_dir(directory, device, dtype, sha256=sha256, **options)
        model.set_tokenizer_loader(_named_tokenizer(NAMED_MODELS[checkpoint.path][1]))
        return model
    if checkpoint.format == "gguf":
        from .gguf import load_gguf

        return load_gguf(checkpoint.path, device, dtype, **options)
    if checkpoint.format == "hf":
        from .hf import load_hf_dir

        model = load_hf_dir(checkpoint.path, device, dtype, **options)
        _attach_hf_tokenizer(model, checkpoint.path)
        return model
    from .meta import load_meta_dir

    return load_meta_dir(checkpoint.path, device, dtype, **options)


#: The dtypes weights can be loaded in (the forward computes in them).
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _weight_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``load_model``'s ``dtype`` argument as a torch dtype; anything but a float weight dtype is refused
    (``torch.int32`` would truncate every weight to an integer, most of them to 0)."""
    import torch

    if dtype is None:
        return None
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or str(resolved).removeprefix("torch.") not in WEIGHT_DTYPES:
        allowed = ", ".join(f"torch.{name}" for name in WEIGHT_DTYPES)
        raise ValueError(
            f"load_model(dtype={dtype!r}): weights must be stored in a floating-point dtype, one of "
            f"{allowed} (or their names, e.g. 'bfloat16'); pass one of those, or None for the default "
            "(bfloat16 on CUDA, float32 on CPU)."
        )
    return resolved


def _named_tokenizer(name: str):  # noqa: ANN202 - a zero-argument loader
    def load():  # noqa: ANN202
        from ..tokenizer import load_tokenizer

        return load_tokenizer(name)

    return load


def _attach_hf_tokenizer(model: LlamaModel, directory: Path) -> None:
    """A ``tokenizer.model`` beside the weights, else the fetched Llama 3 one if the vocab is Llama 3's."""
    for candidate in (directory / "original" / "tokenizer.model", directory / "tokenizer.model"):
        if candidate.is_file():

            def load(path: Path = candidate):  # noqa: ANN202
                from ..tokenizer import load_tokenizer

                return load_tokenizer(path)

            model.set_tokenizer_loader(load)
            return
    if model.cfg.vocab_size == LLAMA3_VOCAB_SIZE:
        model.set_tokenizer_loader(_named_tokenizer("llama3"))
        return
    warnings.warn(
        f"{directory} has no tokenizer.model and its vocabulary ({model.cfg.vocab_size}) is not Llama 3's: "
        "model.tokenizer is None; set it with model.tokenizer = load_tokenizer(...).",
        stacklevel=3,
    )
