"""Bad input, one table: each case raises a clear error naming the cause and the fix, and loses nothing.

Each row provokes one mistake a user makes (a missing or broken weight file in each format, a config with a
wrong field, a shape that does not match, an unknown hook, a prompt longer than the context, sampling
parameters out of range, an unknown asset, ...). The test asserts the exception type, that the message
matches the row's ``cause`` and ``fix`` patterns, and that nothing was left behind: no half-written file
(``*.part``) in the scratch directory and no hook still registered on the shared model.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file

from llama3_lab.assets import asset_path
from llama3_lab.config import ConfigError, LlamaConfig
from llama3_lab.fast import FastPathError
from llama3_lab.generation import GenerationError, generate_tokens, sample_next
from llama3_lab.hook_points import HookNameError, HookReturnError
from llama3_lab.kv_cache import KVCache
from llama3_lab.loading import LoadError, load_model
from llama3_lab.memory import MemoryBudgetError
from llama3_lab.packaged import PackageError
from llama3_lab.sampling import NonFiniteLogitsError
from llama3_lab.session import Session

MODEL = tiny_model(seed=11)


def _saved(scratch: Path) -> Path:
    """A tiny model saved in the Hugging Face layout inside ``scratch``."""
    directory = scratch / "hf"
    MODEL.save_pretrained(directory)
    return directory


def _edit_tensors(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")
    return directory


def _edit_config(directory: Path, **changes: Any) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _load(directory: Path) -> Any:
    return load_model(directory, device="cpu", progress=False)


# -- each provoker takes a scratch directory and makes the mistake ---------------------------------------


def hf_no_weights(scratch: Path) -> Any:
    directory = _saved(scratch)
    (directory / "model.safetensors").unlink()
    return _load(directory)


def hf_pickled_bin_only(scratch: Path) -> Any:
    directory = _saved(scratch)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    return _load(directory)


def hf_truncated(scratch: Path) -> Any:
    path = _saved(scratch) / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _load(path.parent)


def hf_garbage(scratch: Path) -> Any:
    path = _saved(scratch) / "model.safetensors"
    path.write_bytes(b"\xff" * 4096)
    return _load(path.parent)


def hf_missing_tensor(scratch: Path) -> Any:
    directory = _edit_tensors(_saved(scratch), lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    return _load(directory)


def hf_wrong_shape(scratch: Path) -> Any:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    return _load(_edit_tensors(_saved(scratch), edit))


def hf_config_more_layers(scratch: Path) -> Any:
    return _load(_edit_config(_saved(scratch), num_hidden_layers=3))


def hf_config_wrong_type(scratch: Path) -> Any:
    return _load(_edit_config(_saved(scratch), num_attention_heads="8"))


def hf_config_not_json(scratch: Path) -> Any:
    directory = _saved(scratch)
    (directory / "config.json").write_text("{'hidden_size': 64,")
    return _load(directory)


def not_a_model_dir(scratch: Path) -> Any:
    (scratch / "empty").mkdir()
    return _load(scratch / "empty")


def unknown_model_name(scratch: Path) -> Any:
    return load_model("llama-9000", device="cpu", progress=False)


def meta_unreadable_shard(scratch: Path) -> Any:
    directory = scratch / "meta"
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 8}))
    (directory / "consolidated.00.pth").write_bytes(b"not a checkpoint")
    return _load(directory)


def meta_no_shards(scratch: Path) -> Any:
    directory = scratch / "meta"
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 8}))
    return _load(directory)


def gguf_not_gguf(scratch: Path) -> Any:
    path = scratch / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 300)
    return _load(path)


def config_heads_do_not_divide(scratch: Path) -> Any:
    return LlamaConfig.tiny(num_attention_heads=6, num_key_value_heads=4)


def config_bad_eps(scratch: Path) -> Any:
    return LlamaConfig.tiny(rms_norm_eps=-1.0)


def token_outside_vocab(scratch: Path) -> Any:
    return MODEL(torch.tensor([[1, 2, MODEL.cfg.vocab_size]]))


def float_token_ids(scratch: Path) -> Any:
    return MODEL(torch.tensor([[1.0, 2.0]]))


def empty_tokens(scratch: Path) -> Any:
    return MODEL(torch.zeros(1, 0, dtype=torch.long))


def prompt_longer_than_context(scratch: Path) -> Any:
    return MODEL(torch.zeros(1, MODEL.cfg.max_position_embeddings + 1, dtype=torch.long))


def generation_past_the_context(scratch: Path) -> Any:
    return generate_tokens(MODEL, [1, 2, 3], max_new_tokens=MODEL.cfg.max_position_embeddings)


def unknown_hook_in_run_with_hooks(scratch: Path) -> Any:
    return MODEL.run_with_hooks([1, 2, 3], fwd_hooks=[("blocks.0.hook_patern", lambda t, hook: None)])


def unknown_hook_in_cache_filter(scratch: Path) -> Any:
    return MODEL.run_with_cache(
        [1, 2, 3], names_filter=["blocks.0.attn.hook_pattern", "blocks.9.hook_resid_post"]
    )


def per_layer_name_without_layer(scratch: Path) -> Any:
    return MODEL.run_with_cache([1, 2, 3], names_filter=("pattern", None))


def cache_over_budget(scratch: Path) -> Any:
    return MODEL.run_with_cache([1, 2, 3], budget_bytes=1024)


def kv_cache_wrong_batch(scratch: Path) -> Any:
    cache = KVCache.allocate(MODEL, batch_size=1, max_length=8)
    return MODEL(torch.zeros(2, 3, dtype=torch.long), cache=cache)


def kv_cache_overflow(scratch: Path) -> Any:
    cache = KVCache.allocate(MODEL, batch_size=1, max_length=4)
    return MODEL(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def negative_temperature(scratch: Path) -> Any:
    return sample_next(torch.zeros(5), temperature=-0.5)


def top_p_zero(scratch: Path) -> Any:
    return sample_next(torch.zeros(5), temperature=1.0, top_p=0.0)


def top_k_zero(scratch: Path) -> Any:
    return sample_next(torch.zeros(5), temperature=1.0, top_k=0)


def negative_max_new_tokens(scratch: Path) -> Any:
    return generate_tokens(MODEL, [1, 2, 3], max_new_tokens=-1)


def empty_prompt(scratch: Path) -> Any:
    return Session(MODEL, [], temperature=0)


def rewind_past_the_prompt(scratch: Path) -> Any:
    session = Session(MODEL, [1, 2, 3], temperature=0)
    session.step(2)
    return session.rewind(3)


def unknown_asset(scratch: Path) -> Any:
    return asset_path("llama3/params.json")


# -- hooks: what a hook returns, filters that select nothing, the fast decoder on a placed model ------


def hook_returns_one_position(scratch: Path) -> Any:
    return MODEL.run_with_hooks([1, 2, 3], [("blocks.0.hook_resid_mid", lambda resid, hook: resid[:, -1:])])


def hook_returns_float64(scratch: Path) -> Any:
    return MODEL.run_with_hooks([1, 2, 3], [("blocks.1.attn.hook_z", lambda z, hook: z.double())])


def hook_returns_a_number(scratch: Path) -> Any:
    return MODEL.run_with_hooks([1, 2, 3], [("blocks.1.mlp.hook_post", lambda post, hook: 0.0)])


def filter_selects_nothing(scratch: Path) -> Any:
    return MODEL.run_with_cache([1, 2, 3], names_filter=lambda name: "resid_psot" in name)


def empty_names_list(scratch: Path) -> Any:
    return MODEL.run_with_cache([1, 2, 3], names_filter=[])


def fast_decoder_on_a_placed_model(scratch: Path) -> Any:
    from llama3_lab.fast import FastDecoder

    device_map = {"embed": "cpu", "hook_embed": "cpu", "rope": "cpu", "ln_final": "cpu", "unembed": "cpu"}
    device_map |= {"blocks.0": "cpu", "blocks.1": "disk"}
    placed = load_model(
        _saved(scratch), device="cpu", progress=False, device_map=device_map, offload_folder=scratch / "off"
    )
    return FastDecoder(placed, max_length=16, compile=None)


def generate_fast_misspelt(scratch: Path) -> Any:
    return list(generate_tokens(MODEL, [1, 2, 3], 4, temperature=0, fast="yes"))


def package_capacity_not_a_multiple_of_64(scratch: Path) -> Any:
    from llama3_lab.packaged import build_package

    return build_package(MODEL, capacity=50, echo=None)


def package_corrupt(scratch: Path) -> Any:
    from llama3_lab.packaged import load_package

    broken = scratch / "decode-broken.pt2"
    broken.write_bytes(b"PK truncated")
    return load_package(broken)


# -- trust on the loading side: corrupt converted models, non-finite and integer weights ----------------


def converted_model_corrupt(scratch: Path) -> Any:
    """The embedded model's converted cache with one weight bit flipped (a tiny stand-in, stamped)."""
    import os

    from llama3_lab.loading.converted import write_stamp

    home = scratch / "home"
    home.mkdir()
    (home / "smollm2-135m-instruct.gguf").symlink_to(asset_path("smollm2-135m-instruct.gguf"))
    directory = home / "models" / "smollm2-135m-instruct"
    MODEL.save_pretrained(directory)
    write_stamp(directory, "smollm2-135m-instruct")
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0x01  # the last float32's lowest mantissa bit: still finite, nearly the same
    weights.write_bytes(bytes(data))
    previous = os.environ.get("LLAMA3_LAB_HOME")
    os.environ["LLAMA3_LAB_HOME"] = str(home)
    try:
        return load_model("smollm2-135m-instruct", device="cpu", progress=False)
    finally:
        if previous is None:
            del os.environ["LLAMA3_LAB_HOME"]
        else:
            os.environ["LLAMA3_LAB_HOME"] = previous


