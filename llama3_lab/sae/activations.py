"""Streaming a model's activations at a hook point, for training and evaluating SAEs.

Texts become one token stream, cut into contexts of ``context_length`` tokens, each starting with BOS; every
forward stops right after the last hook point asked for (later layers never run), and the BOS position is
dropped (its residual is an outlier that no feature should spend capacity on, as SAELens's
``exclude_special_tokens`` does). ``ShuffleBuffer`` mixes tokens from many contexts while holding at most
``capacity`` of them: the corpus is never in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from ..hooks import HookedRootModule


class _StopForward(Exception):
    """Raised by a hook to end a forward once the activations it needs are taken."""


@torch.no_grad()
def activations_at(
    model: HookedRootModule, names: Sequence[str], tokens: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{name: activation}`` at ``names`` for ``tokens`` [B P], from a forward that stops after the last."""
    store: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook) -> None:
        store[hook.name] = x.detach()
        if len(store) == len(names):
            raise _StopForward

    try:
        with model.hooks([(name, keep) for name in names]):
            model(tokens)
    except _StopForward:
        pass
    return store


def token_contexts(
    model: HookedRootModule, texts: Iterable[str], context_length: int, start_text: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(texts read so far, ids [context_length])`` for consecutive contexts of the joined texts, each
    ``BOS + context_length − 1`` tokens (a tail too short for a context waits for the next text)."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(
            "training an SAE on texts needs the model's tokenizer; load the model with load_model."
        )
    pending: list[int] = []
    for index, text in enumerate(texts):
        if index < start_text:
            continue
        pending += tokenizer.encode(text) + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
        while len(pending) >= context_length - 1:
            chunk, pending = pending[: context_length - 1], pending[context_length - 1 :]
            yield index + 1, torch.tensor([tokenizer.bos_id, *chunk])


def activation_stream(
    model: HookedRootModule,
    names: Sequence[str],
    texts: Iterable[str],
    context_length: int = 128,
    contexts_per_forward: int = 8,
    start_text: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(texts read, activations [N, width])``: the activations at ``names`` (heads flattened, several
    names concatenated along the last axis) for every non-BOS token, ``contexts_per_forward`` at a time."""
    batch: list[torch.Tensor] = []
    read = start_text
    for read, ids in token_contexts(model, texts, context_length, start_text):  # noqa: B007
        batch.append(ids)
        if len(batch) == contexts_per_forward:
            yield read, _flat_activations(model, names, torch.stack(batch))
            batch = []
    if batch:
        yield read, _flat_activations(model, names, torch.stack(batch))


def _flat_activations(model: HookedRootModule, names: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
    acts = activations_at(model, names, tokens.to(model.device))
    parts = [acts[name][:, 1:].flatten(2) if acts[name].ndim > 3 else acts[name][:, 1:] for name in names]
    return torch.cat(parts, dim=-1).flatten(0, 1).float()


class ShuffleBuffer:
    """Holds up to ``capacity`` rows from many contexts. Once full, training takes shuffled batches of all of
    them (``reuse`` times), then the older half is dropped to make room: each row is used about
    2 × ``reuse`` times, and memory stays at ``capacity`` rows."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = capacity
        self.generator = generator
        self.rows: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        self.rows = rows if self.rows is None else torch.cat([self.rows, rows])

    @property
    def full(self) -> bool:
        return self.rows is not None and len(self.rows) >= self.capacity

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every row once, shuffled, in batches of ``batch_size`` (a smaller remainder is skipped)."""
        if self.rows is None:
            return
        order = torch.randperm(len(self.rows), generator=self.generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield self.rows[order[start : start + batch_size]]

    def drop_oldest(self, keep: float = 0.5) -> None:
        """Keep the newest ``keep`` fraction of the rows (all of them go with ``keep=0``)."""
        if self.rows is not None:
            self.rows = self.rows[len(self.rows) - int(len(self.rows) * keep) :] if keep else None
