"""Sampling: which token comes next, given the logits.

``Sampling`` holds the three settings (temperature, top-k, nucleus top-p) and is validated once, when it
is made; the samplers are pure functions on logits, exactly as Meta's Llama 3 reference
``sample_top_p``, with one seeded ``torch.Generator`` for the draw.

The seed is not a ``Sampling`` field: a ``Sampling`` says which distribution a token is drawn from, the
generator says which draw it is. A session can change its temperature without touching its random
stream, and rewind its random stream without touching its settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch


class GenerationError(ValueError):
    """A generation argument is out of range; the message says which and how to fix it."""


class NonFiniteLogitsError(GenerationError):
    """The logits a token would be drawn from hold NaN or +inf (or are all -inf): any token drawn from
    them would be arbitrary (the argmax of NaN logits is id 0), so none is drawn."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite_logits(logits: torch.Tensor, position: int | None = None) -> None:
    """Raise ``NonFiniteLogitsError`` unless every row of ``logits [..., V]`` can be sampled from.

    A row can when it holds no NaN and no +inf and at least one finite value; -inf entries are fine (a
    hook that bans tokens writes them). One ``amax`` per row decides it, since NaN and +inf propagate
    through a max and an all -inf row has max -inf; the counts in the message are computed only when
    the check fails. ``position`` (the index the token would take) is named in the message when given.
    """
    if bool(torch.isfinite(logits.amax(dim=-1)).all()):
        return
    rows = logits.reshape(-1, logits.shape[-1])
    bad_rows = (~torch.isfinite(rows.amax(dim=-1))).nonzero().flatten().tolist()
    n_nan, n_inf = int(rows.isnan().sum()), int((rows == float("inf")).sum())
    where = f"for position {position}" if position is not None else "of this step"
    batch = f" (batch rows {bad_rows[:8]})" if rows.shape[0] > 1 else ""
    found = f"{n_nan} NaN and {n_inf} +inf values" if n_nan or n_inf else "only -inf values"
    raise NonFiniteLogitsError(
        f"the logits {where}{batch} are not finite: {found} among {rows.shape[-1]:,} per row, so no "
        "token can be drawn (an argmax would silently pick id 0). Likely causes: a weight that is NaN or "
        "inf (check: [n for n, p in model.named_parameters() if not p.isfinite().all()]), a hook that "
        "wrote NaN/inf into an activation, or float16 overflow. Fix the weights or the hook, or load the "
        "model in float32 or bfloat16."
    )


def scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(logits - max) / temperature`` in float32: softmax of it is softmax(logits / temperature), but
    it never overflows, however small the temperature (the max becomes 0, every other logit is <= 0,
    at worst -inf), so any temperature > 0 is safe and a tiny one tends to the argmax."""
    logits = logits.float()
    return (logits - logits.amax(dim=-1, keepdim=True)) / temperature


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: softmax(logits / ``temperature``), kept to the ``top_k`` most probable
    tokens, then to the nucleus of mass ``top_p``, renormalised.

    ``temperature == 0`` is greedy (argmax, no randomness); ``top_k=None`` and ``top_p=1.0`` switch those
    truncations off. The defaults are those of Meta's Llama 3 ``generation.py``. Any finite temperature
    > 0 is computed stably (``scaled_logits``): a temperature of 1e-30 is the argmax, not an overflow.

    ``probs`` and ``sample`` (the one place every sampler passes) refuse logits holding NaN or +inf with
    ``NonFiniteLogitsError`` (``check_finite_logits``) instead of drawing an arbitrary token.
    """

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int | None = None

    def __post_init__(self) -> None:
        temperature, top_p, top_k = self.temperature, self.top_p, self.top_k
        if not _is_number(temperature) or not 0 <= temperature < math.inf:
            raise GenerationError(
                f"temperature must be a number >= 0 and finite (0 means greedy), got {temperature!r}; "
                "use temperature=0 for deterministic argmax decoding (any finite temperature > 0 is "
                "computed stably, however small)."
            )
        if not _is_number(top_p) or not 0 < top_p <= 1:  # NaN fails the comparison too
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

    def probs(self, logits: torch.Tensor, *, position: int | None = None) -> torch.Tensor:
        """The distribution a token is drawn from, ``[..., V]`` float32 (a one-hot argmax when greedy).

        Raises ``NonFiniteLogitsError`` (naming ``position`` when given) for NaN or +inf logits."""
        check_finite_logits(logits, position)
        logits = logits.float()
        if self.greedy:
            return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.softmax(scaled_logits(logits, self.temperature), dim=-1)
        if self.top_k is not None:
            probs = probs * top_k_mask(probs, self.top_k)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        if self.top_p < 1:
            probs = probs * top_p_mask(probs, self.top_p)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def sample(
        self,
        logits: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        position: int | None = None,
    ) -> torch.Tensor:
        """Draw the next token id from ``logits [..., V]``: a LongTensor ``[...]`` on the same device.

        Greedy is an argmax and consumes no randomness; otherwise one draw from ``probs(logits)`` with
        ``generator``. The ids stay on the device; the finiteness check reads one boolean per call
        (``NonFiniteLogitsError``, naming ``position`` when given, for NaN or +inf logits).
        """
        if self.greedy:
            check_finite_logits(logits, position)
            return logits.argmax(dim=-1)
        probs = self.probs(logits, position=position)
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
