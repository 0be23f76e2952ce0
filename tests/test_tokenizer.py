"""Both tokenizers against exact reference vectors and against Hugging Face ``tokenizers``.

References: Meta's published Llama 3 ids; HF ``tokenizers`` loading the Llama 3.2 ``tokenizer.json``
with ``ignore_merges = True`` (tiktoken's behaviour); for SmolLM2 an HF BPE built from the GGUF's own
vocabulary and merges with ``Digits(individual_digits=True)`` + ``ByteLevel``, the pre-tokenizer SmolLM2
was trained with (not transformers' GGUF tokenizer, which lacks the ``smollm`` pre-tokenizer).
The corpus (>= 2,000 strings) is generated from a fixed seed plus the snippets in
``tests/data/tokenizer_snippets.txt``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llama3_lab.assets import asset_path
from llama3_lab.tokenizer import (
    GPT2_PATTERN,
    GGUFByteBPETokenizer,
    Llama3Tokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

tokenizers = pytest.importorskip("tokenizers")

SNIPPETS = Path(__file__).parent / "data" / "tokenizer_snippets.txt"

# ------------------------------------------------------------------------------------------------------
# A deterministic, varied corpus


def load_snippets() -> list[str]:
    """Snippets file: one per line, ``\\n``-style escapes, ``# `` comment lines."""
    lines = SNIPPETS.read_text(encoding="utf-8").splitlines()
    return [
        line.encode("latin-1", "backslashreplace").decode("unicode_escape")
        for line in lines
        if line and not line.startswith("# ")
    ]


def _chars(*ranges: tuple[int, int]) -> list[str]:
    return [chr(c) for first, last in ranges for c in range(first, last + 1)]


POOLS = {
    "ascii": _chars((0x61, 0x7A), (0x41, 0x5A)),
    "digits": _chars((0x30, 0x39)),
    "other_digits": _chars((0x660, 0x669), (0x966, 0x96F), (0xFF10, 0xFF19), (0x2070, 0x2079), (0xBC, 0xBE)),
    "punct": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—–…‘’“”•·€£¥§¶†‡"),
    "latin": _chars((0xC0, 0xFF), (0x100, 0x17F), (0x1E00, 0x1EFF)),
    "combining": _chars((0x300, 0x36F)),
    "greek": _chars((0x391, 0x3C9)),
    "cyrillic": _chars((0x400, 0x44F)),
    "arabic": _chars((0x621, 0x652)),
    "hebrew": _chars((0x5D0, 0x5EA)),
    "devanagari": _chars((0x905, 0x939), (0x93E, 0x94D)),
    "thai": _chars((0xE01, 0xE3A), (0xE40, 0xE4E)),
    "cjk": _chars((0x4E00, 0x9FFF)),
    "kana": _chars((0x3041, 0x3096), (0x30A1, 0x30FA)),
    "hangul": _chars((0xAC00, 0xD7A3)),
    "emoji": _chars((0x1F300, 0x1F64F), (0x1F900, 0x1F9FF))
    + ["\u200d", "\ufe0f", "\U0001f3fb", "\U0001f3ff"],
    "math": _chars((0x2200, 0x22FF), (0x1D400, 0x1D4FF)),
}
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\r", "\x0b", "\x0c"]
WHITESPACE += ["\u00a0", "\u3000", "\u2003", " \t "]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
CONTRACTIONS += [c.upper() for c in CONTRACTIONS] + ["'Ll"]


def _word(rng: random.Random) -> str:
    pool = POOLS[rng.choice(list(POOLS))]
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))


def _codepoint(rng: random.Random) -> str:
    while True:  # any scalar value, weighted towards 1-, 2-, 3- and 4-byte UTF-8 alike
        c = rng.choice([(0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF)])
        code = rng.randint(*c)
        if not 0xD800 <= code <= 0xDFFF:
            return chr(code)


def _slice(rng: random.Random, snippets: list[str], max_len: int | None = None) -> str:
    s = rng.choice(snippets)
    start = rng.randrange(len(s))
    return s[start : rng.randint(start, len(s)) if max_len is None else start + rng.randint(1, max_len)]


