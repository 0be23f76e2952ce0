"""StepperView: generation one token at a time, in the browser.

It drives a :class:`llama3_lab.session.Session`: **Step** is ``session.step()`` (the session's sampling,
greedy by default), **Sample** draws one token at the temperature typed beside it, **Force** appends a
token of your choice, **Back** and **Reset** rewind. Clicking a generated token rewinds to just before it
and offers that step's alternatives as buttons (force one to explore the other branch). Hovering a
generated token shows its top-k candidates and entropy, and colours the context by what the chosen head
attended to when the token was produced. Each step's record travels as JSON (a few numbers and k labels);
the attention rows of the chosen head as float16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets
from matplotlib.figure import Figure

from ..sampling import SAMPLING_FIELDS, Sampling, make_generator, resolve_sampling
from ..session import Session, StepRecord
from ..tokenizer import token_strings
from ..viz import display_token, token_strip, topk_bars
from ..viz._common import bare_figure
from ._base import View, float16_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..model import LlamaModel

GREEDY = Sampling(temperature=0.0)
"""The default sampling of Step: greedy, so that stepping is reproducible."""


class StepperView(View):
    """``StepperView(model, prompt, sampling=None, *, seed=0, layer=None, head=None, **session_options)``.

    ``prompt`` is text, token ids or chat messages (as for :func:`llama3_lab.generation.generate`); the
    sampling settings as a ``Sampling`` or keywords (``temperature=0.7``; greedy by default); other
    keywords go to :class:`~llama3_lab.session.Session`. ``layer`` defaults to the middle layer; with
    ``head=None`` the view shows the head of that layer with the least attention on the first token over
    the steps so far (re-chosen after each step until you pick one).

    Python API (what the buttons do): :meth:`step`, :meth:`sample`, :meth:`force`, :meth:`back`,
    :meth:`reset`, :meth:`rewind_to`. State: :attr:`session`, :attr:`tokens`, :attr:`new_tokens`,
    :attr:`history`, :attr:`text`, :meth:`attention_row`.
    """

    _view = "stepper"
    context = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The text of every token (prompt and generated), for the page."""
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_prompt = traitlets.Int(0).tag(sync=True)
    steps = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Per generated token: position, label, prob, entropy, forced, top ([label, prob] pairs)."""
    alternatives = traitlets.List(traitlets.Dict()).tag(sync=True)
    """After a rewind by click: the removed step's candidates (label, id, prob), offered to force."""
    attention = traitlets.Bytes(b"").tag(sync=True)
    """float16: for each step, the chosen head's attention over keys 0..position−1, concatenated."""
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    done = traitlets.Bool(False).tag(sync=True)
    sample_temperature = traitlets.Float(1.0).tag(sync=True)

    def __init__(
        self,
        model: LlamaModel,
        prompt: Any,
        sampling: Sampling | None = None,
        *,
        seed: int = 0,
        layer: int | None = None,
        head: int | None = None,
        **kwargs: Any,
    ) -> None:
        sampling_options = {name: kwargs.pop(name) for name in SAMPLING_FIELDS if name in kwargs}
        sampling = resolve_sampling(sampling, sampling_options, GREEDY, caller="StepperView")
        cfg = model.cfg
        for name, value, size in (
            ("layer", layer, cfg.num_hidden_layers),
            ("head", head, cfg.num_attention_heads),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size
            ):
                raise ValueError(
                    f"{name} must be None or an int in 0..{size - 1} for this model; got {value!r}."
                )
        self.model = model
        self.session = Session(model, prompt, sampling, seed=seed, **kwargs)
        self.seed = seed
        self._auto_head = head is None
        super().__init__(
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            layer=cfg.num_hidden_layers // 2 if layer is None else layer,
            head=0 if head is None else head,
            n_prompt=len(self.session.prompt_tokens),
        )
        self.observe(self._head_picked, names="head")
        self._react(self._send_attention, ("layer", "head"))
        self._send_all()

    # -- state ---------------------------------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        """Prompt and generated token ids."""
        return self.session.tokens

    @property
    def new_tokens(self) -> list[int]:
        return self.session.new_tokens

    @property
    def history(self) -> list[StepRecord]:
        return self.session.history

    @property
    def text(self) -> str:
        return self.session.text

    def attention_row(self, record: StepRecord | None = None) -> np.ndarray:
        """The chosen layer and head's attention ``[position]`` from the query that produced ``record``."""
        record = record or (self.history[-1] if self.history else None)
        if record is None:
            raise ValueError("no step yet: press Step (or call view.step()) first.")
        return record.attention[self.layer, self.head].float().cpu().numpy()

    # -- actions (the buttons call these through messages) ------------------------------------------

    def step(self, n: int = 1) -> list[StepRecord]:
        """Generate up to ``n`` tokens with the session's sampling."""
        records = self.session.step(n)
        self.alternatives = []
        self._send_all()
        return records

    def sample(self, temperature: float | None = None) -> StepRecord:
        """Draw one token at ``temperature`` (default: :attr:`sample_temperature`), whatever Step uses."""
        temperature = self.sample_temperature if temperature is None else temperature
        saved = self.session.sampling
        self.session.sampling = Sampling(temperature=float(temperature), top_p=1.0)
        try:
            record = self.session.step()
        finally:
            self.session.sampling = saved
        self.alternatives = []
        self._send_all()
        return record

    def force(self, token: int | str) -> StepRecord:
        """Append ``token`` (an id, or a text that is one token) instead of sampling."""
        record = self.session.force(token)
        self.alternatives = []
        self._send_all()
        return record

    def back(self) -> None:
        """Forget the newest generated token (the prompt stays)."""
        if self.history:
            self.session.rewind(1)
        self.alternatives = []
        self._send_all()

    def reset(self) -> None:
        """Forget every generated token (the random state goes back to the seed's)."""
        self.session.rewind(len(self.history))
        self.session.generator = make_generator(self.seed, self.model.device)
        self.alternatives = []
        self._send_all()

    def rewind_to(self, step: int) -> None:
        """Keep the first ``step`` generated tokens; the removed step's candidates become
        :attr:`alternatives`."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= len(self.history):
            raise ValueError(
                f"step must be an int in 0..{len(self.history)} (generated tokens kept); got {step!r}."
            )
        removed = self.history[step] if step < len(self.history) else None
        self.session.rewind(len(self.history) - step)
        self.alternatives = (
            []
            if removed is None
            else [
                {
                    "label": display_token(text),
                    "text": text,
                    "id": token,
                    "prob": round(prob, 6),
                    "step": step + 1,
                }
                for token, text, prob in zip(removed.top_k.ids, removed.top_k.texts, removed.top_k.probs)
            ]
        )
        self._send_all()

    def _on_step(self) -> None:
        self.step()

    def _on_sample(self) -> None:
        self.sample()

    def _on_force(self, token: int | str) -> None:
        self.force(token)

    def _on_back(self) -> None:
        self.back()

    def _on_reset(self) -> None:
        self.reset()

    def _on_rewind(self, step: int) -> None:
        self.rewind_to(int(step))

    # -- sending -------------------------------------------------------------------------------------

    def _head_picked(self, _change: Any) -> None:
        if not self._choosing:
            self._auto_head = False

    _choosing = False

    def _least_sink_head(self) -> int:
        if not self.history:
            return self.head
        first = np.array([r.attention[self.layer, :, 0].float().cpu().numpy() for r in self.history])
        return int(np.argmin(first.mean(0)))

    def _send_all(self) -> None:
        strings = token_strings(getattr(self.model, "tokenizer", None), self.tokens)
        steps = [
            {
                "position": r.position,
                "label": display_token(r.token_text),
                "prob": round(r.prob, 6),
                "entropy": round(r.entropy, 6),
                "forced": r.forced,
                "top": [[display_token(t), round(p, 6)] for t, p in zip(r.top_k.texts, r.top_k.probs)],
            }
            for r in self.history
        ]
        self._choosing = True  # notifications arrive when the hold ends: still choosing then
        try:
            with self.hold_trait_notifications():
                self.context = strings
                self.labels = [display_token(s) for s in strings]
                self.steps = steps
                self.done = self.session.done
                if self._auto_head:
                    self.head = self._least_sink_head()
        finally:
            self._choosing = False
        self._send_attention()

    def _send_attention(self) -> None:
        rows = [self.attention_row(r) for r in self.history]
        self.attention = float16_bytes(np.concatenate(rows)) if rows else b""
        self._update_status()

    def _update_status(self) -> None:
        why = " (least attention on the first token so far)" if self._auto_head and self.history else ""
        head = f"layer {self.layer}, head {self.head}{why}"
        if not self.history:
            self.status = f"step 0 · prompt of {len(self.session.prompt_tokens)} tokens · {head}"
            return
        last = self.history[-1]
        done = " · done (stop token)" if self.session.done else ""
        self.status = (
            f"step {len(self.history)} · {display_token(last.token_text)} (p={last.prob:.3f}, entropy "
            f"{last.entropy:.2f} nats){done} · {head} · hover a token for its alternatives, click to rewind"
        )

    # -- static form ---------------------------------------------------------------------------------

    def figure(self) -> Figure:
        """The text coloured by the newest step's attention (chosen head), beside its top-k candidates."""
        strings = token_strings(getattr(self.model, "tokenizer", None), self.tokens)
        if not self.history:
            return token_strip(
                strings,
                np.full(len(strings), np.nan),
                label="press Step",
                window=(max(0, len(strings) - 160), len(strings)),
            )
        last = self.history[-1]
        values = np.full(len(strings), np.nan)
        row = self.attention_row(last)
        values[: row.size] = row
        fig = bare_figure((11.0, 3.4))
        strip_ax, bars_ax = fig.subplots(1, 2, width_ratios=(2.3, 1))
        token_strip(
            strings, values, ax=strip_ax, vmin=0.0, label="attention",
            window=(max(0, len(strings) - 160), len(strings)),
            title=f"what produced {display_token(last.token_text)} attended to "
            f"(layer {self.layer}, head {self.head})",
        )  # fmt: skip
        sampled = last.top_k.ids.index(last.token_id) if last.token_id in last.top_k.ids else None
        topk_bars(
            last.top_k.texts,
            last.top_k.probs,
            ax=bars_ax,
            highlight=sampled,
            title=f"step {len(self.history)}: top-k",
        )
        return fig
