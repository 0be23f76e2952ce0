"""Generation: prompts in, new tokens and text out.

Prefill the prompt once into a preallocated ``KVCache``, then one token per step, drawn as a
``Sampling`` says (``llama3_lab.sampling``); text is decoded incrementally from token bytes so a stream
never splits a UTF-8 character, and stop strings are cut even when they span tokens. Stepping one token
at a time with a record of each step is ``llama3_lab.session``.

The samplers (``sample_next``, ``sampling_probs``, ``top_k_mask``, ``top_p_mask``, ``make_generator``)
live in ``llama3_lab.sampling`` and are importable from here too.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .kv_cache import KVCache
from .sampling import (
    GenerationError,
    Sampling,
    make_generator,
    resolve_sampling,
    sample_next,
    sampling_probs,
    top_k_mask,
    top_p_mask,
)

if TYPE_CHECKING:  # pragma: no cover
    from .model import LlamaModel
    from .tokenizer import Tokenizer

__all__ = [
    "Generation",
    "GenerationError",
    "Prompt",
    "Sampling",
    "TextStream",
    "check_length",
    "generate",
    "generate_tokens",
    "make_generator",
    "prompt_to_tokens",
    "require_tokenizer",
    "resolve_stop",
    "sample_next",
    "sampling_probs",
    "top_k_mask",
    "top_p_mask",
]

Message = dict[str, str]
Prompt = str | Sequence[int] | torch.Tensor | Sequence[Message]

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


def require_tokenizer(model: LlamaModel, needed_for: str) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise GenerationError(
            f"this model has no tokenizer, which {needed_for} needs: pass token ids instead, or set "
            "model.tokenizer = llama3_lab.load_tokenizer(...)."
        )
    return tokenizer


def prompt_to_tokens(model: LlamaModel, prompt: Prompt, *, prepend_bos: bool | None = None) -> list[int]:
    """The prompt's token ids: text (BOS as the tokenizer says unless ``prepend_bos`` chooses, once, via
    ``tokens.to_tokens``), ids used as given, or
    chat messages ``[{"role", "content"}, ...]`` wrapped by ``tokenizer.encode_chat`` with the
    assistant's generation prompt at the end."""
    from .tokens import to_tokens

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
        ids = require_tokenizer(model, "a chat prompt").encode_chat(list(prompt), add_generation_prompt=True)
    elif isinstance(prompt, str):
        require_tokenizer(model, "a text prompt")
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
    sampling: Sampling | None = None,
    *,
    generator: torch.Generator | None = None,
    stop_ids: Iterable[int] = (),
    fast: bool | str | dict[str, Any] = "auto",
    **sampling_options: Any,
) -> Iterator[int]:
    """Yield new token ids one at a time: the decode loop under ``generate`` (works without a tokenizer).

    ``sampling``: a ``Sampling``, or its fields as keywords (``temperature=0``, ``top_p``, ``top_k``);
    ``generator`` makes the draws reproducible (``make_generator(seed)``).

    The prompt is prefilled once into a ``KVCache`` allocated for exactly ``len(prompt) +
    max_new_tokens`` positions; each later step feeds one token. Sampling stays on the model's device;
    the only host sync per step is reading the new id. Stops after a token in ``stop_ids`` (which is
    yielded) or after ``max_new_tokens``. Hooks active on the model (``model.hooks(...)``) act on every
    forward.

    ``fast``: how the steps after the prefill are computed; the sampling loop is the same either way,
    so greedy tokens are the same.

    - ``"auto"`` (default): the decode step compiled ahead of time (``llama3_lab.packaged``, built
      once by ``llama3-lab compile``) when one was built for this model and nothing is hooked; else
      the model's hookable forward. A hooked generation is therefore always the exact eager path.
    - ``False``: always the model's hookable forward.
    - ``True``: that package when there is one, else ``llama3_lab.fast.FastDecoder`` compiled in this
      process (a minute or more on CPU the first time); a dict passes ``FastDecoder`` options.
    """
    sampling = resolve_sampling(sampling, sampling_options, caller="generate_tokens")
    check_length(model, len(prompt_ids), max_new_tokens)  # here, not at the first next()
    length = len(prompt_ids) + max_new_tokens
    automatic = False
    if fast not in (True, False, "auto") and not isinstance(fast, dict):
        raise GenerationError(
            f"fast={fast!r}: use 'auto' (the default), True, False or a dict of FastDecoder options."
        )
    if fast is True or fast == "auto":
        from .packaged import usable_package

        package = usable_package(model, length)
        automatic = fast == "auto"
        fast = {"package": package} if package is not None else fast is True
    decoder = None
    if fast:
        from .fast import fast_decoder
        from .packaged import PackageError

        try:
            decoder = fast_decoder(model, length, **(fast if isinstance(fast, dict) else {}))
        except PackageError as error:  # a package found by "auto" that does not load: say so, decode eagerly
            if not automatic:
                raise
            warnings.warn(f"{error} Decoding on the eager path instead.", stacklevel=2)
    if decoder is not None:
        prefill, step = (lambda ids: decoder.prefill(ids)[0]), (lambda token: decoder.step(token)[0])
    else:
        cache = KVCache.allocate(model, batch_size=1, max_length=length)

        def prefill(ids: list[int]) -> torch.Tensor:
            return model(torch.tensor([ids], device=model.device), cache=cache, logits_to_keep=1)[0, -1]

        def step(token: torch.Tensor) -> torch.Tensor:
            return model(token.view(1, 1), cache=cache)[0, -1]

    return _decode_loop(prefill, step, prompt_ids, max_new_tokens, sampling, generator, frozenset(stop_ids))


