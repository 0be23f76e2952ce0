"""Splicing an SAE (or transcoder) into a model: the activation at a hook point is replaced by its
reconstruction, and the SAE's own hook points become hook points of the model.

    with model_with_sae(model, sae, use_error_term=True):
        logits, cache = model.run_with_cache(tokens)
        features = cache["blocks.5.hook_resid_post.sae.hook_sae_acts_post"]

The SAE becomes the child ``sae`` of the hook point it reads (``blocks.5.hook_resid_post.sae``), so its points
are named by the module tree like every other (``...sae.hook_sae_acts_pre``, ``hook_sae_acts_post``,
``hook_sae_recons``, ``hook_sae_error``, ``hook_sae_output``: SAELens's leaf names), appear in
``hook_dict``/``hook_catalogue()`` while attached and leave with it; ``run_with_cache``, ``model.hooks``,
patching, ablation, steering and ``llama3_lab.gradients`` reach features through them.

The replacement is a forward pre-hook on the host point, so every hook on the host's own name sees (and may
change) what the rest of the model reads, the SAE's output; ``model.reset_hooks()`` leaves it in place.

With the error term, the output is ``recons + error``, ``error = x − clean reconstruction``: the model's
logits are unchanged (to round-off), while an edit of the features (ablation, steering at
``hook_sae_acts_post``) moves the output by exactly what it moves the reconstruction. The clean
reconstruction is computed again without hooks whenever a feature hook is set or gradients are recorded,
so the error never absorbs an edit (SAELens issues 84, 326) and gradients are the model's own:
d output / d x = I, d output / d features = W_dec (SAELens detaches the error, which drops the first).

A transcoder (``cfg.hook_name`` → ``cfg.hook_name_out``) is the child ``transcoder`` of its output point: its
input is kept as the forward passes ``hook_name`` and everything else happens at ``hook_name_out``,
whose activation it replaces; its error term is ``true output − clean reconstruction``.

An SAE at ``attn.hook_z`` [B P H d] reads the heads flattened head-major (``b p h d -> b p (h d)``), as
SAELens does; its hook points see ``[B P H·d]`` and the host gets ``[B P H d]`` back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hook_points import HookPoint, _hook, is_hooked
from ..hooks import HookedRootModule
from ..memory import axis_sizes
from .sae import SAE


class SpliceError(ValueError):
    """An SAE that cannot be spliced where asked; the message says what does not fit and what to do."""


@dataclass
class Splice:
    """One SAE spliced into one model (what ``attach_sae`` returns and ``detach_sae`` undoes)."""

    model: HookedRootModule
    sae: SAE
    hook_name: str
    hook_name_out: str  # == hook_name for an SAE
    use_error_term: bool
    handles: list[Any] = field(default_factory=list)
    _inputs: threading.local = field(default_factory=threading.local)  # a transcoder's input, per thread

    @property
    def child_name(self) -> str:
        return _child_name(self.sae)

    @property
    def prefix(self) -> str:
        """``blocks.5.hook_resid_post.sae``: the prefix of the SAE's hook points in the model."""
        return f"{self.hook_name_out}.{self.child_name}"


def _child_name(sae: SAE) -> str:
    return "transcoder" if sae.cfg.is_transcoder else "sae"


def sae_hook_name(sae: SAE, leaf: str = "hook_sae_acts_post") -> str:
    """The model's name for one of ``sae``'s hook points when it is spliced where its cfg says:
    ``blocks.5.hook_resid_post.sae.hook_sae_acts_post`` (``...hook_mlp_out.transcoder...``: a transcoder)."""
    return f"{sae.cfg.replaced_hook}.{_child_name(sae)}.{leaf}"


def spliced_saes(model: HookedRootModule) -> dict[str, Splice]:
    """``{host hook name: Splice}`` of every SAE spliced into ``model`` (keyed by the replaced point)."""
    return model.__dict__.setdefault("_sae_splices", {})


def attach_sae(
    model: HookedRootModule,
    sae: SAE,
    hook_name: str | None = None,
    *,
    use_error_term: bool = False,
    hook_name_out: str | None = None,
) -> Splice:
    """Splice ``sae`` into ``model`` at ``hook_name`` (default ``sae.cfg.hook_name``) until ``detach_sae``.

    Prefer ``with model_with_sae(model, sae):``, which detaches on every exit path. ``use_error_term``: add
    ``input − clean reconstruction`` so the model computes what it computed without the SAE.
    """
    cfg = sae.cfg
    name_in = model._check_name(hook_name or cfg.hook_name or _no_hook_name(sae))
    name_out = name_in
    if cfg.is_transcoder:
        name_out = model._check_name(
            hook_name_out or cfg.hook_name_out or _no_hook_name(sae, "hook_name_out")
        )
    splices = spliced_saes(model)
    if name_out in splices:
        raise SpliceError(
            f"{name_out} already has an SAE spliced in ({splices[name_out].sae.extra_repr()}): detach it "
            "first (detach_sae(model, name)) or splice this one at another hook point."
        )
    if any(splice.sae is sae for splice in splices.values()):
        raise SpliceError("this SAE is already spliced into the model: one SAE object sits at one place.")
    _check_size(model, name_in, cfg.d_in, "d_in", sae)
    _check_size(model, name_out, cfg.output_size, "d_out" if cfg.is_transcoder else "d_in", sae)
    splice = Splice(model, sae, name_in, name_out, use_error_term)
    host = model.hook_dict[name_out]
    host.add_module(splice.child_name, sae)
    if cfg.is_transcoder:
        splice.handles.append(model.hook_dict[name_in].register_forward_pre_hook(_keep_input(splice)))
    splice.handles.append(host.register_forward_pre_hook(_replace(splice)))
    splices[name_out] = splice
    model.rescan_hook_points()
    return splice


