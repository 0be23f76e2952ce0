"""SAEs and transcoders: the module against SAELens's documented formulas, its files, and splicing.

``sae-lens`` cannot share this environment (it pins an older TransformerLens), so the references are its
documented formulas (encode ``act((x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc)``, decode
``f @ W_dec + b_dec``, its normalisation modes) written out here independently of ``llama3_lab.sae``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import save_file

from llama3_lab.gradients import run_with_cache_and_grads
from llama3_lab.sae import SAE, SAEConfig, attach_sae, detach_sae, load_sae, model_with_sae, save_sae

D = 64  # the tiny model's d_model
TOKENS = torch.tensor([[1, 5, 7, 9, 3, 11, 2, 4]])
PREFIX = "blocks.0.hook_resid_post.sae."


def random_sae(architecture: str = "standard", d_in: int = D, d_sae: int = 96, seed: int = 0, **cfg) -> SAE:
    """An SAE whose every parameter is random (not the training init), so each formula term matters."""
    hook = cfg.pop("hook_name", "blocks.0.hook_resid_post")
    k = cfg.pop("k", 7 if "topk" in architecture else None)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, hook_name=hook, **cfg))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if name != "threshold" else 0.2))
            if name == "threshold":
                param.abs_()
    return sae.requires_grad_(False)


def reference_encode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """SAELens's documented encode, with its normalisation modes, written out independently."""
    cfg, p = sae.cfg, dict(sae.named_parameters())
    if cfg.normalize_activations == "constant_norm_rescale":
        x = x * (cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True))
    elif cfg.normalize_activations == "expected_average_only_in":
        x = x * cfg.norm_scaling_factor
    elif cfg.normalize_activations == "layer_norm":
        x = (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5)
    pre = (x - p["b_dec"] * cfg.apply_b_dec_to_input) @ p["W_enc"] + p["b_enc"]
    if cfg.architecture == "standard":
        return pre.clamp(min=0)
    if cfg.architecture == "jumprelu":
        return torch.where(pre > p["threshold"], pre, torch.zeros_like(pre)).clamp(min=0)
    values, indices = pre.topk(cfg.k, dim=-1)
    out = torch.zeros_like(pre)
    out.scatter_(-1, indices, values.clamp(min=0))
    return out


def reference_decode(sae: SAE, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    cfg, p = sae.cfg, dict(sae.named_parameters())
    out = f @ p["W_dec"] + p["b_dec"]
    if cfg.normalize_activations == "constant_norm_rescale":
        return out / (cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True))
    if cfg.normalize_activations == "expected_average_only_in":
        return out / cfg.norm_scaling_factor
    if cfg.normalize_activations == "layer_norm":
        mean = x.mean(-1, keepdim=True)
        return out * (x - mean).std(-1, keepdim=True) + mean
    return out


NORMALIZATIONS = [
    {},
    {"apply_b_dec_to_input": False},
    {"normalize_activations": "constant_norm_rescale"},
    {"normalize_activations": "expected_average_only_in", "norm_scaling_factor": 0.37},
    {"normalize_activations": "layer_norm"},
]


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("options", NORMALIZATIONS, ids=lambda o: next(iter(o.values()), "default"))
def test_encode_and_decode_follow_saelens_formulas(architecture: str, options: dict) -> None:
    sae = random_sae(architecture, **options)
    x = torch.randn(3, 5, D) * 4
    f = sae.encode(x)
    torch.testing.assert_close(f, reference_encode(sae, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(f, input=x), reference_decode(sae, f, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), reference_decode(sae, reference_encode(sae, x), x))
    assert 0 < (f != 0).sum(-1).float().mean() < sae.cfg.d_sae  # sparse, not dead, in every architecture
    if architecture == "topk":
        assert ((f != 0).sum(-1) <= sae.cfg.k).all()


def test_per_token_normalisation_needs_the_input_to_decode() -> None:
    sae = random_sae(normalize_activations="constant_norm_rescale")
    with pytest.raises(ValueError, match=r"decode\(features, input=x\)"):
        sae.decode(sae.encode(torch.randn(2, D)))


# -- files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "architecture, extra",
    [
        ("standard", {}),
        ("topk", {}),
        ("jumprelu", {"normalize_activations": "expected_average_only_in", "norm_scaling_factor": 0.5}),
        ("transcoder", {"d_out": 48, "hook_name_out": "blocks.0.hook_mlp_out"}),
    ],
)
def test_save_and_load_round_trip(architecture: str, extra: dict, tmp_path: Path) -> None:
    sae = random_sae(architecture, **extra)
    save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["metadata"]["hook_name"] == sae.cfg.hook_name
    loaded = load_sae(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    assert {n: p.shape for n, p in loaded.named_parameters()} == {
        n: p.shape for n, p in sae.named_parameters()
    }
    x = torch.randn(4, D)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_loads_a_directory_in_saelens_layout(tmp_path: Path) -> None:
    """A cfg.json as SAELens 6 writes it (extra keys, hook name in metadata), its tensor names and shapes."""
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "W_enc": torch.randn(D, 32, generator=generator),
        "b_enc": torch.randn(32, generator=generator),
        "W_dec": torch.randn(32, D, generator=generator),
        "b_dec": torch.randn(D, generator=generator),
        "threshold": torch.rand(32, generator=generator),
    }
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "jumprelu",
                "d_in": D,
                "d_sae": 32,
                "dtype": "float32",
                "device": "cpu",
                "apply_b_dec_to_input": True,
                "normalize_activations": "none",
                "reshape_activations": "none",
                "metadata": {
                    "model_name": "tiny",
                    "hook_name": "blocks.1.hook_resid_pre",
                    "prepend_bos": True,
                },
            }
        )
    )
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    sae = load_sae(tmp_path)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_pre" and sae.cfg.extra["reshape_activations"] == "none"
    x = torch.randn(5, D)
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    expected = (pre * (pre > tensors["threshold"])) @ tensors["W_dec"] + tensors["b_dec"]
    torch.testing.assert_close(sae(x), expected)
    save_sae(sae, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "cfg.json").read_text())
    assert again["reshape_activations"] == "none" and again["metadata"]["prepend_bos"] is True


