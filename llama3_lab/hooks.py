"""Hook points: identity modules placed where each tensor is born.

A ``HookPoint`` does nothing by itself; its name comes from where it sits in the module tree
(``blocks.3.attn.hook_pattern``), so names are never repeated by hand. Registering hooks, caching
activations and the memory budget build on this (see ``HookedRootModule``).
"""

from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Module):
    """An identity module marking an intermediate tensor.

    ``shape`` names the axes in the TransformerLens letters (``"B P H d"``) and ``meaning`` says what
    the tensor is; both feed ``hook_catalogue()``. ``name`` is filled in by the root module from the
    module tree.
    """

    def __init__(self, shape: str = "", meaning: str = "") -> None:
        super().__init__()
        self.shape = shape
        self.meaning = meaning
        self.name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.shape}: {self.meaning}" if self.shape else ""


class HookedRootModule(nn.Module):
    """Base for a model whose hook points are named by the module tree.

    Call ``setup_hooks()`` at the end of ``__init__``.
    """

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_names(self) -> list[str]:
        """Every hook point's name, in the order the forward reaches them."""
        return list(self.hook_dict)
