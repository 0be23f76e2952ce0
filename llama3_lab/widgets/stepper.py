"""GenerationStepper: generate one token per click and watch what the new token attended to.

Built on :class:`llama3_lab.session.Session`: Step is ``session.step()``, Back is ``session.rewind(1)``,
Reset rewinds every generated token (and re-seeds when the seed changed), so the prompt is prefilled once.
Each :class:`~llama3_lab.session.StepRecord` already holds the top-k candidates, the entropy and every
head's attention row of the query that produced the token; the stepper only picks a layer and head and
hands those to :mod:`llama3_lab.viz`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from ..sampling import SAMPLING_FIELDS, Sampling, make_generator, resolve_sampling
from ..session import Session, StepRecord
from ..tokenizer import token_strings
from ..viz import attention_pattern, display_token, token_strip, topk_bars
from ..viz._common import bare_figure
from ._base import Explorer, figure_png, image_view, labelled

if TYPE_CHECKING:  # pragma: no cover
    from ..model import LlamaModel

STRIP_WINDOW = 160
"""Tokens shown in the strip: the last ones (a 2,048-token prompt would be an unreadable wall of boxes)."""
PROMPT_TAIL = 12
"""Prompt tokens shown before the generated text in the text line."""
GREEDY = Sampling(temperature=0.0)
"""The stepper's default sampling: greedy, so that stepping is reproducible until the sliders move."""


