"""What every browser view shares: its script and style, binary payloads, the static forms.

A view is an ``anywidget.AnyWidget``: Python state in synced traitlets, drawn by an ES module that ships in
this package (``views/js/``, declared as package data): no CDN, nothing fetched at run time, no build step.
Each view's module is ``common.js`` (helpers, colour maps) followed by the view's own file; the colour maps
are matplotlib's (the ones :mod:`llama3_lab.viz` uses), written into the script here so the browser and
the PNG figures agree.

Where no front end runs, a view still shows something:

- ``_repr_mimebundle_`` adds ``image/png`` (the view's :meth:`View.figure`) beside the widget view, so
  nbconvert, GitHub and a kernel-less IPython show a picture;
- :meth:`View.save_html` writes one self-contained HTML file (script, style and data inline) that opens
  from disk with no network, the hover still working (buttons that need the kernel are disabled there).

Large arrays travel as ``bytes`` traitlets (binary comm buffers, not JSON); :func:`float16_bytes` and
:func:`float32_bytes` make them, and the script reads them back with ``float16Array`` / ``float32Array``.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets
from matplotlib.figure import Figure

from ..tokenizer import token_strings
from ..viz._common import DIVERGING_CMAP, SEQUENTIAL_CMAP

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
PNG_DPI = 100
COLORMAP_STEPS = 256


def _script_file(name: str) -> str:
    return files(__package__).joinpath("js", name).read_text(encoding="utf-8")


@functools.cache
def _colormaps_js() -> str:
    """``const COLORMAPS = {sequential: [...], diverging: [...]}``: matplotlib's maps as 256 CSS colours."""
    import matplotlib

    def hex_colors(name: str) -> list[str]:
        rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, COLORMAP_STEPS))
        return ["#" + "".join(f"{round(255 * c):02x}" for c in color[:3]) for color in rgba]

    maps = {"sequential": hex_colors(SEQUENTIAL_CMAP), "diverging": hex_colors(DIVERGING_CMAP)}
    return f"const COLORMAPS = {json.dumps(maps)};\n"


@functools.cache
def view_script(name: str) -> str:
    """The ES module of view ``name``: the colour maps, ``common.js``, then ``{name}.js``."""
    return _colormaps_js() + _script_file("common.js") + "\n" + _script_file(f"{name}.js")


@functools.cache
def view_style() -> str:
    return _script_file("views.css")


def float16_bytes(values: Any) -> bytes:
    """``values`` as little-endian float16 bytes (3 significant digits: plenty for a colour and a tooltip)."""
    return np.ascontiguousarray(_as_array(values), dtype="<f2").tobytes()