def nan_weight(scratch: Path) -> Any:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")

    return _load(_edit_tensors(_saved(scratch), edit))


def integer_weight(scratch: Path) -> Any:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)

    return _load(_edit_tensors(_saved(scratch), edit))


def integer_dtype_argument(scratch: Path) -> Any:
    return load_model(_saved(scratch), device="cpu", dtype=torch.int32, progress=False)


# -- trust: no silent wrong result in generation, sessions and the CLI (provokers) ----------------------


def nan_written_by_a_hook(scratch: Path) -> Any:
    with MODEL.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda resid, hook: resid * float("nan"))]):
        return list(generate_tokens(MODEL, [1, 2, 3], max_new_tokens=2, temperature=0))


def nan_logits_in_a_session_step(scratch: Path) -> Any:
    session = Session(MODEL, [1, 2, 3], temperature=0.7, seed=0)
    with MODEL.hooks(fwd_hooks=[("unembed.hook_out", lambda logits, hook: logits + float("inf"))]):
        return session.step()


def nan_temperature(scratch: Path) -> Any:
    return sample_next(torch.zeros(5), temperature=float("nan"))


def negative_record_top_k(scratch: Path) -> Any:
    return Session(MODEL, [1, 2, 3], temperature=0, record_top_k=-1)


def negative_keep_full(scratch: Path) -> Any:
    return Session(MODEL, [1, 2, 3], temperature=0, keep_full=-1)


