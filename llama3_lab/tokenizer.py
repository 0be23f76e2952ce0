"""Tokenizers: one interface (``Tokenizer``) for Llama 3 (Meta's tiktoken BPE, ``tokenizer_llama3.py``) and
GGUF byte-level BPE (SmolLM2, ``tokenizer_gguf.py``); ``load_tokenizer`` picks the right one.

Both are tiktoken ``Encoding`` objects underneath, so both encode at tiktoken speed and both treat
special-token text typed by a user as plain text unless the caller explicitly allows it.

- ``Llama3Tokenizer`` reads Meta's ``tokenizer.model`` (128,000 base64 ranks) and adds Meta's 256 special
  tokens (Llama 3.0 names). Chat format: Meta's ``ChatFormat`` (header, ``\\n\\n``, stripped content, eot).
- ``GGUFByteBPETokenizer`` reads the vocabulary of a GGUF file (``tokenizer.ggml.model = gpt2``): token
  strings in GPT-2's byte-to-unicode alphabet map back to bytes, and rank = token id, which reproduces
  the merge order because every merge result's id grows with its merge index (checked on load).
  Control tokens become special tokens; the chat template stored in the GGUF (ChatML for SmolLM2) is
  rendered in Python.

Bytes without a token. SmolLM2's vocabulary has no token for 21 single bytes (``\\x04``, ``\\x06``,
``\\x13``, ``\\x14``, ``\\x16``, ``\\x1d``, ``\\xc0``, ``\\xc1``, ``\\xf1``, ``\\xf2``, ``\\xf5``-``\\xff``).
Hugging Face's tokenizer, with which the model was trained, silently drops such bytes inside each
pre-tokenized piece and merges what remains. We do exactly the same (so our ids equal Hugging Face's
for every string); the bytes are listed in ``tok.untokenizable_bytes``, and ``decode(encode(s)) == s``
holds for every string without them.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tiktoken

__all__ = [  # plus, loaded on first use from their own files: Llama3Tokenizer, GGUFByteBPETokenizer
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
    "LLAMA3_PATTERN",
    "SMOLLM_PATTERN",
    "GPT2_PATTERN",
]

Message = Mapping[str, str]
AllowedSpecial = Literal["all"] | Iterable[str]

# Pre-tokenizer split patterns (tiktoken / fancy-regex syntax; the `regex` module reads them the same).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# SmolLM2 = Hugging Face Digits(individual_digits=True) followed by GPT-2's ByteLevel split.
SMOLLM_PATTERN = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# llama.cpp's `tokenizer.ggml.pre` names for the patterns above.
GGUF_PRE_PATTERNS = {
    "smollm": SMOLLM_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "gpt-2": GPT2_PATTERN,
    "gpt2": GPT2_PATTERN,
}


class TokenizerError(ValueError):
    """A tokenizer file or a tokenizer input is not what was expected."""


# Invalid UTF-8 in a display string is shown byte by byte as <0xE2>, like llama.cpp and sentencepiece.
def _hex_bytes(error: UnicodeError) -> tuple[str, int]:
    bad = error.object[error.start : error.end]
    return "".join(f"<0x{b:02X}>" for b in bad), error.end


codecs.register_error("llama3_lab.hexbytes", _hex_bytes)


def _as_ids(ids: Any) -> list[int]:
    """Accept a list, tuple, numpy array or 1-D tensor of token ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        raise TypeError("Expected a sequence of token ids, got a single int; wrap it in a list: [id].")
    return [int(i) for i in ids]


