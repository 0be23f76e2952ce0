"""Session: generation one token at a time, each step kept as a ``StepRecord``.

The same loop as ``generate`` (one cached forward per token, drawn as a ``Sampling`` says), stopped after
every token so it can be looked at: each step returns a ``StepRecord`` (top-k, entropy, attention row,
residual norms, logit lens), and a session can rewind, fork and be forced (teacher forcing).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .analysis.tables import TopK, top_k_of_probs
from .generation import Prompt, check_length, prompt_to_tokens, require_tokenizer, resolve_stop
from .hook_points import context_hooks, get_act_name
from .kv_cache import KVCache
from .sampling import GenerationError, Sampling, make_generator, resolve_sampling
from .tokenizer import token_strings

if TYPE_CHECKING:  # pragma: no cover
    from .model import LlamaModel

__all__ = ["LogitLens", "Session", "StepRecord", "TopK", "session"]


@dataclass(frozen=True)
class LogitLens:
    """Top-1 token per layer: the layer's residual through the final norm (its own RMS) and unembedding."""

    ids: list[int]
    texts: list[str]

    def __repr__(self) -> str:
        return "LogitLens(" + ", ".join(f"{layer}:{t!r}" for layer, t in enumerate(self.texts)) + ")"


@dataclass(eq=False)
class StepRecord:
    """What one generation step produced and what produced it.

    - ``position``: index of the new token in ``session.tokens``; it was predicted by the query at
      ``position - 1``, whose view of the context is what the other fields describe.
    - ``token_id``, ``token_text``: the new token; ``forced``: whether ``session.force`` chose it.
    - ``prob``, ``top_k``, ``entropy``: from the sampling distribution before truncation, i.e.
      softmax(logits / temperature) (temperature 1 for greedy), before top-k/top-p; entropy in nats.
    - ``attention`` ``[layers, heads, position]``: each head's attention from the query at
      ``position - 1`` over keys ``0 .. position - 1``.
    - ``resid`` ``[layers, D]``: the residual stream after each block at that query; ``resid_norms``
      ``[layers]`` its L2 norms.
    - ``logit_lens``: top-1 token per layer (computed on first access from ``resid``).
    - ``logits`` ``[V]``: the model's raw next-token logits.

    Memory per record is dominated by ``logits`` (V values) and ``attention`` (layers · heads · position
    values): about 0.2 MB + 1 KB per context position for SmolLM2-135M in float32.
    """

    position: int
    token_id: int
    token_text: str
    prob: float
    top_k: TopK
    entropy: float
    attention: torch.Tensor
    resid: torch.Tensor
    logits: torch.Tensor
    forced: bool = False
    _lens: Any = field(default=None, repr=False)

    @property
    def resid_norms(self) -> torch.Tensor:
        return self.resid.float().norm(dim=-1)

    @functools.cached_property
    def logit_lens(self) -> LogitLens:
        return self._lens(self.resid)

    def __repr__(self) -> str:
        forced = ", forced" if self.forced else ""
        return (
            f"StepRecord(position={self.position}, token={self.token_text!r} (id {self.token_id}), "
            f"prob={self.prob:.3f}, entropy={self.entropy:.2f} nats{forced}, top_k={self.top_k!r})"
        )


def _logit_lens(model: LlamaModel, resid: torch.Tensor) -> LogitLens:
    """Top-1 token per layer of ``resid [L, D]``: final norm (each row its own RMS), then unembedding.

    The unembedding is applied as a plain matrix product, not through ``model.unembed``, so a user's
    hook on ``unembed.hook_out`` (which expects ``[B, P, V]`` logits) never sees the lens.
    """
    from .analysis.lens import apply_final_norm

    with torch.no_grad():
        logits = F.linear(apply_final_norm(model, resid), model.unembed.weight)
    ids = logits.argmax(dim=-1).tolist()
    return LogitLens(ids, token_strings(getattr(model, "tokenizer", None), ids))


def _sampling_field(name: str) -> property:
    """A ``Session`` attribute that reads one field of ``session.sampling``; assigning to it replaces
    ``sampling`` with a copy holding the new value (validated like any ``Sampling``)."""
    return property(
        lambda self: getattr(self.sampling, name),
        lambda self, value: setattr(self, "sampling", replace(self.sampling, **{name: value})),
        doc=f"``sampling.{name}``; assigning a new value applies from the next step on.",
    )