def _soup(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 30)):
        r = rng.random()
        if r < 0.6:
            pieces.append(_word(rng))
        elif r < 0.7:
            pieces.append(rng.choice(CONTRACTIONS))
        elif r < 0.85:
            pieces.append(rng.choice(POOLS["punct"]) * rng.randint(1, 3))
        else:
            pieces.append(rng.choice(WHITESPACE))
        if rng.random() < 0.7:
            pieces.append(rng.choice([" ", " ", "", "\n", rng.choice(WHITESPACE)]))
    return "".join(pieces)


def make_corpus(n: int = 2400, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    snippets = load_snippets()
    number_chars = POOLS["digits"] + POOLS["other_digits"] + list(",. -_+e")
    makers = [
        lambda: _slice(rng, snippets),
        lambda: rng.choice(WHITESPACE).join(_slice(rng, snippets, 40) for _ in range(rng.randint(2, 3))),
        lambda: _soup(rng),
        lambda: "".join(rng.choice(number_chars) for _ in range(rng.randint(1, 40))),
        lambda: "".join(
            rng.choice(WHITESPACE) * rng.randint(1, 4) + (_word(rng) if rng.random() < 0.6 else "")
            for _ in range(rng.randint(1, 8))
        ),
        lambda: "".join(_codepoint(rng) for _ in range(rng.randint(1, 20))),
        lambda: (
            f"{_word(rng)}{rng.choice(CONTRACTIONS)} {rng.randint(0, 10 ** rng.randint(1, 12))}"
            f"{rng.choice(WHITESPACE)}{_word(rng)}"
        ),
    ]
    corpus = list(snippets)
    while len(corpus) < n:
        corpus.append(rng.choice(makers)())
    return corpus


# ------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def llama3() -> Llama3Tokenizer:
    return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def gguf_reader():
    from gguf import GGUFReader

    return GGUFReader(asset_path("smollm2-135m-instruct.gguf"))


@pytest.fixture(scope="module")
def smollm(gguf_reader) -> GGUFByteBPETokenizer:
    return GGUFByteBPETokenizer(gguf_reader, name="smollm2-135m-instruct")  # = load_tokenizer(name)


@pytest.fixture(scope="module")
def hf_llama3():
    reference = tokenizers.Tokenizer.from_file(str(asset_path("llama3/tokenizer.json")))
    reference.model.ignore_merges = True
    return reference


def _hf_smollm(reader, with_specials: bool):
    vocab = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    reference = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    )
    reference.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [
            tokenizers.pre_tokenizers.Digits(individual_digits=True),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    reference.decoder = tokenizers.decoders.ByteLevel()
    if with_specials:
        controls = [t for t, kind in zip(vocab, types) if kind == 3]
        reference.add_special_tokens(
            [tokenizers.AddedToken(t, special=True, normalized=False) for t in controls]
        )
    return reference


@pytest.fixture(scope="module")
def hf_smollm(gguf_reader):
    return _hf_smollm(gguf_reader, with_specials=False)


@pytest.fixture(scope="module")
def hf_smollm_specials(gguf_reader):
    return _hf_smollm(gguf_reader, with_specials=True)


def _hf_ids(reference, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]


def _has_untokenizable(tok: GGUFByteBPETokenizer, text: str) -> bool:
    data = text.encode("utf-8")
    return len(data.translate(None, tok.untokenizable_bytes)) != len(data)


# ------------------------------------------------------------------------------------------------------
# Llama 3: reference vectors, specials, chat


def test_llama3_reference_vectors(llama3: Llama3Tokenizer) -> None:
    assert llama3.encode("This is a test sentence.", bos=True, eos=True) == [
        128000, 2028, 374, 264, 1296, 11914, 13, 128001,
    ]  # fmt: skip
    assert llama3.encode("Hello, world!") == [9906, 11, 1917, 0]
    assert llama3.encode("user") == [882]
    assert llama3.encode("system") == [9125]
    assert llama3.encode("assistant") == [78191]
    assert llama3.encode("\n\n") == [271]
    assert llama3.decode([2983]) == "42"


def test_llama3_special_text_is_plain_unless_allowed(llama3: Llama3Tokenizer) -> None:
    assert llama3.encode("<|eot_id|>") == [27, 91, 68, 354, 851, 91, 29]
    assert llama3.encode("<|eot_id|>", allowed_special={"<|eot_id|>"}) == [128009]
    assert llama3.encode("<|eot_id|>", allowed_special="<|eot_id|>") == [128009]
    assert llama3.encode("a<|eot_id|>b<|begin_of_text|>", allowed_special="all") == [64, 128009, 65, 128000]
    # Allowing one special does not allow the others.
    assert 128000 not in llama3.encode("<|eot_id|><|begin_of_text|>", allowed_special={"<|eot_id|>"})
    with pytest.raises(TokenizerError, match="not special tokens"):
        llama3.encode("x", allowed_special={"<|eom_id|>"})  # a Llama 3.1 name: 3.0 calls 128008 reserved


def test_llama3_special_tokens_and_ids(llama3: Llama3Tokenizer, hf_llama3) -> None:
    assert llama3.n_vocab == len(llama3) == 128_256
    assert sorted(llama3.special_tokens.values()) == list(range(128_000, 128_256))
    expected = {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|reserved_special_token_0|>": 128002,
        "<|reserved_special_token_3|>": 128005,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|reserved_special_token_4|>": 128008,
        "<|eot_id|>": 128009,
        "<|reserved_special_token_5|>": 128010,
        "<|reserved_special_token_250|>": 128255,
    }
    assert {name: llama3.special_tokens[name] for name in expected} == expected
    for name in [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]:
        assert hf_llama3.token_to_id(name) == llama3.special_tokens[name]
    assert (llama3.bos_id, llama3.eos_id, llama3.stop_ids) == (128000, 128001, {128001, 128009})


def test_llama3_chat_format(llama3: Llama3Tokenizer, hf_llama3) -> None:
    hi = [{"role": "user", "content": "Hi"}]
    assert llama3.encode_chat(hi) == [
        128000,
        128006,
        882,
        128007,
        271,
        13347,
        128009,
        128006,
        78191,
        128007,
        271,
    ]
    assert llama3.encode_chat(hi, add_generation_prompt=False) == [
        128000,
        128006,
        882,
        128007,
        271,
        13347,
        128009,
    ]
    assert llama3.render_chat(hi) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    dialog = [
        {"role": "system", "content": "  You are terse.\n"},
        {"role": "user", "content": "What is 2+2?\n\n"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Say <|eot_id|> literally."},
    ]
    ids = llama3.encode_chat(dialog)
    assert ids.count(128009) == 4, "special text inside content must stay plain text"
    assert "\n\nYou are terse.<|eot_id|>" in llama3.render_chat(dialog)  # content is stripped
    # Encoding the rendered text (specials matched, as HF does) gives the same ids, except that
    # the user's literal "<|eot_id|>" stays plain in ours.
    safe = dialog[:3]
    assert (
        llama3.encode_chat(safe) == hf_llama3.encode(llama3.render_chat(safe), add_special_tokens=False).ids
    )


def test_llama3_matches_hugging_face_on_corpus(llama3: Llama3Tokenizer, hf_llama3, corpus: list[str]) -> None:
    assert len(corpus) >= 2000
    ours = [llama3.encode(text, allowed_special="all") for text in corpus]
    mismatches = [text for text, a, b in zip(corpus, ours, _hf_ids(hf_llama3, corpus)) if a != b]
    assert mismatches == []
    assert all(llama3.decode(ids) == text for ids, text in zip(ours, corpus))


def test_corpus_tells_tokenizers_apart(hf_llama3, smollm: GGUFByteBPETokenizer, hf_smollm, corpus) -> None:
    """The corpus is hard enough to catch the two known traps (so the comparisons above can fail)."""
    hf_llama3.model.ignore_merges = False
    try:
        merged = _hf_ids(hf_llama3, corpus)
    finally:
        hf_llama3.model.ignore_merges = True
    assert sum(a != b for a, b in zip(merged, _hf_ids(hf_llama3, corpus))) > 0

    gpt2_split = tiktoken.Encoding(
        "gpt2-split",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=smollm._encoding._mergeable_ranks,
        special_tokens={},
    )
    clean = [text for text in corpus if not _has_untokenizable(smollm, text)]
    reference = _hf_ids(hf_smollm, clean)
    assert sum(gpt2_split.encode_ordinary(t) != ids for t, ids in zip(clean, reference)) > 50


# ------------------------------------------------------------------------------------------------------
# SmolLM2 (GGUF byte-level BPE)


def test_smollm_vocabulary_and_specials(smollm: GGUFByteBPETokenizer) -> None:
    assert smollm.n_vocab == 49_152
    assert sorted(smollm.special_tokens.values()) == list(range(17))
    assert smollm.special_tokens["<|endoftext|>"] == 0
    assert (smollm.bos_id, smollm.eos_id, smollm.stop_ids) == (1, 2, {0, 2})
    assert smollm.special_names[1] == "<|im_start|>"
    assert (
        smollm.default_system_prompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert smollm.encode("<|im_end|>", allowed_special="all") == [2]
    assert 2 not in smollm.encode("<|im_end|>")
    assert smollm.encode("Hi", bos=True, eos=True)[0 :: len(smollm.encode("Hi")) + 1] == [1, 2]


def test_smollm_matches_hugging_face_on_corpus(
    smollm: GGUFByteBPETokenizer, hf_smollm, hf_smollm_specials, corpus: list[str]
) -> None:
    ours = [smollm.encode(text) for text in corpus]
    assert [t for t, a, b in zip(corpus, ours, _hf_ids(hf_smollm, corpus)) if a != b] == []
    with_specials = [smollm.encode(text, allowed_special="all") for text in corpus]
    assert [t for t, a, b in zip(corpus, with_specials, _hf_ids(hf_smollm_specials, corpus)) if a != b] == []
    # Both paths are exercised: strings with bytes that have no token (slow path) and without.
    untokenizable = [t for t in corpus if _has_untokenizable(smollm, t)]
    assert len(untokenizable) > 100
    clean = [(t, ids) for t, ids in zip(corpus, ours) if not _has_untokenizable(smollm, t)]
    assert all(smollm.decode(ids) == t for t, ids in clean)


def test_smollm_bytes_without_a_token_are_dropped_like_hugging_face(
    smollm: GGUFByteBPETokenizer, hf_smollm, hf_smollm_specials
) -> None:
    assert smollm.untokenizable_bytes == bytes(
        [0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)]
    )
    cases = {
        "\x04": [],
        "a\x04b": [81, 82],  # the split still happens where the byte was
        "!\x04!": [10095],  # inside one piece the remaining bytes merge: "!!"
        " \x04 ": [216, 216],
        "\U00040000": [218, 218, 218],  # UTF-8 f1 80 80 80: the lead byte goes, continuation bytes stay
    }
    for text, expected in cases.items():
        assert smollm.encode(text) == expected, text
        assert _hf_ids(hf_smollm, [text])[0] == expected, text
    assert smollm.decode(smollm.encode("a\x04b")) == "ab"
    # Both paths turn a lone surrogate into U+FFFD.
    assert smollm.encode("\ud800\x04a") == smollm.encode("\ud800a") == smollm.encode("\ufffda")
    # The slow path keeps special tokens when they are allowed.
    text = "x\x06<|im_end|>y"
    assert smollm.encode(text, allowed_special="all") == [104, 2, 105]
    assert _hf_ids(hf_smollm_specials, [text])[0] == [104, 2, 105]


def test_smollm_chat_template_matches_the_gguf_jinja_template(
    smollm: GGUFByteBPETokenizer, hf_smollm_specials
):
    jinja2 = pytest.importorskip("jinja2.sandbox")
    template = jinja2.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        smollm.chat_template
    )
    dialogs = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi \n"}],
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "Thanks! 😀"},
        ],
        [],
    ]
    for dialog in dialogs:
        for generation_prompt in (True, False):
            rendered = template.render(messages=dialog, add_generation_prompt=generation_prompt)
            assert smollm.render_chat(dialog, generation_prompt) == rendered
            expected = hf_smollm_specials.encode(rendered, add_special_tokens=False).ids
            assert smollm.encode_chat(dialog, generation_prompt) == expected
    ids = smollm.encode_chat(dialogs[0])
    assert ids[:3] == [1, 9690, 198] and ids[-3:] == [1, 520, 9531, 198][-3:]