def test_saelens_activation_scaler_file_gives_the_norm_factor(tmp_path: Path) -> None:
    sae = random_sae(normalize_activations="expected_average_only_in", norm_scaling_factor=0.25)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["norm_scaling_factor"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    assert load_sae(tmp_path).cfg.norm_scaling_factor == 0.25


# -- splicing ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


def test_with_the_error_term_the_logits_are_unchanged(model) -> None:
    sae = random_sae("topk")
    clean = model(TOKENS)
    with model_with_sae(model, sae, use_error_term=True):
        spliced = model(TOKENS)
    torch.testing.assert_close(spliced, clean, rtol=1e-5, atol=1e-5)
    with model_with_sae(model, sae):
        assert (model(TOKENS) - clean).abs().max() > 1e-2  # without it, the reconstruction is what flows on


def test_without_the_error_term_the_model_reads_the_reconstruction(model) -> None:
    sae = random_sae("standard")
    _, clean_cache = model.run_with_cache(TOKENS, names_filter="blocks.0.hook_resid_post")
    with model_with_sae(model, sae):
        _, cache = model.run_with_cache(
            TOKENS, names_filter=lambda n: n.startswith("blocks.0.hook_resid_post")
        )
    x = clean_cache["blocks.0.hook_resid_post"]
    torch.testing.assert_close(cache[PREFIX + "hook_sae_input"], x)
    torch.testing.assert_close(cache[PREFIX + "hook_sae_acts_post"], reference_encode(sae, x))
    torch.testing.assert_close(cache[PREFIX + "hook_sae_recons"], sae(x))
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], sae(x))  # the host sees the SAE's output


def test_feature_ablation_with_the_error_term_moves_the_output_by_the_reconstruction(model) -> None:
    """SAELens issues 84/326: ablating a feature must change the output even with the error term, by
    exactly what it changes the reconstruction (the error stays the clean one)."""
    sae = random_sae("topk")
    _, clean_cache = model.run_with_cache(TOKENS, names_filter="blocks.0.hook_resid_post")
    x = clean_cache["blocks.0.hook_resid_post"]
    features = sae.encode(x)
    feature = int(features[0].count_nonzero(0).argmax())  # a feature active on most tokens

    def ablate(acts: torch.Tensor, hook) -> None:
        acts[..., feature] = 0  # in place, the TransformerLens habit

    clean_logits = model(TOKENS)
    with model_with_sae(model, sae, use_error_term=True):
        logits, cache = model.run_with_cache(TOKENS, names_filter="blocks.0.hook_resid_post")
        with model.hooks([(PREFIX + "hook_sae_acts_post", ablate)]):
            ablated_logits, ablated = model.run_with_cache(TOKENS, names_filter="blocks.0.hook_resid_post")
    torch.testing.assert_close(logits, clean_logits, rtol=1e-5, atol=1e-5)
    assert (ablated_logits - clean_logits).abs().max() > 1e-3
    edited = features.clone()
    edited[..., feature] = 0
    shift = sae.decode(edited) - sae.decode(features)
    torch.testing.assert_close(ablated["blocks.0.hook_resid_post"], x + shift, rtol=1e-5, atol=1e-5)


