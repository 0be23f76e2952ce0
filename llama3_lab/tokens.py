"""Token input, one place for everyone (the forward, hooks, analysis, generation): text, ids, chats or
tensors in, token ids out.

- ``to_tokens(model, x)``: text, a batch of texts of equal length, a list of ids or a tensor -> ``[B, P]``
  on the model's device;
- ``to_token_batch(model, xs, padding_side=...)``: texts, chats or id lists of *different* lengths ->
  a ``TokenBatch`` (ids, attention mask and each row's own positions), padded on the right (for
  analysis: column i is token i of every row) or on the left (for generation: every row ends in the
  last column);
- ``to_str_tokens(model, x)``: the readable strings of those tokens;
- ``check_token_ids(tokens, vocab_size)``: the one validation of ids (integer dtype, ``[P]`` or
  ``[B, P]``, not empty, inside the vocabulary) that the model's forward and ``to_tokens`` both use;
  ``check_attention_mask`` is its twin for masks.

BOS follows the tokenizer (``prepend_bos=None``): Llama 3 puts ``<|begin_of_text|>`` before a text,
SmolLM2's GGUF says ``add_bos_token = false`` (its transformers tokenizer adds none), so its texts start
with their first word. ``tokenizer.add_bos`` holds the setting; ``prepend_bos=True``/``False`` overrides
it. Chats carry their own template's tokens and ids are used as given.

Padding: the short rows are filled with ``tokenizer.pad_id`` (SmolLM2: its GGUF's
``padding_token_id`` 2 ``<|im_end|>``; Llama 3 has none, and 128004, which Llama 3.1 names
``<|finetune_right_pad_id|>``, is used; without a tokenizer ``cfg.eos_token_id``, else 0). The mask
makes the model never attend to a pad, so which id fills them changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .tokenizer import Tokenizer

TokensLike = str | Sequence[str] | Sequence[int] | torch.Tensor

#: dtypes a tensor of token ids may have (``nn.Embedding`` takes any of them once made long).
_ID_DTYPES = (torch.long, torch.int, torch.int16, torch.uint8)
_PADDING_SIDES = ("right", "left")


def check_token_ids(tokens: torch.Tensor | Sequence[int], vocab_size: int | None) -> torch.Tensor:
    """``tokens`` as a ``[B, P]`` tensor (``[P]`` becomes ``[1, P]``), or an error that says what is wrong.

    Integer dtype, one or two axes, at least one position, every id in ``0 .. vocab_size - 1``
    (``vocab_size=None`` skips that last check). The tensor keeps its device and dtype. A list holding
    floats (``[1.5, 5.0]``) is refused like a float tensor, never truncated.
    """
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.tensor(tokens)
        if tokens.dtype == torch.bool:
            raise TypeError("tokens must be an integer tensor of token ids, got booleans.")
        if tokens.numel() == 0:
            tokens = tokens.long()
    if tokens.dtype not in _ID_DTYPES:
        raise TypeError(
            f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}: token ids are whole "
            "numbers (a float id such as 1.5 is not one); pass a LongTensor or a list of ints."
        )
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


def check_attention_mask(mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool ``[B, P]`` tensor on the tokens' device (True = a real token, False = padding).

    Accepts bool or 0/1 integers (transformers' ``attention_mask``); the shape must be the tokens'
    ``[B, P]`` and every row must hold at least one real token.
    """
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if mask.dim() == 1 and tokens.shape[0] == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)} but the tokens have shape {tuple(tokens.shape)}: "
            "give one entry per token, [batch, positions] (True or 1 for a real token, False or 0 for a pad)."
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "attention_mask must hold booleans or 0/1 integers (1 = real token, 0 = padding), got "
                f"dtype {mask.dtype} with other values."
            )
        mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero()[:, 0].tolist()
    if empty:
        raise ValueError(
            f"rows {empty} of the attention mask are all padding: every row needs at least one real "
            "token. Drop those rows from the batch."
        )
    return mask.to(tokens.device)


def default_positions(mask: torch.Tensor, past: torch.Tensor | int = 0) -> torch.Tensor:
    """``[B, P]``: each row's own position for every column: its real tokens count 0, 1, 2, ... (after
    ``past`` real tokens already in a KV cache); pads get the position of the real token before them
    (0 before the first), a value that only keeps RoPE's table lookup in range."""
    counted = mask.long().cumsum(dim=1) - 1
    if isinstance(past, torch.Tensor):
        counted = counted + past[:, None]
    elif past:
        counted = counted + past
    return counted.clamp_min(0)


