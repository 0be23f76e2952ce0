"""Sampling, generate, Session and the generate/chat CLI."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from llama3_lab.generation import (
    GenerationError,
    Session,
    check_sampling,
    generate,
    generate_tokens,
    make_generator,
    sample_next,
    sampling_probs,
    top_k_mask,
    top_p_mask,
)

# ---------------------------------------------------------------------------------------------
# Sampling on hand-made distributions (no model)
# ---------------------------------------------------------------------------------------------

# Powers of two: every cumulative sum is exact in float32, so the boundary cases are real boundaries.
PROBS = torch.tensor([0.125, 0.5, 0.0625, 0.25, 0.0625])  # sorted order: 1, 3, 0, 2|4


def kept(mask: torch.Tensor) -> set[int]:
    return set(mask.nonzero().flatten().tolist())


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.4, {1}),  # preceding mass of token 3 is 0.5 > 0.4: dropped
        (0.5, {1, 3}),  # preceding mass of token 3 equals p exactly: kept (Meta's `> p`)
        (0.6, {1, 3}),  # token 0's preceding mass 0.75 > 0.6
        (0.75, {1, 3, 0}),  # boundary again: preceding 0.75 == p keeps token 0
        (0.874, {1, 3, 0}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_exactly_the_nucleus(p: float, expected: set[int]) -> None:
    assert kept(top_p_mask(PROBS, p)) == expected


def test_top_p_always_keeps_the_argmax() -> None:
    assert kept(top_p_mask(PROBS, 1e-9)) == {1}


@pytest.mark.parametrize(("k", "expected"), [(1, {1}), (2, {1, 3}), (3, {1, 3, 0}), (99, {0, 1, 2, 3, 4})])
def test_top_k_keeps_the_k_most_probable(k: int, expected: set[int]) -> None:
    assert kept(top_k_mask(PROBS, k)) == expected


def test_sampling_probs_truncates_and_renormalises() -> None:
    logits = PROBS.log()
    probs = sampling_probs(logits, temperature=1.0, top_p=0.6)
    assert kept(probs > 0) == {1, 3}
    torch.testing.assert_close(probs[[1, 3]], torch.tensor([2 / 3, 1 / 3]))
    # top-k first, then top-p inside the top-k renormalised distribution: top-2 gives {1: 2/3, 3: 1/3};
    # with p=0.6 the preceding mass of token 3 is 2/3 > 0.6, so only token 1 survives.
    probs = sampling_probs(logits, temperature=1.0, top_k=2, top_p=0.6)
    assert kept(probs > 0) == {1}
    # temperature 2 flattens: softmax(log p / 2) is proportional to sqrt(p)
    flat = sampling_probs(logits, temperature=2.0, top_p=1.0)
    torch.testing.assert_close(flat, PROBS.sqrt() / PROBS.sqrt().sum())


def test_temperature_zero_is_argmax_and_tiny_temperature_agrees() -> None:
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    greedy = sample_next(logits, temperature=0)
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=1e-6, generator=make_generator(1)), greedy)
    onehot = sampling_probs(logits, temperature=0)
    assert torch.equal(onehot.argmax(-1), greedy) and torch.equal(onehot.sum(-1), torch.ones(4))


def test_same_seed_same_draws_and_draws_follow_the_distribution() -> None:
    logits = PROBS.log().expand(20000, -1)
    a = sample_next(logits, temperature=1.0, top_p=1.0, generator=make_generator(7))
    b = sample_next(logits, temperature=1.0, top_p=1.0, generator=make_generator(7))
    assert torch.equal(a, b)
    frequencies = torch.bincount(a, minlength=5).float() / len(a)
    torch.testing.assert_close(frequencies, PROBS, atol=0.015, rtol=0)
    nucleus = sample_next(logits, temperature=1.0, top_p=0.5, generator=make_generator(7))
    assert set(nucleus.unique().tolist()) == {1, 3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": 0}, "top_k must be None or an int >= 1"),
        ({"top_k": 2.5}, "top_k must be None or an int >= 1"),
    ],
)
def test_bad_sampling_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace("]", r"\]")):
        check_sampling(**kwargs)
    with pytest.raises(GenerationError):
        sample_next(torch.zeros(5), **kwargs)


# ---------------------------------------------------------------------------------------------
# Decoding on tiny random models
# ---------------------------------------------------------------------------------------------

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


def test_tiny_temperature_equals_greedy_and_seeds_reproduce(make_model) -> None:
    model = make_model(seed=4)
    greedy = list(generate_tokens(model, PROMPT, 15, temperature=0))
    cold = list(generate_tokens(model, PROMPT, 15, temperature=1e-6, generator=make_generator(0)))
    assert cold == greedy
    runs = [list(generate_tokens(model, PROMPT, 15, 1.0, 1.0, None, make_generator(s))) for s in (11, 11, 12)]
    assert runs[0] == runs[1] != runs[2]


def test_stop_tokens_end_generation(make_model) -> None:
    model = make_model(seed=5, eos_token_id=None)
    greedy = list(generate_tokens(model, PROMPT, 12, temperature=0))
    stop = greedy[4]
    first = greedy.index(stop)
    assert list(generate_tokens(model, PROMPT, 12, temperature=0, stop_ids={stop})) == greedy[: first + 1]
    session = Session(model, PROMPT, temperature=0, stop=stop)
    records = session.step(12)
    assert [r.token_id for r in records] == greedy[: first + 1] and session.done
    with pytest.raises(GenerationError, match="rewind"):
        session.step()


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


def test_length_and_prompt_errors(make_model) -> None:
    model = make_model()  # max_position_embeddings 64
    with pytest.raises(
        GenerationError, match=r"6 tokens and max_new_tokens=59: 65 positions exceed .* 64.*at most 58"
    ):
        generate_tokens(model, PROMPT, 59)  # raised at the call, before any iteration
    with pytest.raises(GenerationError, match="max_new_tokens must be an int >= 0"):
        generate_tokens(model, PROMPT, -1)
    assert list(generate_tokens(model, PROMPT, 0)) == []
    for empty in ([], "", torch.tensor([], dtype=torch.long)):
        with pytest.raises(GenerationError, match="the prompt is empty"):
            Session(model, empty)
    with pytest.raises(GenerationError, match="no tokenizer"):
        generate(model, PROMPT)
    with pytest.raises(GenerationError, match="temperature"):
        Session(model, PROMPT, temperature=-1)


# ---------------------------------------------------------------------------------------------
# Text: streaming, stop strings, chat prompts (real SmolLM2 tokenizer)
# ---------------------------------------------------------------------------------------------

TEXT = "Hi 🦙 naïve 日本語! 🦙🦙 done"


@pytest.fixture(scope="module")
def scripted(smollm2):
    """A tiny random model with SmolLM2's vocabulary and tokenizer, and ``script(ids)``: a hook that makes
    greedy decoding emit exactly ``ids`` then ``<|im_end|>``."""
    model = tiny_model(seed=0, vocab_size=49152, max_position_embeddings=128)
    model.tokenizer = smollm2.tokenizer

    def script(ids: list[int]):
        queue = [*ids, 2]

        def force(logits: torch.Tensor, hook) -> torch.Tensor:
            forced = torch.full_like(logits, -1e9)
            forced[:, -1, queue.pop(0) if queue else 2] = 0.0
            return forced

        return model.hooks(fwd_hooks=[("unembed.hook_out", force)])

    return model, script


def test_streaming_never_splits_a_character_and_adds_up(scripted) -> None:
    model, script = scripted
    tokenizer = model.tokenizer
    ids = tokenizer.encode(TEXT)
    assert any(tokenizer.decode([i]) == "\ufffd" for i in ids)  # the emoji really is split across tokens
    with script(ids):
        stream = generate(model, "x", max_new_tokens=40, temperature=0, stream=True)
        pieces = list(stream)
    assert "".join(pieces) == TEXT == stream.text
    assert not any("\ufffd" in piece for piece in pieces)
    assert len(pieces) < len(ids)  # bytes of a character were held back until it was complete
    assert stream.tokens == [*ids, 2] and stream.stop_reason == "stop_token"
    with script(ids):
        result = generate(model, "x", max_new_tokens=40, temperature=0)
    assert result == TEXT and result.tokens == [*ids, 2]
    assert result.prompt_tokens == [tokenizer.bos_id, *tokenizer.encode("x")]


def test_stop_strings_cut_the_text_even_across_tokens(scripted) -> None:
    model, script = scripted
    ids = model.tokenizer.encode(TEXT)
    for stop, expected in [
        ("日本", "Hi 🦙 naïve "),
        ("🦙🦙", "Hi 🦙 naïve 日本語! "),
        ("e 日", "Hi 🦙 naïv"),
    ]:
        with script(ids):
            stream = generate(model, "x", max_new_tokens=40, temperature=0, stop=stop, stream=True)
            pieces = list(stream)
        assert "".join(pieces) == expected and stream.stop_reason == "stop_string", stop
        assert len(stream.tokens) < len(ids)  # generation ended there, not at the end
    with script(ids):
        out = generate(model, "x", max_new_tokens=40, temperature=0, stop=["<|im_end|>", "absent"])
    assert out == TEXT and out.stop_reason == "stop_token"
    with script(ids):
        out = generate(model, "x", max_new_tokens=3, temperature=0)
    assert out == model.tokenizer.decode(ids[:3]) and out.stop_reason == "max_new_tokens"


def test_special_token_names_and_ids_as_stops(scripted) -> None:
    model, script = scripted
    ids = model.tokenizer.encode("a b c d")
    with script(ids):
        out = generate(model, "x", max_new_tokens=10, temperature=0, stop=ids[2])
    assert out.tokens == ids[:3] and out == "a b"  # like stop strings, a stop token's text is left out
    session = Session(model, "x", temperature=0, stop="<|im_start|>")
    assert session.stop_ids == {0, 1, 2}
    with pytest.raises(GenerationError, match="a Session stops on tokens"):
        Session(model, "x", stop="plain text")
    with pytest.raises(GenerationError, match="force\\(\\) takes one token, but 'naïve' encodes to 2"):
        session.force("naïve")


def test_chat_messages_use_the_chat_template(scripted) -> None:
    model, script = scripted
    messages = [{"role": "user", "content": "Hi"}]
    with script([]):
        out = generate(model, messages, max_new_tokens=5)
    assert out.prompt_tokens == model.tokenizer.encode_chat(messages, add_generation_prompt=True)
    with pytest.raises(GenerationError, match="needs 'role' and 'content'"):
        generate(model, [{"text": "Hi"}])


def test_embedded_model_answers_paris(smollm2) -> None:
    out = generate(smollm2, [{"role": "user", "content": "What is the capital of France?"}], temperature=0)
    assert "Paris" in out and out.stop_reason == "stop_token"
    assert out == "The capital of France is Paris."  # REFERENCE section 1, same greedy answer as transformers


def test_fast_generate_gives_the_same_text_and_tokens(smollm2) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    eager = generate(smollm2, messages, temperature=0)
    fast = generate(smollm2, messages, temperature=0, fast={"compile": None})  # the fixed-shape step
    assert fast == eager and fast.tokens == eager.tokens and fast.stop_reason == eager.stop_reason
    streamed = "".join(generate(smollm2, messages, temperature=0, stream=True, fast={"compile": None}))
    assert streamed == eager


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_with_smollm2(smollm2, monkeypatch):
    import llama3_lab.loading

    monkeypatch.setattr(llama3_lab.loading, "load_model", lambda *a, **k: smollm2)
    from llama3_lab import cli

    return cli


def test_cli_generate_streams_the_answer(cli_with_smollm2, capsys) -> None:
    argv = [
        "generate",
        "What is the capital of France?",
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
    ]
    assert cli_with_smollm2.main(argv) == 0
    assert capsys.readouterr().out == "The capital of France is Paris.\n"
    assert cli_with_smollm2.main(["generate", "x", "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_cli_chat_keeps_the_conversation_and_obeys_commands(cli_with_smollm2, capsys, monkeypatch) -> None:
    import io

    import llama3_lab.generation as generation

    prompts = []
    real_generate = generation.generate

    def spy(model, prompt, **kwargs):
        prompts.append([dict(m) for m in prompt])
        return real_generate(model, prompt, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    lines = "What is the capital of France?\nAnd of Italy?\n/reset\nHello\n/exit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert cli_with_smollm2.main(["chat", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0] == "The capital of France is Paris."
    assert [len(p) for p in prompts] == [1, 3, 1]  # the second turn carries the first; /reset forgets it
    assert prompts[1][1] == {"role": "assistant", "content": out[0]}
    assert prompts[2] == [{"role": "user", "content": "Hello"}]
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))  # EOF ends the chat as well
    assert cli_with_smollm2.main(["chat", "--temperature", "0", "--max-new-tokens", "3"]) == 0
