"""Training SAEs on a model's streamed activations, the metrics, the dashboard data, and one SmolLM2 check.

The tiny models have no tokenizer: ``ByteTokenizer`` maps bytes into their 97-token vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from llama3_lab.sae import SAE, SAEConfig, load_sae, model_with_sae, save_sae
from llama3_lab.sae.activations import ShuffleBuffer, activation_stream, activations_at
from llama3_lab.sae.corpus import python_reference_texts, split_texts
from llama3_lab.sae.dashboard import feature_dashboard, feature_interventions, logit_effect
from llama3_lab.sae.metrics import ReconstructionStats, splice_loss
from llama3_lab.sae.training import evaluate, fold_normalization, train_sae

HOOK = "blocks.0.hook_resid_post"


class ByteTokenizer:
    """Bytes as token ids 3..92 of a tiny model's vocabulary (BOS 1, EOS 2)."""

    bos_id, eos_id, stop_ids = 1, 2, {2}

    def encode(self, text: str, **_: object) -> list[int]:
        return [3 + byte % 90 for byte in text.encode()]

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        return [bytes([32 + i % 90]) for i in ids]

    def token_strings(self, ids: list[int]) -> list[str]:
        return [b.decode("latin-1") for b in self.token_bytes(ids)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.token_strings(ids))


TEXTS = python_reference_texts()[:40]


@pytest.fixture(scope="module")
def model():
    model = tiny_model(seed=2)
    model.tokenizer = ByteTokenizer()
    return model


def train(model, **options) -> object:
    settings = dict(d_sae=128, k=8, n_tokens=12_000, buffer_tokens=2048, batch_size=256, context_length=32)
    return train_sae(model, HOOK, TEXTS, progress=False, **{**settings, **options})


def test_training_reconstructs_far_better_than_the_start(model) -> None:
    start = SAE(SAEConfig(d_in=64, d_sae=128, k=8, hook_name=HOOK))
    before = evaluate(model, start, TEXTS[30:], n_tokens=2000, context_length=32)
    result = train(model)
    after = evaluate(model, result.sae, TEXTS[30:], n_tokens=2000, context_length=32)
    assert after["explained_variance"] > 0.5 > before["explained_variance"] + 0.2
    assert after["l0"] <= 8 and after["dead_fraction"] < 0.5
    assert result.sae.cfg.normalize_activations == "none"  # the norm factor is folded into the weights
    assert result.tokens_read >= 12_000 and result.tokens_trained > result.tokens_read  # reused, streamed
    assert [row["step"] for row in result.history] == list(range(1, result.steps + 1))


def test_training_resumes_from_its_checkpoint(model, tmp_path: Path) -> None:
    first = train(model, n_tokens=3000, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert (tmp_path / "trainer_state.pt").is_file() and (tmp_path / "cfg.json").is_file()
    second = train(model, n_tokens=6000, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert second.resumed_from_step == first.steps
    assert second.steps > first.steps and second.history[0]["step"] == first.steps + 1
    assert second.tokens_read >= 6000


def test_activations_stop_after_the_last_hook_needed(model) -> None:
    calls = []
    with model.hooks([("blocks.1.hook_resid_post", lambda x, hook: calls.append(1))]):
        acts = activations_at(model, [HOOK], torch.tensor([[1, 5, 7]]))
    assert calls == [] and acts[HOOK].shape == (1, 3, 64)
    _, cache = model.run_with_cache(torch.tensor([[1, 5, 7]]), names_filter=HOOK)
    torch.testing.assert_close(acts[HOOK], cache[HOOK])


def test_the_stream_drops_bos_and_the_buffer_stays_bounded(model) -> None:
    rows = [
        r for _, r in activation_stream(model, [HOOK], TEXTS[:3], context_length=16, contexts_per_forward=2)
    ]
    assert all(r.shape[1] == 64 for r in rows) and sum(map(len, rows)) % 15 == 0  # 15 tokens per context
    buffer = ShuffleBuffer(64, torch.Generator().manual_seed(0))
    sizes = []
    for r in rows:
        buffer.add(r)
        sizes.append(len(buffer.rows))
        if buffer.full:
            assert sum(len(b) for b in buffer.batches(16)) == len(buffer.rows) // 16 * 16
            buffer.drop_oldest()
    assert max(sizes) < 64 + 30


def test_fold_normalization_keeps_the_function() -> None:
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=3, normalize_activations="expected_average_only_in",
                        norm_scaling_factor=0.2))  # fmt: skip
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    x = torch.randn(5, 8) * 3
    before = sae(x)
    fold_normalization(sae)
    assert sae.cfg.normalize_activations == "none"
    torch.testing.assert_close(sae(x), before, rtol=1e-5, atol=1e-5)


