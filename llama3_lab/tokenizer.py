"""Tokenizers: Llama 3 (Meta's tiktoken BPE) and GGUF byte-level BPE (SmolLM2) behind one interface.

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

import base64
import codecs
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import regex
import tiktoken

from .gguf_metadata import GGUFMetadata

__all__ = [
    "GGUFByteBPETokenizer",
    "Llama3Tokenizer",
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
# Llama 3


def llama3_special_tokens(n_ranks: int = 128_000) -> dict[str, int]:
    """Meta's 256 special tokens with their Llama 3.0 names, ids ``n_ranks``.. ``n_ranks + 255``."""
    names = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    ] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
    return {name: n_ranks + i for i, name in enumerate(names)}


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken BPE file (``base64(token) rank`` per line), e.g. Meta's ``tokenizer.model``.

    Same format as ``tiktoken.load.load_tiktoken_bpe``, which we avoid because it keeps a copy keyed
    on the path in a temp-dir cache and would return stale ranks if the file at that path changed.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise TokenizerError(
                    f"{path}, line {line_number}: expected 'base64-token rank', got {line[:60]!r}. "
                    "Is this a tiktoken tokenizer.model (Llama 3)? Llama 2's sentencepiece model is not."
                ) from None
    return ranks


class Llama3Tokenizer(Tokenizer):
    """Meta's Llama 3 tokenizer: tiktoken BPE with 128,000 ranks plus 256 special tokens."""

    def __init__(self, model_path: str | os.PathLike, name: str = "llama3") -> None:
        ranks = read_tiktoken_ranks(model_path)
        specials = llama3_special_tokens(len(ranks))
        encoding = tiktoken.Encoding(
            name=f"llama3:{Path(model_path).name}",
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        super().__init__(
            name=name,
            encoding=encoding,
            n_vocab=len(ranks) + len(specials),
            bos_id=specials["<|begin_of_text|>"],
            eos_id=specials["<|end_of_text|>"],
            stop_ids={specials["<|end_of_text|>"], specials["<|eot_id|>"]},
            # Meta's reference encodes prompts with bos=True, and Hugging Face's tokenizer.json puts
            # <|begin_of_text|> first in its post-processor (its tokenizer_config.json has no
            # add_bos_token key, so that template decides).
            add_bos=True,
            # Llama 3 has no pad token. Llama 3.1's tokenizer_config.json names 128004
            # <|finetune_right_pad_id|> (<|reserved_special_token_2|> in 3.0) as pad_token: use it.
            pad_id=specials["<|reserved_special_token_2|>"],
        )
        self.model_path = Path(model_path)

    def _chat_segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int | str]:
        # Meta's ChatFormat: <|begin_of_text|>, then per message
        # <|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>; no default system prompt.
        special = self.special_tokens
        start, end, eot = special["<|start_header_id|>"], special["<|end_header_id|>"], special["<|eot_id|>"]
        segments: list[int | str] = [self.bos_id]
        for message in messages:
            segments += [start, message["role"], end, "\n\n", message["content"].strip(), eot]
        if add_generation_prompt:
            segments += [start, "assistant", end, "\n\n"]
        return segments


# ------------------------------------------------------------------------------------------------------
# GGUF byte-level BPE (SmolLM2)


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes stand for themselves, the other 68
    bytes were moved to U+0100.. so that every token string is printable."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    moved = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(moved)})
    return table


_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED = 1, 3, 4
# Tokens that end a reply in common GGUF vocabularies, besides the declared eos.
_END_OF_TURN_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>")


_TOKENIZER_KEYS = (
    "general.name",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.chat_template",
)


#: Bump when the sidecar's encoding changes (a sidecar read with other keys is ignored: it records them).
GGUF_SIDECAR_FORMAT = 2


def gguf_sidecar_path(sha256: str) -> Path:
    """Where the tokenizer sidecar of the GGUF file with content ``sha256`` lives in the cache."""
    from .assets import cache_dir

    return cache_dir() / "tokenizers" / f"gguf-{sha256[:32]}-v{GGUF_SIDECAR_FORMAT}.json"


def _read_sidecar(sidecar: Path, sha256: str) -> dict[str, Any] | None:
    """The fields in ``sidecar`` if it is readable and says it was made from ``sha256`` in this format."""
    import json

    try:
        stored = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("format") != GGUF_SIDECAR_FORMAT:
        return None
    if stored.get("gguf_sha256") != sha256 or not isinstance(stored.get("fields"), dict):
        return None
    if stored.get("keys") != list(_TOKENIZER_KEYS):  # written when fewer (or other) keys were read
        return None
    return stored["fields"]


