"""Session: stepping with a record per step, rewind, fork, force, hooks, a growing cache (tiny models)."""

from __future__ import annotations

import pytest
import torch

from llama3_lab.generation import generate_tokens
from llama3_lab.sampling import GenerationError, Sampling
from llama3_lab.session import KEEP_FULL, Session, StepRecord, TopK

PROMPT = [1, 5, 17, 42, 8, 33]


def test_greedy_with_cache_equals_greedy_recomputation(make_model) -> None:
    model = make_model(seed=3)
    session = Session(model, PROMPT, temperature=0)
    records = session.step(20)
    tokens = list(PROMPT)
    for record in records:
        with torch.no_grad():
            full_logits = model(torch.tensor([tokens]))[0, -1]  # the whole sequence, no cache
        assert record.token_id == int(full_logits.argmax())
        torch.testing.assert_close(record.logits, full_logits, atol=1e-5, rtol=0)
        tokens.append(record.token_id)
    assert session.tokens == tokens
    assert list(generate_tokens(model, PROMPT, 20, temperature=0)) == tokens[len(PROMPT) :]


def test_rewind_then_step_reproduces_the_records(make_model) -> None:
    model = make_model(seed=6)
    session = Session(model, PROMPT, temperature=1.0, top_p=0.95, seed=123)
    first = session.step(8)
    session.rewind(5)
    assert session.tokens == PROMPT + [r.token_id for r in first[:3]]
    assert session.cache.length == len(session.tokens) - 1
    again = session.step(5)
    for a, b in zip(first[3:], again):
        assert (a.position, a.token_id, a.prob, a.entropy) == (b.position, b.token_id, b.prob, b.entropy)
        assert torch.equal(a.attention, b.attention) and torch.equal(a.logits, b.logits)
    with pytest.raises(GenerationError, match="can rewind between 0 and 8"):
        session.rewind(9)


def test_forks_are_independent(make_model) -> None:
    model = make_model(seed=7)
    parent = Session(model, PROMPT, temperature=0.8, seed=1)
    parent.step(3)
    child = parent.fork()
    snapshot = [t.clone() for t in parent.cache.keys]
    child.force(60)
    child.step(4)
    assert parent.tokens == child.tokens[: len(parent.tokens)] and len(parent.history) == 3
    assert all(
        torch.equal(a[:, :, : parent.cache.length], b[:, :, : parent.cache.length])
        for a, b in zip(parent.cache.keys, snapshot)
    )
    assert child.cache.keys[0].data_ptr() != parent.cache.keys[0].data_ptr()
    # both continue from the same random state: stepping the parent gives what an untouched fork gives
    twin = parent.fork()
    assert [r.token_id for r in parent.step(4)] == [r.token_id for r in twin.step(4)]


def test_force_records_the_chosen_token(make_model) -> None:
    model = make_model(seed=8)
    session = Session(model, PROMPT, temperature=0)
    record = session.force(77)
    assert record.forced and record.token_id == 77 and session.tokens[-1] == 77
    torch.testing.assert_close(torch.tensor(record.prob), record.logits.softmax(-1)[77])
    with pytest.raises(GenerationError, match="token id in 0..96"):
        session.force(97)


def test_step_record_matches_a_full_forward_with_cache(make_model) -> None:
    model = make_model(seed=9)
    session = Session(model, PROMPT, temperature=0)
    session.step(3)
    record = session.step()
    context = torch.tensor([session.tokens[:-1]])
    logits, cache = model.run_with_cache(context)
    n_layers, n_heads = model.cfg.num_hidden_layers, model.cfg.num_attention_heads
    assert record.position == len(session.tokens) - 1
    assert record.attention.shape == (n_layers, n_heads, record.position)
    for layer in range(n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1]
        torch.testing.assert_close(record.attention[layer], pattern, atol=1e-6, rtol=0)
        resid = cache[f"blocks.{layer}.hook_resid_post"][0, -1]
        torch.testing.assert_close(record.resid_norms[layer], resid.norm(), atol=1e-5, rtol=1e-5)
        lens = torch.nn.functional.linear(model.ln_final(resid), model.unembed.weight)
        assert record.logit_lens.ids[layer] == int(lens.argmax())
    assert record.logit_lens.ids[-1] == record.token_id  # the last layer's lens is the model's own output
    probs = logits[0, -1].softmax(-1)
    torch.testing.assert_close(torch.tensor(record.entropy), -(probs * probs.log()).sum(), atol=1e-5, rtol=0)
    assert record.top_k.ids == probs.topk(10).indices.tolist() and record.top_k.ids[0] == record.token_id
    torch.testing.assert_close(record.attention.sum(-1), torch.ones(n_layers, n_heads))


