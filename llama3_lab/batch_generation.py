"""Batched generation: a list of prompts in, one ``Generation`` per prompt out.

The prompts are left-padded into one ``TokenBatch`` and prefilled once; each step feeds every unfinished row
its last token. A row stops at its own stop token or stop string and then leaves the KV cache
(``KVCache.select_rows``), so finished rows cost nothing; each row has its own seed. Greedy rows give the
same tokens as generating each prompt alone (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .generation import (  # noqa: F401
    Generation,
    Prompt,
    _is_messages,
    _TextAssembler,
    check_length,
    prompt_to_tokens,
    require_tokenizer,
    resolve_stop,
)
from .kv_cache import KVCache
from .sampling import (
    GenerationError,
    Sampling,
    make_generator,
    resolve_sampling,
)

if TYPE_CHECKING:  # pragma: no cover
    from .model import LlamaModel

# --------------------------------------------------------------------------------------------------
# A batch of prompts
# --------------------------------------------------------------------------------------------------


def is_prompt_batch(prompt: Any) -> bool:
    """A list of prompts (texts, chats or id lists), or a ``[B, P]`` tensor with B > 1; not one prompt
    (a text, one chat of message dicts, one list of ids)."""
    if isinstance(prompt, torch.Tensor):
        return prompt.dim() == 2 and prompt.shape[0] > 1
    if isinstance(prompt, str) or not isinstance(prompt, Sequence) or len(prompt) == 0:
        return False
    return not _is_messages(prompt) and not all(isinstance(i, int) for i in prompt)


def generate_batch(
    model: LlamaModel,
    prompts: Sequence[Prompt] | torch.Tensor,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
    *,
    seed: int | Sequence[int] | None = None,
    stop: int | str | Iterable[int | str] | None = None,
    prepend_bos: bool | None = None,
    **sampling_options: Any,
) -> list[Generation]:
    """Continue every prompt of ``prompts`` in one batch; one ``Generation`` per prompt, in order.

    The prompts are left-padded (every row's last real token in the last column) and prefilled once
    into one ``KVCache`` that remembers the pads; each step feeds every unfinished row one token. A row
    stops at its own stop token or stop string; finished rows leave the batch (``KVCache.select_rows``),
    so no forward is spent on them. Greedy output of each row equals generating it alone (the padded
    forward agrees with the unpadded one to float32 round-off).

    ``seed``: an int (row i draws with ``seed + i``) or one seed per row; each row has its own
    generator, so a row sampled with seed s draws as that prompt generated alone with ``seed=s``.
    """
    from .tokens import to_token_batch

    sampling = resolve_sampling(sampling, sampling_options, caller="generate")
    if isinstance(prompts, torch.Tensor):
        prompts = [row for row in prompts]
    rows = [prompt_to_tokens(model, prompt, prepend_bos=prepend_bos) for prompt in prompts]
    check_length(model, max(len(row) for row in rows), max_new_tokens)
    stop_ids, stop_strings = resolve_stop(model, stop)
    tokenizer = getattr(model, "tokenizer", None)
    generators = _row_generators(seed, len(rows), model.device)
    texts = [_TextAssembler(tokenizer, stop_strings) if tokenizer is not None else None for _ in rows]
    new_tokens: list[list[int]] = [[] for _ in rows]
    reasons = ["max_new_tokens"] * len(rows)
    if max_new_tokens > 0:
        batch = to_token_batch(model, rows, padding_side="left")
        cache = KVCache.allocate(model, batch_size=len(rows), max_length=batch.ids.shape[1] + max_new_tokens)
        active = list(range(len(rows)))  # the prompt each cache row belongs to
        with torch.no_grad():
            logits = model(batch, cache=cache, logits_to_keep=1)[:, -1]
            for step in range(max_new_tokens):
                next_ids = _sample_rows(sampling, logits, [generators[row] for row in active])
                keep = []
                for i, (row, token) in enumerate(zip(active, next_ids.tolist())):
                    new_tokens[row].append(token)
                    if token in stop_ids:
                        reasons[row] = "stop_token"
                    elif texts[row] is not None and _pushes_a_stop_string(texts[row], token):
                        reasons[row] = "stop_string"
                    else:
                        keep.append(i)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(active):
                    cache.select_rows(keep)
                    next_ids, active = next_ids[keep], [active[i] for i in keep]
                logits = model(next_ids[:, None], cache=cache)[:, -1]
    results = []
    for row, prompt_ids in enumerate(rows):
        text = ""
        if texts[row] is not None:
            texts[row].finish()
            text = texts[row].text[: texts[row].released]
        results.append(Generation(text, new_tokens[row], prompt_ids, reasons[row]))
    return results


def _pushes_a_stop_string(text: _TextAssembler, token: int) -> bool:
    """Add ``token`` to a row's text; whether a stop string is now complete."""
    text.push(token)
    return text.hit_stop_string


def _row_generators(
    seed: int | Sequence[int] | None, n_rows: int, device: torch.device
) -> list[torch.Generator | None]:
    if seed is None or isinstance(seed, int):
        return [make_generator(None if seed is None else seed + row, device) for row in range(n_rows)]
    seeds = list(seed)
    if len(seeds) != n_rows:
        raise GenerationError(
            f"seed has {len(seeds)} values for {n_rows} prompts: give one seed per prompt, or one int "
            "(row i then draws with seed + i)."
        )
    return [make_generator(s, device) for s in seeds]


def _sample_rows(
    sampling: Sampling, logits: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """``[B]`` next ids from ``logits [B, V]``: one argmax for greedy, else one draw per row with its
    own generator (the same draw that row would get alone)."""
    if sampling.greedy:
        return sampling.sample(logits)
    return torch.stack([sampling.sample(row, generator) for row, generator in zip(logits, generators)])