def text_seed(scratch: Path) -> Any:
    return Session(MODEL, [1, 2, 3], temperature=0, seed="42")


def step_n_after_the_end(scratch: Path) -> Any:
    session = Session(MODEL, [1, 2, 3], temperature=0, stop=list(range(MODEL.cfg.vocab_size)))
    session.step()
    return session.step(3)


def logit_lens_of_a_compact_record(scratch: Path) -> Any:
    session = Session(MODEL, [1, 2, 3], temperature=0, keep_full=1)
    session.step(2)
    return session.history[0].logit_lens


def stepper_layer_out_of_range(scratch: Path) -> Any:
    from llama3_lab.views import StepperView

    return StepperView(MODEL, [1, 2, 3], layer=MODEL.cfg.num_hidden_layers)


def stepper_head_out_of_range(scratch: Path) -> Any:
    from llama3_lab.views import StepperView

    return StepperView(MODEL, [1, 2, 3], head=-1)


def cli_integer_dtype(scratch: Path) -> Any:
    from llama3_lab.cli_generate import dtype_arg

    return dtype_arg("int32")


def plan_unknown_model(scratch: Path) -> Any:
    from llama3_lab.cli import plan_text

    return plan_text("llama3.1-7b", gpus="2x80GB")


def plan_context_beyond_the_model(scratch: Path) -> Any:
    from llama3_lab.cli import plan_text

    return plan_text("llama3-70b", gpus="2x80GB", context=9000)