def test_steering_hooks_act_during_steps(make_model) -> None:
    model = make_model(seed=10)
    plain = Session(model, PROMPT, temperature=0).step()
    direction = model.unembed.weight[50] - model.unembed.weight[plain.token_id]

    def steer(resid: torch.Tensor, hook) -> torch.Tensor:
        return resid + 20 * direction

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):
        steered = Session(model, PROMPT, temperature=0).step()
    assert plain.token_id != 50 and steered.token_id == 50


def test_session_cache_grows_past_its_first_allocation(make_model) -> None:
    model = make_model(seed=11)
    session = Session(model, PROMPT, temperature=0, max_length=8)
    records = session.step(20)  # more positions than the first allocation holds
    assert session.cache.max_length == 32
    assert [r.token_id for r in records] == list(generate_tokens(model, PROMPT, 20, temperature=0))


def test_sampling_settings_as_keywords_or_a_sampling(make_model) -> None:
    model = make_model(seed=12)
    by_keywords = Session(model, PROMPT, temperature=0.7, top_k=5, seed=1)
    by_object = Session(model, PROMPT, Sampling(temperature=0.7, top_k=5), seed=1)
    assert by_keywords.sampling == by_object.sampling == Sampling(0.7, 0.9, 5)
    assert [r.token_id for r in by_keywords.step(6)] == [r.token_id for r in by_object.step(6)]
    by_keywords.temperature = 0.0  # a field assigned is a new Sampling, validated, for the next steps
    assert by_keywords.sampling == Sampling(0.0, 0.9, 5) and by_object.sampling.temperature == 0.7
    with pytest.raises(GenerationError, match="temperature must be a number >= 0"):
        by_keywords.temperature = -1
    with pytest.raises(GenerationError, match="give one of them"):
        Session(model, PROMPT, Sampling(), top_k=3)
    with pytest.raises(TypeError, match="Session\\(\\) got unexpected keyword"):
        Session(model, PROMPT, temprature=0)


def test_step_record_top_k_is_a_row_of_lists(make_model) -> None:
    record: StepRecord = Session(make_model(seed=13), PROMPT, temperature=0, record_top_k=3).step()
    assert isinstance(record.top_k, TopK)
    assert len(record.top_k.ids) == len(record.top_k.texts) == len(record.top_k.probs) == 3
    assert all(isinstance(i, int) for i in record.top_k.ids)
    assert all(isinstance(p, float) for p in record.top_k.probs)
    assert record.top_k.texts == [f"[{i}]" for i in record.top_k.ids]  # no tokenizer: the id fallback
    assert repr(record.top_k).startswith("TopK('[") and f"{record.top_k.probs[0]:.3f}" in repr(record.top_k)


# ---------------------------------------------------------------------------------------------
# Bounded memory: full records for the newest steps, compact ones before; rewind and fork still exact
# ---------------------------------------------------------------------------------------------


def _record_tensor_bytes(session: Session) -> int:
    """Bytes of every tensor the session's history and random states hold (each storage once)."""
    storages: dict[int, int] = {}
    tensors = [
        t for r in session.history for t in (r.attention, r.resid, r.logits, r._norms) if t is not None
    ]
    for tensor in tensors + list(session._rng_states):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_old_records_are_compacted_and_keep_what_a_reader_needs(make_model) -> None:
    model = make_model(seed=14, eos_token_id=None)
    session = Session(model, PROMPT, temperature=1.0, seed=5, keep_full=4)
    first = session.step(3)
    lens, norms = first[0].logit_lens, first[0].resid_norms.clone()
    session.step(7)
    history = session.history
    assert [r.full for r in history] == [False] * 6 + [True] * 4
    old = history[0]
    assert old.attention is None and old.resid is None and old.logits is None
    assert (old.token_id, old.prob, old.top_k, old.entropy) == (
        first[0].token_id,
        first[0].prob,
        first[0].top_k,
        first[0].entropy,
    )
    assert torch.equal(old.resid_norms, norms) and old.logit_lens is lens  # computed before: kept
    with pytest.raises(GenerationError, match="record of position 7 is compact.*keep_full"):
        history[1].logit_lens  # noqa: B018 - the access is what raises
    assert first[1].full  # a record already handed out is never changed
    everything = Session(model, PROMPT, temperature=1.0, seed=5, keep_full=None)
    assert all(r.full for r in everything.step(10))


