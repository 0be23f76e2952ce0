"""Hugging Face layout: ``config.json`` + ``model.safetensors`` (or shards with an index).

Our parameter names are the module tree's (``blocks.3.attn.q_proj.weight``); the Hugging Face names
(``model.layers.3.self_attn.q_proj.weight``) map one to one, and the q/k rows are already in the
rotate_half layout this model uses, so nothing is permuted here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from safetensors.torch import save_file

from ..assets import atomic_path
from ..config import LlamaConfig
from .errors import ChecksumError, LoadError
from .fill import fill_model

if TYPE_CHECKING:
    from ..model import LlamaModel

# (our name pattern, Hugging Face name pattern); {l} is the layer, {p} the projection, {b} weight/bias.
_NAME_MAP = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("blocks.{l}.attn.{p}.{b}", "model.layers.{l}.self_attn.{p}.{b}"),
    ("blocks.{l}.mlp.{p}.{b}", "model.layers.{l}.mlp.{p}.{b}"),
    ("blocks.{l}.ln1.weight", "model.layers.{l}.input_layernorm.weight"),
    ("blocks.{l}.ln2.weight", "model.layers.{l}.post_attention_layernorm.weight"),
    ("ln_final.weight", "model.norm.weight"),
    ("unembed.weight", "lm_head.weight"),
]


def _regex(pattern: str) -> re.Pattern[str]:
    escaped = re.escape(pattern).replace(r"\{l\}", r"(?P<l>\d+)")
    escaped = escaped.replace(r"\{p\}", r"(?P<p>\w+_proj)").replace(r"\{b\}", r"(?P<b>weight|bias)")
    return re.compile(escaped + "$")


_OURS_TO_HF = [(_regex(ours), hf) for ours, hf in _NAME_MAP]
_HF_TO_OURS = [(_regex(hf), ours) for ours, hf in _NAME_MAP]


def _translate(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for regex, template in table:
        match = regex.match(name)
        if match:
            return template.format(**match.groupdict())
    return None


def hf_name(ours: str) -> str:
    """``blocks.3.attn.q_proj.weight`` → ``model.layers.3.self_attn.q_proj.weight``."""
    name = _translate(ours, _OURS_TO_HF)
    if name is None:
        raise KeyError(f"no Hugging Face name for parameter {ours!r}.")
    return name


def our_name(hf: str) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` → ``blocks.3.attn.q_proj.weight`` (None if unknown)."""
    return _translate(hf, _HF_TO_OURS)


# -------------------------------------------------------------------------------------------- saving


def hf_config_dict(cfg: LlamaConfig, dtype: torch.dtype | None = None) -> dict:
    """The ``config.json`` transformers reads for this config."""
    d = cfg.to_dict()
    d.setdefault("architectures", ["LlamaForCausalLM"])
    d["model_type"] = "llama"
    if dtype is not None:
        d["torch_dtype"] = str(dtype).removeprefix("torch.")
    return d


def _atomic_write(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path) -> None
    with atomic_path(path) as tmp:
        write(tmp)


def save_hf(model: LlamaModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (Hugging Face names; no ``lm_head`` when tied).

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
    """
    directory = Path(directory)
    tensors = {}
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        tensors[hf_name(name)] = param.detach().contiguous().cpu()
    _atomic_write(
        directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
    config = json.dumps(hf_config_dict(model.cfg, model.dtype), indent=2)
    _atomic_write(directory / "config.json", lambda p: p.write_text(config))
    return directory


# ------------------------------------------------------------------------------------------- loading


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of an HF directory: one ``model.safetensors`` or the shards its index lists."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise LoadError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
        files = [directory / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise LoadError(f"{index} lists shards that are not in the directory: {', '.join(missing)}.")
        return files
    found = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(
        f"{directory} has no model.safetensors or model.safetensors.index.json "
        f"(found: {', '.join(found) or 'nothing'}). A Hugging Face model directory needs config.json and "
        "safetensors weights (.bin pickles are not loaded: they can run code)."
    )


#: What to do about a weight file that cannot be read (said by every such error).
_REFETCH = (
    "Download or copy the file again (compare its size and sha256 with the source's); for the embedded "
    "model, `llama3-lab fetch --repair` rebuilds it."
)

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_header(file: Path, f: BinaryIO, digest: _BackgroundHash | None = None) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where tensor data starts.

    ``digest`` (a ``hashlib`` object), when given, is fed the bytes read.
    """
    size = file.stat().st_size
    prefix = f.read(8)
    header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if header_len < 2 or 8 + header_len > size:
        raise LoadError(
            f"{file} is not a readable safetensors file (truncated or corrupt?): bad header length. "
            + _REFETCH
        )
    raw = f.read(header_len)
    if digest is not None:
        digest.update(prefix)
        digest.update(raw)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(
            f"{file} is not a readable safetensors file (truncated or corrupt?): {e}. {_REFETCH}"
        ) from e
    header.pop("__metadata__", None)
    return header, 8 + header_len


class _BackgroundHash:
    """sha256 of the byte strings given to :meth:`update`, computed on a worker thread while the caller
    goes on (hashlib releases the GIL): the loader converts one tensor while the previous is hashed.
    At most ``depth`` buffers wait, so the pending bytes never grow into another copy of the weights."""

    def __init__(self, depth: int = 2) -> None:
        self.digest = hashlib.sha256()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self.pending: deque[Future] = deque()
        self.depth = depth

    def update(self, data: bytes | bytearray) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self.digest.update, data))

    def hexdigest(self) -> str:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()
        return self.digest.hexdigest()


