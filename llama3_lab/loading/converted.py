"""The embedded models' converted cache, verified by content, and ``repair()`` for the whole cache.

A named model's GGUF asset is dequantized once into a Hugging Face directory,
``<cache>/models/<name>/`` (``config.json`` + ``model.safetensors``), which later loads read directly.
Beside them, ``conversion.json`` (the stamp) records what made them::

    {"format": 1, "conversion": "<fingerprint of the conversion code>",
     "source": "smollm2-135m-instruct.gguf", "source_sha256": "<the GGUF's pinned sha256>",
     "files": {"config.json": "<sha256>", "model.safetensors": "<sha256>"}}

A directory whose stamp is missing, of another format, made by other conversion code or from another
source is stale and converted again, so a broken GGUF loader fails here as it would on a clean machine.
A fresh directory is verified by content on every load: ``config.json`` is hashed before it is read,
``model.safetensors`` while it is read (``hf.iter_safetensors``: the reader touches every byte anyway).
A mismatch raises :class:`~llama3_lab.loading.errors.ChecksumError` naming the file; :func:`repair`
(``llama3-lab fetch --repair``) rebuilds what fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ChecksumError

__all__ = [
    "NAMED_MODELS",
    "STAMP",
    "conversion_fingerprint",
    "converted_model",
    "converted_model_dir",
    "repair",
]

#: Named models: name → (asset holding the weights, tokenizer name).
NAMED_MODELS = {"smollm2-135m-instruct": ("smollm2-135m-instruct.gguf", "smollm2-135m-instruct")}

STAMP = "conversion.json"
STAMP_FORMAT = 1
#: The package modules whose code decides the converted bytes (dequantize, un-permute, rename, write):
#: a change to any of them, or another version of the ``gguf`` library, makes older conversions stale.
CONVERSION_CODE = (
    "loading/gguf.py",
    "loading/gguf_config.py",
    "loading/layouts.py",
    "loading/hf.py",
    "gguf_metadata.py",
)
_PACKAGE = Path(__file__).resolve().parents[1]
_REPAIR = "Repair it with `llama3-lab fetch --repair` (or `llama3_lab.loading.repair()`), which rebuilds it."


def conversion_fingerprint() -> str:
    """A digest of the conversion code (:data:`CONVERSION_CODE`) and the ``gguf`` library's version."""
    digest = hashlib.sha256(f"stamp {STAMP_FORMAT}; gguf {metadata.version('gguf')}".encode())
    for relative in CONVERSION_CODE:
        digest.update(relative.encode() + b"\0" + (_PACKAGE / relative).read_bytes())
    return digest.hexdigest()[:16]


def _expected_stamp(name: str) -> dict[str, Any]:
    from ..assets import ASSETS

    asset = ASSETS[NAMED_MODELS[name][0]]
    return {
        "format": STAMP_FORMAT,
        "conversion": conversion_fingerprint(),
        "source": asset.name,
        "source_sha256": asset.sha256,
    }


def _stale(directory: Path, name: str) -> tuple[str | None, dict[str, Any]]:
    """(why ``directory`` must be converted again or None, its stamp)."""
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except FileNotFoundError:
        return ("not converted yet" if not directory.exists() else f"no {STAMP} (older code made it)"), {}
    except (OSError, ValueError) as e:
        return f"unreadable {STAMP} ({e})", {}
    if not isinstance(stamp, dict) or not isinstance(stamp.get("files"), dict):
        return f"{STAMP} lacks its file digests", {}
    for key, value in _expected_stamp(name).items():
        if stamp.get(key) != value:
            return f"{STAMP} says {key} {stamp.get(key)!r} where this code makes {value!r}", stamp
    missing = [file for file in stamp["files"] if not (directory / file).is_file()]
    if missing:
        return f"{', '.join(missing)} missing", stamp
    return None, stamp