class GenerationStepper(Explorer):
    """Step through generation token by token: Step, Back and Reset, sampling controls, layer and head.

    ``GenerationStepper(model, prompt, sampling=None, seed=0, layer=None, head=0, **kwargs)``; the sampling
    settings as a ``Sampling`` or as keywords (``temperature=0.7, top_k=5``; greedy by default), other
    keywords go to :class:`~llama3_lab.session.Session`; ``prompt`` is text, token ids or chat messages,
    as for :func:`llama3_lab.generation.generate`; ``layer`` defaults to the middle layer. Views: the text
    as a token strip coloured by the chosen head's attention from the query that produced the newest
    token; the top-k candidates of the last step with the sampled token highlighted; and the chosen
    head's attention of every generated token so far (one row per step).

    State for code and tests: :attr:`session`, :attr:`tokens`, :attr:`new_tokens`, :attr:`history`,
    :attr:`text`. The status line reads ``"step N · ..."`` after each redraw.
    """

    def __init__(
        self,
        model: LlamaModel,
        prompt: Any,
        sampling: Sampling | None = None,
        *,
        seed: int = 0,
        layer: int | None = None,
        head: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        sampling_options = {name: kwargs.pop(name) for name in SAMPLING_FIELDS if name in kwargs}
        sampling = resolve_sampling(sampling, sampling_options, GREEDY, caller="GenerationStepper")
        cfg = model.cfg
        _check_view_arguments(cfg, layer, head, kwargs.get("keep_full", 1))
        self.model = model
        self.session = Session(model, prompt, sampling, seed=seed, **kwargs)
        self._seed_used = seed

        self.step_button = widgets.Button(description="Step", button_style="primary", icon="play")
        self.back_button = widgets.Button(description="Back", icon="step-backward")
        self.reset_button = widgets.Button(description="Reset", icon="undo")
        for button in (self.step_button, self.back_button, self.reset_button):
            button.layout.width = "90px"
        self.step_button.add_class("llama3-lab-step")
        self.back_button.add_class("llama3-lab-back")
        self.reset_button.add_class("llama3-lab-reset")
        self.step_button.on_click(lambda _button: self.step())
        self.back_button.on_click(lambda _button: self.back())
        self.reset_button.on_click(lambda _button: self.reset())

        self.temperature = labelled(
            "temperature",
            widgets.FloatSlider(
                value=sampling.temperature,
                min=0.0,
                max=max(2.0, sampling.temperature),  # a slider clamps a value beyond its range
                step=0.05,
                continuous_update=False,
            ),
        )
        self.top_k = labelled(
            "top-k (0 = off)",
            widgets.IntSlider(
                value=sampling.top_k or 0,
                min=0,
                max=min(max(200, sampling.top_k or 0), cfg.vocab_size),
                continuous_update=False,
            ),
        )
        self.top_p = labelled(
            "top-p",
            widgets.FloatSlider(
                value=sampling.top_p,
                min=min(0.05, sampling.top_p),
                max=1.0,
                step=0.05,
                continuous_update=False,
            ),
        )
        self.seed = labelled("seed (on Reset)", widgets.IntText(value=seed))
        self.seed.layout.width = "220px"
        for control in (self.temperature, self.top_k, self.top_p):
            control.observe(lambda _change: self._sampling_changed(), names="value")

        self.layer = labelled(
            "layer",
            widgets.IntSlider(
                value=cfg.num_hidden_layers // 2 if layer is None else layer,
                min=0,
                max=cfg.num_hidden_layers - 1,
                continuous_update=False,
            ),
        )
        self.head = labelled(
            "head",
            widgets.IntSlider(value=head, min=0, max=cfg.num_attention_heads - 1, continuous_update=False),
        )
        self._watch(self.layer, self.head)

        self.text_view = widgets.HTML()
        self.text_view.add_class("llama3-lab-text")
        self.strip_view = image_view()
        self.strip_view.add_class("llama3-lab-strip")
        self.topk_view = image_view(width="38%")
        self.topk_view.add_class("llama3-lab-topk")
        self.attention_view = image_view(width="60%")
        self.attention_view.add_class("llama3-lab-attention")

        self.children = [
            widgets.HBox([self.step_button, self.back_button, self.reset_button, self.seed]),
            widgets.HBox([self.temperature, self.top_k, self.top_p]),
            widgets.HBox([self.layer, self.head]),
            self.status,
            self.text_view,
            self.strip_view,
            widgets.HBox([self.topk_view, self.attention_view]),
        ]
        self.redraw()

    # -- state ---------------------------------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        """Prompt and generated token ids."""
        return self.session.tokens

    @property
    def new_tokens(self) -> list[int]:
        """Generated token ids only."""
        return self.session.new_tokens

    @property
    def history(self) -> list[StepRecord]:
        """One :class:`StepRecord` per generated token."""
        return self.session.history

    @property
    def text(self) -> str:
        """The generated text."""
        return self.session.text

    @property
    def last(self) -> StepRecord | None:
        """The newest step's record (None before the first step)."""
        return self.history[-1] if self.history else None

    # -- actions -------------------------------------------------------------------------------------

    def step(self, n: int = 1) -> list[StepRecord]:
        """Generate up to ``n`` tokens (what the Step button does with n = 1), then redraw."""
        records = self.session.step(n)
        self.redraw()
        return records

    def back(self) -> None:
        """Forget the newest generated token (the prompt stays)."""
        if self.history:
            self.session.rewind(1)
        self.redraw()

    def reset(self) -> None:
        """Forget every generated token; a changed seed takes effect here."""
        self.session.rewind(len(self.history))
        if self.seed.value != self._seed_used:
            self.session.generator = make_generator(self.seed.value, self.model.device)
            self._seed_used = self.seed.value
        self.redraw()

    def _sampling_changed(self) -> None:
        """New sampling settings apply from the next step on."""
        self.session.sampling = Sampling(self.temperature.value, self.top_p.value, self.top_k.value or None)
        self.redraw()

    # -- drawing -------------------------------------------------------------------------------------

    def _token_strings(self) -> list[str]:
        return token_strings(getattr(self.model, "tokenizer", None), self.tokens)

    def _status_text(self) -> str:
        last = self.last
        if last is None:
            return f"step 0 · prompt of {len(self.session.prompt_tokens)} tokens"
        done = " · done (stop token)" if self.session.done else ""
        return (
            f"step {len(self.history)} · {display_token(last.token_text)!s} "
            f"(p={last.prob:.3f}, entropy {last.entropy:.2f} nats){done}"
        )

    def _draw(self) -> None:
        self.step_button.disabled = self.session.done
        self.back_button.disabled = not self.history
        strings = self._token_strings()
        self.text_view.value = self._text_html(strings)
        self.strip_view.value = figure_png(self.strip_figure(strings))
        last = self.last
        if last is None:
            self.topk_view.value = b""
            self.attention_view.value = b""
            return
        sampled = last.top_k.ids.index(last.token_id) if last.token_id in last.top_k.ids else None
        self.topk_view.value = figure_png(
            topk_bars(
                last.top_k.texts, last.top_k.probs, highlight=sampled, title=f"step {len(self.history)}"
            )
        )
        self.attention_view.value = figure_png(self.attention_figure())

    def _text_html(self, strings: list[str]) -> str:
        """The prompt's last few tokens in grey, then every generated token highlighted (one span each)."""
        n_prompt = len(self.session.prompt_tokens)
        context_from = max(0, n_prompt - PROMPT_TAIL)
        spans = [
            f"<span class='llama3-lab-prompt-token' style='color:#777'>{html.escape(text)}</span>"
            for text in strings[context_from:n_prompt]
        ]
        spans += [
            f"<span class='llama3-lab-new-token' data-position='{position}' "
            f"style='background:#fde2c8;border-radius:3px'>{html.escape(strings[position])}</span>"
            for position in range(n_prompt, len(strings))
        ]
        prefix = f"<span style='color:#777'>[{context_from} earlier tokens] …</span>" if context_from else ""
        return f"<div style='white-space:pre-wrap;font-family:monospace'>{prefix}{''.join(spans)}</div>"

    def attention_row(self, record: StepRecord | None = None) -> np.ndarray:
        """The chosen layer and head's attention ``[position]`` from the query that produced ``record``."""
        record = record or self.last
        if record is None:
            raise ValueError("no step yet: press Step (or call stepper.step()) first.")
        return record.attention[self.layer.value, self.head.value].float().cpu().numpy()

    def strip_figure(self, strings: list[str] | None = None) -> Figure:
        """The text's last tokens coloured by the chosen head's attention from the newest query."""
        strings = strings if strings is not None else self._token_strings()
        values = np.full(len(strings), np.nan)
        last = self.last
        if last is not None:
            row = self.attention_row(last)
            values[: row.size] = row
        start = max(0, len(strings) - STRIP_WINDOW)
        label = "attention" if last is not None else "press Step"
        title = None
        if last is not None:
            title = (
                f"what produced {display_token(last.token_text)!r} looked at "
                f"(layer {self.layer.value}, head {self.head.value})"
            )
        return token_strip(strings, values, window=(start, len(strings)), label=label, vmin=0.0, title=title)

    def attention_figure(self) -> Figure:
        """Attention of every generated token so far (rows: steps; columns: keys), chosen layer and head."""
        records = self.history
        if not records:
            return bare_figure((4.0, 1.0))
        n_keys = records[-1].position
        rows = np.full((len(records), n_keys), np.nan)
        for i, record in enumerate(records):
            if record.full:  # older records are compact (Session(keep_full=...)): their rows stay blank
                row = self.attention_row(record)
                rows[i, : row.size] = row
        first_query = records[0].position - 1
        strings = self._token_strings()
        width = float(np.clip(0.16 * min(n_keys, 512) + 2.0, 4.5, 10.0))
        height = float(np.clip(0.22 * len(records) + 1.8, 2.4, 6.0))
        return attention_pattern(
            rows,
            strings,
            query_offset=first_query,
            title=f"attention from each step's query, layer {self.layer.value} head {self.head.value}",
            figsize=(width, height),
        )

    def figure(self) -> Figure:
        """Static fallback: the token strip with the newest step's attention."""
        return self.strip_figure()


def _check_view_arguments(cfg: Any, layer: int | None, head: int, keep_full: int | None) -> None:
    """The stepper's own arguments: a slider would silently clamp a layer or head out of range."""

    def in_range(value: Any, n: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n

    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    if layer is not None and not in_range(layer, layers):
        raise ValueError(f"layer must be an int in 0..{layers - 1} (the model has {layers}), got {layer!r}.")
    if not in_range(head, heads):
        raise ValueError(f"head must be an int in 0..{heads - 1} (each layer has {heads}), got {head!r}.")
    if keep_full == 0:
        raise ValueError(
            "keep_full=0 leaves no full record, and the stepper draws the newest step's attention: "
            "use keep_full >= 1 (or None to keep every record full)."
        )
