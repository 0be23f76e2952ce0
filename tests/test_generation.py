"""generate and generate_tokens: decoding, stop conditions, streaming text, chat prompts."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from llama3_lab.batch_generation import generate_batch
from llama3_lab.generation import GenerationError, generate, generate_tokens, make_generator
from llama3_lab.sampling import Sampling
from llama3_lab.session import Session

# ---------------------------------------------------------------------------------------------
# Decoding on tiny random models
# ---------------------------------------------------------------------------------------------

PROMPT = [1, 5, 17, 42, 8, 33]


def test_tiny_temperature_equals_greedy_and_seeds_reproduce(make_model) -> None:
    model = make_model(seed=4)
    greedy = list(generate_tokens(model, PROMPT, 15, temperature=0))
    cold = list(generate_tokens(model, PROMPT, 15, temperature=1e-6, generator=make_generator(0)))
    assert cold == greedy
    hot = Sampling(temperature=1.0, top_p=1.0, top_k=None)
    runs = [list(generate_tokens(model, PROMPT, 15, hot, generator=make_generator(s))) for s in (11, 11, 12)]
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


def test_sampling_as_keywords_or_a_sampling(make_model) -> None:
    model = make_model(seed=14)
    hot = Sampling(temperature=0.9, top_p=0.95, top_k=20)
    by_object = list(generate_tokens(model, PROMPT, 10, hot, generator=make_generator(3)))
    by_keywords = list(
        generate_tokens(model, PROMPT, 10, temperature=0.9, top_p=0.95, top_k=20, generator=make_generator(3))
    )
    assert by_object == by_keywords
    with pytest.raises(GenerationError, match="give one of them"):
        generate_tokens(model, PROMPT, 10, hot, temperature=0)
    with pytest.raises(TypeError, match="generate_tokens\\(\\) got unexpected keyword"):
        generate_tokens(model, PROMPT, 10, max_new_token=3)


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
    assert result.prompt_tokens == tokenizer.encode("x")  # SmolLM2's GGUF: add_bos_token = false
    with script(ids):
        chosen = generate(model, "x", max_new_tokens=1, temperature=0, prepend_bos=True)
    assert chosen.prompt_tokens == [tokenizer.bos_id, *tokenizer.encode("x")]


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
# A batch of prompts
# ---------------------------------------------------------------------------------------------


def test_batched_greedy_equals_each_prompt_alone_on_tiny_models(make_model) -> None:
    model = make_model(seed=6, eos_token_id=None)
    prompts = [PROMPT, [3], [9, 9, 4, 1, 2, 7, 7, 30, 11, 5], [40, 2]]
    alone = [list(generate_tokens(model, p, 10, temperature=0)) for p in prompts]
    stop = alone[2][3]  # row 2 stops early on this token; the others may too
    batched = generate_batch(model, prompts, 10, temperature=0, stop=stop)
    expected = [a[: a.index(stop) + 1] if stop in a else a for a in alone]
    assert [g.tokens for g in batched] == expected
    assert [g.prompt_tokens for g in batched] == prompts
    assert batched[2].stop_reason == "stop_token" and len(batched[2].tokens) == alone[2].index(stop) + 1


def test_batched_sampling_uses_one_generator_per_row(make_model) -> None:
    model = make_model(seed=7, eos_token_id=None)
    prompts = [PROMPT, [3, 4]]
    hot = Sampling(temperature=1.0, top_p=1.0, top_k=None)
    first = generate_batch(model, prompts, 8, hot, seed=[5, 9])
    assert [g.tokens for g in first] == [
        g.tokens for g in generate_batch(model, prompts, 8, hot, seed=[5, 9])
    ]
    for prompt, seed, row in zip(prompts, (5, 9), first):
        assert list(generate_tokens(model, prompt, 8, hot, generator=make_generator(seed))) == row.tokens
    with pytest.raises(GenerationError, match="one seed per prompt"):
        generate_batch(model, prompts, 8, hot, seed=[1])


def test_a_batch_is_not_streamed(scripted) -> None:
    model, _ = scripted
    with pytest.raises(GenerationError, match="a batch of prompts is not streamed"):
        generate(model, ["a", "b c"], max_new_tokens=3, stream=True)


def test_batched_stop_strings_end_each_row_on_its_own(scripted) -> None:
    model, script = scripted
    ids = model.tokenizer.encode(TEXT)
    with script(ids + ids):  # both rows get the same forced logits at every step
        out = generate(model, ["x", "a b c"], max_new_tokens=40, temperature=0, stop="naïve")
    assert [str(g) for g in out] == ["Hi 🦙 ", "Hi 🦙 "] and {g.stop_reason for g in out} == {"stop_string"}


def test_embedded_batched_greedy_equals_each_prompt_alone(smollm2) -> None:
    prompts = [
        [{"role": "user", "content": "What is the capital of France?"}],
        "The capital of France is",
        [{"role": "user", "content": "Name a colour."}],
        "1, 2, 3, 4,",
    ]
    batched = generate(smollm2, prompts, max_new_tokens=16, temperature=0)
    assert batched[0] == "The capital of France is Paris."
    for prompt, row in zip(prompts, batched):
        alone = generate(smollm2, prompt, max_new_tokens=16, temperature=0)
        assert row.tokens == alone.tokens and row == alone and row.stop_reason == alone.stop_reason
