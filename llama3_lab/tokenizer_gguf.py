"""GGUF byte-level BPE (SmolLM2): the vocabulary, merges and chat template stored in a GGUF file."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import regex
import tiktoken

from .gguf_metadata import GGUFMetadata
from .tokenizer import (  # noqa: F401
    GGUF_PRE_PATTERNS,
    GPT2_PATTERN,
    SMOLLM_PATTERN,
    AllowedSpecial,
    Message,
    Tokenizer,
    TokenizerError,
    _as_ids,
    _checked_messages,
    _hex_bytes,
)

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
