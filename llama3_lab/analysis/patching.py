"""Activation patching: run a corrupted prompt, paste in one activation from the clean run, measure.

If pasting the clean residual at (layer, position) restores the clean behaviour, the information that
matters sits there. ``metric(logits) -> float`` says what "behaviour" is, e.g. ``logit_diff_metric``
(the rows' mean of ``logit_diff``, one value per row, at one column or at each row's own answer column).
Each cell is one forward; patching a run with its own activations changes nothing (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..hook_points import get_act_name
from ..hooks import HookedRootModule
from ..tokens import TokenBatch, TokensLike, model_input

Metric = Callable[[torch.Tensor], torch.Tensor | float]
#: one column for every row, or ``[B]`` columns (e.g. ``batch.last_index``: each row's answer position)
Columns = int | torch.Tensor


def logit_diff(
    logits: torch.Tensor, answer: int | torch.Tensor, wrong: int | torch.Tensor, pos: Columns = -1
):
    """``[B]``: ``logits[b, pos_b, answer_b] − logits[b, pos_b, wrong_b]``, one value per row.

    ``answer``/``wrong``: an id or one id per row; ``pos``: a column or one column per row (in a
    right-padded batch, ``batch.last_index`` is each row's last real token)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    pos = torch.as_tensor(pos, device=logits.device).expand(logits.shape[0])
    at = logits[rows, pos]  # b v
    answer = torch.as_tensor(answer, device=logits.device).expand(logits.shape[0])
    wrong = torch.as_tensor(wrong, device=logits.device).expand(logits.shape[0])
    return at[rows, answer] - at[rows, wrong]


def logit_diff_metric(answer: int | torch.Tensor, wrong: int | torch.Tensor, pos: Columns = -1) -> Metric:
    """``logits -> logit_diff(logits, answer, wrong, pos)`` averaged over the batch (the rows' mean)."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits, answer, wrong, pos).mean()

    return metric


def _clean_activations(
    model: HookedRootModule, tokens: torch.Tensor | TokenBatch, names: list[str]
) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return dict(cache.items())


def _real(inputs: torch.Tensor | TokenBatch) -> torch.Tensor:
    """``[B, P]`` True at real tokens."""
    if isinstance(inputs, TokenBatch):
        return inputs.mask
    return torch.ones(inputs.shape, dtype=torch.bool, device=inputs.device)


def _patch_pairs(
    model: HookedRootModule,
    clean: TokensLike,
    corrupted: TokensLike,
    position_map: Mapping[int, int] | None,
) -> tuple[torch.Tensor | TokenBatch, torch.Tensor | TokenBatch, Callable[[int], int]]:
    """Both batches (right-padded when ragged) and ``source(position)``: the clean column pasted into
    corrupted column ``position``. Refuses pairs whose rows differ in length without a ``position_map``
    and maps that send a real corrupted token to a clean pad or outside the clean prompt."""
    clean_in, corrupted_in = model_input(model, clean), model_input(model, corrupted)
    clean_real, corrupted_real = _real(clean_in), _real(corrupted_in)
    if clean_real.shape[0] != corrupted_real.shape[0]:
        raise ValueError(
            f"clean has {clean_real.shape[0]} prompts and corrupted {corrupted_real.shape[0]}: "
            "patching pairs them row by row, so give as many of each."
        )
    if position_map is None:
        if clean_real.shape != corrupted_real.shape or not torch.equal(clean_real, corrupted_real):
            raise ValueError(
                f"Clean and corrupted prompts differ in length (tokens per row {clean_real.sum(1).tolist()} "
                f"and {corrupted_real.sum(1).tolist()}), so position i of one is not position i of the "
                "other: make each pair the same length in tokens, or pass position_map={corrupted_position: "
                "clean_position} saying which clean token each patched position takes."
            )
        return clean_in, corrupted_in, lambda position: position
    P_clean, P_corrupted = clean_real.shape[1], corrupted_real.shape[1]
    for target, source in position_map.items():
        if not (0 <= target < P_corrupted and 0 <= source < P_clean):
            raise ValueError(
                f"position_map sends corrupted position {target} to clean position {source}, but the "
                f"corrupted prompts have positions 0..{P_corrupted - 1} and the clean ones 0..{P_clean - 1}: "
                "map positions that exist (count from 0; negative positions are not accepted here)."
            )
        bad = (corrupted_real[:, target] & ~clean_real[:, source]).nonzero()[:, 0].tolist()
        if bad:
            raise ValueError(
                f"position_map sends corrupted position {target} to clean position {source}, which is "
                f"padding in rows {bad} (their clean prompt is shorter): map each real token to a real "
                "clean token."
            )
    return clean_in, corrupted_in, lambda position: position_map.get(position, position)


def _check_source(position: int, source: int, n_clean: int) -> None:
    if not 0 <= source < n_clean:
        raise ValueError(
            f"corrupted position {position} has no clean position to take (the clean prompts have "
            f"{n_clean} positions): add it to position_map, or leave it out of positions."
        )


@torch.no_grad()
def patch_resid(
    model: HookedRootModule,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    act: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    position_map: Mapping[int, int] | None = None,
) -> torch.Tensor:
    """``[L, P]``: ``metric`` of the corrupted run with the clean ``act`` (default ``resid_pre``) pasted in
    at one (layer, position) per cell. ``layers``/``positions`` restrict the grid (rows/columns follow them).

    Batches of prompts of different lengths are right-padded; each clean/corrupted pair must have the
    same length, or ``position_map`` ``{corrupted position: clean position}`` says where each pasted
    activation comes from (unmapped positions take the same position).
    """
    clean_ids, corrupted_ids, source = _patch_pairs(model, clean, corrupted, position_map)
    n_clean = _real(clean_ids).shape[1]
    layers = list(range(model.cfg.num_hidden_layers)) if layers is None else list(layers)  # type: ignore[attr-defined]
    positions = list(range(_real(corrupted_ids).shape[1])) if positions is None else list(positions)
    names = [get_act_name(act, layer) for layer in layers]
    saved = _clean_activations(model, clean_ids, names)
    result = torch.zeros(len(layers), len(positions))
    for row, name in enumerate(names):
        for col, position in enumerate(positions):
            _check_source(position, source(position), n_clean)

            def paste(resid: torch.Tensor, hook, name=name, position=position) -> torch.Tensor:
                resid = resid.clone()
                resid[:, position] = saved[name][:, source(position)]
                return resid

            result[row, col] = float(metric(model.run_with_hooks(corrupted_ids, [(name, paste)])))
    return result


@torch.no_grad()
def patch_head_z(
    model: HookedRootModule,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    position_map: Mapping[int, int] | None = None,
) -> torch.Tensor:
    """``[L, H]``: ``metric`` of the corrupted run with one head's clean output ``z`` pasted in (at every
    position, or only at ``positions``). Batches and ``position_map`` as in ``patch_resid``."""
    clean_ids, corrupted_ids, source = _patch_pairs(model, clean, corrupted, position_map)
    n_clean = _real(clean_ids).shape[1]
    layers = list(range(model.cfg.num_hidden_layers)) if layers is None else list(layers)  # type: ignore[attr-defined]
    targets = list(range(_real(corrupted_ids).shape[1])) if positions is None else list(positions)
    if position_map is None and positions is None:
        targets_index = sources_index = slice(None)
    else:
        for position in targets:
            _check_source(position, source(position), n_clean)
        targets_index = torch.as_tensor(targets)
        sources_index = torch.as_tensor([source(p) for p in targets])
    names = [get_act_name("z", layer) for layer in layers]
    saved = _clean_activations(model, clean_ids, names)
    n_heads = model.cfg.num_attention_heads  # type: ignore[attr-defined]
    result = torch.zeros(len(layers), n_heads)
    for row, name in enumerate(names):
        for head in range(n_heads):

            def paste(z: torch.Tensor, hook, name=name, head=head) -> torch.Tensor:
                z = z.clone()  # b p h d
                z[:, targets_index, head] = saved[name][:, sources_index, head]
                return z

            result[row, head] = float(metric(model.run_with_hooks(corrupted_ids, [(name, paste)])))
    return result