def float32_bytes(values: Any) -> bytes:
    return np.ascontiguousarray(_as_array(values), dtype="<f4").tobytes()


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def figure_png(fig: Figure, *, dpi: int = PNG_DPI) -> bytes:
    """``fig`` as PNG bytes; the figure is cleared afterwards so its memory is released at once."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    fig.clear()
    return buffer.getvalue()


def has_front_end(widget: Any) -> bool:
    """True when ``widget`` lives in a kernel whose front end can render it (a real comm, not a dummy)."""
    comm = getattr(widget, "comm", None)
    return comm is not None and type(comm).__name__ != "DummyComm"


class View(anywidget.AnyWidget):
    """Base class: a synced ``status`` line, kernel messages by ``kind``, the PNG and HTML static forms.

    Subclasses set ``_view = "<name>"`` (their script is ``js/<name>.js``), declare synced traitlets and
    implement :meth:`figure`. A message ``{"kind": k, ...}`` from the script calls ``self._on_<k>(**rest)``;
    the status line is set after every handled message, so a test can wait for it.
    """

    _view = ""
    status = traitlets.Unicode("").tag(sync=True)
    standalone = traitlets.Bool(False).tag(sync=True)
    """True only in a saved HTML page (no kernel): the script disables what needs one."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if cls.__dict__.get("_view"):
            cls._esm = view_script(cls._view)
            cls._css = view_style()
        super().__init_subclass__(**kwargs)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_msg(self._handle_message)

    def _react(self, handler: Callable[[], None], names: str | tuple[str, ...]) -> None:
        """Call ``handler`` when traits ``names`` change; an error also lands in the status line.

        A change made in the browser reaches Python inside a comm callback, whose traceback only the
        server log shows: the status line is where the student sees what went wrong. It is re-raised, so
        an assignment from Python fails loudly as well.
        """

        def react(_change: Any) -> None:
            try:
                handler()
            except Exception as err:
                self.status = f"error: {err}"
                raise

        self.observe(react, names=names)

    def _handle_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or "kind" not in content:
            return
        arguments = {k: v for k, v in content.items() if k != "kind"}
        handler = getattr(self, f"_on_{content['kind']}", None)
        if handler is None:
            self.status = f"error: this view has no action {content['kind']!r}"
            return
        try:
            handler(**arguments)
        except Exception as err:  # shown where the student looks; a comm callback's traceback is hidden
            self.status = f"error: {err}"
            raise

    # -- static forms --------------------------------------------------------------------------------

    def figure(self) -> Figure:  # pragma: no cover - abstract
        """The current view as one matplotlib Figure (the PNG shown where no front end runs)."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The live widget where a front end can render it, plus a PNG of :meth:`figure` for everyone else."""
        data, metadata = super()._repr_mimebundle_(**kwargs)
        if not has_front_end(self):
            data.pop(WIDGET_VIEW_MIME, None)
        data["image/png"] = figure_png(self.figure())
        data["text/plain"] = repr(self)  # no object address: a stored notebook stays the same run to run
        return data, metadata

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status})" if self.status else f"{type(self).__name__}()"

    def synced_state(self) -> dict[str, Any]:
        """Every synced trait of the view (what the script reads), without the script and style."""
        skip = {"_esm", "_css", "_anywidget_id", "layout", "tabbable", "tooltip", "_dom_classes"}
        names = [
            name for name in self.trait_names(sync=True) if name not in skip and not name.startswith("_m")
        ]
        names = [name for name in names if not name.startswith("_view")]
        return {name: getattr(self, name) for name in names}

    def save_html(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write one self-contained HTML file of the current view: it opens offline, hovering included.

        Script, style and data are inline (bytes as base64); nothing is fetched. Controls that need the
        kernel (a new layer, a step of generation) are disabled in the saved page.
        """
        path = Path(path)
        state = {}
        for name, value in self.synced_state().items():
            if isinstance(value, bytes):
                value = {"$bytes": base64.b64encode(value).decode("ascii")}
            state[name] = value
        state["standalone"] = True
        page = _PAGE.format(
            title=html.escape(title or type(self).__name__),
            css=view_style(),
            state=_inline_json(state),
            script=_inline_json(self._esm),
        )
        path.write_text(page, encoding="utf-8")
        return path


def _inline_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element (``</`` cannot end it early)."""
    return json.dumps(value).replace("</", "<\\/")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px}}
{css}</style></head>
<body><div id="llama3-lab-view"></div>
<script type="module">
const state = {state};
const script = {script};
// The model a view script expects from anywidget, backed by the saved state (no kernel behind it).
const listeners = {{}};
function decode(value) {{
  if (value && typeof value === "object" && "$bytes" in value) {{
    const raw = atob(value.$bytes);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return new DataView(bytes.buffer);
  }}
  return value;
}}
for (const key of Object.keys(state)) state[key] = decode(state[key]);
const model = {{
  get: (name) => state[name],
  set: (name, value) => {{
    state[name] = value;
    for (const callback of listeners["change:" + name] || []) callback();
  }},
  save_changes: () => {{}},
  send: () => {{}},
  on: (event, callback) => {{ (listeners[event] = listeners[event] || []).push(callback); }},
  off: (event, callback) => {{
    listeners[event] = (listeners[event] || []).filter((c) => c !== callback);
  }},
}};
const url = URL.createObjectURL(new Blob([script], {{ type: "text/javascript" }}));
const view = (await import(url)).default;
view.render({{ model, el: document.getElementById("llama3-lab-view") }});
</script></body></html>
"""


def cached_run(
    model_or_cache: Any, tokens: Any, names_filter: Callable[[str], bool], *, needs: str
) -> tuple[Any, Any, list[int], list[str]]:
    """``(model, cache, ids, token_strings)`` from a model and a prompt, or from an existing cache.

    With a model, ``tokens`` (text, ids or a LongTensor) is run once through ``run_with_cache`` keeping only
    ``names_filter``'s hooks. With an :class:`~llama3_lab.hooks.ActivationCache`, ``tokens`` may give the
    display strings (default: the cache's own ids through the model's tokenizer). ``needs`` names what the
    explorer reads, for the error message.
    """
    from ..hooks import ActivationCache

    if isinstance(model_or_cache, ActivationCache):
        cache, model = model_or_cache, model_or_cache.model
        if cache.tokens is None:
            raise ValueError(
                "this ActivationCache does not record its input ids; run model.run_with_cache again."
            )
        ids = cache.tokens.reshape(-1).tolist() if cache.tokens.shape[0] == 1 else None
        if ids is None:
            raise ValueError(
                f"the cache holds a batch of {cache.tokens.shape[0]} sequences; explore one at a time "
                "(run_with_cache on a single prompt)."
            )
        strings = list(tokens) if tokens is not None and not isinstance(tokens, str) else None
    else:
        model = model_or_cache
        if not hasattr(model, "run_with_cache"):
            raise TypeError(
                f"expected a LlamaModel or an ActivationCache, got {type(model_or_cache).__name__}; "
                f"pass the model and a prompt, or a cache holding {needs}."
            )
        if tokens is None:
            raise ValueError("pass the prompt to explore: text, token ids or a LongTensor of ids.")
        ids_tensor = model.to_tokens(tokens)
        if ids_tensor.shape[0] != 1:
            raise ValueError(f"explore one sequence at a time, got a batch of {ids_tensor.shape[0]}.")
        import torch

        with torch.no_grad():
            _logits, cache = model.run_with_cache(ids_tensor, names_filter=names_filter)
        ids = ids_tensor[0].tolist()
        strings = None
    if strings is None:
        tokenizer = getattr(model, "tokenizer", None)
        strings = token_strings(tokenizer, ids)
    if len(strings) != len(ids):
        raise ValueError(f"got {len(strings)} token strings for {len(ids)} positions; pass one per position.")
    return model, cache, ids, strings