# ------------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_llama3_round_trip_and_hf_property(llama3: Llama3Tokenizer, hf_llama3, text: str) -> None:
    ids = llama3.encode(text)
    assert llama3.decode(ids) == text
    assume("<|" not in text)  # HF matches special-token text; ours keeps it plain
    assert ids == hf_llama3.encode(text, add_special_tokens=False).ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_smollm_round_trip_and_hf_property(smollm: GGUFByteBPETokenizer, hf_smollm, text: str) -> None:
    ids = smollm.encode(text)
    assert ids == hf_smollm.encode(text, add_special_tokens=False).ids
    if not _has_untokenizable(smollm, text):
        assert smollm.decode(ids) == text
    else:  # exactly the bytes without a token are lost
        expected = text.encode("utf-8").translate(None, smollm.untokenizable_bytes)
        assert b"".join(smollm.token_bytes(ids)) == expected


# ------------------------------------------------------------------------------------------------------
# Display helpers, inputs, loading


def test_token_strings_and_bytes(llama3: Llama3Tokenizer, smollm: GGUFByteBPETokenizer) -> None:
    ids = llama3.encode("🦙 llama café")
    assert llama3.token_strings(ids) == ["<0xF0><0x9F>", "<0xA6>", "<0x99>", " llama", " café"]
    assert b"".join(llama3.token_bytes(ids)) == "🦙 llama café".encode()
    assert llama3.token_strings([128000, 9906]) == ["<|begin_of_text|>", "Hello"]
    assert smollm.token_strings(smollm.encode(" 42")) == [" ", "4", "2"]
    assert smollm.token_bytes([1]) == [b"<|im_start|>"]


