"""Llama 3's tokenizer: Meta's tiktoken BPE (``tokenizer.model``, 128,000 ranks) and 256 special tokens."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

import tiktoken

from .tokenizer import (  # noqa: F401
    LLAMA3_PATTERN,
    AllowedSpecial,
    Message,
    Tokenizer,
    TokenizerError,
    _as_ids,
    _checked_messages,
)

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
