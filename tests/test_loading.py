"""Loading every weight format, layout permutations, clear errors, and SmolLM2 against transformers."""

from __future__ import annotations

import json
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