def test_decode_accepts_tensors_and_rejects_bad_ids(llama3: Llama3Tokenizer) -> None:
    assert llama3.decode(torch.tensor([9906, 11, 1917, 0])) == "Hello, world!"
    assert llama3.decode(np.array([9906, 0])) == "Hello!"
    with pytest.raises(TokenizerError, match=r"outside the vocabulary 0\.\.128255"):
        llama3.decode([128256])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        llama3.token_strings([-1])
    with pytest.raises(TypeError, match="wrap it in a list"):
        llama3.decode(5)
    with pytest.raises(TypeError, match="expects a str"):
        llama3.encode(b"bytes")
    with pytest.raises(TokenizerError, match="'role' and 'content'"):
        llama3.encode_chat([{"role": "user"}])
    with pytest.raises(TypeError, match="list of messages"):
        llama3.encode_chat({"role": "user", "content": "Hi"})


def test_repr_names_the_tokenizer(llama3: Llama3Tokenizer, smollm: GGUFByteBPETokenizer) -> None:
    assert repr(llama3) == (
        "Llama3Tokenizer(name='llama3', n_vocab=128,256, 256 special tokens, bos=128000 <|begin_of_text|>, "
        "eos=128001 <|end_of_text|>, stop_ids=[128001 <|end_of_text|>, 128009 <|eot_id|>])"
    )
    assert repr(smollm).startswith("GGUFByteBPETokenizer(name='smollm2-135m-instruct', n_vocab=49,152")


