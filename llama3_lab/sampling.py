"""Sampling: which token comes next, given the logits.

``Sampling`` holds the three settings (temperature, top-k, nucleus top-p) and is validated once, when it
is made; the samplers are pure functions on logits, exactly as Meta's Llama 3 reference
``sample_top_p``, with one seeded ``torch.Generator`` for the draw.

The seed is not a ``Sampling`` field: a ``Sampling`` says which distribution a token is drawn from, the
generator says which draw it is. A session can change its temperature without touching its random
stream, and rewind its random stream without touching its settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch


class GenerationError(ValueError):
    """A generation argument is out of range; the message says which and how to fix it."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: softmax(logits / ``temperature``), kept to the ``top_k`` most probable
    tokens, then to the nucleus of mass ``top_p``, renormalised.

    ``temperature == 0`` is greedy (argmax, no randomness); ``top_k=None`` and ``top_p=1.0`` switch those
    truncations off. The defaults are those of Meta's Llama 3 ``generation.py``.
    """

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int | None = None

    def __post_init__(self) -> None:
        temperature, top_p, top_k = self.temperature, self.top_p, self.top_k
        if not _is_number(temperature) or temperature < 0:
            raise GenerationError(
                f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}; "
                "use temperature=0 for deterministic argmax decoding."
            )
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise GenerationError(
                f"top_p must be in (0, 1], got {top_p!r}; use top_p=1.0 to switch nucleus sampling off."
            )
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise GenerationError(
                f"top_k must be None or an int >= 1, got {top_k!r}; use top_k=None to switch it off."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution a token is drawn from, ``[..., V]`` float32 (a one-hot argmax when greedy)."""
        logits = logits.float()
        if self.greedy:
            return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_k is not None:
            probs = probs * top_k_mask(probs, self.top_k)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        if self.top_p < 1:
            probs = probs * top_p_mask(probs, self.top_p)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw the next token id from ``logits [..., V]``: a LongTensor ``[...]`` on the same device.

        Greedy is an argmax and consumes no randomness; otherwise one draw from ``probs(logits)`` with
        ``generator``. Nothing leaves the device, so a decode loop syncs only when it reads the id.
        """
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = self.probs(logits)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


DEFAULT = Sampling()
SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))


def resolve_sampling(
    sampling: Sampling | None, options: Mapping[str, Any], default: Sampling = DEFAULT, *, caller: str
) -> Sampling:
    """The one ``Sampling`` of a call, made at its entry point: ``sampling`` itself, or ``default`` with
    the loose keywords ``options`` (``temperature=0``, ``top_k=5``...) replacing its fields.

    ``caller`` names the function in the error raised for an unknown keyword.
    """
    unknown = sorted(set(options) - set(SAMPLING_FIELDS))
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {unknown}; besides its own arguments it takes "
            f"the sampling settings {', '.join(SAMPLING_FIELDS)} (or sampling=Sampling(...))."
        )
    if sampling is None:
        return replace(default, **options) if options else default
    if not isinstance(sampling, Sampling):
        raise GenerationError(
            f"sampling must be a llama3_lab.sampling.Sampling, got {type(sampling).__name__}: write "
            "sampling=Sampling(temperature=0.7, top_k=50), or pass those keywords directly."
        )
    if options:
        raise GenerationError(
            f"{caller}() got sampling={sampling} and also {dict(options)}: give one of them, e.g. "
            f"sampling=dataclasses.replace(sampling, {', '.join(f'{k}={v!r}' for k, v in options.items())})."
        )
    return sampling


# --------------------------------------------------------------------------------------------------
# The samplers: pure functions on logits and probabilities
# --------------------------------------------------------------------------------------------------


def top_k_mask(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask ``[..., V]`` keeping the ``k`` most probable tokens (ties broken by ``torch.topk``)."""
    k = min(k, probs.shape[-1])
    keep = torch.zeros_like(probs, dtype=torch.bool)
    return keep.scatter_(-1, probs.topk(k, dim=-1).indices, True)


def top_p_mask(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask ``[..., V]`` of the nucleus: Meta's Llama 3 ``sample_top_p`` rule.

    Sort the probabilities in descending order and drop every token whose *preceding* cumulative mass
    already exceeds ``p``. The kept set is the shortest prefix whose mass exceeds ``p`` (all tokens if
    it never does); a token whose preceding mass equals ``p`` exactly is kept, as in Meta's
    ``probs_sum - probs_sort > p``. The most probable token is always kept.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    preceding_mass = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = ~(preceding_mass > p)
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def sampling_probs(
    logits: torch.Tensor,
    temperature: float = DEFAULT.temperature,
    top_p: float = DEFAULT.top_p,
    top_k: int | None = DEFAULT.top_k,
) -> torch.Tensor:
    """The distribution a token is drawn from, ``[..., V]`` float32: ``Sampling(...).probs(logits)``.

    softmax(logits / temperature), restricted to the top-k tokens and then to the nucleus of mass
    ``top_p``, renormalised. ``temperature == 0`` is greedy: a one-hot vector on the argmax.
    """
    return Sampling(temperature, top_p, top_k).probs(logits)


def sample_next(
    logits: torch.Tensor,
    temperature: float = DEFAULT.temperature,
    top_p: float = DEFAULT.top_p,
    top_k: int | None = DEFAULT.top_k,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the next token id from ``logits [..., V]``: ``Sampling(...).sample(logits, generator)``.

    Greedy (``temperature == 0``) is an argmax and consumes no randomness; otherwise one draw from
    ``sampling_probs`` with ``generator`` (seed it for reproducible runs).
    """
    return Sampling(temperature, top_p, top_k).sample(logits, generator)


def make_generator(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (a fresh random seed when None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