def detach_sae(model: HookedRootModule, which: str | SAE | Splice) -> SAE:
    """Remove a spliced SAE (by host hook name, by the SAE itself or by its ``Splice``); returns the SAE."""
    splices = spliced_saes(model)
    key = next(
        (name for name, s in splices.items() if which in (name, s.hook_name) or which is s.sae or which is s),
        None,
    )
    if key is None:
        attached = ", ".join(splices) or "none"
        raise SpliceError(f"no SAE spliced at {which!r} in this model (spliced: {attached}).")
    splice = splices.pop(key)
    for handle in splice.handles:
        handle.remove()
    delattr(model.get_submodule(splice.hook_name_out), splice.child_name)
    model.rescan_hook_points()
    for name, point in splice.sae.hook_points().items():
        point.name = name
    return splice.sae


@contextmanager
def model_with_sae(
    model: HookedRootModule, *saes: SAE, use_error_term: bool = False
) -> Iterator[HookedRootModule]:
    """``with model_with_sae(model, sae_a, sae_b):`` splices each SAE at its ``cfg.hook_name`` for the block
    and detaches all of them on every exit path (an error, an interrupt, an early ``return``)."""
    with ExitStack() as stack:
        for sae in saes:
            attach_sae(model, sae, use_error_term=use_error_term)
            stack.callback(detach_sae, model, sae)
        yield model


# -- the replacement ---------------------------------------------------------------------------------------


def _keep_input(splice: Splice):
    def keep(_module: HookPoint, args: tuple[torch.Tensor, ...]) -> None:
        splice._inputs.value = args[0]

    keep.splice = True  # part of the model until detached: reset_hooks() leaves it
    return keep


def _replace(splice: Splice):
    sae = splice.sae

    def replace(_module: HookPoint, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        target = args[0]
        if sae.cfg.is_transcoder:
            source = getattr(splice._inputs, "value", None)
            if source is None:
                raise SpliceError(
                    f"the transcoder at {splice.hook_name_out} did not see its input {splice.hook_name} in "
                    "this forward: the input hook must run before the output hook."
                )
            splice._inputs.value = None
        else:
            source = target
        return (spliced_output(sae, source, target, splice.use_error_term),)

    replace.splice = True  # part of the model until detached: reset_hooks() leaves it
    return replace


def spliced_output(
    sae: SAE, source: torch.Tensor, target: torch.Tensor, use_error_term: bool
) -> torch.Tensor:
    """What the model reads at the host point: the reconstruction (+ error) of ``target`` from ``source``
    (the same tensor for an SAE; the MLP's input and output for a transcoder), in the host's shape/dtype."""
    flat_source = source.flatten(2) if source.ndim > 3 else source  # b p h d -> b p (h d)
    sae_in = _hook(sae.hook_sae_input, flat_source)
    recons = sae.decode(sae.encode(sae_in), input=sae_in)
    if use_error_term:
        flat_target = (
            sae_in if not sae.cfg.is_transcoder else target.flatten(2) if target.ndim > 3 else target
        )
        edited = any(
            is_hooked(p) for p in (sae.hook_sae_acts_pre, sae.hook_sae_acts_post, sae.hook_sae_recons)
        )
        clean = sae.reconstruct_unhooked(sae_in) if edited or recons.requires_grad else recons
        recons = recons + _hook(sae.hook_sae_error, flat_target.to(recons.dtype) - clean)
    out = _hook(sae.hook_sae_output, recons)
    return out.reshape(target.shape).to(target.dtype)


def hook_width(model: HookedRootModule, name: str) -> int:
    """How many numbers per token hook point ``name`` holds (``H·d`` for ``hook_z``): an SAE's d_in there."""
    point = model.hook_dict[name]
    letters = point.shape.split()
    if letters[:2] != ["B", "P"] or any(letter in ("P", "Pq", "Pk") for letter in letters[2:]):
        raise SpliceError(
            f"{name} has shape {point.shape!r}: an SAE reads one vector per token ([B P ...]), so it can be "
            "spliced at the residual stream, attention/MLP outputs, hook_z, MLP activations or norm outputs."
        )
    sizes = axis_sizes(model.cfg, 1, 1, 1)
    return math.prod(int(a) if a.isdigit() else sizes[a] for a in letters[2:])


def _check_size(model: HookedRootModule, name: str, size: int, field_name: str, sae: SAE) -> None:
    width = hook_width(model, name)
    if width != size:
        raise SpliceError(
            f"the SAE's {field_name} is {size}, but {name} ({model.hook_dict[name].shape}) holds {width} "
            f"numbers per token: it was trained on another hook point or model. Its cfg.json names "
            f"{sae.cfg.hook_name!r}; splice it at a hook point of that width (hook_name=...)."
        )


def _no_hook_name(sae: SAE, field_name: str = "hook_name") -> str:
    raise SpliceError(
        f"the SAE's cfg has no {field_name}, so it does not say where it reads: pass {field_name}=... "
        "(e.g. 'blocks.5.hook_resid_post')."
    )