def padding_mask(key_mask: torch.Tensor, first_slot: int, P: int) -> torch.Tensor:
    """[B P T]: True where the query in slot ``first_slot + i`` may see the key in slot j.

    Causal (j ≤ first_slot + i) and never a pad key (``key_mask`` [B T] False), except that a pad query
    sees itself: a left pad has no real key before it, and a row of −inf would make its softmax NaN.
    What a pad query computes is meaningless; it is finite, and no real query reads it.
    """
    T = key_mask.shape[1]
    key_slot = torch.arange(T, device=key_mask.device)
    query_slot = torch.arange(first_slot, first_slot + P, device=key_mask.device)[:, None]
    causal = key_slot <= query_slot  # [P T]
    return (causal & key_mask[:, None, :]) | (key_slot == query_slot)


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch: ``ids [B, P]``, ``mask [B, P]`` (True = real token) and ``positions [B, P]``.

    ``positions`` are each row's own: a left-padded row's first real token is position 0, as it would be
    alone. Pads hold ``pad_id`` and are never attended to; what the model computes at a pad position is
    finite and meaningless. ``padding_side`` says where the pads went. Pass the batch itself wherever
    tokens go (``model(batch)``, ``run_with_cache(batch)``).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    padding_side: str = "right"

    @property
    def lengths(self) -> torch.Tensor:
        """``[B]``: real tokens per row."""
        return self.mask.sum(dim=1)

    @property
    def last_index(self) -> torch.Tensor:
        """``[B]``: the column of each row's last real token (``P - 1`` for every row when left-padded)."""
        P = self.mask.shape[1]
        columns = torch.arange(P, device=self.mask.device)
        return torch.where(self.mask, columns, -1).amax(dim=1)

    @property
    def is_padded(self) -> bool:
        """Whether any position is padding (else the batch is a plain ``[B, P]`` tensor of ids)."""
        return not bool(self.mask.all())

    def rows(self) -> list[list[int]]:
        """Each row's real token ids, without padding."""
        return [row[keep].tolist() for row, keep in zip(self.ids, self.mask)]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.ids.to(device), self.mask.to(device), self.positions.to(device), self.padding_side
        )

    def __len__(self) -> int:
        return self.ids.shape[0]