def test_rewinding_past_the_full_window_restores_the_exact_state(make_model) -> None:
    model = make_model(seed=15, eos_token_id=None)
    bounded = Session(model, PROMPT, temperature=1.0, seed=9, keep_full=3)
    unbounded = Session(model, PROMPT, temperature=1.0, seed=9, keep_full=None)
    first = [r.token_id for r in bounded.step(30)]
    assert [r.token_id for r in unbounded.step(30)] == first
    bounded.rewind(25)  # far past the 3 full records
    assert bounded.tokens == PROMPT + first[:5] and bounded.cache.length == len(bounded.tokens) - 1
    twin = bounded.fork()
    again = bounded.step(25)
    assert [r.token_id for r in again] == first[5:]
    assert [r.token_id for r in twin.step(25)] == first[5:]
    for a, b in zip(bounded.cache.keys, unbounded.cache.keys):
        torch.testing.assert_close(a[:, :, : bounded.cache.length], b[:, :, : unbounded.cache.length])
    for a, b in zip(bounded.history[-3:], unbounded.history[-3:]):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.attention, b.attention)


@pytest.mark.slow
def test_a_long_session_stays_within_its_stated_memory_bound(make_model) -> None:
    """2,000 sampled steps (each draws randomness, the worst case) on a tiny model: the records' tensors
    stay under the bound the Session docstring states: keep_full full records at the last position, a
    few values per compact record, one random state per step. Without compaction it would be ~130 MB."""
    model = make_model(seed=16, max_position_embeddings=2048, eos_token_id=None)  # no stop token
    steps, keep_full = 2000, KEEP_FULL
    session = Session(model, PROMPT, temperature=1.0, seed=0)
    assert len(session.step(steps)) == steps
    cfg, element = model.cfg, 4  # float32
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    last = session.history[-1].position
    full_record = element * (cfg.vocab_size + layers * cfg.hidden_size + layers * heads * last)
    rng_state = session.generator.get_state().numel()  # bytes (uint8): 5,056 on a CPU generator
    bound = keep_full * full_record + steps * (element * layers + rng_state)
    measured = _record_tensor_bytes(session)
    assert measured <= bound, f"{measured:,} bytes held, over the bound {bound:,}"
    assert bound < 13e6 and sum(r.full for r in session.history) == keep_full


def test_greedy_steps_share_one_random_state(make_model) -> None:
    session = Session(make_model(seed=17, eos_token_id=None), PROMPT, temperature=0, keep_full=2)
    session.step(50)
    assert len({id(state) for state in session._rng_states}) == 1
    session.rewind(50)
    assert session.tokens == PROMPT and session.history == []


def test_step_after_the_end_raises_like_step(make_model) -> None:
    model = make_model(seed=18)
    session = Session(model, PROMPT, temperature=0, stop=list(range(model.cfg.vocab_size)))
    records = session.step(3)  # every token stops: one record
    assert len(records) == 1 and session.done
    for call in (session.step, lambda: session.step(3)):
        with pytest.raises(GenerationError, match="the session ended with stop token.*rewind\\(1\\)"):
            call()
    assert session.step(0) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"record_top_k": -1}, "record_top_k must be an int >= 1"),
        ({"record_top_k": 0}, "record_top_k must be an int >= 1"),
        ({"keep_full": -1}, "keep_full must be None or an int >= 0"),
        ({"keep_full": 2.5}, "keep_full must be None or an int >= 0"),
        ({"max_length": 0}, "max_length must be None or an int >= 1"),
        ({"seed": "1"}, "seed must be an int or None"),
    ],
)
def test_session_arguments_out_of_range_are_clear_errors(make_model, kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message):
        Session(make_model(seed=19), PROMPT, **kwargs)
