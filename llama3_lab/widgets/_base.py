"""What every explorer shares: PNG rendering, a redraw marker, error display, the static fallback.

An explorer is an ``ipywidgets.VBox`` of controls and ``widgets.Image`` views. Images are PNG bytes set on
``Image.value`` (not figures drawn into an ``Output``), so the state a test reads is the state a browser
shows, and nothing depends on a front end capturing output. Figures come from :mod:`llama3_lab.viz`; an
explorer only arranges controls and calls it.

Every redraw increments :attr:`Explorer.redraws` and rewrites the status line, which ends in
``"· draw N"``: a browser test (and a curious user) can wait for that text to know the picture is current.
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from ..views._base import cached_run  # noqa: F401  (kept importable from here)

PNG_DPI = 100
"""Screen resolution: one view is tens of kilobytes of PNG, cheap to send to the browser on each redraw."""

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def figure_png(fig: Figure, *, dpi: int = PNG_DPI) -> bytes:
    """``fig`` rendered to PNG bytes; the figure is cleared afterwards so its memory is released at once."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    fig.clear()
    return buffer.getvalue()


def image_view(width: str = "auto") -> widgets.Image:
    """An empty ``widgets.Image`` that keeps the figure's aspect ratio."""
    return widgets.Image(format="png", layout=widgets.Layout(width=width, max_width="100%", height="auto"))


def has_front_end(widget: widgets.Widget) -> bool:
    """True when ``widget`` lives in a kernel whose front end can render it (a real comm, not a dummy)."""
    comm = getattr(widget, "comm", None)
    return comm is not None and type(comm).__name__ != "DummyComm"


class Explorer(widgets.VBox):
    """Base class: a box of controls and views with a status line, a redraw counter and a static fallback.

    Subclasses build their controls, call :meth:`_watch` on the ones that change the picture, and implement
    :meth:`_draw` (update the views) and :meth:`figure` (one matplotlib Figure of the current state, used
    where no front end can show widgets: a terminal, nbconvert's HTML, GitHub's notebook viewer).
    """

    def __init__(self, **kwargs: Any) -> None:
        self.status = widgets.HTML(value="", layout=widgets.Layout(min_height="1.5em"))
        self.status.add_class("llama3-lab-status")
        self.redraws = 0
        self._holding = 0
        super().__init__(**kwargs)
        self.add_class("llama3-lab-explorer")

    # -- state and redraw ----------------------------------------------------------------------------

    def _watch(self, *controls: widgets.Widget, handler: Callable[[], None] | None = None) -> None:
        """Redraw (or call ``handler``) whenever the ``value`` of any of ``controls`` changes."""
        callback = handler or self.redraw
        for control in controls:
            control.observe(lambda _change: None if self._holding else callback(), names="value")

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Change several controls at once without a redraw per change (one redraw at the end)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if not self._holding:
            self.redraw()

    def redraw(self) -> None:
        """Recompute every view from the controls, then update the status line (the redraw marker).

        An error is shown in the status line (a widget callback's traceback would otherwise land in the
        JupyterLab log, where nobody sees it) and re-raised.
        """
        try:
            self._draw()
        except Exception as err:
            self.status.value = f"<span style='color:#b00020'>error: {_escape(str(err))}</span>"
            self.status.tooltip = traceback.format_exc()
            raise
        self.redraws += 1
        self.status.value = f"{_escape(self._status_text())} · draw {self.redraws}"

    def _draw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _status_text(self) -> str:
        return type(self).__name__

    def figure(self) -> Figure:  # pragma: no cover - abstract
        """The current view as one matplotlib Figure (the static fallback)."""
        raise NotImplementedError

    # -- display -------------------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget where a front end can render it, plus a PNG of :meth:`figure` for everyone else.

        JupyterLab prefers the widget view; nbconvert, GitHub and a kernel-less IPython show the PNG.
        """
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        if not has_front_end(self):
            bundle.pop(WIDGET_VIEW_MIME, None)
        bundle["image/png"] = figure_png(self.figure())
        return bundle

    def show(self, static: bool = False) -> None:
        """Display the widget, or with ``static=True`` only the PNG of its current figure."""
        from IPython.display import Image, display

        if static:
            display(Image(data=figure_png(self.figure())))
        else:
            display(self)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def labelled(description: str, control: widgets.Widget, width: str = "110px") -> widgets.Widget:
    """Give ``control`` a description with enough room to read it."""
    control.description = description
    control.style = {"description_width": width}
    return control
