"""LlamaConfig: Hugging Face parsing, validation, derived figures.

Reference numbers come from /work/shared/REFERENCE.md sections 1-3 and are checked against the committed
Llama 3 8B config.json and against transformers' own LlamaForCausalLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from config_reference import (
    CONFIG_JSON,
    LLAMA3_8B_TOTAL,
    LLAMA31_8B_PARAMS,
    LLAMA32_1B_HF,
    LLAMA32_1B_TOTAL,
)

from llama3_lab.config import ConfigError, LlamaConfig, dtype_bytes, meta_ffn_hidden_dim

pytest_plugins = ["config_fixtures"]  # llama3_8b, smollm2_gguf, smollm2_reader


# -- Llama 3 8B


def test_llama3_8b_numbers(llama3_8b: LlamaConfig) -> None:
    c = llama3_8b
    assert (c.head_dim, c.gqa_group, c.kv_width) == (128, 4, 1024)
    parts = c.parameter_breakdown()
    assert parts["embedding"] == parts["unembedding"] == 525_336_576
    assert parts["attention_per_layer"] == 41_943_040
    assert parts["mlp_per_layer"] == 176_160_768
    assert parts["norms_per_layer"] == 8_192
    assert parts["per_layer"] == 218_112_000
    assert c.num_parameters() == parts["total"] == LLAMA3_8B_TOTAL
    assert c.weights_bytes("bf16") == c.weights_bytes(torch.bfloat16) == 16_060_522_496
    assert c.weights_bytes("float32") == c.weights_bytes(torch.float32) == 2 * 16_060_522_496
    assert c.kv_cache_bytes_per_token() == c.kv_cache_bytes_per_token(torch.bfloat16) == 131_072
    assert c.kv_cache_bytes(8192) == c.kv_cache_bytes() == 1 << 30
    assert c.kv_cache_bytes(8192, batch=2, dtype="fp32") == 4 << 30
    # REFERENCE section 2: capture must be estimated before it allocates.
    assert c.attention_pattern_bytes(256) == 128 << 20
    assert c.attention_pattern_bytes(1024) == 2 << 30
    assert c.attention_pattern_bytes(4096) == 32 << 30  # REFERENCE says 64 GiB: that is scores + pattern
    # REFERENCE's 9.6 GiB leaves out LlamaModel's three norm-output hooks (ln1/ln2/ln_final.hook_out).
    activations = c.activation_bytes(1024)
    without_norm_outputs = activations["total"] - sum(
        v for k, v in activations.items() if k.endswith("hook_out")
    )
    assert round((without_norm_outputs + activations["unembed.hook_out"]) / 2**30, 1) == 9.6
    assert activations["total"] == 10_825_240_576


def test_activation_estimate_matches_the_models_hooks() -> None:
    """The config-level estimate (ConfigExplorer) agrees with LlamaModel's per-hook estimate, hook by hook."""
    from llama3_lab.model import LlamaModel

    cfg = LlamaConfig(
        **{"vocab_size": 97, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2},
        **{"num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2},
    )
    for dtype in (torch.bfloat16, torch.float32):
        model = LlamaModel(cfg).to(
            dtype
        )  # its natural dtypes: scales and RoPE tables float32, the rest dtype
        for T, batch in ((16, 1), (7, 3)):
            expected = dict(model.estimate_cache_table(T, batch=batch))
            estimate = cfg.activation_bytes(T, batch, dtype)
            assert (
                estimate.pop("total") == model.estimate_cache_bytes(T, batch=batch) == sum(expected.values())
            )
            assert estimate == expected


def test_public_import_gives_the_8b_count() -> None:
    import llama3_lab as ll

    assert ll.LlamaConfig.from_json(CONFIG_JSON).num_parameters() == LLAMA3_8B_TOTAL


def test_meta_ffn_width() -> None:
    assert meta_ffn_hidden_dim(4096, 1024, 1.3) == 14336  # Llama 3 / 3.1 8B
    assert meta_ffn_hidden_dim(8192, 4096, 1.3) == 28672  # Llama 3 70B
    assert meta_ffn_hidden_dim(2048, 256, 1.5) == 8192  # Llama 3.2 1B
    assert meta_ffn_hidden_dim(3072, 256, 1.0) == 8192  # Llama 3.2 3B
    assert meta_ffn_hidden_dim(4096, 256) == 11008  # Llama 2 7B: no multiplier


def test_llama32_1b_hf_config() -> None:
    c = LlamaConfig.from_dict(LLAMA32_1B_HF)
    assert c.tie_word_embeddings and c.head_dim == 64 and c.rope_scaling["factor"] == 32.0
    assert c.parameter_breakdown()["unembedding"] == 0
    assert c.num_parameters() == LLAMA32_1B_TOTAL
    assert c.kv_cache_bytes_per_token() == 2 * 16 * 8 * 64 * 2


def test_legacy_type_key_and_transformers5_rope_parameters() -> None:
    scaling = dict(LLAMA32_1B_HF["rope_scaling"])
    legacy = {**LLAMA32_1B_HF, "rope_scaling": {**scaling, "type": scaling.pop("rope_type")}}
    assert LlamaConfig.from_dict(legacy).rope_scaling["rope_type"] == "llama3"
    # transformers >= 5 writes theta and scaling together as rope_parameters, and dtype for torch_dtype.
    v5 = {k: v for k, v in LLAMA32_1B_HF.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")}
    v5 |= {"rope_parameters": {**LLAMA32_1B_HF["rope_scaling"], "rope_theta": 500000.0}, "dtype": "bfloat16"}
    assert LlamaConfig.from_dict(v5) == LlamaConfig.from_dict(LLAMA32_1B_HF)
    plain = {**LLAMA32_1B_HF, "rope_scaling": {"rope_type": "default"}}
    assert LlamaConfig.from_dict(plain).rope_scaling is None


# -- validation

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": "4096"}, r"hidden_size must be a positive integer, got '4096' \(str\) \(write 4096"),
        ({"num_hidden_layers": True}, r"num_hidden_layers must be a positive integer, got True \(bool\)"),
        ({"intermediate_size": 14336.0}, r"intermediate_size .* \(write 14336, not 14336.0\)"),
        ({"vocab_size": 0}, r"vocab_size must be a positive integer, got 0"),
        ({"head_dim": -8}, r"head_dim must be a positive integer"),
        (
            {"num_attention_heads": 30},
            r"hidden_size=4096 is not divisible by num_attention_heads=30.*head_dim",
        ),
        ({"num_key_value_heads": 5}, r"num_attention_heads=32 is not divisible by num_key_value_heads=5"),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            r"rope_type='yarn'.*\['default', 'llama3'\]",
        ),
        ({"rope_scaling": {"factor": 8.0}}, r"rope_scaling=.*no 'rope_type'"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            r"lacks \['low_freq_factor'.*original_max",
        ),
        ({"rope_scaling": {**LLAMA3_SCALING, "factor": "8"}}, r"rope_scaling\['factor'\] must be a positive"),
        (
            {"rope_scaling": {**LLAMA3_SCALING, "high_freq_factor": 0.5}},
            r"high_freq_factor > low_freq_factor",
        ),
        ({"rope_scaling": "llama3"}, r"rope_scaling must be null or a dict"),
        ({"rms_norm_eps": 1e5}, r"rms_norm_eps=100000.0 is outside the sane range"),
        ({"rms_norm_eps": 0.0}, r"rms_norm_eps=0.0 is outside"),
        ({"rms_norm_eps": "1e-5"}, r"rms_norm_eps must be a number"),
        ({"rope_theta": -1.0}, r"rope_theta must be a positive number"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported.*'silu'"),
        ({"tie_word_embeddings": "false"}, r"tie_word_embeddings must be true or false"),
        ({"attention_bias": 0}, r"attention_bias must be true or false"),
        ({"bos_token_id": 200000}, r"bos_token_id=200000 is outside the vocabulary"),
        ({"eos_token_id": [128001, "x"]}, r"eos_token_id must be a token id"),
        ({"model_type": "mistral"}, r"model_type='mistral'"),
    ],
)
def test_validation_errors_name_the_field(changes: dict, message: str) -> None:
    d = {**json.loads(CONFIG_JSON.read_text()), **changes}
    with pytest.raises(ConfigError, match=message):
        LlamaConfig.from_dict(d)
    assert issubclass(ConfigError, ValueError)


def test_validation_accepts_what_real_configs_contain() -> None:
    c = LlamaConfig.from_dict(
        {**LLAMA32_1B_HF, "rope_theta": 500000, "eos_token_id": [128001, 128008, 128009]}
    )
    assert isinstance(c.rope_theta, float) and c.eos_token_id == [128001, 128008, 128009]
    odd = LlamaConfig(hidden_size=100, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    assert (odd.head_dim, odd.q_width) == (32, 128)  # explicit head_dim need not be hidden_size / heads
    mha = LlamaConfig.from_dict({k: v for k, v in LLAMA32_1B_HF.items() if k != "num_key_value_heads"})
    assert mha.num_key_value_heads == 32  # absent means plain multi-head attention, as in transformers


def test_replace_rederives_head_dim(llama3_8b: LlamaConfig) -> None:
    smaller = llama3_8b.replace(hidden_size=2048)
    assert smaller.head_dim == 64 and llama3_8b.head_dim == 128
    explicit = LlamaConfig.from_dict(LLAMA32_1B_HF).replace(hidden_size=1024)
    assert explicit.head_dim == 64
    with pytest.raises(ConfigError, match="num_key_value_heads=3"):
        llama3_8b.replace(num_key_value_heads=3)


# -- round trip


def test_round_trip(tmp_path: Path, llama3_8b: LlamaConfig) -> None:
    original = json.loads(CONFIG_JSON.read_text())
    d = llama3_8b.to_dict()
    assert {k: d[k] for k in original} == original  # every key of the file comes back unchanged
    assert d["head_dim"] == 128
    for c in (llama3_8b, LlamaConfig.from_dict(LLAMA32_1B_HF), LlamaConfig.from_params(LLAMA31_8B_PARAMS)):
        assert LlamaConfig.from_dict(c.to_dict()) == c
        saved = c.save_json(tmp_path / "config.json")
        assert LlamaConfig.from_json(saved) == c
        assert LlamaConfig.from_json(saved).extra == c.extra


# -- against transformers


@pytest.mark.parametrize(
    "changes",
    [
        {"tie_word_embeddings": False},
        {"tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True},
        {"head_dim": 24, "num_key_value_heads": 1},
    ],
    ids=["untied", "tied", "biases", "explicit-head-dim-mqa"],
)
def test_num_parameters_equals_transformers(changes: dict) -> None:
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    sizes = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    tiny = LlamaConfig(**{**sizes, **heads, "bos_token_id": 1, "eos_token_id": 2, **changes})
    model = LlamaForCausalLM(HFLlamaConfig.from_dict(tiny.to_dict()))
    assert tiny.num_parameters() == sum(p.numel() for p in model.parameters())
    lm_head_tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert lm_head_tied == tiny.tie_word_embeddings


def test_flops_per_token_matches_a_flop_count_of_transformers() -> None:
    """With eager attention (full T×T products), a forward over T tokens costs T · flops_per_token(T)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    tiny = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    hf = HFLlamaConfig.from_dict(tiny.to_dict())
    hf._attn_implementation = "eager"
    model = LlamaForCausalLM(hf).eval()
    T = 12
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.arange(T)[None] % tiny.vocab_size)
    assert counter.get_total_flops() == T * tiny.flops_per_token(T)
    with pytest.raises(ConfigError, match="seq_len"):
        tiny.flops_per_token(0)


def test_dtype_bytes() -> None:
    assert dtype_bytes(torch.bfloat16) == dtype_bytes("bf16") == dtype_bytes("torch.bfloat16") == 2
    assert dtype_bytes("float32") == dtype_bytes(np.dtype("float32")) == dtype_bytes("fp32") == 4
    assert dtype_bytes("fp16") == dtype_bytes(torch.float16) == 2
    with pytest.raises(ConfigError, match="Unknown dtype name 'bf17'"):
        dtype_bytes("bf17")


# -- a config.json that leaves fields out means what it means to transformers


def test_defaults_table_is_the_installed_transformers_llamaconfig() -> None:
    import inspect

    from transformers import LlamaConfig as HFLlamaConfig

    from llama3_lab.config import HF_CONFIG_DEFAULTS

    signature = inspect.signature(HFLlamaConfig.__init__).parameters
    bare = HFLlamaConfig()
    for name, ours in HF_CONFIG_DEFAULTS.items():
        if name in signature:
            assert signature[name].default == ours, name
        elif name == "rope_theta":  # transformers 5: inside rope_parameters
            assert bare.rope_parameters["rope_theta"] == ours
        elif name == "rope_scaling":  # transformers 5: rope_parameters of type 'default' is no scaling
            assert bare.rope_parameters["rope_type"] == "default" and ours is None
        elif name == "torch_dtype":
            assert bare.dtype is None and ours is None
        elif name == "model_type":
            assert bare.model_type == ours
        else:
            raise AssertionError(f"{name} is not an argument of transformers' LlamaConfig")


def _hf_value(hf, name: str):  # noqa: ANN001, ANN202 - a transformers LlamaConfig field by our name
    if name == "rope_theta":
        return getattr(hf, "rope_theta", None) or hf.rope_parameters["rope_theta"]
    if name == "rope_scaling":
        scaling = getattr(hf, "rope_parameters", None) or hf.rope_scaling
        return None if scaling is None or scaling.get("rope_type") == "default" else scaling
    if name == "torch_dtype":
        dtype = getattr(hf, "dtype", None)
        return None if dtype is None else str(dtype).removeprefix("torch.")
    return getattr(hf, name)


def test_a_config_json_without_rope_theta_and_eps_loads_as_transformers_loads_it(tmp_path: Path) -> None:
    import dataclasses

    from transformers import LlamaConfig as HFLlamaConfig

    full = json.loads(CONFIG_JSON.read_text())
    sparse = {
        k: v
        for k, v in full.items()
        if k not in ("rope_theta", "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id")
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(sparse))
    with pytest.warns(
        UserWarning, match=r"leaves out vocab_size, rms_norm_eps, rope_theta, bos_token_id, eos_token_id"
    ):
        ours = LlamaConfig.from_json(path)
    hf = HFLlamaConfig.from_json_file(path)
    assert (ours.rope_theta, ours.rms_norm_eps, ours.vocab_size, ours.bos_token_id) == (
        10000.0,
        1e-6,
        32000,
        1,
    )
    for field in dataclasses.fields(LlamaConfig):
        if field.init and field.name != "extra":
            assert getattr(ours, field.name) == _hf_value(hf, field.name), field.name
    # A config that names only a shape: every default still agrees with transformers.
    with pytest.warns(UserWarning, match="leaves out vocab_size, num_hidden_layers, max_position_embeddings"):
        minimal = LlamaConfig.from_dict(
            {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
        )
    hf_minimal = HFLlamaConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128)
    for field in dataclasses.fields(LlamaConfig):
        if field.init and field.name != "extra":
            assert getattr(minimal, field.name) == _hf_value(hf_minimal, field.name), field.name