def to_tokens(
    model: nn.Module,
    x: TokensLike,
    *,
    prepend_bos: bool | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Token ids ``[B, P]`` (LongTensor on the model's device) from text, ids or a tensor.

    - ``str``: encoded with ``model.tokenizer``. ``prepend_bos=None`` (default) follows the tokenizer's
      own setting ``tokenizer.add_bos`` (Llama 3: yes; SmolLM2: no); ``True``/``False`` choose. With
      BOS, it is there exactly once: text that already starts with the BOS token's text (e.g.
      ``"<|begin_of_text|>Hi"``) gets that text turned into the BOS id instead of a second one, and an
      encoding that already starts with BOS is left alone. Other special-token text stays plain text,
      as the tokenizer does.
    - a list of ``str``: a batch; each must encode to the same length (else use ``to_token_batch``,
      which pads).
    - a list of ids or a tensor: used as given (you chose the ids); ``[P]`` becomes ``[1, P]``.

    The ids are checked with ``check_token_ids`` against ``model.cfg.vocab_size``.
    """
    device = device if device is not None else _device_of(model)
    if isinstance(x, TokenBatch):
        if x.is_padded:
            raise ValueError(
                "This TokenBatch holds padding, which a plain [B, P] tensor of ids cannot say: pass the "
                "batch itself (model(batch), run_with_cache(batch)), or use batch.ids with batch.mask."
            )
        tokens = x.ids
    elif isinstance(x, torch.Tensor):
        tokens = x
    elif _kind(x) == "chat":
        tokens = _prompt_rows(model, x, prepend_bos)
    elif isinstance(x, Sequence) and not _is_texts(x):
        tokens = list(x)
        if not all(_kind(t) == "id" for t in tokens):  # rows of ids (or a mistake)
            kinds = _check_one_kind(tokens)
            if kinds[0] != "ids" or len({len(row) for row in tokens}) > 1:
                raise ValueError(
                    "These prompts have different lengths (or are not all id lists): a [B, P] tensor "
                    "needs equal lengths. Use model.to_token_batch(prompts) for a padded batch with its "
                    "attention mask (run_with_cache, run_with_hooks and the analyses pad for you)."
                )
    else:
        rows = _encode_rows(model, x, prepend_bos)
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise ValueError(
                f"The texts encode to different lengths {lengths}: a [B, P] tensor needs equal lengths. "
                "Use model.to_token_batch(texts) for a padded batch with its attention mask (run_with_cache, "
                "run_with_hooks and the analyses accept the texts directly and pad them)."
            )
        tokens = rows
    cfg = getattr(model, "cfg", None)
    tokens = check_token_ids(tokens, cfg.vocab_size if cfg is not None else None)
    return tokens.to(device=device, dtype=torch.long)


def to_token_batch(
    model: nn.Module,
    xs: Any,
    *,
    padding_side: str = "right",
    prepend_bos: bool | None = None,
    device: torch.device | str | None = None,
) -> TokenBatch:
    """A ``TokenBatch`` from prompts of any lengths: texts, chats (lists of ``{"role", "content"}``,
    encoded with the chat template and its generation prompt), id lists, or a ``[B, P]`` tensor.

    ``padding_side``: ``"right"`` (analysis: column i is token i of every row) or ``"left"``
    (generation: every row's last real token is in the last column). One text, one chat or one id
    list is a batch of one. All rows must be of one kind (all texts, all chats or all ids).
    """
    if padding_side not in _PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}.")
    device = device if device is not None else _device_of(model)
    if isinstance(xs, TokenBatch):
        return xs.to(device)
    if isinstance(xs, torch.Tensor):
        ids = to_tokens(model, xs, device=device)
        mask = torch.ones_like(ids, dtype=torch.bool)
        return TokenBatch(ids, mask, default_positions(mask), padding_side)
    rows = _prompt_rows(model, xs, prepend_bos)
    cfg = getattr(model, "cfg", None)
    for row in rows:
        check_token_ids(row, cfg.vocab_size if cfg is not None else None)
    P = max(len(row) for row in rows)
    pad = pad_token_id(model)
    ids = torch.full((len(rows), P), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.bool)
    for b, row in enumerate(rows):
        where = slice(0, len(row)) if padding_side == "right" else slice(P - len(row), P)
        ids[b, where] = torch.tensor(row, dtype=torch.long)
        mask[b, where] = True
    ids, mask = ids.to(device), mask.to(device)
    return TokenBatch(ids, mask, default_positions(mask), padding_side)


def model_input(model: nn.Module, x: Any, *, padding_side: str = "right") -> torch.Tensor | TokenBatch:
    """What a forward takes for ``x``: a ``[B, P]`` tensor when no row needs padding (the plain forward,
    bit for bit), else a ``TokenBatch`` (prompts of different lengths, padded on ``padding_side``)."""
    if isinstance(x, (torch.Tensor, str)) or _kind(x) == "ids":
        return to_tokens(model, x)
    batch = to_token_batch(model, x, padding_side=padding_side)
    return batch if batch.is_padded else batch.ids


def pad_token_id(model: nn.Module) -> int:
    """The id that fills padding: ``tokenizer.pad_id``, else the config's EOS, else 0 (never attended to)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "pad_id", None) is not None:
        return int(tokenizer.pad_id)
    eos = getattr(getattr(model, "cfg", None), "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return int(eos) if isinstance(eos, int) else 0


def _kind(x: Any) -> str:
    """``"text"``, ``"chat"``, ``"ids"`` (a list of ints or a 1-D tensor), ``"id"`` (one int or float)
    or ``"other"``."""
    if isinstance(x, str):
        return "text"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return "id"  # a float id is refused by check_token_ids, which names the problem
    if isinstance(x, torch.Tensor):
        return "ids" if x.dim() <= 1 else "other"
    if isinstance(x, Sequence) and x and all(isinstance(m, dict) for m in x):
        return "chat"
    if isinstance(x, Sequence) and all(_kind(i) == "id" for i in x):
        return "ids"
    return "other"


def _check_one_kind(items: Sequence[Any]) -> list[str]:
    """The kind of each row of a batch; raises unless they are all texts, all chats or all id lists."""
    kinds = [_kind(item) for item in items]
    if "id" in kinds:
        found = sorted({k for k in kinds if k != "id"})
        raise TypeError(
            f"This list mixes token ids with {', '.join(found)} items: a prompt is a text, a chat or a "
            "list of ids, not a mix. Encode the text yourself (model.to_tokens(text)[0].tolist()) and "
            "join the id lists."
        )
    if "other" in kinds:
        bad = kinds.index("other")
        raise TypeError(
            f"row {bad} of the batch is a {type(items[bad]).__name__}: each row must be a text, a chat "
            "(a list of {'role', 'content'} dicts) or a list of token ids."
        )
    if len(set(kinds)) > 1:
        found = ", ".join(f"row {i}: {k}" for i, k in enumerate(kinds))
        raise TypeError(
            f"A batch mixes kinds of prompts ({found}): give all texts, all chats or all token-id lists "
            "(encode the texts yourself with model.to_tokens(text)[0].tolist() to mix them with ids)."
        )
    return kinds


def _prompt_rows(model: nn.Module, xs: Any, prepend_bos: bool | None) -> list[list[int]]:
    """One list of ids per prompt of ``xs`` (one prompt is a batch of one)."""
    if _kind(xs) in ("text", "chat", "ids"):
        xs = [xs]
    elif isinstance(xs, Sequence) and xs and any(_kind(x) == "id" for x in xs):
        _check_one_kind(xs)  # ids mixed with other things: raises
    if not isinstance(xs, Sequence) or len(xs) == 0:
        raise ValueError("A batch needs at least one prompt: give a list of texts, chats or id lists.")
    kinds = _check_one_kind(xs)
    if kinds[0] == "text":
        return _encode_rows(model, list(xs), prepend_bos)
    if kinds[0] == "chat":
        tokenizer = _tokenizer_or_raise(model)
        return [tokenizer.encode_chat(list(chat), add_generation_prompt=True) for chat in xs]
    rows = [x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in xs]
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise ValueError(f"rows {empty} of the batch are empty: every row needs at least one token.")
    return rows


def _is_texts(x: object) -> bool:
    """One text or a non-empty list of texts (what ``_encode_rows`` takes)."""
    return isinstance(x, str) or (
        isinstance(x, Sequence) and len(x) > 0 and all(isinstance(t, str) for t in x)
    )


def _encode_rows(model: nn.Module, x: str | Sequence[str], prepend_bos: bool | None) -> list[list[int]]:
    """One row of ids per text (one text is one row), BOS handled as ``to_tokens`` says."""
    if not _is_texts(x):
        raise TypeError(f"Expected text, a list of ids or a LongTensor of ids, got {type(x).__name__}.")
    texts = [x] if isinstance(x, str) else list(x)
    return [_encode_text(model, text, prepend_bos) for text in texts]


def _tokenizer_or_raise(model: nn.Module) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "This model has no tokenizer, so it cannot encode text. Pass token ids (a list or a "
            "LongTensor), or set model.tokenizer = llama3_lab.load_tokenizer(...)."
        )
    return tokenizer


def adds_bos(tokenizer: Tokenizer, prepend_bos: bool | None) -> bool:
    """Whether a text gets BOS: ``prepend_bos`` when given, else the tokenizer's own ``add_bos``."""
    if prepend_bos is not None:
        return bool(prepend_bos)
    return bool(getattr(tokenizer, "add_bos", True))


def _encode_text(model: nn.Module, text: str, prepend_bos: bool | None) -> list[int]:
    tokenizer = _tokenizer_or_raise(model)
    prepend = adds_bos(tokenizer, prepend_bos)
    bos_text = _bos_text(tokenizer)
    if prepend and bos_text and text.startswith(bos_text):
        text = text[len(bos_text) :]
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if prepend and bos is not None and (not ids or ids[0] != bos):
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
    model: nn.Module, x: TokensLike, *, prepend_bos: bool | None = None
) -> list[str] | list[list[str]]:
    """Readable token strings for text or ids (a list per row for a batch of more than one).

    Text is encoded as ``to_tokens`` does, so the strings show whether BOS was prepended (it is the
    first string when it was). A batch of texts of different lengths gives each row its own tokens,
    without padding.
    """
    tokenizer = _tokenizer_or_raise(model)
    if isinstance(x, TokenBatch) or (_is_batch(x) and not isinstance(x, torch.Tensor)):
        rows = to_token_batch(model, x, prepend_bos=prepend_bos, device="cpu").rows()
    else:
        rows = [row.tolist() for row in to_tokens(model, x, prepend_bos=prepend_bos, device="cpu")]
    strings = [tokenizer.token_strings(row) for row in rows]
    return strings if _is_batch(x) else strings[0]


def _is_batch(x: TokensLike) -> bool:
    """A ``[B, P]`` tensor, a list of texts or a list of id lists (not one text or one list of ids)."""
    if isinstance(x, TokenBatch):
        return True
    if isinstance(x, torch.Tensor):
        return x.ndim == 2
    return not isinstance(x, str) and len(x) > 0 and not isinstance(x[0], int)