def test_load_tokenizer_from_paths(tmp_path: Path, llama3: Llama3Tokenizer) -> None:
    model_file = asset_path("llama3/tokenizer.model")
    from_file = load_tokenizer(model_file)
    assert isinstance(from_file, Llama3Tokenizer) and isinstance(from_file, Tokenizer)
    assert from_file.encode("Hello, world!") == [9906, 11, 1917, 0]

    checkpoint = tmp_path / "Meta-Llama-3-8B"
    (checkpoint / "original").mkdir(parents=True)
    shutil.copyfile(model_file, checkpoint / "original" / "tokenizer.model")
    assert load_tokenizer(checkpoint).encode("user") == [882]

    gguf = load_tokenizer(str(asset_path("smollm2-135m-instruct.gguf")))
    assert isinstance(gguf, GGUFByteBPETokenizer) and gguf.encode("Hello") == [19556]

    with pytest.raises(FileNotFoundError, match="neither a known tokenizer name"):
        load_tokenizer("llama2")
    with pytest.raises(FileNotFoundError, match="No tokenizer.model"):
        load_tokenizer(tmp_path)
    not_tiktoken = tmp_path / "tokenizer.model"
    not_tiktoken.write_bytes(b"\x0a\x0b sentencepiece protobuf")
    with pytest.raises(TokenizerError, match="tiktoken tokenizer.model"):
        load_tokenizer(not_tiktoken)
