"""ConfigExplorer: pick a Llama 3 model, slide the sequence length and batch, read what it costs.

The models offered are :data:`llama3_lab.known_configs.KNOWN_CONFIGS`. Every number comes from
:class:`~llama3_lab.config.LlamaConfig` (``parameter_breakdown``, ``weights_bytes``,
``kv_cache_bytes``, ``activation_bytes``); the explorer only chooses which config and which sizes to ask
about.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
from matplotlib.figure import Figure

from ..config import LlamaConfig
from ..known_configs import KNOWN_CONFIGS, known_config
from ..units import format_bytes
from ..viz import config_breakdown
from ..viz._common import bare_figure
from ._base import Explorer, figure_png, image_view

DTYPES = ("bf16", "fp16", "fp32", "fp8")
SEQ_LENGTHS = tuple(2**k for k in range(7, 18))  # 128 .. 131072


class ConfigExplorer(Explorer):
    """Model picker plus sequence-length, batch and dtype controls → parameters and memory.

    ``configs`` maps display names to :class:`LlamaConfig` (default: :data:`KNOWN_CONFIGS`). The current
    figures are in :attr:`numbers` (ints, bytes where the name says so), and shown as a table and, when
    :mod:`llama3_lab.viz` has it, the ``config_breakdown`` figure.
    """

    def __init__(
        self,
        configs: dict[str, LlamaConfig] | None = None,
        model: str = "Llama 3 8B",
        seq_len: int = 8192,
        batch: int = 1,
        dtype: str = "bf16",
    ) -> None:
        super().__init__()
        self.configs = configs or {name: known_config(name) for name in KNOWN_CONFIGS}
        if model not in self.configs:
            raise KeyError(f"unknown model {model!r}; choose one of {sorted(self.configs)}.")
        self.model = widgets.Dropdown(options=list(self.configs), value=model, description="model")
        self.seq_len = widgets.SelectionSlider(
            options=self._lengths_for(self.configs[model]), description="sequence", continuous_update=False
        )
        self.seq_len.value = min(self.seq_len.options, key=lambda n: abs(n - seq_len))
        self.batch = widgets.IntSlider(
            value=batch, min=1, max=64, description="batch", continuous_update=False
        )
        self.dtype = widgets.ToggleButtons(options=DTYPES, value=dtype, description="dtype")
        self.dtype.style.button_width = "56px"
        self.table = widgets.HTML()
        self.breakdown = image_view()
        self.numbers: dict[str, int] = {}
        self._watch(self.seq_len, self.batch, self.dtype)
        self.model.observe(lambda _change: self._model_changed(), names="value")
        self.children = [
            widgets.HBox([self.model, self.dtype]),
            widgets.HBox([self.seq_len, self.batch]),
            self.table,
            self.breakdown,
            self.status,
        ]
        self.redraw()

    @property
    def config(self) -> LlamaConfig:
        """The config of the model currently picked."""
        return self.configs[self.model.value]

    @staticmethod
    def _lengths_for(cfg: LlamaConfig) -> list[int]:
        lengths = [n for n in SEQ_LENGTHS if n < cfg.max_position_embeddings]
        return lengths + [cfg.max_position_embeddings]

    def _model_changed(self) -> None:
        with self.hold():
            current = self.seq_len.value
            self.seq_len.options = self._lengths_for(self.config)
            self.seq_len.value = min(self.seq_len.options, key=lambda n: abs(n - current))

    def compute(self) -> dict[str, int]:
        """Parameters and bytes for the current controls, all from the config's own methods."""
        cfg, T, B, dtype = self.config, self.seq_len.value, self.batch.value, self.dtype.value
        parts = cfg.parameter_breakdown()
        activations = cfg.activation_bytes(T, B, dtype)
        return {
            "parameters": parts["total"],
            "embedding_parameters": parts["embedding"] + parts["unembedding"],
            "layer_parameters": parts["all_layers"],
            "weights_bytes": cfg.weights_bytes(dtype),
            "kv_cache_bytes": cfg.kv_cache_bytes(T, B, dtype),
            "kv_cache_bytes_per_token": cfg.kv_cache_bytes_per_token(dtype),
            "attention_pattern_bytes": cfg.attention_pattern_bytes(T, B, dtype),
            "activation_bytes": activations["total"],
        }

    def _draw(self) -> None:
        self.numbers = self.compute()
        self.table.value = self._table_html()
        self.breakdown.value = figure_png(self.figure())

    def _status_text(self) -> str:
        return f"{self.model.value}, T={self.seq_len.value:,}, batch {self.batch.value}, {self.dtype.value}"

    def _table_html(self) -> str:
        n, T, B = self.numbers, self.seq_len.value, self.batch.value
        rows = [
            ("parameters", f"{n['parameters']:,}", f"embedding + unembedding {n['embedding_parameters']:,}"),
            (
                "weights",
                format_bytes(n["weights_bytes"], digits=2),
                f"{self.dtype.value}, all parameters once",
            ),
            (
                "KV cache",
                format_bytes(n["kv_cache_bytes"], digits=2),
                f"{format_bytes(n['kv_cache_bytes_per_token'], digits=2)} per token × {T:,} tokens "
                f"× batch {B}",
            ),
            (
                "attention patterns",
                format_bytes(n["attention_pattern_bytes"], digits=2),
                "every layer's [B,H,T,T] pattern",
            ),
            (
                "full activation cache",
                format_bytes(n["activation_bytes"], digits=2),
                "every hook of one forward",
            ),
        ]
        body = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(name)}</th>"
            f"<td style='text-align:right;padding-right:1em'>{html.escape(value)}</td>"
            f"<td style='color:#555'>{html.escape(note)}</td></tr>"
            for name, value, note in rows
        )
        return f"<table class='llama3-lab-config'>{body}</table>"

    def figure(self) -> Figure:
        """``viz.config_breakdown`` of the current model and dtype, the chosen sequence length marked."""
        fig = bare_figure((9.0, 3.4))
        param_ax, memory_ax = fig.subplots(1, 2, width_ratios=(1, 1.2))
        config_breakdown(
            self.config,
            axes=(param_ax, memory_ax),
            dtype=self.dtype.value,
            title=self.model.value,
            batch=self.batch.value,
        )
        memory_ax.axvline(self.seq_len.value, color="#c44e52", linewidth=1.2, linestyle="-.")
        memory_ax.text(
            self.seq_len.value,
            0.02,
            f" T={self.seq_len.value:,}",
            color="#dd8452",
            fontsize=7,
            transform=memory_ax.get_xaxis_transform(),
        )
        return fig