class Session:
    """Step through generation one token at a time, keeping a ``StepRecord`` of each step.

    ``Session(model, prompt, sampling=None, seed=None, stop=None, ...)``, the sampling settings as a
    ``Sampling`` or as keywords (``temperature=0.7, top_k=5``); prompts as in ``generate``. ``step()``
    samples one token and returns its record, ``step(n)`` up to n of them (fewer if a stop token comes);
    ``force(token)`` appends a token of your choice (id or a text that is one token), recorded the same
    way; ``rewind(n)`` forgets the last n tokens (and restores the random state, so stepping again
    reproduces the same records); ``fork()`` is an independent copy.

    State: ``tokens`` (prompt + new), ``prompt_tokens``, ``history`` (records), ``text`` (the new text),
    ``cache`` (the ``KVCache``, holding every token but the last), ``done`` (the last token is a stop
    token), ``sampling`` (also as ``temperature``, ``top_p``, ``top_k``: assign one to change it for the
    next steps). Hooks active on the model (``with model.hooks(...)``) act on every step.
    """

    temperature = _sampling_field("temperature")
    top_p = _sampling_field("top_p")
    top_k = _sampling_field("top_k")

    def __init__(
        self,
        model: LlamaModel,
        prompt: Prompt,
        sampling: Sampling | None = None,
        *,
        seed: int | None = None,
        stop: int | str | Iterable[int | str] | None = None,
        record_top_k: int = 10,
        prepend_bos: bool | None = None,
        max_length: int | None = None,
        **sampling_options: Any,
    ) -> None:
        self.sampling = resolve_sampling(sampling, sampling_options, caller="Session")
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.record_top_k = record_top_k
        self.prompt_tokens = prompt_to_tokens(model, prompt, prepend_bos=prepend_bos)
        check_length(model, len(self.prompt_tokens), 0)
        self.stop_ids, stop_strings = resolve_stop(model, stop)
        if stop_strings:
            raise GenerationError(
                f"a Session stops on tokens; {stop_strings} are not special tokens. Pass their ids, or use "
                "generate(..., stop=...) for stop strings."
            )
        self.tokens = list(self.prompt_tokens)
        self.history: list[StepRecord] = []
        self._rng_states: list[torch.Tensor] = []  # generator state before each step, for rewind
        self.generator = make_generator(seed, model.device)
        limit = model.cfg.max_position_embeddings
        capacity = max_length or len(self.tokens) + 256  # grows (doubling) when the steps outrun it
        self.cache = KVCache.allocate(model, 1, max_length=min(limit, max(capacity, len(self.tokens))))
        if len(self.tokens) > 1:  # everything but the last token; each step then feeds one token
            with torch.no_grad():
                model(torch.tensor([self.tokens[:-1]], device=model.device), cache=self.cache)
        self._setup_capture()

    # -- state ----------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return bool(self.history) and self.tokens[-1] in self.stop_ids

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[len(self.prompt_tokens) :]

    @property
    def text(self) -> str:
        """The generated text (prompt excluded; a final stop token's text excluded)."""
        tokenizer = require_tokenizer(self.model, "session.text")
        ids = self.new_tokens[:-1] if self.done else self.new_tokens
        return tokenizer.decode(ids)

    def __repr__(self) -> str:
        tail = "".join(r.token_text for r in self.history[-8:])
        return (
            f"Session(prompt={len(self.prompt_tokens)} tokens, generated={len(self.history)}, "
            f"done={self.done}, last={tail!r}, temperature={self.temperature}, top_p={self.top_p}, "
            f"top_k={self.top_k})"
        )

    # -- stepping -------------------------------------------------------------------------------------

    def step(self, n: int | None = None) -> StepRecord | list[StepRecord]:
        """Sample the next token and return its record; ``step(n)``: up to n records (ends at stop tokens)."""
        if n is None:
            return self._advance(None)
        if not isinstance(n, int) or n < 0:
            raise GenerationError(f"step(n) needs an int n >= 0, got {n!r}.")
        records = []
        for _ in range(n):
            if self.done:
                break
            records.append(self._advance(None))
        return records

    def force(self, token: int | str) -> StepRecord:
        """Append ``token`` (an id, or a text that encodes to exactly one token) instead of sampling."""
        if isinstance(token, str):
            ids = require_tokenizer(self.model, "force(text)").encode(token, allowed_special="all")
            if len(ids) != 1:
                pieces = token_strings(self.tokenizer, ids)
                raise GenerationError(
                    f"force() takes one token, but {token!r} encodes to {len(ids)}: {pieces} (ids {ids}). "
                    "Force them one at a time."
                )
            token = ids[0]
        if (
            isinstance(token, bool)
            or not isinstance(token, int)
            or not 0 <= token < self.model.cfg.vocab_size
        ):
            raise GenerationError(
                f"force() needs a token id in 0..{self.model.cfg.vocab_size - 1} or a one-token text, "
                f"got {token!r}."
            )
        return self._advance(token)

    def rewind(self, n: int = 1) -> None:
        """Forget the last ``n`` new tokens (never the prompt); the random state goes back too."""
        if not isinstance(n, int) or not 0 <= n <= len(self.history):
            raise GenerationError(
                f"can rewind between 0 and {len(self.history)} generated tokens, got {n!r}; the prompt stays "
                "(start a new session for another prompt)."
            )
        if n == 0:
            return
        self.generator.set_state(self._rng_states[-n])
        del self.tokens[-n:], self.history[-n:], self._rng_states[-n:]
        self.cache.truncate(len(self.tokens) - 1)

    def fork(self) -> Session:
        """An independent copy: its own KV cache (cloned), tokens, history and random state."""
        twin = object.__new__(Session)
        twin.__dict__.update(self.__dict__)
        twin.tokens, twin.history, twin._rng_states = (
            list(self.tokens),
            list(self.history),
            list(self._rng_states),
        )
        twin.stop_ids = set(self.stop_ids)
        twin.cache = self.cache.clone()
        twin.generator = torch.Generator(device=self.generator.device)
        twin.generator.set_state(self.generator.get_state())
        twin._setup_capture()
        return twin

    # -- internals ------------------------------------------------------------------------------------

    def _setup_capture(self) -> None:
        """Hooks that keep, for the one query of a step, each layer's attention row and residual."""
        n_layers = self.model.cfg.num_hidden_layers
        self._attention_rows: list[torch.Tensor | None] = [None] * n_layers
        self._resid_rows: list[torch.Tensor | None] = [None] * n_layers

        def keep_attention(layer: int):
            def hook(pattern: torch.Tensor, _point: Any) -> None:  # [B H Pq Pk] with Pq = 1
                self._attention_rows[layer] = pattern[0, :, -1].detach().clone()

            return hook

        def keep_resid(layer: int):
            def hook(resid: torch.Tensor, _point: Any) -> None:  # [B P D]
                self._resid_rows[layer] = resid[0, -1].detach().clone()

            return hook

        points = self.model.hook_dict
        self._capture_hooks = []
        for layer in range(n_layers):
            self._capture_hooks.append((points[get_act_name("pattern", layer)], keep_attention(layer)))
            self._capture_hooks.append((points[get_act_name("resid_post", layer)], keep_resid(layer)))

    @contextmanager
    def _capturing(self) -> Iterator[None]:
        """Attach the capture hooks for one forward: context hooks (only this thread sees them) added
        after any user hooks, so they see what the user's hooks made of each tensor; added directly
        (not through ``model.hooks``, which resolves names) to keep a step's overhead small."""
        with context_hooks(self._capture_hooks):
            yield

    def _ensure_capacity(self, length: int) -> None:
        """Grow the cache (doubling, up to the model's context) when ``length`` positions do not fit."""
        if length > self.cache.max_length:
            limit = self.model.cfg.max_position_embeddings
            self.cache.grow(min(limit, max(2 * self.cache.max_length, length)))

    def _advance(self, forced: int | None) -> StepRecord:
        if self.done:
            raise GenerationError(
                f"the session ended with stop token {self.tokens[-1]} ({self.history[-1].token_text!r}): "
                "rewind(1) to continue from before it, or fork() an earlier copy."
            )
        position = len(self.tokens)
        check_length(self.model, position, 1)
        self._ensure_capacity(position)
        rng_state = self.generator.get_state()
        last = torch.tensor([[self.tokens[-1]]], device=self.model.device)
        with torch.no_grad(), self._capturing():
            logits = self.model(last, cache=self.cache)[0, -1]
        with torch.no_grad():
            if forced is None:
                token = int(self.sampling.sample(logits, self.generator))
            else:
                token = forced
            record = self._record(position, token, logits, forced is not None)
        self.tokens.append(token)
        self.history.append(record)
        self._rng_states.append(rng_state)
        return record

    def _record(self, position: int, token: int, logits: torch.Tensor, forced: bool) -> StepRecord:
        temperature = self.temperature if self.temperature > 0 else 1.0
        log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum()
        return StepRecord(
            position=position,
            token_id=token,
            token_text=token_strings(self.tokenizer, [token])[0],
            prob=float(probs[token]),
            top_k=top_k_of_probs(probs, self.tokenizer, self.record_top_k).row(),
            entropy=float(entropy),
            attention=torch.stack(self._attention_rows),
            resid=torch.stack(self._resid_rows),
            logits=logits,
            forced=forced,
            _lens=functools.partial(_logit_lens, self.model),
        )


def session(model: LlamaModel, prompt: Prompt, **kwargs: Any) -> Session:
    """``Session(model, prompt, **kwargs)``; what ``model.session(...)`` calls."""
    return Session(model, prompt, **kwargs)