def test_reconstruction_stats() -> None:
    x = torch.randn(50, 8, dtype=torch.float64)
    features = torch.zeros(50, 4)
    features[:, 1] = 1.0
    perfect, mean = ReconstructionStats(), ReconstructionStats()
    perfect.update(x[:20], x[:20], features[:20])
    perfect.update(x[20:], x[20:], features[20:])
    mean.update(x, x.mean(0).expand_as(x), features)
    assert perfect.explained_variance == pytest.approx(1.0)
    assert mean.explained_variance == pytest.approx(0.0, abs=1e-12)
    assert perfect.l0 == 1.0 and perfect.dead_fraction == 0.75


def exact_sae(d: int = 64) -> SAE:
    """A ReLU SAE that reconstructs exactly: x = relu(x) − relu(−x) with W_enc = [I, −I], W_dec = [I; −I]."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, architecture="standard", hook_name=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_(), sae.b_dec.zero_()
    return sae.requires_grad_(False)


def test_ce_loss_recovered(model) -> None:
    tokens = torch.tensor([[1, 5, 7, 9, 3, 11, 2, 4], [1, 8, 8, 6, 5, 4, 3, 2]])
    exact = splice_loss(model, exact_sae(), tokens)
    assert exact.spliced == pytest.approx(exact.clean, abs=1e-5) and exact.recovered == pytest.approx(1.0)
    zero = SAE(SAEConfig(d_in=64, d_sae=8, architecture="standard", hook_name=HOOK)).requires_grad_(False)
    with torch.no_grad():
        zero.W_dec.zero_()
    assert splice_loss(model, zero, tokens).recovered == pytest.approx(0.0, abs=1e-6)


# -- dashboards -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(model):
    return train(model, n_tokens=4000).sae


def test_feature_dashboard_data(model, trained) -> None:
    fired = evaluate(model, trained, TEXTS[:5], n_tokens=1000, context_length=32)
    assert fired["dead_fraction"] < 1
    feature = int(trained.W_dec.norm(dim=-1).argmax())
    board = feature_dashboard(model, trained, 0, TEXTS[:10], n_tokens=3000, context_length=32, n_contexts=4)
    values = [c.value for c in board.contexts]
    assert values == sorted(values, reverse=True)
    for context in board.contexts:
        assert context.activations[context.peak] == context.value == max(context.activations)
        assert len(context.tokens) == len(context.activations)
    assert sum(board.histogram.counts) == round(board.histogram.firing_rate * board.histogram.n_tokens)
    promoted, suppressed = logit_effect(model, trained, feature, k=5)
    direct = trained.W_dec[feature] @ model.unembed.weight.T
    assert [e.token_id for e in promoted] == direct.topk(5).indices.tolist()
    assert [e.token_id for e in suppressed] == (-direct).topk(5).indices.tolist()


def test_feature_interventions(model) -> None:
    sae = exact_sae()
    result = feature_interventions(model, sae, 3, "abc", value=0.0, max_new_tokens=6)
    assert result["ablated"] == result["steered"]  # clamping to 0 is ablating
    strong = feature_interventions(model, sae, 3, "abc", value=1e3, max_new_tokens=6)
    assert strong["steered"] != strong["clean"]
    assert model.hook_names() == tiny_model(seed=2).hook_names()  # detached afterwards


# -- the real model ---------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_a_small_sae_trained_here_splices_exactly_into_smollm2(smollm2, tmp_path: Path) -> None:
    training, held_out = split_texts(python_reference_texts())
    hook = "blocks.15.hook_resid_post"
    result = train_sae(
        smollm2, hook, training[:6], d_sae=256, k=16, n_tokens=1500, buffer_tokens=512, batch_size=128,
        context_length=64, contexts_per_forward=4, progress=False,
    )  # fmt: skip
    sae = load_sae(save_sae(result.sae, tmp_path / "sae"))
    tokens = smollm2.to_tokens(held_out[0][:300])
    clean = smollm2(tokens)
    with model_with_sae(smollm2, sae, use_error_term=True):
        spliced, cache = smollm2.run_with_cache(tokens, names_filter=lambda n: "sae" in n)
        features = cache[f"{hook}.sae.hook_sae_acts_post"]
        feature = int((features[0, 1:] != 0).sum(0).argmax())

        def ablate(acts: torch.Tensor, _hook) -> None:
            acts[..., feature] = 0

        with smollm2.hooks([(f"{hook}.sae.hook_sae_acts_post", ablate)]):
            ablated = smollm2(tokens)
    torch.testing.assert_close(spliced, clean, rtol=1e-4, atol=1e-3)
    assert (features != 0).sum(-1).max() <= 16
    assert (ablated - clean).abs().max() > 1e-2
    with model_with_sae(smollm2, sae):
        assert (smollm2(tokens) - clean).abs().max() > 1e-2


def test_auxk_trains_dead_features_from_the_error() -> None:
    """TopK's dead features get no gradient from the reconstruction; AuxK gives them one from the error."""
    from llama3_lab.sae.training import _step

    def dead_columns_after_a_step(aux_coefficient: float) -> torch.Tensor:
        sae = SAE(SAEConfig(d_in=16, d_sae=64, k=2), seed=1)
        optimizer = torch.optim.SGD(sae.parameters(), lr=0.1)
        x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
        dead = torch.zeros(64, dtype=torch.bool)
        dead[sae.activation(sae.pre_activations(x)).count_nonzero(0) == 0] = True
        before = sae.W_enc.detach().clone()
        row = _step(sae, optimizer, x, x, dead, aux_coefficient, 0.0)
        assert (row["aux"] > 0) == (aux_coefficient > 0)
        return (sae.W_enc.detach() - before)[:, dead].abs().sum()

    assert dead_columns_after_a_step(0.0) == 0
    assert dead_columns_after_a_step(1 / 32) > 0


def test_cli_parses_the_proposed_command_line() -> None:
    from llama3_lab.assets import cache_dir
    from llama3_lab.sae.cli import build_parser, default_output

    args = build_parser().parse_args(["train", "--k", "48", "--d-sae", "2304", "--minutes", "1.5"])
    assert (args.model, args.hook, args.k, args.d_sae, args.minutes) == (
        "smollm2-135m-instruct",
        "blocks.15.hook_resid_post",
        48,
        2304,
        1.5,
    )
    out = default_output(args.model, args.hook, args.k, args.d_sae)
    assert out == cache_dir() / "saes" / "smollm2-135m-instruct" / "blocks.15.hook_resid_post-topk48-2304"


@pytest.mark.smollm2
@pytest.mark.slow
def test_cli_trains_saves_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from llama3_lab.sae.cli import main

    argv = [
        "train",
        "--k",
        "8",
        "--d-sae",
        "128",
        "--tokens",
        "600",
        "--eval-tokens",
        "512",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert (
        report["l0"] <= 8
        and 0 <= report["dead_fraction"] <= 1
        and report["ce_clean"] < report["ce_zero_ablated"]
    )
    assert load_sae(tmp_path).cfg.hook_name == "blocks.15.hook_resid_post"