def iter_safetensors(
    files: list[Path], sha256: dict[str, str] | None = None
) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """(name, tensor, file) for every tensor, read one at a time with plain reads.

    Plain reads rather than a memory map: the caller converts each tensor (dtype, device, layout) and
    drops it, so at most one file tensor is alive beside the model, and the file's pages never count
    as the process's memory.

    ``sha256`` maps file names to the digest they must have (recorded when the file was written, e.g.
    by the conversion of an embedded model): those files are hashed as they are read, every byte once,
    on a worker thread, and a file whose digest differs raises :class:`ChecksumError` after its last
    tensor, before the model can be used.
    """
    for file in files:
        expected = (sha256 or {}).get(file.name)
        digest = _BackgroundHash() if expected is not None else None
        try:
            yield from _read_safetensors(file, digest)
        finally:
            found = digest.hexdigest() if digest is not None else None
        if found != expected:
            raise ChecksumError(
                f"{file} has sha256 {found} where {expected} was recorded when it was written: its bytes "
                f"changed since (corrupted on disk or edited), so its weights cannot be trusted. {_REFETCH}"
            )


def _read_safetensors(file: Path, digest: _BackgroundHash | None) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """The tensors of one file in the order of their bytes; ``digest``, if given, is fed every byte."""
    with open(file, "rb") as f:
        header, data_start = _safetensors_header(file, f, digest)
        size = file.stat().st_size
        position = data_start  # where the next read starts: gaps between tensors are hashed too
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise LoadError(
                    f"{file.name}:{name} has dtype {info['dtype']}, which llama3-lab does not read."
                )
            shape = tuple(info["shape"])
            expected_bytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != expected_bytes or data_start + end > size:
                raise LoadError(
                    f"{file} is truncated or corrupt: tensor {name} needs bytes {begin}..{end} of the "
                    f"data ({expected_bytes} for {info['dtype']} {list(shape)}); the file holds "
                    f"{size - data_start}. {_REFETCH}"
                )
            if digest is not None and data_start + begin > position:
                digest.update(f.read(data_start + begin - position))
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)
            f.readinto(buffer)
            position = data_start + end
            if digest is not None:
                digest.update(buffer)
            tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(shape), file
        if digest is not None:
            f.seek(position)
            while chunk := f.read(1 << 24):
                digest.update(chunk)


def load_hf_dir(
    directory: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    placement: Any = None,
    allow_nonfinite: bool = False,
    sha256: dict[str, str] | None = None,
) -> LlamaModel:
    """Build a model from a Hugging Face directory, filling it tensor by tensor (one copy of the weights).

    ``sha256``: the digest each named weight file must have, checked while reading (``iter_safetensors``).
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} has no config.json: a Hugging Face model directory needs one.")
    cfg = LlamaConfig.from_json(config_path)
    files = safetensors_files(directory)

    def tensors() -> Iterator[tuple[str, torch.Tensor, str]]:
        for hf, tensor, file in iter_safetensors(files, sha256):
            yield (our_name(hf) or hf), tensor, f"{file.name}:{hf}"

    return fill_model(
        cfg,
        tensors(),
        device,
        dtype,
        source=str(directory),
        progress=progress,
        placement=placement,
        allow_nonfinite=allow_nonfinite,
    )
