"""Token input, one place for everyone (the forward, hooks, analysis, generation): text, ids or tensors
in, a ``[B, P]`` LongTensor of valid token ids out.

- ``to_tokens(model, x)``: text (BOS prepended exactly once), a batch of texts of equal length, a list
  of ids or a tensor -> ``[B, P]`` on the model's device;
- ``to_str_tokens(model, x)``: the readable strings of those tokens;
- ``check_token_ids(tokens, vocab_size)``: the one validation of ids (integer dtype, ``[P]`` or
  ``[B, P]``, not empty, inside the vocabulary) that the model's forward and ``to_tokens`` both use.

Text becomes rows of ids in ``_encode_rows``; ``to_tokens`` stacks rows of equal length. A batch of
texts of different lengths (padding, its mask and positions) would be a sibling of ``to_tokens``
built on the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .tokenizer import Tokenizer

TokensLike = str | Sequence[str] | Sequence[int] | torch.Tensor

#: dtypes a tensor of token ids may have (``nn.Embedding`` takes any of them once made long).
_ID_DTYPES = (torch.long, torch.int, torch.int16, torch.uint8)


def check_token_ids(tokens: torch.Tensor | Sequence[int], vocab_size: int | None) -> torch.Tensor:
    """``tokens`` as a ``[B, P]`` tensor (``[P]`` becomes ``[1, P]``), or an error that says what is wrong.

    Integer dtype, one or two axes, at least one position, every id in ``0 .. vocab_size - 1``
    (``vocab_size=None`` skips that last check). The tensor keeps its device and dtype.
    """
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.tensor(tokens, dtype=torch.long)
    if tokens.dtype not in _ID_DTYPES:
        raise TypeError(f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}.")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2:
        raise ValueError(
            f"tokens must have shape [batch, positions] or [positions], got {tuple(tokens.shape)}."
        )
    if tokens.shape[1] == 0:
        raise ValueError("tokens is empty: give at least one token.")
    if vocab_size is not None:
        lowest, highest = (int(v) for v in torch.aminmax(tokens))
        if lowest < 0 or highest >= vocab_size:
            bad = lowest if lowest < 0 else highest
            raise ValueError(
                f"token id {bad} is outside this model's vocabulary 0..{vocab_size - 1}: "
                "was the prompt encoded with another model's tokenizer?"
            )
    return tokens


def to_tokens(
    model: nn.Module,
    x: TokensLike,
    *,
    prepend_bos: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Token ids ``[B, P]`` (LongTensor on the model's device) from text, ids or a tensor.

    - ``str``: encoded with ``model.tokenizer``; BOS is prepended exactly once (``prepend_bos``): text
      that already starts with the BOS token's text (e.g. ``"<|begin_of_text|>Hi"``) gets that text
      turned into the BOS id instead of a second one, and an encoding that already starts with BOS is
      left alone. Other special-token text stays plain text, as the tokenizer does.
    - a list of ``str``: a batch; each must encode to the same length (there is no padding).
    - a list of ids or a tensor: used as given (you chose the ids); ``[P]`` becomes ``[1, P]``.

    The ids are checked with ``check_token_ids`` against ``model.cfg.vocab_size``.
    """
    device = device if device is not None else _device_of(model)
    if isinstance(x, torch.Tensor):
        tokens = x
    elif isinstance(x, Sequence) and not _is_texts(x):
        tokens = torch.tensor(list(x), dtype=torch.long)
    else:
        rows = _encode_rows(model, x, prepend_bos)
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise ValueError(
                f"The texts encode to different lengths {lengths}: a batch needs equal lengths. "
                "Run them one at a time, or pass a [B, P] tensor of ids you padded yourself."
            )
        tokens = torch.tensor(rows, dtype=torch.long)
    cfg = getattr(model, "cfg", None)
    tokens = check_token_ids(tokens, cfg.vocab_size if cfg is not None else None)
    return tokens.to(device=device, dtype=torch.long)


def _is_texts(x: object) -> bool:
    """One text or a non-empty list of texts (what ``_encode_rows`` takes)."""
    return isinstance(x, str) or (
        isinstance(x, Sequence) and len(x) > 0 and all(isinstance(t, str) for t in x)
    )


def _encode_rows(model: nn.Module, x: str | Sequence[str], prepend_bos: bool) -> list[list[int]]:
    """One row of ids per text (one text is one row), BOS handled as ``to_tokens`` says."""
    if not _is_texts(x):
        raise TypeError(f"Expected text, a list of ids or a LongTensor of ids, got {type(x).__name__}.")
    texts = [x] if isinstance(x, str) else list(x)
    return [_encode_text(model, text, prepend_bos) for text in texts]


def _encode_text(model: nn.Module, text: str, prepend_bos: bool) -> list[int]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "This model has no tokenizer, so it cannot encode text. Pass token ids (a list or a "
            "LongTensor), or set model.tokenizer = llama3_lab.load_tokenizer(...)."
        )
    bos_text = _bos_text(tokenizer)
    if prepend_bos and bos_text and text.startswith(bos_text):
        text = text[len(bos_text) :]
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def _bos_text(tokenizer: Tokenizer) -> str | None:
    """The text of the BOS token (``"<|begin_of_text|>"``), or None without one."""
    bos = getattr(tokenizer, "bos_id", None)
    if bos is None:
        return None
    for text, token_id in getattr(tokenizer, "special_tokens", {}).items():
        if token_id == bos:
            return text
    return tokenizer.decode([bos])


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_str_tokens(
    model: nn.Module, x: TokensLike, *, prepend_bos: bool = True
) -> list[str] | list[list[str]]:
    """Readable token strings for text or ids (a list per row for a batch of more than one)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("This model has no tokenizer: set model.tokenizer to turn ids into strings.")
    tokens = to_tokens(model, x, prepend_bos=prepend_bos, device="cpu")
    rows = [tokenizer.token_strings(row.tolist()) for row in tokens]
    return rows if _is_batch(x) else rows[0]


def _is_batch(x: TokensLike) -> bool:
    """A ``[B, P]`` tensor, a list of texts or a list of id lists (not one text or one list of ids)."""
    if isinstance(x, torch.Tensor):
        return x.ndim == 2
    return not isinstance(x, str) and len(x) > 0 and not isinstance(x[0], int)