@dataclass(frozen=True)
class Case:
    provoke: Callable[[Path], Any]
    error: type[BaseException]
    cause: str  # a regex the message must match: what is wrong
    fix: str  # a regex the message must match: what to do


# -- browser views (task: interactive views) -------------------------------------------------------------


def attention_view_layer_out_of_range(scratch: Path) -> Any:
    from llama3_lab.views import AttentionView

    return AttentionView(MODEL, [1, 5, 7], layer=5)


def token_values_length_mismatch(scratch: Path) -> Any:
    from llama3_lab.views import TokenValuesView

    return TokenValuesView(["a", "b", "c"], {"loss": [0.1, 0.2]})


def token_values_unknown_channel(scratch: Path) -> Any:
    from llama3_lab.views import TokenValuesView

    return TokenValuesView(["a", "b"], {"loss": [0.1, 0.2]}, channel="los")


def token_values_ids_for_tokens(scratch: Path) -> Any:
    from llama3_lab.views import TokenValuesView

    return TokenValuesView([5, 7], {"loss": [0.1, 0.2]})


def logit_lens_view_too_wide(scratch: Path) -> Any:
    from llama3_lab.views import LogitLensView

    return LogitLensView(MODEL, [1, 5, 7], width=64)


def logit_lens_target_without_tokenizer(scratch: Path) -> Any:
    from llama3_lab.views import LogitLensView

    return LogitLensView(MODEL, [1, 5, 7], target=" Paris")


def stepper_view_rewind_past_the_steps(scratch: Path) -> Any:
    from llama3_lab.views import StepperView

    view = StepperView(MODEL, [1, 5, 7])
    view.step(1)
    return view.rewind_to(3)


# -- ragged batches and padding (task h5) --


def float_token_id_list(scratch: Path) -> Any:
    return MODEL.run_with_hooks([1.5, 5.0])


def mask_of_the_wrong_shape(scratch: Path) -> Any:
    return MODEL(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3, dtype=torch.bool))


def row_all_padding(scratch: Path) -> Any:
    return MODEL(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0], [0, 0, 0]]))


def text_mixed_with_ids(scratch: Path) -> Any:
    return MODEL.run_with_cache(["The cat", [1, 2, 3]])


def pad_position_read_as_last(scratch: Path) -> Any:
    _, cache = MODEL.run_with_cache([[1, 2], [3, 4, 5]], names_filter="blocks.0.hook_resid_post")
    return cache.at("blocks.0.hook_resid_post", -1)


def position_map_that_does_not_fit(scratch: Path) -> Any:
    from llama3_lab.analysis import logit_diff_metric, patch_resid

    return patch_resid(MODEL, [[1, 2, 3]], [[4, 5]], logit_diff_metric(1, 2), layers=[0], position_map={1: 7})


# -- sparse autoencoders (task: SAEs and transcoders) -------------------------------------------------------


def _sae(architecture: str = "topk", d_in: int = 64, **cfg: Any) -> Any:
    from llama3_lab.sae import SAE, SAEConfig

    k = cfg.pop("k", 4 if "topk" in architecture else None)
    hook = cfg.pop("hook_name", "blocks.0.hook_resid_post")
    return SAE(SAEConfig(d_in=d_in, d_sae=16, architecture=architecture, k=k, hook_name=hook, **cfg))


def _saved_sae(scratch: Path, architecture: str = "topk") -> Path:
    from llama3_lab.sae import save_sae

    return save_sae(_sae(architecture), scratch / "sae")


def sae_dir_without_weights(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch)
    (directory / "sae_weights.safetensors").unlink()
    return load_sae(directory)