def converted_model(name: str, progress: bool = True) -> tuple[Path, dict[str, str]]:
    """The converted directory of a named model and the sha256 its weight files must have when read.

    Converts first when the directory is missing or stale (see the module docstring); verifies its
    ``config.json`` here, and leaves the weights to the reader (``load_hf_dir(..., sha256=...)``).
    """
    from ..assets import asset_path, cache_dir, sha256_file

    gguf_path = asset_path(NAMED_MODELS[name][0])  # verified against its pinned sha256
    target = cache_dir() / "models" / name
    problem, stamp = _stale(target, name)
    if problem is not None:
        if progress and target.exists():
            print(f"llama3-lab: converting {name} again: {problem}")
        stamp = _convert(name, gguf_path, target, progress)
    config = target / "config.json"
    found = sha256_file(config)
    if found != stamp["files"].get("config.json"):
        raise ChecksumError(
            f"{config} has sha256 {found} where {stamp['files'].get('config.json')} was recorded when "
            f"{name} was converted: it was edited or corrupted since. {_REPAIR}"
        )
    weights = {file: digest for file, digest in stamp["files"].items() if file != "config.json"}
    return target, weights


def converted_model_dir(name: str, progress: bool = True) -> Path:
    """The cached Hugging Face directory of a named model, converting its GGUF asset when needed.

    The conversion (dequantize, un-permute q/k, rename) writes ``config.json``, ``model.safetensors`` and
    the stamp into a temporary directory renamed into place, so a crash never leaves a half-converted
    model behind. The weights are verified when :func:`~llama3_lab.loading.load_model` reads them.
    """
    return converted_model(name, progress)[0]


def _convert(name: str, gguf_path: Path, target: Path, progress: bool) -> dict[str, Any]:
    import torch

    from .gguf import load_gguf
    from .hf import save_hf

    model = load_gguf(gguf_path, torch.device("cpu"), torch.float32, progress=progress, tokenizer=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.old-"))  # an empty dir to rename onto
    try:
        save_hf(model, staging)
        del model
        stamp = write_stamp(staging, name)
        if target.exists():  # a stale or broken one: moved aside first, so the swap is two renames
            os.replace(target, aside)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first
            if _stale(target, name)[0] is not None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
            stamp = _stale(target, name)[1]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return stamp


def write_stamp(directory: Path, name: str) -> dict[str, Any]:
    """Record in ``directory/conversion.json`` what made it and the sha256 of each file in it."""
    from ..assets import sha256_file

    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != STAMP}
    stamp = {**_expected_stamp(name), "files": files}
    (directory / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return stamp


def _verify_converted(name: str) -> str | None:
    """None when the converted directory is fresh and every file has its recorded sha256, else why not."""
    from ..assets import cache_dir, sha256_file

    directory = cache_dir() / "models" / name
    problem, stamp = _stale(directory, name)
    if problem is not None:
        return problem
    for file, expected in stamp["files"].items():
        found = sha256_file(directory / file)
        if found != expected:
            return f"{file} has sha256 {found} where {expected} was recorded"
    return None


def repair(progress: bool = True) -> list[str]:
    """Verify the whole cache and rebuild what fails; one line per item saying what was found and done.

    1. every pinned asset is checked by content; one that fails is moved aside and fetched again
       (:func:`~llama3_lab.assets.fetch_assets`);
    2. every named model's converted directory is checked (stamp and every file's sha256) and converted
       again when it fails;
    3. every GGUF tokenizer's JSON sidecar is compared with a fresh read of its GGUF and rewritten when it
       differs.

    What ``llama3-lab fetch --repair`` runs. Raises what a failing fetch or conversion raises.
    """
    from ..assets import ASSETS, asset_problem, cache_dir, fetch_assets
    from ..tokenizer_gguf import repair_gguf_sidecar

    def say(line: str) -> None:
        report.append(line)
        if progress:
            print(f"llama3-lab: {line}")

    report: list[str] = []
    problems = {name: asset_problem(name) for name in ASSETS}
    fetch_assets(progress=progress)
    for name, problem in problems.items():
        say(f"{name}: ok" if problem is None else f"{name}: {problem}; fetched again (sha256 ok)")
    for name in NAMED_MODELS:
        problem = _verify_converted(name)
        if problem is None:
            say(f"models/{name}: ok")
            continue
        from ..assets import asset_path

        _convert(name, asset_path(NAMED_MODELS[name][0]), cache_dir() / "models" / name, progress)
        say(f"models/{name}: {problem}; converted again")
    for asset_name in (name for name in ASSETS if name.endswith(".gguf")):
        problem = repair_gguf_sidecar(cache_dir() / asset_name, ASSETS[asset_name].sha256)
        say(f"{asset_name} tokenizer sidecar: " + ("ok" if problem is None else f"{problem}; rewritten"))
    return report
