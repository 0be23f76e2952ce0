"""RoPEExplorer: turn one rotary pair by hand: position, pair and θ sliders, Meta/Hugging Face layouts.

The frequencies and rotations come from the model's own code (``rope_inv_freq``, ``Rotary``,
``apply_rotary_complex``) through :mod:`llama3_lab.viz.rope`, so the picture is what the model computes.
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from ..config import LLAMA31_ROPE_SCALING, LlamaConfig
from ..viz.rope import inv_freq_of, rope_config, rope_rotation, rope_table
from ._base import Explorer, figure_png, image_view

SCALINGS: dict[str, dict[str, Any] | None] = {
    "none (Llama 3)": None,
    "llama3 ×8 (3.1)": dict(LLAMA31_ROPE_SCALING),
    "llama3 ×32 (3.2)": {**LLAMA31_ROPE_SCALING, "factor": 32.0},
}


class RoPEExplorer(Explorer):
    """Position, pair and θ sliders; head dim and scaling pickers; Hugging Face / Meta layout toggle.

    Two views: the chosen pair's unit vector rotated to every position up to ``position`` (with its angle
    against position), and the cos/sin tables for positions ``0..position`` in the chosen layout. The
    readout gives the pair's frequency, wavelength and angle at ``position``. ``cfg`` (e.g. a model's
    config) sets the starting θ, head dim and scaling.
    """

    def __init__(
        self,
        cfg: LlamaConfig | None = None,
        position: int = 64,
        pair: int = 0,
        max_position: int = 8192,
        convention: str = "hf",
    ) -> None:
        super().__init__()
        cfg = cfg or rope_config(5e5, 128)
        scaling_name = next((k for k, v in SCALINGS.items() if v == cfg.rope_scaling), "none (Llama 3)")
        self.position = widgets.IntSlider(
            value=position, min=1, max=max_position, description="position", continuous_update=False
        )
        self.pair = widgets.IntSlider(
            value=pair, min=0, max=cfg.head_dim // 2 - 1, description="pair i", continuous_update=False
        )
        self.theta = widgets.FloatLogSlider(
            value=cfg.rope_theta,
            base=10,
            min=3,
            max=7,
            step=0.05,
            description="θ",
            continuous_update=False,
            readout_format=".3g",
        )
        self.head_dim = widgets.Dropdown(options=[64, 128], value=cfg.head_dim, description="head dim")
        if cfg.head_dim not in self.head_dim.options:
            self.head_dim.options = sorted({64, 128, cfg.head_dim})
            self.head_dim.value = cfg.head_dim
        self.scaling = widgets.Dropdown(options=list(SCALINGS), value=scaling_name, description="scaling")
        self.convention = widgets.ToggleButtons(
            options=[("Hugging Face (i, i+d/2)", "hf"), ("Meta (2i, 2i+1)", "meta")],
            value=convention,
            description="layout",
        )
        self.readout = widgets.HTML()
        self.rotation_view = image_view()
        self.table_view = image_view()
        self._watch(self.position, self.pair, self.theta, self.scaling, self.convention)
        self.head_dim.observe(lambda _change: self._head_dim_changed(), names="value")
        self.children = [
            widgets.HBox([self.position, self.pair]),
            widgets.HBox([self.theta, self.head_dim, self.scaling]),
            self.convention,
            self.readout,
            self.rotation_view,
            self.table_view,
            self.status,
        ]
        self.redraw()

    @property
    def config(self) -> LlamaConfig:
        """A config carrying just the RoPE the controls describe."""
        return rope_config(self.theta.value, self.head_dim.value, SCALINGS[self.scaling.value])

    @property
    def inv_freq(self) -> np.ndarray:
        """Inverse frequencies [d/2] of the current RoPE (the model's ``rope_inv_freq``)."""
        return inv_freq_of(self.config)

    def _head_dim_changed(self) -> None:
        with self.hold():
            self.pair.max = self.head_dim.value // 2 - 1

    def cos_sin(self) -> tuple[Any, Any]:
        """The model's cos/sin tables [P, d] for positions ``0..position`` (``Rotary(cfg)(0, P)``)."""
        from ..model import Rotary

        return Rotary(self.config)(0, self.position.value + 1)

    def _draw(self) -> None:
        cfg, pair, position = self.config, self.pair.value, self.position.value
        frequency = float(self.inv_freq[pair])
        wavelength = 2 * math.pi / frequency
        angle = math.fmod(position * frequency, 2 * math.pi)
        self.readings = {
            "pair": pair,
            "position": position,
            "frequency": frequency,
            "wavelength": wavelength,
            "angle": angle,
            "convention": self.convention.value,
            "theta": cfg.rope_theta,
        }
        self.readout.value = (
            f"pair {pair} (dims {2 * pair}, {2 * pair + 1} in Meta's layout; "
            f"{pair}, {pair + cfg.head_dim // 2} in Hugging Face's): frequency {frequency:.4g} rad/token, "
            f"wavelength {wavelength:,.4g} tokens; "
            f"at position {position:,} it has turned {angle:.3f} rad (mod 2π)."
        )
        self.rotation_view.value = figure_png(self._rotation_figure())
        cos, sin = self.cos_sin()
        self.table_view.value = figure_png(
            rope_table(cos, sin, convention=self.convention.value, title=f"cos/sin, positions 0..{position}")
        )

    def _rotation_figure(self) -> Figure:
        # Past a few hundred positions the scatter becomes a smear: sample the positions evenly instead.
        last = self.position.value
        positions = np.unique(np.linspace(0, last, min(last + 1, 256)).round().astype(int))
        return rope_rotation(
            self.pair.value,
            positions,
            source=self.config,
            title=f"pair {self.pair.value}, θ={self.theta.value:.3g}",
        )

    def _status_text(self) -> str:
        return f"pair {self.pair.value}, position {self.position.value}, θ={self.theta.value:.3g}"

    def figure(self) -> Figure:
        """The rotation of the chosen pair up to the chosen position."""
        return self._rotation_figure()