def sae_not_a_directory(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    return load_sae(scratch / "nowhere")


def sae_cfg_not_json(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch)
    (directory / "cfg.json").write_text("{d_in: 64")
    return load_sae(directory)


def sae_weights_not_safetensors(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch)
    (directory / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    return load_sae(directory)


def sae_tensor_wrong_shape(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch)
    tensors = load_file(directory / "sae_weights.safetensors")
    tensors["W_enc"] = tensors["W_enc"].T.contiguous()  # [d_sae, d_in], as some other libraries store it
    save_file(tensors, directory / "sae_weights.safetensors")
    return load_sae(directory)


def sae_jumprelu_without_threshold(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch, "jumprelu")
    tensors = load_file(directory / "sae_weights.safetensors")
    del tensors["threshold"]
    save_file(tensors, directory / "sae_weights.safetensors")
    return load_sae(directory)


def sae_unknown_architecture(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch)
    config = json.loads((directory / "cfg.json").read_text())
    (directory / "cfg.json").write_text(json.dumps({**config, "architecture": "gated"}))
    return load_sae(directory)


def sae_topk_without_k(scratch: Path) -> Any:
    from llama3_lab.sae import load_sae

    directory = _saved_sae(scratch)
    config = json.loads((directory / "cfg.json").read_text())
    del config["k"]
    (directory / "cfg.json").write_text(json.dumps(config))
    return load_sae(directory)


def sae_norm_factor_missing(scratch: Path) -> Any:
    return _sae(normalize_activations="expected_average_only_in")


def sae_d_in_does_not_match_the_hook(scratch: Path) -> Any:
    from llama3_lab.sae import attach_sae

    return attach_sae(MODEL, _sae(d_in=48))


def sae_at_the_attention_pattern(scratch: Path) -> Any:
    from llama3_lab.sae import attach_sae

    return attach_sae(MODEL, _sae(), "blocks.0.attn.hook_pattern")


def sae_at_an_unknown_hook(scratch: Path) -> Any:
    from llama3_lab.sae import attach_sae

    return attach_sae(MODEL, _sae(hook_name="blocks.0.hook_resid_pots"))


def sae_spliced_twice_at_one_hook(scratch: Path) -> Any:
    from llama3_lab.sae import model_with_sae

    with model_with_sae(MODEL, _sae()), model_with_sae(MODEL, _sae()):
        pass


def sae_detach_what_is_not_spliced(scratch: Path) -> Any:
    from llama3_lab.sae import detach_sae

    return detach_sae(MODEL, "blocks.1.hook_resid_post")


def sae_per_token_norm_decode_without_input(scratch: Path) -> Any:
    sae = _sae(normalize_activations="layer_norm")
    return sae.decode(torch.zeros(2, 16))


def sae_train_jumprelu(scratch: Path) -> Any:
    from llama3_lab.sae.training import train_sae

    return train_sae(MODEL, "blocks.0.hook_resid_post", ["text"], architecture="jumprelu")


def sae_dashboard_feature_out_of_range(scratch: Path) -> Any:
    from llama3_lab.sae.dashboard import logit_effect

    return logit_effect(MODEL, _sae(), 16)


CASES = [
    Case(hf_no_weights, FileNotFoundError, r"no model\.safetensors", r"found: config\.json"),
    Case(hf_pickled_bin_only, FileNotFoundError, r"no model\.safetensors", r"pytorch_model\.bin"),
    Case(
        hf_truncated,
        LoadError,
        r"model\.safetensors.*truncated or corrupt",
        r"Download or copy the file again",
    ),
    Case(hf_garbage, LoadError, r"model\.safetensors.*not a readable", r"Download or copy the file again"),
    Case(
        hf_missing_tensor, LoadError, r"missing 1 tensor\(s\): blocks\.1\.mlp\.up_proj\.weight", r"same model"
    ),
    Case(hf_wrong_shape, LoadError, r"k_proj\.weight: shape \[16, 64\] does not match", r"\[32, 64\]"),
    Case(hf_config_more_layers, LoadError, r"missing \d+ tensor\(s\): blocks\.2\.", r"same model"),
    Case(hf_config_wrong_type, ConfigError, r"num_attention_heads", r"int|integer"),
    Case(hf_config_not_json, ConfigError, r"config\.json", r"JSON"),
    Case(not_a_model_dir, FileNotFoundError, r"not a model directory", r"config\.json.*params\.json.*gguf"),
    Case(unknown_model_name, FileNotFoundError, r"'llama-9000'", r"smollm2-135m-instruct"),
    Case(meta_unreadable_shard, LoadError, r"consolidated\.00\.pth could not be read", r"never unpickled"),
    Case(meta_no_shards, FileNotFoundError, r"params\.json but no consolidated", r"consolidated\.00\.pth"),
    Case(gguf_not_gguf, LoadError, r"model\.gguf is not a readable GGUF file", r"gguf|GGUF"),
    Case(config_heads_do_not_divide, ConfigError, r"num_attention_heads", r"num_key_value_heads"),
    Case(config_bad_eps, ConfigError, r"rms_norm_eps", r"1e-0?5|1e-0?6"),
    Case(token_outside_vocab, ValueError, r"token id 97 is outside", r"another model's tokenizer"),
    Case(float_token_ids, TypeError, r"integer tensor", r"token ids"),
    Case(empty_tokens, ValueError, r"tokens is empty", r"at least one token"),
    Case(prompt_longer_than_context, ValueError, r"prompt too long for the context", r"Shorten the prompt"),
    Case(
        generation_past_the_context, GenerationError, r"exceed the model's context", r"Lower max_new_tokens"
    ),
    Case(
        unknown_hook_in_run_with_hooks,
        HookNameError,
        r"blocks\.0\.hook_patern",
        r"blocks\.0\.attn\.hook_pattern",
    ),
    Case(
        unknown_hook_in_cache_filter,
        HookNameError,
        r"blocks\.9\.hook_resid_post",
        r"blocks\.\d\.hook_resid_post",
    ),
    Case(per_layer_name_without_layer, ValueError, r"'pattern' exists once per layer", r"give the layer"),
    Case(cache_over_budget, MemoryBudgetError, r"over the budget", r"names_filter"),
    Case(kv_cache_wrong_batch, ValueError, r"allocated for batch 1, tokens have batch 2", r"batch"),
    Case(kv_cache_overflow, ValueError, r"the cache holds 4 positions", r"larger cache"),
    Case(negative_temperature, GenerationError, r"temperature must be a number >= 0", r"temperature=0"),
    Case(top_p_zero, GenerationError, r"top_p must be in \(0, 1\]", r"top_p=1\.0"),
    Case(top_k_zero, GenerationError, r"top_k must be None or an int >= 1", r"top_k=None"),
    Case(negative_max_new_tokens, GenerationError, r"max_new_tokens must be an int >= 0", r"-1"),
    Case(empty_prompt, GenerationError, r"the prompt is empty", r"bos_id"),
    Case(rewind_past_the_prompt, GenerationError, r"can rewind between 0 and 2", r"new session"),
    Case(unknown_asset, KeyError, r"Unknown asset 'llama3/params\.json'", r"known assets are"),
    # browser views (task: interactive views)
    Case(attention_view_layer_out_of_range, ValueError, r"layer must be an int in 0\.\.1", r"got 5"),
    Case(token_values_length_mismatch, ValueError, r"'loss' has 2 values but there are 3 tokens", r"NaN"),
    Case(token_values_unknown_channel, ValueError, r"channel 'los' is not one", r"\['loss'\]"),
    Case(token_values_ids_for_tokens, TypeError, r"token strings", r"token_strings\(ids\)"),
    Case(logit_lens_view_too_wide, ValueError, r"width must be an int in 1\.\.32", r"got 64"),
    Case(logit_lens_target_without_tokenizer, ValueError, r"needs a tokenizer", r"give an id"),
    Case(stepper_view_rewind_past_the_steps, ValueError, r"step must be an int in 0\.\.1", r"got 3"),
    # -- hooks: what a hook returns, filters that select nothing, the fast decoder on a placed model --
    Case(hook_returns_one_position, HookReturnError, r"resid_mid returned shape \[1, 1, 64\]", r"expand_as"),
    Case(hook_returns_float64, HookReturnError, r"returned dtype torch\.float64", r"\.to\(tensor\.dtype\)"),
    Case(hook_returns_a_number, HookReturnError, r"returned a float, not a tensor", r"or None"),
    Case(filter_selects_nothing, HookNameError, r"false for every hook point", r"blocks\.0\.hook_resid_post"),
    Case(empty_names_list, HookNameError, r"\[\] selects no hook point", r"names_filter=None"),
    Case(fast_decoder_on_a_placed_model, FastPathError, r"placed over cpu, disk", r"eager path"),
    Case(generate_fast_misspelt, GenerationError, r"fast='yes'", r"'auto' \(the default\), True, False"),
    Case(
        package_capacity_not_a_multiple_of_64, PackageError, r"capacity=50", r"multiple of 64.*capacity=512"
    ),
    Case(
        package_corrupt,
        PackageError,
        r"decode-broken\.pt2 could not be loaded",
        r"llama3-lab compile MODEL --force",
    ),
    # -- trust on the loading side: corrupt converted models, non-finite and integer weights
    Case(
        converted_model_corrupt,
        LoadError,
        r"smollm2-135m-instruct/model\.safetensors has sha256 \w+ where \w+ was recorded",
        r"llama3-lab fetch --repair",
    ),
    Case(
        nan_weight,
        LoadError,
        r"model\.layers\.1\.mlp\.down_proj\.weight: 1 of 7,168 values .* NaN or infinite",
        r"allow_nonfinite=True",
    ),
    Case(
        integer_weight,
        LoadError,
        r"model\.norm\.weight: dtype int32 where the floating-point weight ln_final\.weight belongs",
        r"load a floating-point \(bf16/fp16/fp32\) copy",
    ),
    Case(
        integer_dtype_argument,
        ValueError,
        r"load_model\(dtype=torch\.int32\): weights must be stored in a floating-point dtype",
        r"torch\.float32, torch\.bfloat16, torch\.float16",
    ),
    # -- ragged batches and padding (task h5) --
    Case(float_token_id_list, TypeError, r"integer tensor.*float32", r"list of ints"),
    Case(
        mask_of_the_wrong_shape,
        ValueError,
        r"attention_mask has shape \(2, 3\).*\(2, 4\)",
        r"one entry per token",
    ),
    Case(
        row_all_padding, ValueError, r"rows \[1\] of the attention mask are all padding", r"Drop those rows"
    ),
    Case(
        text_mixed_with_ids,
        TypeError,
        r"row 0: text, row 1: ids",
        r"all texts, all chats or all token-id lists",
    ),
    Case(pad_position_read_as_last, ValueError, r"position -1 is padding in rows \[0\]", r"pos='last'"),
    Case(
        position_map_that_does_not_fit,
        ValueError,
        r"clean position 7.*clean ones 0\.\.2",
        r"map positions that exist",
    ),
    # -- trust: no silent wrong result in generation, sessions and the CLI --------------------------
    Case(
        nan_written_by_a_hook, NonFiniteLogitsError, r"logits of this step are not finite: \d+ NaN", r"a hook"
    ),
    Case(
        nan_logits_in_a_session_step, NonFiniteLogitsError, r"logits for position 3 are not finite", r"weight"
    ),
    Case(
        nan_temperature,
        GenerationError,
        r"temperature must be a number >= 0 and finite.*got nan",
        r"temperature=0",
    ),
    Case(
        negative_record_top_k,
        GenerationError,
        r"record_top_k must be an int >= 1.*got -1",
        r"record_top_k=10",
    ),
    Case(
        negative_keep_full,
        GenerationError,
        r"keep_full must be None or an int >= 0.*got -1",
        r"None to keep all",
    ),
    Case(text_seed, GenerationError, r"seed must be an int or None, got '42'", r"seed=0"),
    Case(step_n_after_the_end, GenerationError, r"the session ended with stop token", r"rewind\(1\)"),
    Case(logit_lens_of_a_compact_record, GenerationError, r"position 3 is compact", r"larger keep_full"),
    Case(
        stepper_layer_out_of_range,
        ValueError,
        r"layer must be None or an int in 0\.\.1 for this model",
        r"got 2",
    ),
    Case(stepper_head_out_of_range, ValueError, r"head must be None or an int in 0\.\.7", r"got -1"),
    Case(cli_integer_dtype, argparse.ArgumentTypeError, r"'int32' is not a dtype", r"bfloat16"),
    Case(
        plan_unknown_model,
        ValueError,
        r"'llama3\.1-7b' is neither a config file nor a known model",
        r"llama3\.1-8b",
    ),
    Case(plan_context_beyond_the_model, ValueError, r"--context 9,000 is beyond", r"--context 8192 or less"),
    # sparse autoencoders (task: SAEs and transcoders)
    Case(sae_dir_without_weights, FileNotFoundError, r"has no sae_weights\.safetensors", r"Found: cfg\.json"),
    Case(
        sae_not_a_directory, FileNotFoundError, r"nowhere is not a directory", r"cfg\.json and\s+sae_weights"
    ),
    Case(sae_cfg_not_json, ValueError, r"cfg\.json is not valid JSON", r"write the config again"),
    Case(sae_weights_not_safetensors, ValueError, r"not a readable safetensors file", r"save it again"),
    Case(sae_tensor_wrong_shape, ValueError, r"W_enc has shape \[16, 64\].*says \[64, 16\]", r"transpose"),
    Case(sae_jumprelu_without_threshold, ValueError, r"has no threshold", r"Check the architecture"),
    Case(sae_unknown_architecture, ValueError, r"unknown SAE architecture 'gated'", r"'jumprelu'"),
    Case(sae_topk_without_k, ValueError, r"TopK SAE needs k", r'Set "k" in cfg\.json'),
    Case(sae_norm_factor_missing, ValueError, r"no norm_scaling_factor", r"Pass norm_scaling_factor"),
    Case(
        sae_d_in_does_not_match_the_hook,
        ValueError,
        r"d_in is 48, but blocks\.0\.hook_resid_post \(B P D\) holds 64",
        r"hook point of that width",
    ),
    Case(sae_at_the_attention_pattern, ValueError, r"hook_pattern has shape 'B H Pq Pk'", r"residual stream"),
    Case(sae_at_an_unknown_hook, HookNameError, r"blocks\.0\.hook_resid_pots", r"blocks\.0\.hook_resid_post"),
    Case(sae_spliced_twice_at_one_hook, ValueError, r"already has an SAE spliced in", r"detach it"),
    Case(
        sae_detach_what_is_not_spliced, ValueError, r"no SAE spliced at 'blocks\.1\.hook_resid_post'", r"none"
    ),
    Case(
        sae_per_token_norm_decode_without_input, ValueError, r"'layer_norm' normalises each token", r"input=x"
    ),
    Case(sae_train_jumprelu, ValueError, r"not 'jumprelu'", r"train one with SAELens"),
    Case(sae_dashboard_feature_out_of_range, ValueError, r"feature must be an int in 0\.\.15", r"got 16"),
]


def _registered_hooks() -> int:
    return len(MODEL.hooked_names())  # module hooks and this thread's context hooks


@pytest.mark.parametrize("case", CASES, ids=[case.provoke.__name__ for case in CASES])
def test_bad_input_is_a_clear_error_that_loses_nothing(case: Case, tmp_path: Path) -> None:
    with pytest.raises(case.error) as raised:
        case.provoke(tmp_path)
    message = str(raised.value)
    assert re.search(case.cause, message, flags=re.S), f"cause not named: {message}"
    assert re.search(case.fix, message, flags=re.S), f"no fix given: {message}"
    assert [p for p in tmp_path.rglob("*.part")] == [], "a half-written file was left behind"
    assert _registered_hooks() == 0, "a hook stayed registered after the error"


def test_the_table_covers_every_provoker() -> None:
    provokers = {
        name
        for name, value in globals().items()
        if callable(value) and getattr(value, "__module__", "") == __name__
    }
    provokers -= {"tiny_model", "test_bad_input_is_a_clear_error_that_loses_nothing", "Case"}
    provokers = {name for name in provokers if not name.startswith(("_", "test_"))}
    assert provokers == {case.provoke.__name__ for case in CASES}
