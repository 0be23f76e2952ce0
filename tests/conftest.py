"""Shared fixtures: tiny random Llama configs and models, their transformers twins, the embedded model.

- ``make_config(**overrides)`` / ``make_model(seed=0, dtype=torch.float32, **config_overrides)``: small
  random models on CPU (GQA 8/2 heads, head_dim 16, 2 layers by default).
- ``to_transformers(model, attn="eager")``: a ``transformers.LlamaForCausalLM`` with the same weights.
- ``smollm2`` (session): the embedded SmolLM2-135M-Instruct, float32 on CPU, with its tokenizer.

Tests that need the fetched SmolLM2 (its GGUF or the converted model) carry the ``smollm2`` marker:
given automatically to every test that uses a fixture named in ``SMOLLM2_FIXTURES``, and written out
(``@pytest.mark.smollm2``) on tests that open the asset themselves. ``pytest -m "not smollm2"`` runs
the fast unit tests on tiny random models alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from llama3_lab.config import LlamaConfig
from llama3_lab.model import LlamaModel

#: Fixtures that load the fetched SmolLM2 (the model, its GGUF file or its GGUF reader/tokenizer).
SMOLLM2_FIXTURES = frozenset({"smollm2", "smollm2_gguf", "smollm2_reader", "gguf_reader", "smollm"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SMOLLM2_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.smollm2)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test runs with one torch thread.

    The tests use tiny models (and one 135M model) that gain little from threads, and on a 2-core
    host that something else is using, OpenMP's spinning threads make each forward 30-40x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: The tiny test config: ``LlamaConfig.tiny`` with a short context.
TINY = dict(max_position_embeddings=64)

#: Llama 3.1-style scaling squeezed into a tiny context: with head_dim 16 and theta 1e4 the 8 pairs
#: fall into all three bands (kept, smoothed, divided by ``factor``).
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def tiny_config(**overrides: Any) -> LlamaConfig:
    return LlamaConfig.tiny(**{**TINY, **overrides})


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> LlamaModel:
    return LlamaModel.from_config(tiny_config(**overrides), seed=seed, device="cpu", dtype=dtype)


def transformers_twin(model: LlamaModel, attn: str = "eager", dtype: torch.dtype | None = None) -> Any:
    """``transformers.LlamaForCausalLM`` holding a copy of ``model``'s weights (Hugging Face names)."""
    import transformers

    from llama3_lab.loading.hf import hf_config_dict, hf_name

    dtype = dtype or model.dtype
    config = transformers.LlamaConfig(**hf_config_dict(model.cfg))
    # Row-major copies, as transformers itself would load them.
    state = {
        hf_name(name): p.detach().to(dtype).clone(memory_format=torch.contiguous_format)
        for name, p in model.named_parameters()
    }
    return transformers_from_state(config, state, attn, dtype)


def transformers_from_state(
    config: Any, state: dict[str, torch.Tensor], attn: str, dtype: torch.dtype
) -> Any:
    """``LlamaForCausalLM`` built on the meta device and given ``state`` (HF names): no random init."""
    import transformers

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
    if config.tie_word_embeddings:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    # The RoPE buffers were created on the meta device too: build that module for real.
    model.model.rotary_emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    return model.eval()


@pytest.fixture
def make_config() -> Callable[..., LlamaConfig]:
    return tiny_config


@pytest.fixture
def make_model() -> Callable[..., LlamaModel]:
    return tiny_model


@pytest.fixture
def to_transformers() -> Callable[..., Any]:
    return transformers_twin


@pytest.fixture(scope="session")
def smollm2() -> LlamaModel:
    """The embedded SmolLM2-135M-Instruct, float32 on CPU (fetched and converted once, then cached)."""
    from llama3_lab.loading import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32, progress=False)
