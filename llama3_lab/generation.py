"""Generation: sampling, ``generate``, step-through ``Session`` and its ``StepRecord``.

Three layers, each usable alone:

* **Sampling** (pure functions on logits): temperature, top-k, nucleus top-p, exactly as Meta's Llama 3
  reference ``sample_top_p``; one seeded ``torch.Generator``.
* **generate**: prefill the prompt once into a preallocated ``KVCache``, then one token per step; text is
  decoded incrementally from token bytes so a stream never splits a UTF-8 character.
* **Session**: the same loop one step at a time, each step returning a ``StepRecord`` (top-k, entropy,
  attention row, residual norms, logit lens) with rewind, fork and teacher forcing.
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .kv_cache import KVCache
from .tokenizer import token_strings

if TYPE_CHECKING:  # pragma: no cover
    from .model import LlamaModel
    from .tokenizer import Tokenizer

Message = dict[str, str]
Prompt = str | Sequence[int] | torch.Tensor | Sequence[Message]

# --------------------------------------------------------------------------------------------------
# Sampling: pure functions on logits
# --------------------------------------------------------------------------------------------------


class GenerationError(ValueError):
    """A generation argument is out of range; the message says which and how to fix it."""


def check_sampling(temperature: float = 0.6, top_p: float = 0.9, top_k: int | None = None) -> None:
    """Raise ``GenerationError`` unless temperature >= 0, 0 < top_p <= 1 and top_k is None or an int >= 1."""
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise GenerationError(
            f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}; "
            "use temperature=0 for deterministic argmax decoding."
        )
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise GenerationError(
            f"top_p must be in (0, 1], got {top_p!r}; use top_p=1.0 to switch nucleus sampling off."
        )
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise GenerationError(
            f"top_k must be None or an int >= 1, got {top_k!r}; use top_k=None to switch it off."
        )


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
    logits: torch.Tensor, temperature: float = 0.6, top_p: float = 0.9, top_k: int | None = None
) -> torch.Tensor:
    """The distribution a token is drawn from, ``[..., V]`` float32.

    softmax(logits / temperature), restricted to the top-k tokens and then to the nucleus of mass
    ``top_p``, renormalised. ``temperature == 0`` is greedy: a one-hot vector on the argmax.
    """
    check_sampling(temperature, top_p, top_k)
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k is not None:
        probs = probs * top_k_mask(probs, top_k)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    if top_p < 1:
        probs = probs * top_p_mask(probs, top_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.6,
    top_p: float = 0.9,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the next token id from ``logits [..., V]``; returns a LongTensor ``[...]`` on the same device.

    Greedy (``temperature == 0``) is an argmax and consumes no randomness; otherwise one draw from
    ``sampling_probs`` with ``generator`` (seed it for reproducible runs).
    """
    if temperature == 0:
        check_sampling(temperature, top_p, top_k)
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_p, top_k)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def make_generator(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (a fresh random seed when None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# --------------------------------------------------------------------------------------------------
# Prompts, stop conditions, incremental text
# --------------------------------------------------------------------------------------------------


def _is_messages(prompt: Any) -> bool:
    return (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and all(isinstance(m, dict) for m in prompt)
    )


def _tokenizer_of(model: LlamaModel, needed_for: str) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise GenerationError(
            f"this model has no tokenizer, which {needed_for} needs: pass token ids instead, or set "
            "model.tokenizer = llama3_lab.load_tokenizer(...)."
        )
    return tokenizer


def prompt_to_tokens(model: LlamaModel, prompt: Prompt, *, prepend_bos: bool = True) -> list[int]:
    """The prompt's token ids: text (BOS prepended once, via ``hooks.to_tokens``), ids used as given, or
    chat messages ``[{"role", "content"}, ...]`` wrapped by ``tokenizer.encode_chat`` with the
    assistant's generation prompt at the end."""
    from .hooks import to_tokens

    empty = (isinstance(prompt, str) and not prompt) or (
        not isinstance(prompt, torch.Tensor) and isinstance(prompt, Sequence) and len(prompt) == 0
    )
    if empty or (isinstance(prompt, torch.Tensor) and prompt.numel() == 0):
        raise GenerationError(
            "the prompt is empty: give some text, token ids or chat messages (to sample without context, "
            "pass [model.tokenizer.bos_id])."
        )
    if _is_messages(prompt):
        for message in prompt:
            if not {"role", "content"} <= set(message):
                raise GenerationError(
                    f"a chat message needs 'role' and 'content' keys, got {sorted(message)}: "
                    'write {"role": "user", "content": "..."}.'
                )
        ids = _tokenizer_of(model, "a chat prompt").encode_chat(list(prompt), add_generation_prompt=True)
    elif isinstance(prompt, str):
        _tokenizer_of(model, "a text prompt")
        ids = to_tokens(model, prompt, prepend_bos=prepend_bos)[0].tolist()
    else:
        tokens = to_tokens(model, prompt)
        if tokens.shape[0] != 1:
            raise GenerationError(
                f"generation runs one sequence at a time, got a batch of {tokens.shape[0]}: loop over them."
            )
        ids = tokens[0].tolist()
    return ids


def _default_stop_ids(model: LlamaModel) -> set[int]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        return set(tokenizer.stop_ids)
    eos = model.cfg.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def resolve_stop(
    model: LlamaModel, stop: int | str | Iterable[int | str] | None
) -> tuple[set[int], list[str]]:
    """Stop token ids (the tokenizer's ``stop_ids`` plus any given) and stop strings.

    An int is a token id; a string naming a special token (``"<|eot_id|>"``) is that token; any other
    string stops generation when it appears in the decoded text (it is not included in the result).
    """
    stop_ids = _default_stop_ids(model)
    stop_strings: list[str] = []
    items = [] if stop is None else [stop] if isinstance(stop, (int, str)) else list(stop)
    specials = getattr(getattr(model, "tokenizer", None), "special_tokens", {}) or {}
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise GenerationError(f"stop items must be token ids or strings, got {item!r}.")
        if isinstance(item, int):
            if not 0 <= item < model.cfg.vocab_size:
                raise GenerationError(
                    f"stop token id {item} is outside the vocabulary 0..{model.cfg.vocab_size - 1}."
                )
            stop_ids.add(item)
        elif item in specials:
            stop_ids.add(specials[item])
        elif item:
            stop_strings.append(item)
        else:
            raise GenerationError("an empty stop string would stop at once: remove it.")
    return stop_ids, stop_strings


def check_length(model: LlamaModel, n_prompt: int, max_new_tokens: int) -> None:
    """Raise unless ``max_new_tokens >= 0`` and prompt + new tokens fit ``max_position_embeddings``."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}.")
    limit = model.cfg.max_position_embeddings
    if n_prompt + max_new_tokens > limit:
        raise GenerationError(
            f"the prompt has {n_prompt} tokens and max_new_tokens={max_new_tokens}: "
            f"{n_prompt + max_new_tokens} positions exceed the model's context of {limit} "
            "(max_position_embeddings). Lower "
            f"max_new_tokens to at most {max(limit - n_prompt, 0)} or shorten the prompt."
        )


class _TextAssembler:
    """Token ids in, text pieces out: never a split UTF-8 character, never part of a stop string.

    Token bytes go through an incremental UTF-8 decoder, which holds back an incomplete character until
    its last byte arrives; text that could be the start of a stop string is held back until it is
    known not to be one.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self._token_bytes = tokenizer.token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop_strings = list(stop_strings)
        self._longest_stop = max((len(s) for s in stop_strings), default=0)
        self.text = ""  # decoded so far (its tail may not be released yet)
        self.released = 0  # characters handed out
        self.hit_stop_string = False

    def push(self, token_id: int) -> str:
        self.text += self._decoder.decode(self._token_bytes([token_id])[0])
        return self._release(final=False)

    def finish(self) -> str:
        if not self.hit_stop_string:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if self._stop_strings and not self.hit_stop_string:
            start = max(0, self.released - self._longest_stop + 1)
            hits = [i for s in self._stop_strings if (i := self.text.find(s, start)) >= 0]
            if hits:
                end = min(hits)
                self.text = self.text[:end]
                self.hit_stop_string = True
            elif not final:
                end -= self._possible_stop_prefix()
        piece = self.text[self.released : end]
        self.released = end
        return piece

    def _possible_stop_prefix(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(self._longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stop_strings):
                return n
        return 0


# --------------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------------


def generate_tokens(
    model: LlamaModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int = 256,
    temperature: float = 0.6,
    top_p: float = 0.9,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Iterable[int] = (),
    fast: bool | dict[str, Any] = False,
) -> Iterator[int]:
    """Yield new token ids one at a time: the decode loop under ``generate`` (works without a tokenizer).

    The prompt is prefilled once into a ``KVCache`` allocated for exactly ``len(prompt) +
    max_new_tokens`` positions; each later step feeds one token. Sampling stays on the model's device;
    the only host sync per step is reading the new id. Stops after a token in ``stop_ids`` (which is
    yielded) or after ``max_new_tokens``. Hooks active on the model (``model.hooks(...)``) act on every
    forward.

    ``fast``: decode with ``llama3_lab.fast.FastDecoder`` instead of the model's hookable forward (a dict
    passes its options); the sampling loop is the same, so greedy tokens are the same.
    """
    check_sampling(temperature, top_p, top_k)
    check_length(model, len(prompt_ids), max_new_tokens)  # here, not at the first next()
    length = len(prompt_ids) + max_new_tokens
    if fast:
        from .fast import fast_decoder

        decoder = fast_decoder(model, length, **(fast if isinstance(fast, dict) else {}))
        prefill, step = (lambda ids: decoder.prefill(ids)[0]), (lambda token: decoder.step(token)[0])
    else:
        cache = KVCache.allocate(model, batch_size=1, max_length=length)

        def prefill(ids: list[int]) -> torch.Tensor:
            return model(torch.tensor([ids], device=model.device), cache=cache)[0, -1]

        def step(token: torch.Tensor) -> torch.Tensor:
            return model(token.view(1, 1), cache=cache)[0, -1]

    return _decode_loop(
        prefill, step, prompt_ids, max_new_tokens, temperature, top_p, top_k, generator, frozenset(stop_ids)
    )


def _decode_loop(
    prefill: Callable[[list[int]], torch.Tensor],
    step: Callable[[torch.Tensor], torch.Tensor],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int | None,
    generator: torch.Generator | None,
    stop_ids: frozenset[int],
) -> Iterator[int]:
    """Sample, yield, feed back: ``prefill(prompt)`` once, then ``step(token)``; both return logits [V]."""
    if max_new_tokens == 0:
        return
    with torch.no_grad():
        logits = prefill(list(prompt_ids))
    for i in range(max_new_tokens):
        with torch.no_grad():
            next_id = sample_next(logits, temperature, top_p, top_k, generator)
        token = int(next_id)
        yield token
        if token in stop_ids or i == max_new_tokens - 1:
            return
        with torch.no_grad():
            logits = step(next_id)


class Generation(str):
    """The generated text (a ``str``, so it prints and compares as text) with what produced it.

    ``tokens``: the new token ids, including the stop token when one ended generation (its text is
    not part of the string); ``prompt_tokens``: the prompt's ids; ``stop_reason``: ``"stop_token"``,
    ``"stop_string"`` or ``"max_new_tokens"``.
    """

    tokens: list[int]
    prompt_tokens: list[int]
    stop_reason: str

    def __new__(cls, text: str, tokens: list[int], prompt_tokens: list[int], stop_reason: str) -> Generation:
        self = super().__new__(cls, text)
        self.tokens, self.prompt_tokens, self.stop_reason = tokens, prompt_tokens, stop_reason
        return self


class TextStream(Iterator[str]):
    """Iterator of text pieces as they are decoded (``generate(..., stream=True)``).

    Pieces never split a UTF-8 character and concatenate to the full text. While and after iterating,
    ``tokens``, ``prompt_tokens``, ``text`` (released so far) and ``stop_reason`` (None until done) are
    available; ``result()`` drains the stream into a ``Generation``.
    """

    def __init__(
        self,
        ids: Iterator[int],
        tokenizer: Tokenizer,
        prompt_tokens: list[int],
        stop_ids: set[int],
        stop_strings: list[str],
    ) -> None:
        self._ids = ids
        self._assembler = _TextAssembler(tokenizer, stop_strings)
        self._stop_ids = stop_ids
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self.stop_reason: str | None = None

    @property
    def text(self) -> str:
        return self._assembler.text[: self._assembler.released]

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while self.stop_reason is None:
            piece = self._advance()
            if piece:
                return piece
        raise StopIteration

    def _advance(self) -> str:
        token = next(self._ids, None)
        if token is None:
            self.stop_reason = "max_new_tokens"
            return self._assembler.finish()
        self.tokens.append(token)
        if token in self._stop_ids:
            self.stop_reason = "stop_token"
            self._ids.close()
            return self._assembler.finish()
        piece = self._assembler.push(token)
        if self._assembler.hit_stop_string:
            self.stop_reason = "stop_string"
            self._ids.close()
        return piece

    def result(self) -> Generation:
        for _ in self:
            pass
        return Generation(self.text, self.tokens, self.prompt_tokens, self.stop_reason or "max_new_tokens")


def generate(
    model: LlamaModel,
    prompt: Prompt,
    max_new_tokens: int = 256,
    temperature: float = 0.6,
    top_p: float = 0.9,
    top_k: int | None = None,
    seed: int | None = None,
    stop: int | str | Iterable[int | str] | None = None,
    stream: bool = False,
    prepend_bos: bool = True,
    fast: bool | dict[str, Any] = False,
) -> Generation | TextStream:
    """Continue ``prompt`` and return the new text.

    ``prompt``: text (BOS prepended once unless ``prepend_bos=False``), token ids (used as given), or
    chat messages ``[{"role": "user", "content": "..."}]`` (wrapped in the model's chat template with
    the assistant's turn opened). Sampling: ``temperature`` (0 = greedy), ``top_k``, nucleus ``top_p``
    (see ``sampling_probs``), ``seed`` for a reproducible draw. Generation ends at the tokenizer's stop
    tokens, at ``stop`` (token ids, special-token names or plain strings) or after ``max_new_tokens``.

    Returns a ``Generation``: a ``str`` of the new text with ``.tokens``, ``.prompt_tokens`` and
    ``.stop_reason``. With ``stream=True`` returns a ``TextStream`` yielding text pieces as they are
    decoded. Hooks active on the model (``with model.hooks(...)``) act on every forward.

    ``fast=True`` decodes with ``llama3_lab.fast`` (a fixed-shape step, compiled on CPU or captured as
    a CUDA graph: same greedy tokens, several times faster, no hooks; the first call compiles, which
    takes a minute or more on CPU). A dict passes ``FastDecoder`` options, e.g. ``{"compile": None}``.
    """
    tokenizer = _tokenizer_of(model, "generate (it returns text; generate_tokens works on ids)")
    prompt_ids = prompt_to_tokens(model, prompt, prepend_bos=prepend_bos)
    stop_ids, stop_strings = resolve_stop(model, stop)
    generator = make_generator(seed, model.device)
    ids = generate_tokens(
        model, prompt_ids, max_new_tokens, temperature, top_p, top_k, generator, stop_ids, fast=fast
    )
    text_stream = TextStream(ids, tokenizer, prompt_ids, stop_ids, stop_strings)
    return text_stream if stream else text_stream.result()


# --------------------------------------------------------------------------------------------------
# Session: one step at a time, with a record of each
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopK:
    """The most probable next tokens: ``ids``, readable ``texts`` and ``probs``, most probable first."""

    ids: list[int]
    texts: list[str]
    probs: list[float]

    def __repr__(self) -> str:
        return "TopK(" + ", ".join(f"{t!r} {p:.3f}" for t, p in zip(self.texts, self.probs)) + ")"


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


def _display_strings(tokenizer: Tokenizer | None, ids: list[int]) -> list[str]:
    return token_strings(tokenizer, ids)


def _logit_lens(model: LlamaModel, resid: torch.Tensor) -> LogitLens:
    """Top-1 token per layer of ``resid [L, D]``: final norm (each row its own RMS), then unembedding.

    The unembedding is applied as a plain matrix product, not through ``model.unembed``, so a user's
    hook on ``unembed.hook_out`` (which expects ``[B, P, V]`` logits) never sees the lens.
    """
    from .analysis.lens import apply_final_norm

    with torch.no_grad():
        logits = F.linear(apply_final_norm(model, resid), model.unembed.weight)
    ids = logits.argmax(dim=-1).tolist()
    return LogitLens(ids, _display_strings(getattr(model, "tokenizer", None), ids))


class Session:
    """Step through generation one token at a time, keeping a ``StepRecord`` of each step.

    ``Session(model, prompt, temperature=0.6, top_p=0.9, top_k=None, seed=None, stop=None)``; prompts as
    in ``generate``. ``step()`` samples one token and returns its record, ``step(n)`` up to n of them
    (fewer if a stop token comes); ``force(token)`` appends a token of your choice (id or a text that is
    one token), recorded the same way; ``rewind(n)`` forgets the last n tokens (and restores the random
    state, so stepping again reproduces the same records); ``fork()`` is an independent copy.

    State: ``tokens`` (prompt + new), ``prompt_tokens``, ``history`` (records), ``text`` (the new text),
    ``cache`` (the ``KVCache``, holding every token but the last), ``done`` (the last token is a stop
    token). Hooks active on the model (``with model.hooks(...)``) act on every step.
    """

    def __init__(
        self,
        model: LlamaModel,
        prompt: Prompt,
        temperature: float = 0.6,
        top_p: float = 0.9,
        top_k: int | None = None,
        seed: int | None = None,
        stop: int | str | Iterable[int | str] | None = None,
        record_top_k: int = 10,
        prepend_bos: bool = True,
        max_length: int | None = None,
    ) -> None:
        check_sampling(temperature, top_p, top_k)
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
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
        tokenizer = _tokenizer_of(self.model, "session.text")
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
            ids = _tokenizer_of(self.model, "force(text)").encode(token, allowed_special="all")
            if len(ids) != 1:
                pieces = _display_strings(self.tokenizer, ids)
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
            def hook(_module: Any, _args: Any, pattern: torch.Tensor) -> None:  # [B H Pq Pk] with Pq = 1
                self._attention_rows[layer] = pattern[0, :, -1].detach().clone()

            return hook

        def keep_resid(layer: int):
            def hook(_module: Any, _args: Any, resid: torch.Tensor) -> None:  # [B P D]
                self._resid_rows[layer] = resid[0, -1].detach().clone()

            return hook

        points = self.model.hook_dict
        self._capture_hooks = []
        for layer in range(n_layers):
            self._capture_hooks.append((points[f"blocks.{layer}.attn.hook_pattern"], keep_attention(layer)))
            self._capture_hooks.append((points[f"blocks.{layer}.hook_resid_post"], keep_resid(layer)))

    @contextmanager
    def _capturing(self) -> Iterator[None]:
        """Attach the capture hooks for one forward. They are plain PyTorch forward hooks registered after
        any user hooks, so they see what the user's hooks made of each tensor; registering them directly
        (not through ``model.hooks``, which resolves names) keeps a step's overhead small."""
        handles = [point.register_forward_hook(hook) for point, hook in self._capture_hooks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _ensure_capacity(self, length: int) -> None:
        """Grow the cache (doubling, copying the filled part) when ``length`` positions do not fit."""
        if length <= self.cache.max_length:
            return
        new_length = min(self.model.cfg.max_position_embeddings, max(2 * self.cache.max_length, length))
        grown = KVCache.allocate(self.model, 1, max_length=new_length)
        for old, new in zip(self.cache.keys + self.cache.values, grown.keys + grown.values):
            new[:, :, : self.cache.length] = old[:, :, : self.cache.length]
        grown.length = self.cache.length
        self.cache = grown

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
                token = int(sample_next(logits, self.temperature, self.top_p, self.top_k, self.generator))
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
        top = probs.topk(min(self.record_top_k, probs.shape[-1]))
        top_ids = top.indices.tolist()
        texts = _display_strings(self.tokenizer, [token, *top_ids])
        return StepRecord(
            position=position,
            token_id=token,
            token_text=texts[0],
            prob=float(probs[token]),
            top_k=TopK(top_ids, texts[1:], top.values.tolist()),
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