def test_sae_hook_points_come_and_go_with_the_sae(model) -> None:
    before = model.hook_names()
    sae = random_sae("standard")
    with model_with_sae(model, sae):
        names = model.hook_names()
        catalogue = {row.name: row for row in model.hook_catalogue()}
        assert [n for n in names if n not in before] == [
            PREFIX + leaf
            for leaf in (
                "hook_sae_input",
                "hook_sae_acts_pre",
                "hook_sae_acts_post",
                "hook_sae_recons",
                "hook_sae_error",
                "hook_sae_output",
            )
        ]
        assert catalogue[PREFIX + "hook_sae_acts_post"].shape == "B P 96"
        assert model.hook_dict[PREFIX + "hook_sae_acts_post"].name == PREFIX + "hook_sae_acts_post"
        assert model.estimate_cache_bytes(8, PREFIX + "hook_sae_acts_post") == 8 * 96 * 4
    assert model.hook_names() == before
    assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"


def test_the_sae_is_detached_on_every_exit_path(model) -> None:
    sae = random_sae("standard")
    before = model.hook_names()
    with pytest.raises(RuntimeError, match="boom"), model_with_sae(model, sae):
        raise RuntimeError("boom")
    assert model.hook_names() == before
    assert all(not p._forward_pre_hooks for p in model.hook_dict.values())
    torch.testing.assert_close(model(TOKENS), tiny_model(seed=4)(TOKENS))


def test_reset_hooks_keeps_the_splice_and_detach_removes_it(model) -> None:
    sae = random_sae("standard")
    clean = model(TOKENS)
    splice = attach_sae(model, sae)
    try:
        spliced = model(TOKENS)
        model.reset_hooks()
        torch.testing.assert_close(model(TOKENS), spliced)
    finally:
        assert detach_sae(model, splice) is sae
    torch.testing.assert_close(model(TOKENS), clean)


def test_an_sae_on_hook_z_reads_the_heads_flattened(model) -> None:
    H, d = model.cfg.num_attention_heads, model.cfg.head_dim
    sae = random_sae("topk", d_in=H * d, hook_name="blocks.1.attn.hook_z")
    _, clean = model.run_with_cache(TOKENS, names_filter="blocks.1.attn.hook_z")
    z = clean["blocks.1.attn.hook_z"]
    with model_with_sae(model, sae):
        _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.startswith("blocks.1.attn.hook_z"))
    torch.testing.assert_close(cache["blocks.1.attn.hook_z.sae.hook_sae_input"], z.flatten(2))
    torch.testing.assert_close(cache["blocks.1.attn.hook_z"], sae(z.flatten(2)).view(z.shape))
    with model_with_sae(model, sae, use_error_term=True):
        torch.testing.assert_close(model(TOKENS), model.run_with_hooks(TOKENS), rtol=1e-5, atol=1e-5)


def test_a_transcoder_replaces_the_mlp_output_from_its_input(model) -> None:
    transcoder = random_sae(
        "transcoder", hook_name="blocks.0.ln2.hook_out", hook_name_out="blocks.0.hook_mlp_out", d_sae=80
    )
    names = ["blocks.0.ln2.hook_out", "blocks.0.hook_mlp_out"]
    clean_logits, clean = model.run_with_cache(TOKENS, names_filter=names)
    with model_with_sae(model, transcoder):
        _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.startswith(tuple(names)))
    assert "blocks.0.hook_mlp_out.transcoder.hook_sae_acts_post" in cache
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], transcoder(clean["blocks.0.ln2.hook_out"]))
    with model_with_sae(model, transcoder, use_error_term=True):
        torch.testing.assert_close(model(TOKENS), clean_logits, rtol=1e-5, atol=1e-5)


def test_gradients_reach_features_and_stay_the_models_own(model) -> None:
    """With the error term, d metric / d embeddings equals the un-spliced model's, and the gradient at the
    features is the gradient at the host times W_dec (the decoder is the only path from the features)."""
    sae = random_sae("standard")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, 3] - logits[0, -1, 5]

    _, _, clean = run_with_cache_and_grads(model, TOKENS, metric, names_filter=["hook_embed"])
    host = "blocks.0.hook_resid_post"
    with model_with_sae(model, sae, use_error_term=True):
        _, acts, grads = run_with_cache_and_grads(
            model, TOKENS, metric, names_filter=["hook_embed", host, PREFIX + "hook_sae_acts_post"]
        )
    torch.testing.assert_close(grads["hook_embed"], clean["hook_embed"], rtol=1e-4, atol=1e-6)
    expected = grads[host] @ sae.W_dec.T  # d metric/d f = d metric/d output · W_decᵀ
    torch.testing.assert_close(grads[PREFIX + "hook_sae_acts_post"], expected, rtol=1e-4, atol=1e-6)
    assert grads[PREFIX + "hook_sae_acts_post"].abs().max() > 0
