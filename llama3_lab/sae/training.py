"""Training an SAE (TopK by default) on a model's activations, on CPU, streaming.

    loss = |x − x̂|² / E|x − x̄|²                         (normalised MSE, the scale-free reconstruction loss)
         + aux_coefficient · |e − ê_dead|² / |e|²       (TopK: AuxK, the error e = x − x̂ rebuilt from the
                                                        k_aux largest dead features, which revives them)
         + l1_coefficient · Σ f · |W_dec row|            (standard ReLU SAEs only)

Inputs are scaled by ``c = sqrt(d_in) / E|x|`` while training (``expected_average_only_in``, measured on the
first buffer) and the factor is folded into the weights at the end, so the saved SAE has
``normalize_activations = "none"`` and reads the raw activations, as SAELens saves its own. Decoder rows are
kept at unit norm after every step. ``checkpoint_dir``: an SAE (``save_sae``) and ``trainer_state.pt``
(optimizer, step, tokens and texts read) every ``checkpoint_every`` steps; training again with the same
directory resumes from the next unread text (the activations that sat in the shuffle buffer are not replayed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..assets import atomic_path
from ..hooks import HookedRootModule
from .activations import ShuffleBuffer, activation_stream
from .config import SAEConfig
from .files import load_sae, save_sae
from .metrics import ReconstructionStats
from .sae import SAE
from .splice import hook_width

STATE_FILENAME = "trainer_state.pt"
TRAINABLE = ("topk", "standard", "topk_transcoder", "transcoder")


@dataclass
class TrainingResult:
    """The trained SAE and how training went (``history``: one row per logged step)."""

    sae: SAE
    tokens_read: int  # activations taken from the model
    tokens_trained: int  # rows trained on (each activation about 2 × reuse times)
    steps: int
    seconds: float
    texts_read: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0


def train_sae(
    model: HookedRootModule,
    hook_name: str,
    texts: Sequence[str],
    *,
    d_sae: int | None = None,
    k: int = 32,
    architecture: str = "topk",
    hook_name_out: str | None = None,
    n_tokens: int = 100_000,
    max_seconds: float | None = None,
    reuse: int = 2,
    batch_size: int = 512,
    lr: float = 2e-3,
    context_length: int = 128,
    contexts_per_forward: int = 8,
    buffer_tokens: int = 16_384,
    aux_coefficient: float = 1 / 32,
    dead_after_tokens: int = 20_000,
    l1_coefficient: float = 5.0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    seed: int = 0,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> TrainingResult:
    """Train an SAE at ``hook_name`` (a transcoder to ``hook_name_out``) on the activations of ``texts``.

    ``d_sae`` defaults to 4 × d_in; ``k`` is TopK's features per token. Reads ``n_tokens`` activations
    (passing over ``texts`` again from the start if they run out) or stops after ``max_seconds``; each
    activation is trained on about 2 × ``reuse`` times (see ``ShuffleBuffer``). Returns the SAE with its
    normalisation folded into the weights.
    """
    if architecture not in TRAINABLE:
        raise ValueError(
            f"train_sae trains {', '.join(TRAINABLE)} SAEs, not {architecture!r}; JumpReLU SAEs need a "
            "straight-through threshold estimator: train one with SAELens and load it with load_sae."
        )
    transcoder = architecture.endswith("transcoder")
    if transcoder and not hook_name_out:
        raise ValueError("a transcoder reads hook_name and writes hook_name_out: give hook_name_out=...")
    names = [model._check_name(hook_name)] + ([model._check_name(hook_name_out)] if transcoder else [])
    widths = [hook_width(model, name) for name in names]
    d_in, d_out = widths[0], widths[-1]
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae or 4 * d_in,
        architecture=architecture,
        k=k if architecture.startswith("topk") else None,
        hook_name=names[0],
        d_out=d_out if transcoder else None,
        hook_name_out=names[-1] if transcoder else "",
        model_name=getattr(getattr(model, "cfg", None), "name_or_path", "") or "",
    )
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = _resume(checkpoint, cfg) if checkpoint is not None else None
    sae = state["sae"] if state else SAE(cfg, seed=seed)
    sae.requires_grad_(True)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    if state:
        optimizer.load_state_dict(state["optimizer"])
    step, tokens = (state["step"], state["tokens"]) if state else (0, 0)
    tokens_read, texts_read = (state["tokens_read"], state["texts_read"]) if state else (0, 0)
    last_fired = state["last_fired"] if state else torch.zeros(cfg.d_sae, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed + step)
    buffer = ShuffleBuffer(buffer_tokens, generator)
    bar = _progress(n_tokens, tokens_read) if progress else None
    history: list[dict[str, float]] = []
    started, resumed_from = time.perf_counter(), step

    def train_on(batch: torch.Tensor) -> None:
        nonlocal step, tokens
        x, target = (batch[:, :d_in], batch[:, d_in:]) if transcoder else (batch, batch)
        if step == 0 and not transcoder:
            _initialise(sae, x)
        dead = (tokens - last_fired) > dead_after_tokens
        row = _step(sae, optimizer, x, target, dead, aux_coefficient, l1_coefficient)
        fired = row.pop("_fired")
        step, tokens = step + 1, tokens + len(x)
        last_fired[fired] = tokens
        row.update(step=step, tokens=tokens, dead_fraction=dead.float().mean().item())
        history.append(row)
        if on_step is not None:
            on_step(row)
        if bar is not None:
            bar.set_postfix(ev=f"{row['explained_variance']:.3f}", l0=f"{row['l0']:.0f}")
        if checkpoint is not None and step % checkpoint_every == 0:
            _save_checkpoint(checkpoint, sae, optimizer, step, tokens, read, texts_read, last_fired)

    def done() -> bool:
        over_time = max_seconds is not None and time.perf_counter() - started > max_seconds
        return read >= n_tokens or over_time

    def train_on_buffer() -> None:
        for _ in range(reuse):
            for batch in buffer.batches(batch_size):
                train_on(batch)
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    return

    read = tokens_read
    try:
        while not done():
            stream = activation_stream(
                model, names, texts, context_length, contexts_per_forward, start_text=texts_read
            )
            rows = None
            for texts_read, rows in stream:  # noqa: B007
                buffer.add(rows)
                read += len(rows)
                if bar is not None:
                    bar.update(len(rows))
                if buffer.full:
                    train_on_buffer()
                    buffer.drop_oldest()
                if done():
                    break
            else:
                if rows is None:
                    raise ValueError(
                        f"the texts hold fewer than {context_length} tokens: nothing to train on. Give more "
                        "text or a shorter context_length."
                    )
                texts_read = 0  # the corpus ended: the next pass starts from the first text
            if done() and buffer.rows is not None and step == 0:
                train_on_buffer()  # fewer tokens than one buffer: train on what there is
        tokens_read = read
    finally:
        if bar is not None:
            bar.close()
    sae.requires_grad_(False)
    if checkpoint is not None:
        _save_checkpoint(checkpoint, sae, optimizer, step, tokens, tokens_read, texts_read, last_fired)
    fold_normalization(sae)
    seconds = time.perf_counter() - started
    return TrainingResult(sae, tokens_read, tokens, step, seconds, texts_read, history, resumed_from)


@torch.no_grad()
def _initialise(sae: SAE, x: torch.Tensor) -> None:
    """Scale inputs to mean norm sqrt(d_in) and start b_dec at their mean (in the scaled space)."""
    factor = sae.cfg.d_in**0.5 / x.norm(dim=-1).mean().item()
    sae.cfg.normalize_activations, sae.cfg.norm_scaling_factor = "expected_average_only_in", factor
    sae.b_dec.copy_((x * factor).mean(0))


def _step(
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    target: torch.Tensor,
    dead: torch.Tensor,
    aux_coefficient: float,
    l1_coefficient: float,
) -> dict:
    pre = sae.pre_activations(x)
    features = sae.activation(pre)
    x_hat = sae.decode_unhooked(features, input=x)
    scale = sae.cfg.norm_scaling_factor or 1.0
    error = (target - x_hat) * scale  # in the normalised space, so the loss is scale-free
    variance = ((target - target.mean(0)) * scale).pow(2).sum(-1).mean()
    mse = error.pow(2).sum(-1).mean() / variance
    loss = mse
    aux = torch.zeros(())
    if sae.cfg.activation == "topk" and aux_coefficient and dead.any():
        k_aux = min(int(dead.sum()), max(sae.cfg.d_in // 2, 1))
        dead_pre = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        dead_features = torch.zeros_like(pre).scatter(-1, dead_pre.indices, torch.relu(dead_pre.values))
        rebuilt = dead_features @ sae.W_dec  # the error, from dead features only (no bias)
        e = error.detach()
        aux = (e - rebuilt).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-12)
        loss = loss + aux_coefficient * torch.nan_to_num(aux)
    if sae.cfg.activation == "relu" and l1_coefficient:
        loss = loss + l1_coefficient * (features * sae.W_dec.norm(dim=-1)).sum(-1).mean() / sae.cfg.d_in**0.5
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        residual = (target - x_hat).double()
        total = (target - target.mean(0)).double().pow(2).sum()
        explained = 1.0 - (residual.pow(2).sum() / total).item()
    return {
        "loss": loss.item(),
        "mse": mse.item(),
        "aux": aux.item(),
        "explained_variance": explained,
        "l0": (features != 0).sum(-1).float().mean().item(),
        "_fired": (features != 0).any(0),
    }


@torch.no_grad()
def fold_normalization(sae: SAE) -> SAE:
    """Fold ``expected_average_only_in``'s factor c into the weights (W_enc·c, W_dec/c, b_dec/c): the same
    function of the raw activations, with ``normalize_activations = "none"`` (what SAELens saves)."""
    if sae.cfg.normalize_activations != "expected_average_only_in":
        return sae
    factor = sae.cfg.norm_scaling_factor
    sae.W_enc *= factor
    sae.W_dec /= factor
    sae.b_dec /= factor
    sae.cfg.normalize_activations, sae.cfg.norm_scaling_factor = "none", None
    return sae


def _save_checkpoint(
    directory: Path,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    step: int,
    tokens: int,
    tokens_read: int,
    texts_read: int,
    last_fired: torch.Tensor,
) -> None:
    save_sae(sae, directory)
    state = {
        "optimizer": optimizer.state_dict(),
        "step": step,
        "tokens": tokens,
        "tokens_read": tokens_read,
        "texts_read": texts_read,
        "last_fired": last_fired,
    }
    with atomic_path(directory / STATE_FILENAME) as tmp:
        torch.save(state, tmp)


def _resume(directory: Path, cfg: SAEConfig) -> dict | None:
    if not (directory / STATE_FILENAME).is_file():
        return None
    sae = load_sae(directory)
    if (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.architecture, sae.cfg.hook_name) != (
        cfg.d_in,
        cfg.d_sae,
        cfg.architecture,
        cfg.hook_name,
    ):
        raise ValueError(
            f"the checkpoint in {directory} is a {sae.cfg.architecture} SAE with d_sae={sae.cfg.d_sae} at "
            f"{sae.cfg.hook_name}, not the {cfg.architecture} SAE with d_sae={cfg.d_sae} at {cfg.hook_name} "
            "asked for: use another checkpoint_dir or the same settings."
        )
    state = torch.load(directory / STATE_FILENAME, weights_only=True)
    return {**state, "sae": sae}


def _progress(total: int, done: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="tok", desc="training SAE", unit_scale=True)


def evaluate(model: HookedRootModule, sae: SAE, texts: Sequence[str], n_tokens: int = 8192, **stream) -> dict:
    """Explained variance, L0 and dead fraction on ``texts`` (up to ``n_tokens`` tokens)."""
    cfg = sae.cfg
    names = [cfg.hook_name] + ([cfg.hook_name_out] if cfg.is_transcoder else [])
    stats = ReconstructionStats()
    with torch.no_grad():
        for _, rows in activation_stream(model, names, texts, **stream):
            x, target = (rows[:, : cfg.d_in], rows[:, cfg.d_in :]) if cfg.is_transcoder else (rows, rows)
            features = sae.activation(sae.pre_activations(x))
            stats.update(target, sae.decode_unhooked(features, input=x), features)
            if stats.n_tokens >= n_tokens:
                break
    return {
        "explained_variance": stats.explained_variance,
        "l0": stats.l0,
        "dead_fraction": stats.dead_fraction,
        "n_tokens": stats.n_tokens,
    }
