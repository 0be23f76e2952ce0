"""Session: generation one token at a time, each step kept as a ``StepRecord``.

The same loop as ``generate`` (one cached forward per token, drawn as a ``Sampling`` says), stopped after
every token so it can be looked at: each step returns a ``StepRecord`` (top-k, entropy, attention row,
residual norms, logit lens), and a session can rewind, fork and be forced (teacher forcing).

Memory is bounded by default: the newest ``keep_full`` records are full (attention rows, residuals,
logits); older ones are compacted to what a reader of the history needs (token, probability, top-k,
entropy, residual norms). Rewinding and forking never need the full fields: the KV cache holds the
context, and the random state before each step is kept (one tensor per step that drew randomness).
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
from .packaged import packaged_step, record_of, still_usable, usable_package
from .sampling import GenerationError, Sampling, make_generator, resolve_sampling, scaled_logits
from .tokenizer import token_strings

if TYPE_CHECKING:  # pragma: no cover
    from .model import LlamaModel

__all__ = ["KEEP_FULL", "LogitLens", "Session", "StepRecord", "TopK", "session"]

KEEP_FULL = 16
"""How many of the newest records a ``Session`` keeps full by default (``Session(keep_full=...)``)."""


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

    A record is *full* (``full``) when made; a ``Session`` keeps its newest ``keep_full`` records full
    and replaces older ones by ``compact()`` copies, whose ``attention``, ``resid`` and ``logits`` are
    None (``resid_norms`` and an already computed ``logit_lens`` stay).

    Bytes per record (tensors, measured; the model's dtype): a full record holds ``logits`` (V values),
    ``resid`` (layers · D) and ``attention`` (layers · heads · position): for SmolLM2-135M in float32
    196,608 + 69,120 + 1,080 · position bytes (0.27 MB at position 1, 0.7 MB at 400, 2.4 MB at 2,000).
    A compact record holds layers float32 values (120 bytes for SmolLM2) plus a few Python numbers
    and strings (the top-k row).
    """

    position: int
    token_id: int
    token_text: str
    prob: float
    top_k: TopK
    entropy: float
    attention: torch.Tensor | None
    resid: torch.Tensor | None
    logits: torch.Tensor | None
    forced: bool = False
    _lens: Any = field(default=None, repr=False)
    _norms: torch.Tensor | None = field(default=None, repr=False)

    @property
    def full(self) -> bool:
        """Whether this record still holds ``attention``, ``resid`` and ``logits``."""
        return self.resid is not None

    @property
    def resid_norms(self) -> torch.Tensor:
        return self._norms if self.resid is None else self.resid.float().norm(dim=-1)

    @functools.cached_property
    def logit_lens(self) -> LogitLens:
        if self.resid is None:
            raise GenerationError(
                f"the record of position {self.position} is compact (its residuals were dropped to bound "
                "the session's memory), so its logit lens cannot be computed: read record.logit_lens while "
                "the record is among the newest keep_full, or make the Session with a larger keep_full "
                "(keep_full=None keeps every record full)."
            )
        return self._lens(self.resid)

    def compact(self) -> StepRecord:
        """A copy without ``attention``, ``resid`` and ``logits`` (a logit lens already computed is kept)."""
        if not self.full:
            return self
        compact = replace(self, attention=None, resid=None, logits=None, _norms=self.resid_norms)
        if "logit_lens" in self.__dict__:
            compact.__dict__["logit_lens"] = self.__dict__["logit_lens"]
        return compact

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

    ``keep_full`` (default ``KEEP_FULL`` = 16): how many of the newest records stay full
    (``StepRecord.compact`` for the others); None keeps every record full (memory then grows with the
    square of the length). Bytes kept, measured (SmolLM2-135M, float32, CPU, sampled steps): each of the
    newest ``keep_full`` records 265,728 + 1,080 · position bytes; every older one 120 bytes of tensors
    plus its top-k row; and the random state before each step that drew randomness, 5,056 bytes on a CPU
    generator (greedy and forced steps share the state before them). 400 steps held 200 MB of record
    tensors with ``keep_full=None`` and 13.3 MB with the default; 2,000 steps hold about 10.4 MB of
    compact state plus the full window (16 × 2.4 MB at position 2,000). The KV cache, bounded by the
    context, is apart.

    State: ``tokens`` (prompt + new), ``prompt_tokens``, ``history`` (records), ``text`` (the new text),
    ``cache`` (the ``KVCache``, holding every token but the last), ``done`` (the last token is a stop
    token), ``sampling`` (also as ``temperature``, ``top_p``, ``top_k``: assign one to change it for the
    next steps). Hooks active on the model (``with model.hooks(...)``) act on every step.

    ``fast`` (default True): on a CPU, steps use the decode step compiled ahead of time by ``llama3-lab
    compile`` (``llama3_lab.packaged``) when one was built for this model, with the same records taken
    from its outputs; a step while anything is hooked, or once the context outgrows the package's
    capacity, is the hookable forward (hooks and weights are checked at the first token of each ``step``
    call: nothing of the caller's runs between its tokens). ``fast=False``: always the hookable forward
    (exact to the bit).
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
        keep_full: int | None = KEEP_FULL,
        fast: bool = True,
        **sampling_options: Any,
    ) -> None:
        self.sampling = resolve_sampling(sampling, sampling_options, caller="Session")
        _check_arguments(seed=seed, record_top_k=record_top_k, max_length=max_length, keep_full=keep_full)
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.record_top_k = record_top_k
        self.keep_full = keep_full
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
        # The generator state before each step, for rewind; a step that drew nothing (greedy, forced)
        # shares the tensor of the step before it.
        self._rng_states: list[torch.Tensor] = []
        self._n_compact = 0  # history[:_n_compact] are compact records
        self.generator = make_generator(seed, model.device)
        limit = model.cfg.max_position_embeddings
        capacity = max_length or len(self.tokens) + 256  # grows (doubling) when the steps outrun it
        self._package = usable_package(model, max_length or len(self.tokens) + 1) if fast else None
        self._package_step: Any = None  # its runner, loaded at the first step that uses it
        self._last_step_packaged = False  # whether the latest step took it (see step)
        if self._package is not None:  # the compiled step needs a cache of the capacity it was built for
            capacity = record_of(self._package).capacity
        self.cache = KVCache.allocate(model, 1, max_length=min(limit, max(capacity, len(self.tokens))))
        self._zero_unfilled_cache()
        if len(self.tokens) > 1:  # everything but the last token; each step then feeds one token
            with torch.no_grad():  # its logits are not used: unembed one position, not all
                prompt = torch.tensor([self.tokens[:-1]], device=model.device)
                model(prompt, cache=self.cache, logits_to_keep=1)
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
        """Sample the next token and return its record; ``step(n)``: up to n records (ends at stop tokens).

        Both raise ``GenerationError`` when the session has already ended (``step(0)`` returns [])."""
        if n is None:
            return self._advance(None)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise GenerationError(f"step(n) needs an int n >= 0, got {n!r}.")
        records = []
        checked = False  # whether the package may serve: asked at the first step, then kept for this call
        for _ in range(n):
            records.append(self._advance(None, checked))
            checked = self._last_step_packaged  # no code of the caller runs until this call returns
            if self.done:
                break
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
        self._n_compact = min(self._n_compact, len(self.history))
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
        twin._zero_unfilled_cache()
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

    def _advance(self, forced: int | None, checked: bool = False) -> StepRecord:
        """One token. ``checked``: the previous step of the same ``step(n)`` call took the package, and
        nothing outside this session ran since, so the package's hook and weight checks still hold."""
        if self.done:
            raise GenerationError(
                f"the session ended with stop token {self.tokens[-1]} ({self.history[-1].token_text!r}): "
                "rewind(1) to continue from before it, or fork() an earlier copy."
            )
        position = len(self.tokens)
        check_length(self.model, position, 1)
        self._ensure_capacity(position)
        rng_state = self._rng_state_now()
        last = torch.tensor([[self.tokens[-1]]], device=self.model.device)
        runner = self._packaged_step(checked)
        self._last_step_packaged = runner is not None
        if runner is None:
            with torch.no_grad(), self._capturing():
                logits = self.model(last, cache=self.cache)[0, -1]
            attention, resid = torch.stack(self._attention_rows), torch.stack(self._resid_rows)
        else:  # the compiled step: the same records, from its outputs (the query is at position - 1)
            with torch.inference_mode():
                logits, _, resid, pattern = runner(
                    last, torch.tensor(position - 1), self.cache.keys, self.cache.values
                )
            self.cache.length = position
            logits = logits[0]
            attention = pattern[:, 0, :, :position].clone()  # [L H T] -> [L H position]
            resid = resid[:, 0].clone()  # [L D]
        with torch.no_grad():
            if forced is None:
                token = int(self.sampling.sample(logits, self.generator, position=position))
            else:
                token = forced
            record = self._record(position, token, logits, forced is not None, attention, resid)
        self.tokens.append(token)
        self.history.append(record)
        self._rng_states.append(rng_state)
        self._compact_old_records()
        return record

    def _zero_unfilled_cache(self) -> None:
        """For the compiled step, which reads every slot (masked): 0 · an uninitialised NaN is NaN."""
        if self._package is not None:
            for tensor in self.cache.keys + self.cache.values:
                tensor[:, :, self.cache.length :].zero_()

    def _packaged_step(self, checked: bool = False) -> Any:
        """The compiled step's runner when this step may use it (the cache still of its capacity,
        nothing hooked, the weights unchanged; the last two not asked again when ``checked``), else None:
        the hookable forward. Asking costs ~0.7 ms a step for SmolLM2 (1,033 modules, 273 parameters)."""
        if self._package is None or self.cache.max_length != record_of(self._package).capacity:
            return None
        if not checked and not still_usable(self.model, self._package):
            return None
        if self._package_step is None:
            self._package_step = packaged_step(self.model, self._package)
        return self._package_step

    def _rng_state_now(self) -> torch.Tensor:
        """The generator's state, sharing the previous step's tensor when nothing was drawn since."""
        state = self.generator.get_state()
        if self._rng_states and torch.equal(self._rng_states[-1], state):
            return self._rng_states[-1]
        return state

    def _compact_old_records(self) -> None:
        """Compact the records older than the newest ``keep_full`` (one per step once the window is full)."""
        if self.keep_full is None:
            return
        for index in range(self._n_compact, len(self.history) - self.keep_full):
            self.history[index] = self.history[index].compact()
        self._n_compact = max(self._n_compact, len(self.history) - self.keep_full)

    def _record(
        self,
        position: int,
        token: int,
        logits: torch.Tensor,
        forced: bool,
        attention: torch.Tensor,
        resid: torch.Tensor,
    ) -> StepRecord:
        temperature = self.temperature if self.temperature > 0 else 1.0
        log_probs = torch.log_softmax(scaled_logits(logits, temperature), dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum()
        return StepRecord(
            position=position,
            token_id=token,
            token_text=token_strings(self.tokenizer, [token])[0],
            prob=float(probs[token]),
            top_k=top_k_of_probs(probs, self.tokenizer, self.record_top_k).row(),
            entropy=float(entropy),
            attention=attention,
            resid=resid,
            logits=logits,
            forced=forced,
            _lens=functools.partial(_logit_lens, self.model),
        )


def _check_arguments(*, seed: Any, record_top_k: Any, max_length: Any, keep_full: Any) -> None:
    """``Session``'s own arguments, checked before anything is computed."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if seed is not None and not is_int(seed):
        raise GenerationError(
            f"seed must be an int or None, got {seed!r}; e.g. seed=0 for reproducible draws."
        )
    if not is_int(record_top_k) or record_top_k < 1:
        raise GenerationError(
            f"record_top_k must be an int >= 1 (how many candidates each StepRecord lists), got "
            f"{record_top_k!r}; e.g. record_top_k=10."
        )
    if max_length is not None and (not is_int(max_length) or max_length < 1):
        raise GenerationError(
            f"max_length must be None or an int >= 1 (the first KV-cache allocation, in positions; it grows "
            f"as needed), got {max_length!r}; leave it None for the default."
        )
    if keep_full is not None and (not is_int(keep_full) or keep_full < 0):
        raise GenerationError(
            f"keep_full must be None or an int >= 0 (how many of the newest records keep their attention, "
            f"residuals and logits), got {keep_full!r}; e.g. keep_full={KEEP_FULL}, or None to keep all."
        )


def session(model: LlamaModel, prompt: Prompt, **kwargs: Any) -> Session:
    """``Session(model, prompt, **kwargs)``; what ``model.session(...)`` calls."""
    return Session(model, prompt, **kwargs)