class Tokenizer:
    """The tokenizer interface shared by every model in llama3-lab.

    Attributes: ``name``, ``n_vocab``, ``special_tokens`` (text -> id), ``bos_id``, ``eos_id``,
    ``stop_ids`` (ids that end a generated reply), ``add_bos`` (whether this tokenizer's own
    configuration puts ``bos_id`` before a text: what ``to_tokens(..., prepend_bos=None)`` follows) and
    ``pad_id`` (the id that fills the short rows of a padded batch; never attended to).
    """

    def __init__(
        self,
        *,
        name: str,
        encoding: tiktoken.Encoding,
        n_vocab: int,
        bos_id: int,
        eos_id: int,
        stop_ids: Iterable[int],
        add_bos: bool,
        pad_id: int,
    ) -> None:
        self.name = name
        self._encoding = encoding
        self.n_vocab = n_vocab
        self.special_tokens: dict[str, int] = dict(encoding._special_tokens)
        self.special_names: dict[int, str] = {i: s for s, i in self.special_tokens.items()}
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.stop_ids: set[int] = set(stop_ids)
        self.add_bos = bool(add_bos)
        self.pad_id = pad_id

    # -- encoding ------------------------------------------------------------------------------------

    def _allowed(self, allowed_special: AllowedSpecial) -> set[str] | Literal["all"]:
        if allowed_special == "all":
            return "all"
        if isinstance(allowed_special, str):
            allowed_special = [allowed_special]
        allowed = set(allowed_special)
        unknown = allowed - self.special_tokens.keys()
        if unknown:
            raise TokenizerError(
                f"{self.name}: {sorted(unknown)} are not special tokens of this tokenizer; "
                f"allowed_special takes names from tok.special_tokens (or 'all')."
            )
        return allowed

    def encode(
        self, text: str, bos: bool = False, eos: bool = False, allowed_special: AllowedSpecial = ()
    ) -> list[int]:
        """Token ids of ``text``.

        Special-token text (e.g. ``"<|eot_id|>"``) is encoded as plain text unless ``allowed_special``
        names it (a name, a collection of names, or ``"all"``): user input cannot smuggle in a control
        token by accident. ``bos``/``eos`` add ``bos_id``/``eos_id`` around the ids.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}.")
        ids = self._encode_text(text, self._allowed(allowed_special))
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def _encode_text(self, text: str, allowed: set[str] | Literal["all"]) -> list[int]:
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    # -- decoding ------------------------------------------------------------------------------------

    def _checked(self, ids: Any) -> list[int]:
        ids = _as_ids(ids)
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise TokenizerError(
                f"{self.name}: token ids {bad[:5]} are outside the vocabulary 0..{self.n_vocab - 1}."
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 on their own become U+FFFD."""
        return self._encoding.decode(self._checked(ids), errors="replace")

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """The raw bytes of each token (special tokens give their text in UTF-8)."""
        return self._encoding.decode_tokens_bytes(self._checked(ids))

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """A readable string per token: its text, with bytes that are not valid UTF-8 on their own
        (a character split across tokens) shown as ``<0xE2>``."""
        return [b.decode("utf-8", errors="llama3_lab.hexbytes") for b in self.token_bytes(ids)]

    # -- chat ----------------------------------------------------------------------------------------

    def _chat_segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int | str]:
        """The chat format as a list of special-token ids and plain-text pieces."""
        raise NotImplementedError

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a dialog (list of ``{"role": ..., "content": ...}``) in this model's chat format.

        With ``add_generation_prompt`` the ids end with the header that asks the model for a reply.
        Special-token text inside messages stays plain text.
        """
        ids: list[int] = []
        for segment in self._chat_segments(_checked_messages(messages), add_generation_prompt):
            if isinstance(segment, int):
                ids.append(segment)
            else:
                ids.extend(self._encode_text(segment, set()))
        return ids

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The dialog as text, special tokens written out: what ``encode_chat`` encodes."""
        segments = self._chat_segments(_checked_messages(messages), add_generation_prompt)
        return "".join(self.special_names[s] if isinstance(s, int) else s for s in segments)

    # -- display -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        def named(i: int) -> str:
            return f"{i} {self.special_names.get(i, '?')}"

        stops = ", ".join(named(i) for i in sorted(self.stop_ids))
        return (
            f"{type(self).__name__}(name={self.name!r}, n_vocab={self.n_vocab:,}, "
            f"{len(self.special_tokens)} special tokens, bos={named(self.bos_id)}, "
            f"eos={named(self.eos_id)}, stop_ids=[{stops}])"
        )


def _checked_messages(messages: Sequence[Message]) -> list[Message]:
    if isinstance(messages, Mapping | str):
        raise TypeError('encode_chat expects a list of messages, e.g. [{"role": "user", "content": "Hi"}].')
    messages = list(messages)
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
            raise TokenizerError(
                f"Message {i} is {message!r}; each message must be a dict with 'role' and 'content'."
            )
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise TokenizerError(f"Message {i}: 'role' and 'content' must be strings.")
    return messages


# ------------------------------------------------------------------------------------------------------
# Loading

_NAMED = {
    "llama3": "llama3/tokenizer.model",
    "smollm2-135m-instruct": "smollm2-135m-instruct.gguf",
}


def token_strings(tokenizer: Tokenizer | None, ids: Sequence[int]) -> list[str]:
    """``tokenizer.token_strings(ids)``, or ``"[id]"`` per token for a model without a tokenizer."""
    if tokenizer is None:
        return [f"[{i}]" for i in ids]
    return tokenizer.token_strings(ids)


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer by name (``"llama3"``, ``"smollm2-135m-instruct"``: fetched and cached on first
    use) or from a path: a ``.gguf`` file, a Llama 3 ``tokenizer.model``, or a folder holding one
    (a Meta checkpoint folder, or a Hugging Face repo's ``original/``)."""
    from .tokenizer_gguf import GGUFByteBPETokenizer, read_gguf_tokenizer_fields
    from .tokenizer_llama3 import Llama3Tokenizer

    if isinstance(name_or_path, str) and name_or_path in _NAMED:
        from .assets import ASSETS, asset_path

        path = asset_path(_NAMED[name_or_path])
        if name_or_path == "llama3":
            return Llama3Tokenizer(path, name="llama3")
        fields = read_gguf_tokenizer_fields(path, ASSETS[_NAMED[name_or_path]].sha256)  # verified: no rehash
        return GGUFByteBPETokenizer(fields, name=name_or_path)

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        candidates = [path / "tokenizer.model", path / "original" / "tokenizer.model"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"No tokenizer.model in {path} (looked at {[str(c) for c in candidates]})."
            )
        path = found
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a known tokenizer name ({sorted(_NAMED)}) nor an existing file "
            "or folder. Pass a .gguf file, a Llama 3 tokenizer.model, or a folder containing one."
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return GGUFByteBPETokenizer(path)
    return Llama3Tokenizer(path, name=f"llama3:{path.name}")


#: Names that moved to the two implementations, still importable from here (loaded on first use, so that
#: ``tokenizer.py`` and the implementations never import each other at module level).
_MOVED = {
    "Llama3Tokenizer": "tokenizer_llama3",
    "llama3_special_tokens": "tokenizer_llama3",
    "read_tiktoken_ranks": "tokenizer_llama3",
    "GGUFByteBPETokenizer": "tokenizer_gguf",
    "GGUF_SIDECAR_FORMAT": "tokenizer_gguf",
    "gguf_sidecar_path": "tokenizer_gguf",
    "read_gguf_tokenizer_fields": "tokenizer_gguf",
    "repair_gguf_sidecar": "tokenizer_gguf",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from importlib import import_module

        return getattr(import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
