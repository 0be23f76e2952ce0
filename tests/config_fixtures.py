"""Fixtures shared by the config, loading and explanation tests (``pytest_plugins = ["config_fixtures"]``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_reference import CONFIG_JSON

from llama3_lab.config import LlamaConfig


@pytest.fixture(scope="module")
def llama3_8b() -> LlamaConfig:
    return LlamaConfig.from_json(CONFIG_JSON)


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    assets = pytest.importorskip("llama3_lab.assets", reason="llama3_lab/assets.py is not there yet")
    return assets.asset_path("smollm2-135m-instruct.gguf")


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_gguf: Path):  # parsing the metadata takes gguf 1-5 s: do it once
    from gguf import GGUFReader

    return GGUFReader(smollm2_gguf)
