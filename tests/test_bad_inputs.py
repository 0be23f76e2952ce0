"""Bad input, one table: each case raises a clear error naming the cause and the fix, and loses nothing.

Each row provokes one mistake a user makes (a missing or broken weight file in each format, a config with a
wrong field, a shape that does not match, an unknown hook, a prompt longer than the context, sampling
parameters out of range, an unknown asset, ...). The test asserts the exception type, that the message
matches the row's ``cause`` and ``fix`` patterns, and that nothing was left behind: no half-written file
(``*.part``) in the scratch directory and no hook still registered on the shared model.
"""

from __future__ import annotations

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
from llama3_lab.generation import GenerationError, generate_tokens, sample_next
from llama3_lab.hook_points import HookNameError
from llama3_lab.kv_cache import KVCache
from llama3_lab.loading import LoadError, load_model
from llama3_lab.memory import MemoryBudgetError
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
    return sum(
        len(point._forward_hooks) + len(point._forward_pre_hooks) for point in MODEL.hook_dict.values()
    )


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
