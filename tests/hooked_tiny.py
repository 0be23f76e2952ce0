"""The tiny random Llama that the hook, cache and memory tests share (3 layers, 6/2 heads, vocab 211).

Its fixtures ``tiny`` and ``tokens`` reach a test module through ``pytest_plugins = ["hooked_tiny"]``.
"""

from __future__ import annotations

import pytest
import torch

from llama3_lab.config import LlamaConfig
from llama3_lab.model import LlamaModel

L = 3


def hooked_tiny_model() -> LlamaModel:
    cfg = LlamaConfig(
        vocab_size=211,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=L,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaModel.from_config(cfg, seed=1, device="cpu", dtype=torch.float32)


def random_tokens() -> torch.Tensor:
    """A ``[2, 9]`` batch of ids, the same every time."""
    return torch.randint(0, 211, (2, 9), generator=torch.Generator().manual_seed(0))


def no_hooks_left(model: LlamaModel) -> bool:
    """Nothing this thread runs would see a hook point: no module hooks, no context hooks."""
    return model.hooked_names() == []


@pytest.fixture(scope="module")
def tiny() -> LlamaModel:
    return hooked_tiny_model()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return random_tokens()