def _decode_loop(
    prefill: Callable[[list[int]], torch.Tensor],
    step: Callable[[torch.Tensor], torch.Tensor],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling,
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
            next_id = sampling.sample(logits, generator)
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
    sampling: Sampling | None = None,
    *,
    seed: int | None = None,
    stop: int | str | Iterable[int | str] | None = None,
    stream: bool = False,
    prepend_bos: bool | None = None,
    fast: bool | str | dict[str, Any] = "auto",
    **sampling_options: Any,
) -> Generation | TextStream | list[Generation]:
    """Continue ``prompt`` and return the new text.

    ``prompt``: text (BOS as the tokenizer's own setting ``tokenizer.add_bos`` says, e.g. Llama 3 yes and
    SmolLM2 no, unless ``prepend_bos=True``/``False`` chooses), token ids (used as given), or
    chat messages ``[{"role": "user", "content": "..."}]`` (wrapped in the model's chat template with
    the assistant's turn opened). Sampling: a ``Sampling``, or its fields as keywords: ``temperature``
    (0 = greedy), ``top_k``, nucleus ``top_p`` (defaults 0.6, None, 0.9); ``seed`` for a reproducible
    draw. Generation ends at the tokenizer's stop tokens, at ``stop`` (token ids, special-token names or
    plain strings) or after ``max_new_tokens``.

    Returns a ``Generation``: a ``str`` of the new text with ``.tokens``, ``.prompt_tokens`` and
    ``.stop_reason``. With ``stream=True`` returns a ``TextStream`` yielding text pieces as they are
    decoded. Hooks active on the model (``with model.hooks(...)``) act on every forward.

    ``fast``: ``"auto"`` (default) decodes with the step compiled ahead of time by ``llama3-lab
    compile`` (``llama3_lab.packaged``: same greedy tokens, 2.3x transformers on a 2-core CPU,
    measured; loads in a few seconds) when one was built for this model and nothing is hooked, else
    with the hookable forward; ``False`` always the hookable forward; ``True`` the package or, without
    one, ``llama3_lab.fast`` compiled in this process (a fixed-shape step, compiled on CPU or captured
    as a CUDA graph; the first call compiles, which takes a minute or more on CPU). A dict passes
    ``FastDecoder`` options.

    A list of prompts (texts, chats or id lists) is generated as one batch: see ``generate_batch``;
    the result is a list of ``Generation``.
    """
    from .batch_generation import generate_batch, is_prompt_batch

    if is_prompt_batch(prompt):
        if stream:
            raise GenerationError(
                "stream=True streams one prompt; a batch of prompts is not streamed. Drop stream=True to "
                "get every row's Generation at the end, or stream each prompt on its own."
            )
        if fast and fast != "auto":
            raise GenerationError(
                "fast=True decodes one prompt at a time; a batch of prompts runs on the eager forward. "
                "Drop fast=True, or loop over the prompts with fast=True."
            )
        return generate_batch(
            model,
            prompt,
            max_new_tokens,
            sampling,
            seed=seed,
            stop=stop,
            prepend_bos=prepend_bos,
            **sampling_options,
        )
    sampling = resolve_sampling(sampling, sampling_options, caller="generate")
    tokenizer = require_tokenizer(model, "generate (it returns text; generate_tokens works on ids)")
    prompt_ids = prompt_to_tokens(model, prompt, prepend_bos=prepend_bos)
    stop_ids, stop_strings = resolve_stop(model, stop)
    generator = make_generator(seed, model.device)
    ids = generate_tokens(
        model, prompt_ids, max_new_tokens, sampling, generator=generator, stop_ids=stop_ids, fast=fast
    )
    text_stream = TextStream(ids, tokenizer, prompt_ids, stop_ids, stop_strings)
    return text_stream if stream else text_stream.result()
