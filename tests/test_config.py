"""LlamaConfig: parsing (HF, Meta params.json, GGUF), validation, derived figures, explain().

Reference numbers come from /work/shared/REFERENCE.md sections 1-3 and are checked against real files (the
committed Llama 3 8B config.json, the SmolLM2 GGUF asset) and against transformers' own LlamaForCausalLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llama3_lab.config import (
    ConfigError,
    ConfigNotFoundError,
    LlamaConfig,
    dtype_bytes,
    meta_ffn_hidden_dim,
)
from llama3_lab.config_explain import ConfigExplanation, explain_path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_JSON = ROOT / "config.json"

LLAMA3_8B_PARAMS = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "multiple_of": 1024,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
}
LLAMA31_8B_PARAMS = {**LLAMA3_8B_PARAMS, "use_scaled_rope": True}
LLAMA32_1B_PARAMS = {
    "dim": 2048,
    "n_layers": 16,
    "n_heads": 32,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "ffn_dim_multiplier": 1.5,
    "multiple_of": 256,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
}
LLAMA32_1B_HF = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
LLAMA3_8B_TOTAL = 8_030_261_248
LLAMA32_1B_TOTAL = 1_235_814_400


@pytest.fixture(scope="module")
def llama3_8b() -> LlamaConfig:
    return LlamaConfig.from_json(CONFIG_JSON)


def write_json(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d))
    return path


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


def test_params_json_llama3_8b_matches_hf_config(tmp_path: Path, llama3_8b: LlamaConfig) -> None:
    c = LlamaConfig.from_params_json(write_json(tmp_path / "params.json", LLAMA3_8B_PARAMS))
    assert c.intermediate_size == 14336
    assert c.rope_scaling is None and c.max_position_embeddings == 8192 and not c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.vocab_size) == (128000, 128001, 128256)
    assert c == llama3_8b.replace(extra={})


def test_params_json_llama31_8b(tmp_path: Path) -> None:
    c = LlamaConfig.from_params_json(write_json(tmp_path / "params.json", LLAMA31_8B_PARAMS))
    assert c.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert c.max_position_embeddings == 131072
    assert c.num_parameters() == LLAMA3_8B_TOTAL
    regimes = c.rope_pair_regimes()  # REFERENCE section 3
    assert regimes["unchanged"] == list(range(0, 29))
    assert regimes["smoothed"] == list(range(29, 35))
    assert regimes["divided"] == list(range(35, 64))


def test_params_json_llama32_1b_and_max_seq_len(tmp_path: Path) -> None:
    c = LlamaConfig.from_params_json(write_json(tmp_path / "params.json", LLAMA32_1B_PARAMS))
    assert c.rope_scaling["factor"] == 32.0 and c.tie_word_embeddings
    assert (c.intermediate_size, c.head_dim, c.max_position_embeddings) == (8192, 64, 131072)
    assert c.num_parameters() == LLAMA32_1B_TOTAL
    assert c == LlamaConfig.from_dict(LLAMA32_1B_HF).replace(extra={})
    with_len = LlamaConfig.from_params({**LLAMA32_1B_PARAMS, "max_seq_len": 4096}, tie_word_embeddings=False)
    assert with_len.max_position_embeddings == 4096 and not with_len.tie_word_embeddings
    assert LlamaConfig.from_params(LLAMA32_1B_PARAMS, rope_scaling_factor=8).rope_scaling["factor"] == 8.0


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


def test_llama3_scaling_rule_matches_transformers() -> None:
    """The llama3 divisors GGUF stores (and rope_pair_regimes) follow transformers' own llama3 RoPE init."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llama3_lab.rope import llama3_divisors

    for c in (LlamaConfig.from_params(LLAMA31_8B_PARAMS), LlamaConfig.from_dict(LLAMA32_1B_HF)):
        hf = HFLlamaConfig.from_dict(c.to_dict())
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
        unscaled = torch.tensor(c.rope_inv_freq_unscaled(), dtype=torch.float64)
        divisors = torch.tensor(
            llama3_divisors(c.rope_scaling, c.head_dim, c.rope_theta), dtype=torch.float64
        )
        torch.testing.assert_close(scaled.double(), unscaled / divisors, rtol=1e-5, atol=0)


