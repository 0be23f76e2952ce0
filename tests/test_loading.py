"""Loading every weight format, layout permutations, clear errors, and SmolLM2 against transformers."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from config_reference import (
    CONFIG_JSON,
    LLAMA3_8B_PARAMS,
    LLAMA3_8B_TOTAL,
    LLAMA31_8B_PARAMS,
    LLAMA32_1B_HF,
    LLAMA32_1B_PARAMS,
    LLAMA32_1B_TOTAL,
    write_json,
)
from conftest import tiny_model, transformers_from_state
from safetensors.torch import load_file, save_file

from llama3_lab.config import (
    LLAMA31_ROPE_SCALING,
    ConfigError,
    ConfigNotFoundError,
    LlamaConfig,
    meta_ffn_hidden_dim,
)
from llama3_lab.kv_cache import KVCache
from llama3_lab.loading import LoadError, load_model
from llama3_lab.loading.hf import hf_name, our_name
from llama3_lab.loading.layouts import gguf_to_hf_qk, hf_to_gguf_qk, hf_to_meta_qk, meta_to_hf_qk
from llama3_lab.model import LlamaModel
from llama3_lab.rope import llama3_divisors

# Tiny random models have no tokenizer: loading one says so once, which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*has no tokenizer.model:UserWarning")

TOKENS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]])

pytest_plugins = ["config_fixtures"]  # llama3_8b, smollm2_gguf, smollm2_reader


def logits_of(model: LlamaModel, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


LLAMA3_VOCAB = 128256  # params.json configs carry Llama 3's bos/eos ids, so tiny Meta models keep its vocab

# ------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize(
    "forward, inverse", [(meta_to_hf_qk, hf_to_meta_qk), (gguf_to_hf_qk, hf_to_gguf_qk)], ids=["meta", "gguf"]
)
def test_each_layout_permutation_and_its_inverse(forward, inverse):
    # One head of 6 dims: Meta pairs rows (0,1) (2,3) (4,5); HF wants the pairs' first members, then seconds.
    rows = torch.arange(6.0)[:, None]
    assert forward(rows, n_heads=1).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    w = torch.randn(3 * 8, 5)  # 3 heads of 8 dims
    torch.testing.assert_close(inverse(forward(w, 3), 3), w, rtol=0, atol=0)
    torch.testing.assert_close(forward(inverse(w, 3), 3), w, rtol=0, atol=0)
    assert not torch.equal(forward(w, 3), w)
    # The permutation acts within each head: heads stay in place.
    torch.testing.assert_close(forward(w, 3)[8:16], forward(w[8:16], 1), rtol=0, atol=0)


def test_gguf_permutation_is_llamacpp_and_transformers_inverse():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(4 * 6, 7)
    reference = LlamaTensorProcessor()._reverse_permute_weights(w.numpy(), 4, 4)
    torch.testing.assert_close(gguf_to_hf_qk(w, 4), torch.from_numpy(reference), rtol=0, atol=0)


def test_hf_names_round_trip():
    model = tiny_model(tie_word_embeddings=False)
    for name, _ in model.named_parameters():
        assert our_name(hf_name(name)) == name
    assert hf_name("blocks.7.attn.k_proj.weight") == "model.layers.7.self_attn.k_proj.weight"
    assert hf_name("blocks.0.ln2.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("unembed.weight") == "lm_head.weight"
    assert our_name("model.rotary_emb.inv_freq") is None


# -------------------------------------------------------------------------------- Hugging Face dirs


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_save_pretrained_round_trips_and_transformers_reads_it(tmp_path, tied):
    import transformers

    model = tiny_model(seed=2, tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    names = set(load_file(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in names) is not tied
    assert "model.layers.1.self_attn.q_proj.weight" in names
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave nothing behind

    loaded = load_model(tmp_path, device="cpu", progress=False)
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), name
    assert (loaded.unembed.weight is loaded.embed.weight) is tied
    torch.testing.assert_close(logits_of(loaded), logits_of(model), rtol=0, atol=0)

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, logits_of(model), rtol=1e-5, atol=1e-5)

    half = load_model(tmp_path / "config.json", device="cpu", dtype="bfloat16", progress=False)
    assert half.dtype == torch.bfloat16 and half.rope.inv_freq.dtype == torch.float32


def test_sharded_safetensors_with_index(tmp_path):
    model = tiny_model(seed=4)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, tmp_path / file)
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.testing.assert_close(
        logits_of(load_model(tmp_path, device="cpu", progress=False)), logits_of(model)
    )


def test_hf_dir_tokenizer_rules(tmp_path):
    from llama3_lab.assets import asset_path

    model = tiny_model()
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer.model"):
        assert load_model(tmp_path, device="cpu", progress=False).tokenizer is None
    (tmp_path / "original").mkdir()
    shutil.copy(asset_path("llama3/tokenizer.model"), tmp_path / "original" / "tokenizer.model")
    tokenizer = load_model(tmp_path, device="cpu", progress=False).tokenizer
    assert tokenizer.encode("Hello, world!") == [9906, 11, 1917, 0]


# ------------------------------------------------------------------------------------------- errors


@pytest.fixture
def saved(tmp_path) -> Path:
    tiny_model(seed=6).save_pretrained(tmp_path)
    return tmp_path


def test_truncated_safetensors_names_the_file(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LoadError, match=r"model\.safetensors.*truncated or corrupt"):
        load_model(saved, device="cpu", progress=False)


def test_missing_tensor_is_named(saved):
    tensors = load_file(saved / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(LoadError, match=r"missing 1 tensor\(s\): blocks\.1\.mlp\.up_proj\.weight"):
        load_model(saved, device="cpu", progress=False)


def test_wrong_shape_names_the_tensor_expected_and_found(saved):
    tensors = load_file(saved / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(
        LoadError, match=r"self_attn\.k_proj\.weight: shape \[16, 64\] does not match .*\[32, 64\]"
    ):
        load_model(saved, device="cpu", progress=False)


def test_config_that_does_not_match_the_weights(saved):
    config = json.loads((saved / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"missing \d+ tensor\(s\): blocks\.2\..*same model"):
        load_model(saved, device="cpu", progress=False)
    config.update(num_hidden_layers=1)
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"unexpected tensor\(s\): model\.safetensors:model\.layers\.1\."):
        load_model(saved, device="cpu", progress=False)
    config.update(num_hidden_layers=2, intermediate_size=100)
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"mlp\.\w+_proj\.weight: shape \[\d+, \d+\] does not match .*100"):
        load_model(saved, device="cpu", progress=False)


def test_missing_files_say_what_was_expected(saved, tmp_path_factory):
    (saved / "model.safetensors").rename(saved / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"no model\.safetensors.*found: config\.json, pytorch_model\.bin"
    ):
        load_model(saved, device="cpu", progress=False)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="expected config.json.*params.json.*gguf"):
        load_model(empty, device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="known model name.*smollm2-135m-instruct"):
        load_model("llama-9000", device="cpu", progress=False)


def test_nonfinite_weights_are_refused_naming_the_tensor_unless_allowed(saved):
    tensors = load_file(saved / "model.safetensors")
    clean = dict(tensors)
    for dtype, bad in [
        (torch.float32, float("nan")),
        (torch.bfloat16, float("-inf")),
        (torch.float16, float("inf")),
    ]:
        edited = {name: t.to(dtype, copy=True) for name, t in clean.items()}
        edited["model.layers.1.mlp.down_proj.weight"][3, 5] = bad
        save_file(edited, saved / "model.safetensors")
        with pytest.raises(
            LoadError, match=r"model\.safetensors:model\.layers\.1\.mlp\.down_proj\.weight: 1 of"
        ):
            load_model(saved, device="cpu", progress=False)
        studied = load_model(saved, device="cpu", progress=False, allow_nonfinite=True)
        value = studied.blocks[1].mlp.down_proj.weight[3, 5]
        assert not torch.isfinite(value) and (torch.isnan(value) == (bad != bad)), dtype
    # A float16 sum that overflows is not a non-finite weight.
    big = {name: t.to(torch.float16) for name, t in clean.items()}
    big["model.embed_tokens.weight"].fill_(60000.0)
    save_file(big, saved / "model.safetensors")
    assert load_model(saved, device="cpu", dtype="float32", progress=False).embed.weight.max() == 60000.0


def test_integer_weights_and_dtypes_are_refused(saved):
    with pytest.raises(ValueError, match=r"dtype=torch\.int32.*floating-point.*torch\.bfloat16"):
        load_model(saved, device="cpu", dtype=torch.int32, progress=False)
    for bad in ("int64", "bf16", torch.bool, torch.float8_e4m3fn):
        with pytest.raises(ValueError, match=r"load_model\(dtype=.*one of torch\.float32"):
            load_model(saved, device="cpu", dtype=bad, progress=False)
    assert load_model(saved, device="cpu", dtype="torch.float64", progress=False).dtype == torch.float64
    tensors = load_file(saved / "model.safetensors")
    for dtype in (torch.int32, torch.bool, torch.uint8):
        edited = {**tensors, "model.norm.weight": tensors["model.norm.weight"].to(dtype)}
        save_file(edited, saved / "model.safetensors")
        with pytest.raises(
            LoadError, match=r"model\.norm\.weight: dtype \w+ where the floating-point weight"
        ):
            load_model(saved, device="cpu", progress=False)


def _flip_a_weight_bit(path: Path) -> None:
    """Flip the lowest mantissa bit of the last float32 in the file: the weight stays finite, nearly equal."""
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_recorded_sha256_is_checked_while_reading(saved):
    from llama3_lab.assets import sha256_file
    from llama3_lab.loading import ChecksumError
    from llama3_lab.loading.hf import load_hf_dir

    path = saved / "model.safetensors"
    recorded = {"model.safetensors": sha256_file(path)}
    cpu = torch.device("cpu")
    reference = load_hf_dir(saved, cpu, torch.float32, progress=False, sha256=recorded)
    _flip_a_weight_bit(path)
    changed = load_hf_dir(saved, cpu, torch.float32, progress=False)  # unverified, the change goes unseen
    assert sum(not torch.equal(p, q) for p, q in zip(reference.parameters(), changed.parameters())) == 1
    with pytest.raises(
        ChecksumError, match=rf"{re.escape(str(path))} has sha256 \w+ where {recorded['model.safetensors']}"
    ):
        load_hf_dir(saved, cpu, torch.float32, progress=False, sha256=recorded)
    # Bytes between tensors and after the last one count too.
    with path.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match="fetch --repair"):
        load_hf_dir(
            saved, cpu, torch.float32, progress=False, sha256={"model.safetensors": sha256_file(path)[::-1]}
        )
    load_hf_dir(saved, cpu, torch.float32, progress=False, sha256={"model.safetensors": sha256_file(path)})


# --------------------------------------------------------------------------------------- Meta dirs


def hf_rows_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's half-split q/k rows → Meta's interleaved pairs, written independently of ``layouts.py``: the
    inverse of transformers' ``convert_llama_weights_to_hf.permute(w, n_heads, dim1, dim2) =
    w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)``."""
    dim1, dim2 = w.shape
    return w.reshape(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def write_meta_checkpoint(
    model: LlamaModel, directory: Path, n_shards: int, embed_axis: int, use_scaled_rope: bool = False
) -> None:
    """Write ``model`` the way Meta's tensor-parallel checkpoints are: q/k interleaved, sliced per shard
    (rows split evenly, so with fewer K/V heads than shards a shard holds part of a head); no
    ``output.weight`` when the model is tied."""
    cfg = model.cfg
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    full: dict[str, tuple[torch.Tensor, int | None]] = {
        "tok_embeddings.weight": (model.embed.weight, embed_axis),
        "norm.weight": (model.ln_final.weight, None),
    }
    if not cfg.tie_word_embeddings:
        full["output.weight"] = (model.unembed.weight, 0)
    for l, block in enumerate(model.blocks):
        full |= {
            f"layers.{l}.attention_norm.weight": (block.ln1.weight, None),
            f"layers.{l}.attention.wq.weight": (hf_rows_to_meta(block.attn.q_proj.weight, H), 0),
            f"layers.{l}.attention.wk.weight": (hf_rows_to_meta(block.attn.k_proj.weight, K), 0),
            f"layers.{l}.attention.wv.weight": (block.attn.v_proj.weight, 0),
            f"layers.{l}.attention.wo.weight": (block.attn.o_proj.weight, 1),
            f"layers.{l}.ffn_norm.weight": (block.ln2.weight, None),
            f"layers.{l}.feed_forward.w1.weight": (block.mlp.gate_proj.weight, 0),
            f"layers.{l}.feed_forward.w3.weight": (block.mlp.up_proj.weight, 0),
            f"layers.{l}.feed_forward.w2.weight": (block.mlp.down_proj.weight, 1),
        }
    directory.mkdir(exist_ok=True)
    for shard in range(n_shards):
        part = {}
        for name, (w, axis) in full.items():
            if axis is not None:
                assert w.shape[axis] % n_shards == 0, f"{name} {list(w.shape)} does not split {n_shards} ways"
                w = w.chunk(n_shards, dim=axis)[shard]
            part[name] = w.clone()
        torch.save(part, directory / f"consolidated.{shard:02d}.pth")
    params = dict(
        dim=cfg.hidden_size,
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        n_kv_heads=K,
        vocab_size=cfg.vocab_size,
        multiple_of=16,
        ffn_dim_multiplier=None,
        norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_seq_len=cfg.max_position_embeddings,
    )
    if use_scaled_rope:
        params["use_scaled_rope"] = True
    (directory / "params.json").write_text(json.dumps(params))


def _meta_twin(**overrides) -> LlamaModel:  # noqa: ANN003
    """A tiny model whose MLP width is what Meta's FeedForward derives from dim 64, multiple_of 16."""
    shape = dict(vocab_size=LLAMA3_VOCAB, intermediate_size=meta_ffn_hidden_dim(64, 16, None))
    return tiny_model(seed=9, **{**shape, "num_attention_heads": 4, "num_key_value_heads": 2, **overrides})


def _assert_same_model(loaded: LlamaModel, model: LlamaModel) -> None:
    assert loaded.cfg.tie_word_embeddings == model.cfg.tie_word_embeddings
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    tokens = torch.tensor([[128000, 9906, 11, 1917, 0, 128009]])
    torch.testing.assert_close(logits_of(loaded, tokens), logits_of(model, tokens), rtol=0, atol=0)


@pytest.mark.parametrize("embed_axis", [0, 1], ids=["llama3-vocab-parallel", "llama2-dim-parallel"])
def test_meta_checkpoint_in_two_shards_matches_its_hf_twin(tmp_path, embed_axis):
    from llama3_lab.assets import asset_path

    model = _meta_twin()
    write_meta_checkpoint(model, tmp_path / "meta", n_shards=2, embed_axis=embed_axis)
    shutil.copy(asset_path("llama3/tokenizer.model"), tmp_path / "meta" / "tokenizer.model")
    loaded = load_model(tmp_path / "meta", device="cpu", progress=False)
    assert loaded.cfg.intermediate_size == 176 and not loaded.cfg.tie_word_embeddings
    _assert_same_model(loaded, model)
    assert loaded.tokenizer.encode("user") == [882]


@pytest.mark.parametrize(
    "n_shards, kv_heads, tied",
    [(4, 2, False), (4, 1, False), (2, 2, True), (8, 2, True)],
    ids=["4-shards", "1-kv-head-in-4-shards", "tied", "tied-8-shards-2-kv-heads"],
)
def test_meta_checkpoint_shards_kv_heads_and_tying(tmp_path, n_shards, kv_heads, tied):
    model = _meta_twin(num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    write_meta_checkpoint(model, tmp_path, n_shards=n_shards, embed_axis=0)
    assert ("output.weight" in torch.load(tmp_path / "consolidated.00.pth")) is not tied
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shards say whether it is tied: nothing is guessed
        loaded = load_model(tmp_path, device="cpu", progress=False)
        assert LlamaConfig.from_pretrained(tmp_path).tie_word_embeddings is tied  # load_config reads them too
    _assert_same_model(loaded, model)
    assert (loaded.unembed.weight is loaded.embed.weight) is tied


def test_meta_checkpoint_with_scaled_rope_and_an_output_matrix_is_llama31_style(tmp_path):
    """A small use_scaled_rope checkpoint that holds output.weight: untied, factor 8 (not 3.2's 32)."""
    write_meta_checkpoint(_meta_twin(), tmp_path, n_shards=2, embed_axis=0, use_scaled_rope=True)
    with pytest.warns(UserWarning, match=r"assuming 8 \(dim 64, 2 layers: Llama 3.1's"):
        loaded = load_model(tmp_path, device="cpu", progress=False)
    assert loaded.cfg.rope_scaling == LLAMA31_ROPE_SCALING and not loaded.cfg.tie_word_embeddings
    # Only the exact Llama 3.2 shapes get factor 32 (and, without shards to read, tied embeddings).
    for dim, layers, factor in [(2048, 16, 32.0), (3072, 28, 32.0), (2048, 24, 8.0), (3072, 16, 8.0)]:
        params = {**LLAMA32_1B_PARAMS, "dim": dim, "n_layers": layers}
        with pytest.warns(UserWarning, match=f"assuming {factor:g} "):
            c = LlamaConfig.from_params(params)
        assert c.rope_scaling["factor"] == factor and c.tie_word_embeddings is (factor == 32.0)
        assert LlamaConfig.from_params(params, rope_scaling_factor=4).rope_scaling["factor"] == 4.0


def test_meta_checkpoint_errors(tmp_path):
    model = tiny_model(seed=9, vocab_size=LLAMA3_VOCAB, intermediate_size=176, num_attention_heads=4)
    write_meta_checkpoint(model, tmp_path, n_shards=2, embed_axis=0)
    (tmp_path / "consolidated.01.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LoadError, match=r"consolidated\.01\.pth could not be read.*never unpickled"):
        load_model(tmp_path, device="cpu", progress=False)
    torch.save(
        {"layers.0.attention.wq.weight": object()}, tmp_path / "consolidated.01.pth"
    )  # a pickled object
    with pytest.raises(LoadError, match="consolidated.01.pth could not be read"):
        load_model(tmp_path, device="cpu", progress=False)
    for f in tmp_path.glob("*.pth"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="params.json but no consolidated"):
        load_model(tmp_path, device="cpu", progress=False)


# ------------------------------------------------------------------- Meta params.json and load_config


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


# ------------------------------------------------------------------------------------- GGUF metadata


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


def test_gguf_tokenizer_sidecar_is_keyed_by_content_not_size_and_mtime(tmp_path, monkeypatch):
    import os

    from llama3_lab.tokenizer import GGUF_SIDECAR_FORMAT, read_gguf_tokenizer_fields, repair_gguf_sidecar

    monkeypatch.setenv("LLAMA3_LAB_HOME", str(tmp_path / "home"))
    path = _write_gguf(tmp_path / "a.gguf", with_output=False, rope_freqs=None)
    assert read_gguf_tokenizer_fields(path)["tokenizer.ggml.tokens"][17] == "t17"
    (sidecar,) = (tmp_path / "home" / "tokenizers").iterdir()
    assert sidecar.name.endswith(f"-v{GGUF_SIDECAR_FORMAT}.json")
    # The same size and mtime with other bytes: read again, not served from the old sidecar.
    stat = path.stat()
    path.write_bytes(path.read_bytes().replace(b"t17", b"x17"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert read_gguf_tokenizer_fields(path)["tokenizer.ggml.tokens"][17] == "x17"
    # The same bytes elsewhere share the sidecar and report their own path.
    copy = tmp_path / "copy.gguf"
    shutil.copy(path, copy)
    assert read_gguf_tokenizer_fields(copy)["path"] == str(copy)
    assert len(list((tmp_path / "home" / "tokenizers").iterdir())) == 2
    # repair: a sidecar whose fields were edited is found and rewritten.
    from llama3_lab.assets import sha256_file

    sha = sha256_file(copy)
    assert repair_gguf_sidecar(copy, sha) is None
    (edited,) = [p for p in (tmp_path / "home" / "tokenizers").iterdir() if sha[:32] in p.name]
    edited.write_text(edited.read_text().replace("x17", "y17"))
    assert read_gguf_tokenizer_fields(copy)["tokenizer.ggml.tokens"][17] == "y17"  # trusted on load...
    assert repair_gguf_sidecar(copy, sha) == "its fields differ from the GGUF's"  # ...repaired on demand
    assert read_gguf_tokenizer_fields(copy)["tokenizer.ggml.tokens"][17] == "x17"
    edited.write_text("{not json")
    assert repair_gguf_sidecar(copy, sha) == "unreadable or of another format"


# --------------------------------------------------------------------------------------------- GGUF


def test_tiny_gguf_file_loads_with_llamacpp_layout(tmp_path):
    import gguf

    model = tiny_model(seed=11, tie_word_embeddings=False)
    cfg = model.cfg
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    gguf_names = {
        "embed.weight": "token_embd.weight",
        "ln_final.weight": "output_norm.weight",
        "unembed.weight": "output.weight",
        "ln1.weight": "attn_norm.weight",
        "ln2.weight": "ffn_norm.weight",
        "attn.q_proj.weight": "attn_q.weight",
        "attn.k_proj.weight": "attn_k.weight",
        "attn.v_proj.weight": "attn_v.weight",
        "attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for name, p in model.named_parameters():
        w = p.detach()
        if name.endswith("q_proj.weight"):
            w = hf_to_gguf_qk(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = hf_to_gguf_qk(w, cfg.num_key_value_heads)
        if name.startswith("blocks."):
            _, layer, rest = name.split(".", 2)
            target = f"blk.{layer}.{gguf_names[rest]}"
        else:
            target = gguf_names[name]
        writer.add_tensor(target, w.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    loaded = load_model(path, device="cpu", progress=False)
    torch.testing.assert_close(logits_of(loaded), logits_of(model), rtol=0, atol=0)
    assert loaded.tokenizer is None  # this file carries no vocabulary

    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(LoadError, match=r"tiny\.gguf is not a readable GGUF file"):
        load_model(path, device="cpu", progress=False)


# ------------------------------------------------------------------------------------ embedded model


def test_smollm2_config_cache_and_tokenizer(smollm2):
    from llama3_lab.assets import cache_dir

    cfg = smollm2.cfg
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        30,
        576,
        9,
        3,
    )
    assert cfg.tie_word_embeddings and smollm2.unembed.weight is smollm2.embed.weight
    assert sum(p.numel() for p in smollm2.parameters()) == 134_515_008
    cached = cache_dir() / "models" / "smollm2-135m-instruct"
    assert (cached / "config.json").is_file() and (cached / "model.safetensors").is_file()
    assert smollm2.tokenizer.bos_id == 1 and smollm2.tokenizer.eos_id == 2


def transformers_from_gguf(cfg) -> torch.nn.Module:  # noqa: ANN001
    """transformers' LlamaForCausalLM from the GGUF file, dequantized by ``gguf`` and un-permuted by
    transformers' own GGUF code: an independent check of our layout conversion."""
    import gguf
    import transformers
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from llama3_lab.assets import asset_path
    from llama3_lab.loading.hf import hf_config_dict

    reader = gguf.GGUFReader(asset_path("smollm2-135m-instruct.gguf"))
    processor = LlamaTensorProcessor(
        {"num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads}
    )
    names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        weights = processor.process(
            gguf.quants.dequantize(tensor.data, tensor.tensor_type), tensor.name
        ).weights
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{names[parts[2]]}.weight"
        else:
            name = f"{names[parts[0]]}.weight"
        state[name] = torch.from_numpy(np.array(weights, dtype=np.float32))
    config = transformers.LlamaConfig(**hf_config_dict(cfg))
    return transformers_from_state(config, state, "eager", torch.float32)


def test_smollm2_matches_transformers_on_the_same_dequantized_weights(smollm2):
    hf = transformers_from_gguf(smollm2.cfg)
    ids = smollm2.tokenizer.encode_chat(
        [{"role": "user", "content": "Explain RoPE in one sentence, please."}]
    )
    tokens = torch.tensor([ids])
    with torch.no_grad():
        reference = hf(tokens).logits
        ours = smollm2(tokens)
    error = (ours - reference).abs().max().item()
    assert error <= 2e-4, f"max |Δlogit| = {error:.3g}"  # REFERENCE saw 9.3e-5
    assert torch.equal(ours[0].argmax(-1), reference[0].argmax(-1))


def test_smollm2_greedy_chat_answer_names_paris(smollm2):
    tok = smollm2.tokenizer
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    cache = KVCache.allocate(smollm2, max_length=len(prompt) + 24)
    answer: list[int] = []
    with torch.inference_mode():
        logits = smollm2(torch.tensor(prompt), cache=cache)
        for _ in range(20):
            token = int(logits[0, -1].argmax())
            if token in tok.stop_ids:
                break
            answer.append(token)
            logits = smollm2(torch.tensor([token]), cache=cache)
    text = tok.decode(answer)
    assert "Paris" in text, text
    assert text.startswith("The capital of France is Paris")


@pytest.mark.smollm2
@pytest.mark.slow
def test_converted_model_is_stamped_verified_rebuilt_when_stale_and_repaired(tmp_path, monkeypatch, capsys):
    from llama3_lab.assets import ASSETS, fetch_assets, sha256_file
    from llama3_lab.loading import ChecksumError, repair
    from llama3_lab.loading.converted import STAMP, conversion_fingerprint

    home = tmp_path / "home"
    for name, real in fetch_assets(progress=False).items():  # the verified assets, linked: nothing copied
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(real)
    monkeypatch.setenv("LLAMA3_LAB_HOME", str(home))
    model = load_model("smollm2-135m-instruct", device="cpu", progress=False)
    directory = home / "models" / "smollm2-135m-instruct"
    stamp = json.loads((directory / STAMP).read_text())
    assert stamp["source_sha256"] == ASSETS["smollm2-135m-instruct.gguf"].sha256
    assert stamp["conversion"] == conversion_fingerprint()
    assert stamp["files"] == {f: sha256_file(directory / f) for f in ("config.json", "model.safetensors")}

    _flip_a_weight_bit(directory / "model.safetensors")
    with pytest.raises(
        ChecksumError, match=r"smollm2-135m-instruct/model\.safetensors has sha256.*fetch --repair"
    ):
        load_model("smollm2-135m-instruct", device="cpu", progress=False)
    report = repair(progress=False)
    assert "models/smollm2-135m-instruct: model.safetensors has sha256" in report[len(ASSETS)]
    assert report[len(ASSETS)].endswith("converted again")
    assert report[: len(ASSETS)] == [f"{name}: ok" for name in ASSETS]
    assert report[-1].startswith("smollm2-135m-instruct.gguf tokenizer sidecar: ")
    assert repair(progress=False)[len(ASSETS) :] == [
        "models/smollm2-135m-instruct: ok",
        "smollm2-135m-instruct.gguf tokenizer sidecar: ok",
    ]
    repaired = load_model("smollm2-135m-instruct", device="cpu", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), repaired.parameters(), strict=True))

    # Made by other conversion code: converted again on load, as on a clean machine.
    stamp = json.loads((directory / STAMP).read_text())
    (directory / STAMP).write_text(json.dumps({**stamp, "conversion": "0" * 16}))
    capsys.readouterr()
    load_model("smollm2-135m-instruct", device="cpu", progress=True)
    assert (
        "converting smollm2-135m-instruct again: conversion.json says conversion '0000"
        in capsys.readouterr().out
    )
    assert json.loads((directory / STAMP).read_text())["conversion"] == conversion_fingerprint()
    (directory / "config.json").write_text((directory / "config.json").read_text().replace("576", "577"))
    with pytest.raises(
        ChecksumError, match=r"config\.json has sha256 .* edited or corrupted.*fetch --repair"
    ):
        load_model("smollm2-135m-instruct", device="cpu", progress=False)