def _write_sidecar(sidecar: Path, sha256: str, fields: dict[str, Any]) -> None:
    import json

    from .assets import write_atomic

    stored = {
        "format": GGUF_SIDECAR_FORMAT,
        "gguf_sha256": sha256,
        "keys": list(_TOKENIZER_KEYS),
        "fields": fields,
    }
    try:
        write_atomic(sidecar, json.dumps(stored, ensure_ascii=False).encode("utf-8"))
    except OSError:
        pass  # a read-only cache only costs speed


def read_gguf_tokenizer_fields(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """The tokenizer metadata of a GGUF file, read once and then served from a JSON sidecar in the cache.

    ``GGUFReader`` parses every metadata field (~2 s for SmolLM2's 98k token and merge strings); the
    sidecar loads in tens of milliseconds. It is keyed by the GGUF's content (its sha256: ~55 ms to hash
    SmolLM2's 98 MB, skipped when the caller passes ``sha256``, e.g. a pinned asset already verified)
    and :data:`GGUF_SIDECAR_FORMAT`, never by size and mtime, which an edit in place can keep.
    """
    from .assets import sha256_file

    path = Path(path)
    sha256 = sha256 or sha256_file(path)
    sidecar = gguf_sidecar_path(sha256)
    fields = _read_sidecar(sidecar, sha256)
    if fields is None:
        fields = GGUFMetadata(path).read(_TOKENIZER_KEYS)
        _write_sidecar(sidecar, sha256, fields)
    return {**fields, "path": str(path)}


def repair_gguf_sidecar(path: str | os.PathLike, sha256: str) -> str | None:
    """Compare the sidecar of the GGUF at ``path`` (content ``sha256``) with a fresh read; rewrite it if
    it differs. None when it was right, else what was wrong (what ``loading.repair`` reports)."""
    path = Path(path)
    sidecar = gguf_sidecar_path(sha256)
    stored = _read_sidecar(sidecar, sha256)
    fresh = GGUFMetadata(path).read(_TOKENIZER_KEYS)
    if stored == fresh:
        return None
    if stored is not None:
        problem = "its fields differ from the GGUF's"
    else:
        problem = "unreadable or of another format" if sidecar.is_file() else "missing"
    _write_sidecar(sidecar, sha256, fresh)
    return problem


class GGUFByteBPETokenizer(Tokenizer):
    """The byte-level BPE tokenizer stored in a GGUF file (``tokenizer.ggml.model = gpt2``)."""

    def __init__(self, gguf: str | os.PathLike | Any, name: str | None = None) -> None:
        """``gguf`` is a path, an open ``gguf.GGUFReader`` (so a model loader can share it), or the dict
        returned by ``read_gguf_tokenizer_fields``."""
        meta = GGUFMetadata(read_gguf_tokenizer_fields(gguf) if isinstance(gguf, str | os.PathLike) else gguf)
        source = meta.source
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerError(
                f"{source}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2', e.g. SmolLM2, "
                "Llama 3 GGUFs) is supported. For Meta's Llama 3 tokenizer.model use Llama3Tokenizer."
            )
        pre = meta.get("tokenizer.ggml.pre", "gpt-2")
        if pre not in GGUF_PRE_PATTERNS:
            raise TokenizerError(
                f"{source}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; "
                f"known: {sorted(GGUF_PRE_PATTERNS)}. "
                "Add its split pattern to GGUF_PRE_PATTERNS in llama3_lab/tokenizer.py."
            )
        tokens: list[str] = meta.get("tokenizer.ggml.tokens")
        types: list[int] = meta.get("tokenizer.ggml.token_type")
        merges: list[str] = meta.get("tokenizer.ggml.merges") or []

        to_byte = _gpt2_unicode_to_byte()
        ranks: dict[bytes, int] = {}
        specials: dict[str, int] = {}
        for token_id, (text, kind) in enumerate(zip(tokens, types)):
            if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED):
                specials[text] = token_id
            elif kind == _GGUF_NORMAL:
                try:
                    ranks[bytes(to_byte[c] for c in text)] = token_id
                except KeyError:
                    raise TokenizerError(
                        f"{source}: token {token_id} {text!r} is not written in GPT-2's byte alphabet."
                    ) from None
            else:
                raise TokenizerError(f"{source}: token {token_id} {text!r} has unsupported type {kind}.")
        _check_rank_order(tokens, merges, source)

        self.untokenizable_bytes = bytes(b for b in range(256) if bytes([b]) not in ranks)
        self.pattern = GGUF_PRE_PATTERNS[pre]
        encoding = tiktoken.Encoding(
            name=f"gguf:{Path(source).name}",
            pat_str=self.pattern,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        eos_id = int(meta.get("tokenizer.ggml.eos_token_id"))
        stop_ids = {eos_id} | {specials[t] for t in _END_OF_TURN_TEXTS if t in specials}
        eot_id = meta.get("tokenizer.ggml.eot_token_id")
        if eot_id is not None:
            stop_ids.add(int(eot_id))
        super().__init__(
            name=name or meta.get("general.name", Path(source).stem),
            encoding=encoding,
            n_vocab=len(tokens),
            bos_id=int(meta.get("tokenizer.ggml.bos_token_id")),
            eos_id=eos_id,
            stop_ids=stop_ids,
            # The file says whether its texts start with BOS (SmolLM2: false, as its transformers
            # tokenizer does); llama.cpp's converter writes the key for Llama models, true.
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
            pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos_id)),
        )
        self.source = source
        self.chat_template: str | None = meta.get("tokenizer.chat_template")
        self.default_system_prompt = _chatml_default_system(self.chat_template)

    # -- bytes without a token -----------------------------------------------------------------------

    @cached_property
    def _split(self) -> regex.Pattern:
        return regex.compile(self.pattern)

    def _encode_text(self, text: str, allowed: set[str] | Literal["all"]) -> list[int]:
        data = text.encode("utf-8", errors="surrogatepass")
        if len(data.translate(None, self.untokenizable_bytes)) == len(data):
            return super()._encode_text(text, allowed)  # the fast path: every byte has a token
        return self._encode_dropping_untokenizable(text, allowed)

    def _encode_dropping_untokenizable(self, text: str, allowed: set[str] | Literal["all"]) -> list[int]:
        """Hugging Face's behaviour: split into pieces, drop bytes without a token, BPE the rest."""
        # Lone surrogates become U+FFFD, as tiktoken does on the fast path.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if allowed == "all":
            allowed = set(self.special_tokens)
        parts = [text]
        if allowed:
            specials = "|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True))
            parts = re.split(f"({specials})", text)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2 == 1:  # re.split puts the matched separators at odd positions
                ids.append(self.special_tokens[part])
                continue
            for piece in self._split.findall(part):
                kept = piece.encode("utf-8", errors="replace").translate(None, self.untokenizable_bytes)
                if kept:
                    ids.extend(self._encoding._encode_single_piece(kept))
        return ids

    # -- chat ----------------------------------------------------------------------------------------

    def _chat_segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int | str]:
        # ChatML, as in SmolLM2's template: a default system message when the dialog has none, then
        # <|im_start|>{role}\n{content}<|im_end|>\n per message (content not stripped).
        if self.chat_template is None or "<|im_start|>" not in self.chat_template:
            raise NotImplementedError(
                f"{self.name}: only ChatML chat templates are rendered; this GGUF's template is "
                f"{(self.chat_template or 'missing')[:80]!r}."
            )
        start, end = self.special_tokens["<|im_start|>"], self.special_tokens["<|im_end|>"]
        if self.default_system_prompt is not None and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system_prompt}, *messages]
        segments: list[int | str] = []
        for message in messages:
            segments += [start, f"{message['role']}\n{message['content']}", end, "\n"]
        if add_generation_prompt:
            segments += [start, "assistant\n"]
        return segments


def _check_rank_order(tokens: list[str], merges: list[str], source: str) -> None:
    """rank = token id is the right BPE priority only if merge k's result has a larger id than merge
    k-1's: true for GPT-2-style vocabularies (SmolLM2, Llama 3). Refuse a vocabulary where it is not."""
    token_ids = {t: i for i, t in enumerate(tokens)}
    previous = -1
    for k, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        merged = token_ids.get(left + right)
        if merged is None or merged <= previous:
            raise TokenizerError(
                f"{source}: merge {k} {merge!r} gives token id {merged}, not after the previous merge's "
                f"{previous}; this vocabulary cannot use rank = token id."
            )
        previous = merged


def _chatml_default_system(template: str | None) -> str | None:
    """The default system prompt a ChatML template inserts when the dialog starts without one."""
    if not template:
        return None
    match = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, flags=re.DOTALL)
    return match.group(1) if match and "!= 'system'" in template else None


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