# -- GGUF


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    assets = pytest.importorskip("llama3_lab.assets", reason="llama3_lab/assets.py is not there yet")
    return assets.asset_path("smollm2-135m-instruct.gguf")


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_gguf: Path):  # parsing the metadata takes gguf 1-5 s: do it once
    from gguf import GGUFReader

    return GGUFReader(smollm2_gguf)


def test_gguf_smollm2(smollm2_gguf: Path, smollm2_reader) -> None:
    reader = smollm2_reader
    c = LlamaConfig.from_gguf(reader)
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.gqa_group) == (9, 3, 64, 3)
    assert (c.rope_theta, c.rms_norm_eps, c.max_position_embeddings) == (100000.0, 1e-5, 8192)
    assert c.vocab_size == 49152 and c.tie_word_embeddings and c.rope_scaling is None
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)
    assert c.num_parameters() == 134_515_008
    # The count matches the tensors actually stored in the file (GGUF shapes are reversed, numel is not).
    assert c.num_parameters() == sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert LlamaConfig.from_pretrained(smollm2_gguf) == c
    assert LlamaConfig.from_dict(c.to_dict()) == c


def _write_gguf(path: Path, *, with_output: bool, rope_freqs: np.ndarray | None) -> Path:
    """A tiny llama GGUF with the metadata llama.cpp writes (tensors are placeholders: only names matter)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test")
    writer.add_block_count(2)
    writer.add_context_length(131072)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(500000.0)
    writer.add_rope_dimension_count(64)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(300)])
    writer.add_bos_token_id(7)
    writer.add_eos_token_id(9)
    writer.add_tensor("token_embd.weight", np.zeros((300, 256), dtype=np.float32))
    if with_output:
        writer.add_tensor("output.weight", np.zeros((300, 256), dtype=np.float32))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_llama31_style_rope_freqs_and_untied(tmp_path: Path) -> None:
    from llama3_lab.config import LLAMA31_ROPE_SCALING
    from llama3_lab.rope import llama3_divisors

    divisors = np.array(llama3_divisors(LLAMA31_ROPE_SCALING, 64, 500000.0))
    c = LlamaConfig.from_gguf(_write_gguf(tmp_path / "m.gguf", with_output=True, rope_freqs=divisors))
    assert c.rope_scaling == LLAMA31_ROPE_SCALING
    assert not c.tie_word_embeddings and c.head_dim == 64 and c.vocab_size == 300
    assert (c.bos_token_id, c.eos_token_id, c.rms_norm_eps) == (7, 9, 1e-5)
    assert c.extra == {"gguf_general_name": "tiny test"}

    tied = LlamaConfig.from_gguf(_write_gguf(tmp_path / "t.gguf", with_output=False, rope_freqs=None))
    assert tied.tie_word_embeddings and tied.rope_scaling is None

    wrong = divisors.copy()
    wrong[30] = 3.0
    with pytest.raises(ConfigError, match="rope_freqs"):
        LlamaConfig.from_gguf(_write_gguf(tmp_path / "w.gguf", with_output=True, rope_freqs=wrong))


# -- from_pretrained


def test_from_pretrained_picks_by_what_it_finds(tmp_path: Path, llama3_8b: LlamaConfig) -> None:
    hf_dir, meta_dir, empty = tmp_path / "hf", tmp_path / "meta", tmp_path / "empty"
    for d in (hf_dir, meta_dir, empty):
        d.mkdir()
    llama3_8b.save_json(hf_dir)
    write_json(meta_dir / "params.json", LLAMA31_8B_PARAMS)
    (empty / "notes.txt").write_text("nothing here")

    assert LlamaConfig.from_pretrained(hf_dir) == llama3_8b
    assert LlamaConfig.from_pretrained(CONFIG_JSON) == llama3_8b
    assert LlamaConfig.from_pretrained(meta_dir).rope_scaling["factor"] == 8.0
    assert LlamaConfig.from_pretrained(meta_dir / "params.json").max_position_embeddings == 131072
    with pytest.raises(ConfigNotFoundError, match=r"notes\.txt.*config\.json, params\.json"):
        LlamaConfig.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LlamaConfig.from_pretrained(tmp_path / "missing")
    with pytest.raises(ConfigError, match="from_params_json"):
        LlamaConfig.from_dict(LLAMA3_8B_PARAMS)
    with pytest.raises(ConfigError, match="not valid JSON"):
        LlamaConfig.from_json(_write_text(tmp_path / "broken.json", "{not json"))
    with pytest.raises(ConfigError, match="Cannot tell the format"):
        LlamaConfig.from_pretrained(_write_text(tmp_path / "weights.bin", "binary"))


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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


# -- explain


def test_explain_covers_every_key_and_renders(llama3_8b: LlamaConfig) -> None:
    keys = set(json.loads(CONFIG_JSON.read_text()))
    explanation = llama3_8b.explain()
    assert isinstance(explanation, ConfigExplanation)
    assert keys <= set(explanation.fields)
    assert all(
        row.explanation and "Not used by llama3-lab" not in row.explanation for row in explanation.rows
    )

    text, markdown, page = explanation.to_text(), explanation.to_markdown(), explanation._repr_html_()
    assert str(explanation) == text
    for key in keys:
        assert f"\n{key} = " in text
        assert f"| `{key}` |" in markdown
        assert f"<code>{key}</code>" in page
    assert page.count("<tr>") == len(explanation.rows) + len(explanation.derived) + 2  # + two header rows
    assert markdown.count("\n| `") == len(explanation.rows) + len(explanation.derived)
    for figure in ("8,030,261,248", "131,072 B", "16,060,522,496", "14.96 GiB", "1.00 GiB"):
        assert figure in text


def test_explanations_are_right_where_write_ups_are_wrong(llama3_8b: LlamaConfig) -> None:
    e = llama3_8b.explain()
    assert "bias vectors" in e["attention_bias"].explanation and "q_proj" in e["attention_bias"].explanation
    assert "nothing to do with attention masks" in e["attention_bias"].explanation
    assert "standard deviation" in e["initializer_range"].explanation
    assert "Irrelevant for a trained checkpoint" in e["initializer_range"].explanation
    assert "inv_freq_i = θ^(−2i/d)" in e["rope_theta"].explanation
    assert (
        "K = 8" in e["num_key_value_heads"].explanation
        and "G = H/K = 4" in e["num_key_value_heads"].explanation
    )
    assert "nothing to emulate" in e["pretraining_tp"].explanation
    assert "Not a hard-coded buffer" in e["max_position_embeddings"].explanation
    assert "1e-6" in e["rms_norm_eps"].explanation
    assert "null: no RoPE scaling" in e["rope_scaling"].explanation
    assert "separate [V, D]" in e["tie_word_embeddings"].explanation
    assert "128009 <|eot_id|>" in e["eos_token_id"].explanation

    scaled = LlamaConfig.from_dict(LLAMA32_1B_HF).explain()
    assert (
        "29 pairs (0-28) unchanged"
        in LlamaConfig.from_params(LLAMA31_8B_PARAMS).explain()["rope_scaling"].explanation
    )
    assert "factor 32" in scaled["rope_scaling"].explanation
    assert "true: the unembedding" in scaled["tie_word_embeddings"].explanation
    assert scaled["params.unembedding"].value == "0"


def test_unknown_extras_are_listed() -> None:
    c = LlamaConfig.from_dict({**LLAMA32_1B_HF, "my_custom_flag": 3})
    row = c.explain()["my_custom_flag"]
    assert row.value == "3" and "kept in `extra`" in row.explanation


def test_explain_path_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    text = explain_path(CONFIG_JSON)
    assert "num_key_value_heads = 8" in text and "8,030,261,248" in text
    cli = pytest.importorskip("llama3_lab.cli")
    assert cli.main(["explain", str(CONFIG_JSON)]) == 0
    assert "kv_cache_bytes_per_token(bf16) = 131,072 B" in capsys.readouterr().out


def test_explain_gguf_config(smollm2_reader) -> None:
    text = LlamaConfig.from_gguf(smollm2_reader).explain().to_text()
    assert "134,515,008" in text and "null: no single storage dtype" in text
    assert "K = 3 key/value heads" in text and "θ = 100,000" in text
