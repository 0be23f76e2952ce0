"""The benchmark suite: one run, every figure of issues 3, 4, 5 and 8, a table, and ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/run.py                    # full run on CPU, float32; writes RESULTS.md
    .venv/bin/python benchmarks/run.py --quick            # smoke run (few reps, short inputs), no file
    .venv/bin/python benchmarks/run.py --device cuda      # bfloat16 on the GPU
    .venv/bin/python benchmarks/run.py --skip-transformers --fast-compile none

On the embedded SmolLM2-135M-Instruct (``--model tiny``: a tiny random model, for tests), measured on
whatever machine it runs on:

- forward of 128 and 1,024 tokens without hooks, ours / transformers eager on the same weights (goal ≤ 1.0);
- ``run_with_cache`` of every hook point / our forward (≤ 1.1) and of a few names (≤ 1.02);
- greedy decode tokens/s, ours / transformers ``generate`` (≥ 2; both must give the same tokens), and as
  a fraction of the memory-bandwidth limit (≥ 0.6 on CPU): weights bytes per token over the best of
  five all-thread ``torch.sum`` over 1 GB (CUDA: a device copy), measured in every repetition right
  after its decodes, each decode divided by the limit of its own repetition (a shared host's bandwidth
  moves by 2x within a run);
- the same for the fast decoder's greedy loop (``llama3_lab.fast.FastDecoder``: on CPU the package;
  CUDA graphs on CUDA, goal ≥ 0.7), with its first-call time; and ours on the hookable path; and its
  decode steps alone, timed apart from the prompt's prefill (what the limit bounds; llama-bench's
  ``tg``; goal ≥ 0.8 on CPU), with the prefill's time beside them;
- a ``Session`` step with its full record / a plain decode step of the same path (≤ 1.1), by default
  (the package) and on the hookable path;
- the ahead-of-time compiled decode step (``llama3-lab compile``; phase ``package``), built once, and the
  wait for it in a new process (≤ 5 s); bfloat16 on the CPU beside float32;
- peers where the ``bench`` extra is installed (TransformerLens's TransformerBridge, nnsight): forward,
  full cache, generate on the same weights (``benchmarks/peers.py``);
- load time of the embedded model from its cache; peak RSS of every phase;
- a ragged batch of 16 prompts (10-200 tokens) in one padded forward / the same prompts one at a time
  (goal ≤ 0.5);
- batched greedy decode of 8 prompts, tokens/s, ours / transformers ``generate`` on the same left-padded
  batch (≥ 1.5, same tokens), and / our own batch-1 decode of the same prompts one after another.

Each phase runs in a fresh subprocess so its peak RSS is its own (``--in-process`` to skip that). A
ratio is the median of per-repetition ratios, the variants alternating within each repetition, printed
with its interquartile range and min-max: a busy host slows both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the path set-up above
    Spread,
    alternate,
    distinct_weights,
    machine_info,
    markdown_table,
    peak_rss_mb,
    ratio_spread,
    read_bandwidth_gbps,
    synchronize,
    timed,
    transformers_greedy,
    transformers_greedy_batch,
    transformers_twin,
    weight_bytes,
    write_section,
)

EMBEDDED = "smollm2-135m-instruct"
PHASES = (
    "load",
    "forward",
    "hooks",
    "package",
    "decode",
    "session",
    "batch_forward",
    "batch_decode",
    "gradients",
    "peers",
)
PROMPT = "Once upon a time, in a small village by the sea,"


@dataclass
class Options:
    """What to run; the command-line flags, also usable from tests."""

    device: str = "cpu"
    model: str = EMBEDDED  # or "tiny"
    quick: bool = False
    skip_transformers: bool = False
    fast_compile: str = "package"  # package (AOT, CPU), or FastDecoder(compile=...): auto, inductor, ...
    in_process: bool = False
    threads: int | None = None
    phases: tuple[str, ...] = PHASES

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32

    @property
    def reps(self) -> int:
        return 2 if self.quick else 9

    @property
    def forward_lengths(self) -> tuple[int, ...]:
        return (16, 64) if self.quick else (128, 1024)

    @property
    def new_tokens(self) -> int:
        return 8 if self.quick else 64


@dataclass
class Row:
    """One line of the results table."""

    phase: str
    metric: str
    value: str
    goal: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.ok]


@dataclass
class PhaseResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- models


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_model(opts: Options, dtype: torch.dtype | None = None) -> Any:
    """The model under test: the embedded SmolLM2 from its cache, or a tiny random model."""
    from llama3_lab.config import LlamaConfig
    from llama3_lab.loading import load_model
    from llama3_lab.model import LlamaModel

    if opts.model == "tiny":
        return LlamaModel.from_config(
            LlamaConfig.tiny(), seed=0, device=opts.device, dtype=dtype or opts.dtype
        )
    return load_model(opts.model, device=opts.device, dtype=dtype or opts.dtype, progress=False)


def prompt_ids(model: Any) -> list[int]:
    """The decode prompt: a sentence through the model's tokenizer, or fixed ids for a random model."""
    if model.tokenizer is not None:
        return model.tokenizer.encode(PROMPT)
    return [
        int(i)
        for i in torch.randint(3, model.cfg.vocab_size, (12,), generator=torch.Generator().manual_seed(0))
    ]


def random_tokens(model: Any, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(3, model.cfg.vocab_size, (1, length), generator=generator).to(model.device)


# ------------------------------------------------------------------------------------------- phases


def phase_load(opts: Options) -> PhaseResult:
    """Load time from the cached conversion (tiny: from a freshly saved HF directory)."""
    result = PhaseResult("load")
    start = time.perf_counter()
    from llama3_lab.loading import converted_model_dir, load_model

    import_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        if opts.model == "tiny":
            source: str | Path = Path(tmp) / "tiny"
            build_model(opts).save_pretrained(source)
        else:
            converted_model_dir(opts.model, progress=False)  # the one-time conversion, if not cached
            source = opts.model
        rss_before = peak_rss_mb()
        with warnings.catch_warnings():  # the tiny model has no tokenizer, and says so
            warnings.simplefilter("ignore")
            seconds = timed(
                lambda: load_model(source, device=opts.device, dtype=opts.dtype, progress=False), opts.device
            )
    result.data.update(load_s=seconds, import_s=import_s, rss_before_mb=rss_before)
    result.rows.append(
        Row("load", "load from cache", f"{seconds:.2f} s (import {import_s:.2f} s)", "< 2 s", seconds < 2)
    )
    return result


def phase_forward(opts: Options) -> PhaseResult:
    """Our forward without hooks vs transformers eager on the same weights, per length."""
    result = PhaseResult("forward")
    model = build_model(opts)
    twin = None if opts.skip_transformers else transformers_twin(model, attn="eager")
    for length in opts.forward_lengths:
        tokens = random_tokens(model, length)
        with torch.inference_mode():
            variants: dict[str, Callable[[], Any]] = {"ours": lambda t=tokens: model(t)}
            if twin is not None:
                variants["transformers"] = lambda t=tokens: twin(t).logits
                scale = model(tokens).float().abs().max().item()
                diff = (model(tokens).float() - twin(tokens).logits.float()).abs().max().item()
                result.data[f"max_abs_dlogit_{length}"] = diff
            times = alternate(variants, opts.reps, warmup=1, device=opts.device)
        ours = Spread.of(times["ours"])
        result.data[f"ours_ms_{length}"] = ours.median * 1e3
        if twin is None:
            result.rows.append(
                Row("forward", f"forward {length} tokens, ours", f"{ours.median * 1e3:.1f} ms")
            )
            continue
        ratio = ratio_spread(times["ours"], times["transformers"])
        result.data[f"ratio_{length}"] = ratio.as_dict()
        theirs = Spread.of(times["transformers"]).median
        result.rows.append(
            Row(
                "forward",
                f"forward {length} tokens, ours / transformers eager "
                f"({ours.median * 1e3:.1f} / {theirs * 1e3:.1f} ms; "
                f"max abs Δlogit {diff:.1e} of {scale:.0f})",
                ratio.text(),
                "≤ 1.0",
                ratio.median <= 1.0,
            )
        )
    return result


FEW_NAMES = ("hook_resid_post",)  # of three layers, chosen below from the model's depth


def phase_hooks(opts: Options) -> PhaseResult:
    """``run_with_cache`` of every hook point and of a few names, over our own forward without hooks."""
    result = PhaseResult("hooks")
    model = build_model(opts)
    length = opts.forward_lengths[0]
    tokens = random_tokens(model, length)
    n_layers = model.cfg.num_hidden_layers
    few = [
        f"blocks.{layer}.hook_resid_post" for layer in sorted({n_layers // 6, n_layers // 2, n_layers - 1})
    ]
    with torch.inference_mode():
        times = alternate(
            {
                "forward": lambda: model(tokens),
                "few": lambda: model.run_with_cache(tokens, names_filter=few),
                "all": lambda: model.run_with_cache(tokens),
            },
            opts.reps * 4,  # ratios within a few percent of 1 need many repetitions on a noisy host
            warmup=1,
            device=opts.device,
            rotate=True,  # the forward does not always follow the full cache's release
        )
        _, cache = model.run_with_cache(tokens)
        n_tensors, cache_mb = len(cache), cache.nbytes / 1e6
        del cache
    for key, goal, bound, label in (
        ("all", "≤ 1.1", 1.1, f"run_with_cache, all {n_tensors} hook points ({cache_mb:.0f} MB)"),
        ("few", "≤ 1.02", 1.02, f"run_with_cache, {len(few)} names"),
    ):
        ratio = ratio_spread(times[key], times["forward"])
        result.data[f"ratio_{key}"] = ratio.as_dict()
        result.rows.append(
            Row("hooks", f"{label} / forward, {length} tokens", ratio.text(), goal, ratio.median <= bound)
        )
    return result


def _package_wanted(opts: Options) -> bool:
    """Whether this run builds and measures the ahead-of-time compiled package (CPU, the default)."""
    return opts.fast_compile == "package" and torch.device(opts.device).type == "cpu"


def _package_dtypes(opts: Options) -> tuple[torch.dtype, ...]:
    return (torch.float32,) if opts.quick else (torch.float32, torch.bfloat16)


def phase_package(opts: Options) -> PhaseResult:
    """The set-up step: ``llama3-lab compile`` for float32 (and bfloat16), once; kept in the user cache."""
    from llama3_lab.packaged import QUICK_CONFIGS, build_package, record_of

    result = PhaseResult("package")
    if not _package_wanted(opts):
        result.rows.append(
            Row("package", "compiled package", f"not built (--fast-compile {opts.fast_compile})")
        )
        return result
    for dtype in _package_dtypes(opts):
        model = build_model(opts, dtype)
        configs = QUICK_CONFIGS if opts.quick else None  # a smoke run does not wait for max-autotune
        started = time.time()
        path = build_package(model, inductor_configs=configs, echo=None)
        record = record_of(path)
        name = _torch_dtype_name(dtype)
        # written during the call (not "the call took long": fingerprinting the weights takes seconds too)
        built_now = path.stat().st_mtime >= started
        when = "now" if built_now else "earlier; found in the cache"
        result.data[f"build_s_{name}"] = record.build_seconds
        result.data[f"package_mb_{name}"] = path.stat().st_size / 1e6
        result.rows.append(
            Row(
                "package",
                f"{name} decode step compiled once at set-up (llama3-lab compile; built {when})",
                f"{record.build_seconds:.0f} s, {path.stat().st_size / 2**20:.0f} MiB, "
                f"{record.capacity} positions",
            )
        )
    return result


def phase_decode(opts: Options) -> PhaseResult:
    """Greedy tokens/s: ours by default and eager, the fast decoder, transformers ``generate``; the limit.

    Runs in a new process (each phase does): the first default ``generate`` there includes loading the
    package and fingerprinting the weights, which is the wait a new notebook or CLI process sees.
    """
    from llama3_lab.fast import FastDecoder
    from llama3_lab.generation import generate_tokens
    from llama3_lab.packaged import usable_package

    result = PhaseResult("decode")
    model = build_model(opts)
    prompt = prompt_ids(model)
    n = opts.new_tokens

    def ours() -> list[int]:
        return list(generate_tokens(model, prompt, n, temperature=0))

    def eager() -> list[int]:
        return list(generate_tokens(model, prompt, n, temperature=0, fast=False))

    package = usable_package(model, len(prompt) + n)
    start = time.perf_counter()
    outputs = {"ours": ours()}
    first_s = time.perf_counter() - start
    result.data.update(default_path="package" if package else "eager", first_default_s=first_s)
    variants: dict[str, Callable[[], list[int]]] = {"ours": ours}
    if package is not None:
        variants["eager"] = eager
        outputs["eager"] = eager()
    if not opts.skip_transformers:
        twin = transformers_twin(model, attn="eager")
        variants["transformers"] = lambda: transformers_greedy(twin, prompt, n)
        outputs["transformers"] = variants["transformers"]()
    if opts.fast_compile != "skip":
        if package is not None:
            decoder = FastDecoder(model, record_capacity(package), package=package)
        else:
            compile_mode = None if opts.fast_compile in ("none", "package") else opts.fast_compile
            if opts.quick and opts.fast_compile == "auto":
                compile_mode = None  # a smoke run does not wait minutes for Inductor
            decoder = FastDecoder(model, len(prompt) + n, compile=compile_mode)
        compile_s = timed(lambda: decoder.generate_greedy(prompt, n), opts.device)  # compiles / captures
        result.data["fast_first_call_s"] = compile_s
        variants["fast"] = lambda: decoder.generate_greedy(prompt, n)
        outputs["fast"] = variants["fast"]()
        result.data["fast_compile"] = repr(decoder)
        variants["fast_split"], prefill_s, steps_s = split_greedy(decoder, prompt, n)
        outputs["fast_split"] = variants["fast_split"]()
        del prefill_s[:], steps_s[:]  # that call was a check of its tokens, not a repetition

    rss = peak_rss_mb()  # before the 1 GB bandwidth buffer
    pieces, measure_pieces = weights_sweep(model, bandwidth_passes(opts))
    variants["pieces"] = measure_pieces
    bandwidths, measure_bandwidth = paired_bandwidth(opts)
    variants["bandwidth"] = measure_bandwidth  # last in every round: the limit at that moment
    times = alternate(variants, 2 if opts.quick else 5, warmup=0, device=opts.device)
    del times["bandwidth"], times["pieces"]
    split = times.pop("fast_split", None)
    bandwidth = Spread.of(bandwidths).median
    n_bytes = weight_bytes(model)
    limit = bandwidth * 1e9 / n_bytes
    limits = [b * 1e9 / n_bytes for b in bandwidths]  # per repetition, beside its decodes
    result.data.update(
        bandwidth_gb_s=bandwidth,
        bandwidths_gb_s=bandwidths,
        weight_bytes=n_bytes,
        limit_tok_s=limit,
        rss_mb=rss,
    )
    result.rows.append(
        Row(
            "decode",
            f"memory bandwidth, measured in each repetition beside its decodes (best of "
            f"{bandwidth_passes(opts)} passes over {bandwidth_buffer(opts) >> 20} MiB)",
            f"{bandwidth:.1f} GB/s (range {min(bandwidths):.1f}-{max(bandwidths):.1f}) → limit "
            f"{limit:.0f} tok/s ({n_bytes / 1e6:.0f} MB of weights per token)",
        )
    )
    default = "package" if package is not None else "eager"
    wait = first_s - Spread.of(times["ours"]).median  # what the first call costs beyond a warm one
    result.data["first_default_wait_s"] = wait
    result.rows.append(
        Row(
            "decode",
            f"wait in a new process: first default generate − a warm one ({default}: the package's load "
            f"and the weights' fingerprint; {first_s:.2f} s in all)",
            f"{wait:.2f} s",
            "≤ 5 s",
            wait <= 5,
        )
    )

    tok_s = {name: Spread.of([n / t for t in samples]) for name, samples in times.items()}
    for name, spread in tok_s.items():
        result.data[f"{name}_tok_s"] = spread.as_dict()
    on_cpu = torch.device(opts.device).type == "cpu"
    labels = {
        "ours": (f"ours by default ({default})", "≥ 2", 0.6 if on_cpu else 0.7),
        "eager": ("ours on the hookable path (fast=False)", "", None),
        # the greedy loop with its prompt's prefill; the CPU goal is on its steps alone (_steps_rows)
        "fast": (
            "fast decoder" + (" (package, greedy loop)" if package else ""),
            "",
            None if on_cpu else 0.7,
        ),
    }
    for name, (label, speed_goal, goal_fraction) in labels.items():
        if name not in tok_s:
            continue
        same = outputs[name] == outputs.get("transformers", outputs["ours"])
        result.data[f"{name}_same_tokens"] = same
        if "transformers" in times:
            speedup = ratio_spread(times["transformers"], times[name])
            result.rows.append(
                Row(
                    "decode",
                    f"greedy {n} tokens, {label} / transformers generate, tok/s "
                    f"({tok_s[name].median:.1f} / {tok_s['transformers'].median:.1f}; same tokens: {same})",
                    speedup.text(),
                    speed_goal,
                    (speedup.median >= 2 and same) if speed_goal else None,
                )
            )
        if name == "eager":
            continue
        fraction = Spread.of([n / t / rep_limit for t, rep_limit in zip(times[name], limits)])
        result.rows.append(
            Row(
                "decode",
                f"{label} fraction of the bandwidth limit of its repetition ({tok_s[name].median:.1f} tok/s"
                + (", prefill included)" if name == "fast" else ")"),
                fraction.text(),
                f"≥ {goal_fraction}" if goal_fraction else "",
                fraction.median >= goal_fraction if goal_fraction else None,
            )
        )
    result.data["weights_sweep_gb_s"] = pieces
    result.rows.append(
        Row(
            "decode",
            "all-thread torch.sum over the model's own weights, one tensor after another "
            f"({len(distinct_weights(model))} tensors, best of the passes, each call from Python), beside "
            "the limit's one 1 GB sweep: what reading these tensors one at a time allows",
            f"{Spread.of(pieces).median:.1f} GB/s, "
            f"{ratio_spread(pieces, bandwidths).median:.3f} of the sweep (median of the repetitions)",
        )
    )
    if split is not None:
        result.rows += _steps_rows(
            outputs, n, prefill_s, steps_s, limits, package is not None, len(prompt), 0.8 if on_cpu else 0.7
        )
        steps_gb_s = [(n - 1) * n_bytes / t / 1e9 for t in steps_s]
        result.rows.append(
            Row(
                "decode",
                "the same decode steps' read rate / the torch.sum sweep over the model's own weights of "
                "their repetition",
                ratio_spread(steps_gb_s, pieces).text(),
            )
        )
        result.data.update(fast_prefill_s=prefill_s, fast_steps_s=steps_s)
    if "fast" in tok_s:
        result.rows.append(
            Row(
                "decode",
                "fast decoder first call ("
                + ("package load" if package else "compile or capture")
                + " + one generation)",
                f"{result.data['fast_first_call_s']:.1f} s",
            )
        )
    if on_cpu and not opts.quick and _package_wanted(opts):
        result.rows += _bfloat16_rows(opts, n)
    return result


def split_greedy(
    decoder: Any, prompt: list[int], n: int
) -> tuple[Callable[[], list[int]], list[float], list[float]]:
    """A variant for ``alternate`` that runs ``decoder.generate_greedy(prompt, n)`` as its two calls,
    ``prefill`` and ``greedy_from``, and appends, at each call, the prefill's seconds and the ``n - 1``
    steps' seconds to the two lists it returns beside it.

    A decode step is what the memory-bandwidth limit bounds (it reads every weight once for one
    token); the prefill of a prompt is a matrix product of many rows, bound by arithmetic, not by
    memory (llama.cpp's ``llama-bench`` reports the two apart as ``pp`` and ``tg``).
    """
    prefill_s: list[float] = []
    steps_s: list[float] = []

    def run() -> list[int]:
        start = time.perf_counter()
        first = decoder.prefill(prompt).argmax(dim=-1)
        prefilled = time.perf_counter()
        ids = decoder.greedy_from(first, n)
        prefill_s.append(prefilled - start)
        steps_s.append(time.perf_counter() - prefilled)
        return ids

    return run, prefill_s, steps_s


def _steps_rows(
    outputs: dict[str, list[int]],
    n: int,
    prefill_s: list[float],
    steps_s: list[float],
    limits: list[float],
    packaged: bool,
    prompt_tokens: int,
    goal: float,
) -> list[Row]:
    """The fast decoder's steps alone against the limit of their repetition, and its prompt's prefill."""
    same = outputs["fast_split"] == outputs.get("transformers", outputs["ours"])
    fraction = Spread.of([(n - 1) / t / limit for t, limit in zip(steps_s, limits, strict=True)])
    label = "fast decoder" + (" (package)" if packaged else "")
    return [
        Row(
            "decode",
            f"{label}, the {n - 1} decode steps alone (after the prompt's prefill; llama-bench's tg): "
            f"fraction of the bandwidth limit of its repetition "
            f"({Spread.of([(n - 1) / t for t in steps_s]).median:.1f} tok/s; same tokens: {same})",
            fraction.text(),
            f"≥ {goal}",
            fraction.median >= goal and same,
        ),
        Row(
            "decode",
            f"{label}, the prefill of the {prompt_tokens}-token prompt "
            "(the model's own forward, bound by arithmetic, not by memory)",
            f"{Spread.of(prefill_s).median * 1e3:.0f} ms "
            f"({Spread.of([p / (p + t) for p, t in zip(prefill_s, steps_s, strict=True)]).median:.1%} of "
            "the greedy loop)",
        ),
    ]


def weights_sweep(model: Any, passes: int) -> tuple[list[float], Callable[[], None]]:
    """A list and a variant for ``alternate`` that appends, each time it runs, the best of ``passes``
    all-thread ``torch.sum`` sweeps over the model's weights, tensor by tensor, in GB/s (CPU; on CUDA
    each pass is synchronised at its end).

    A decode step reads the same bytes as the limit's 1 GB sweep, but as hundreds of tensors of a
    few MB, each its own parallel loop; this is that reading with nothing else in the step. Each
    ``sum`` is one call from Python (a few µs), which the compiled step does not pay.
    """
    tensors = distinct_weights(model)
    n_bytes = weight_bytes(model)
    device = tensors[0].device
    found: list[float] = []

    def sweep() -> None:
        for tensor in tensors:
            tensor.sum()

    def measure() -> None:
        with torch.inference_mode():
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)  # as the limit's sweep
            try:
                best = min(timed(sweep, device) for _ in range(passes))
            finally:
                torch.set_num_threads(threads)
        found.append(n_bytes / best / 1e9)

    return found, measure


def bandwidth_passes(opts: Options) -> int:
    return 3 if opts.quick else 5


def bandwidth_buffer(opts: Options) -> int:
    return (64 << 20) if opts.quick else (1 << 30)  # quick runs only check that it works


def paired_bandwidth(opts: Options) -> tuple[list[float], Callable[[], None]]:
    """A list and a variant for ``alternate`` that appends the bandwidth each time it runs: called in
    every round beside the decodes, it gives each repetition the limit of its own moment (a shared
    host's bandwidth moved from 33 to 61 GB/s within one run, so one best-of figure for the whole
    phase would be the best moment's, not the decodes')."""
    found: list[float] = []

    def measure() -> None:
        found.append(read_bandwidth_gbps(opts.device, bandwidth_buffer(opts), repeats=bandwidth_passes(opts)))

    return found, measure


def record_capacity(package: Path) -> int:
    from llama3_lab.packaged import record_of

    return record_of(package).capacity


def _bfloat16_rows(opts: Options, n: int) -> list[Row]:
    """bfloat16 on the CPU beside float32: default generate and the package's greedy loop, and the limit."""
    from llama3_lab.fast import FastDecoder
    from llama3_lab.generation import generate_tokens
    from llama3_lab.packaged import usable_package

    model = build_model(opts, torch.bfloat16)
    prompt = prompt_ids(model)
    package = usable_package(model, len(prompt) + n)
    if package is None:
        return [Row("decode", "bfloat16 on CPU", "no bfloat16 package (phase package not run)")]
    decoder = FastDecoder(model, record_capacity(package), package=package)
    variants = {
        "default": lambda: list(generate_tokens(model, prompt, n, temperature=0)),
        "fast": lambda: decoder.generate_greedy(prompt, n),
        "eager": lambda: list(generate_tokens(model, prompt, n, temperature=0, fast=False)),
    }
    bandwidths, variants["bandwidth"] = paired_bandwidth(opts)
    times = alternate(variants, max(2, opts.reps // 3), warmup=1, device=opts.device)
    limit = Spread.of(bandwidths).median * 1e9 / weight_bytes(model)
    rows = []
    for name, label in (
        ("default", "bfloat16 on CPU, ours by default (package)"),
        ("fast", "bfloat16 on CPU, package greedy loop"),
        ("eager", "bfloat16 on CPU, hookable path"),
    ):
        tok_s = n / Spread.of(times[name]).median
        rows.append(
            Row(
                "decode",
                f"{label}: tok/s, fraction of the bfloat16 limit ({limit:.0f} tok/s)",
                f"{tok_s:.1f}, {tok_s / limit:.3f}",
            )
        )
    return rows


def phase_session(opts: Options) -> PhaseResult:
    """A ``Session`` step with its full record vs a plain decode step of the same path, alternating chunks.

    Two pairs: the default path (the compiled package when one is built: ``Session`` vs ``generate``'s
    step) and the hookable path (``Session(fast=False)`` vs a cached eager forward).
    """
    from llama3_lab.fast import FastDecoder
    from llama3_lab.kv_cache import KVCache
    from llama3_lab.packaged import usable_package
    from llama3_lab.sampling import sample_next
    from llama3_lab.session import Session

    result = PhaseResult("session")
    model = build_model(opts)
    prompt = prompt_ids(model)
    chunk, rounds = (2, 2) if opts.quick else (8, 6)
    capacity = len(prompt) + chunk * (rounds + 1) + 1
    package = usable_package(model, capacity)
    pairs = {"hookable": (Session(model, prompt, temperature=0, max_length=capacity, fast=False), None)}
    if package is not None:
        decoder = FastDecoder(model, record_capacity(package), package=package)
        pairs = {"package": (Session(model, prompt, temperature=0, max_length=capacity), decoder), **pairs}
    for kind, (session, decoder) in pairs.items():
        if decoder is not None:
            state = {"logits": decoder.prefill(prompt)[0]}

            def plain_step(token: torch.Tensor, decoder: Any = decoder) -> torch.Tensor:
                return decoder.step(token)[0]
        else:
            cache = KVCache.allocate(model, 1, max_length=capacity)
            with torch.no_grad():
                state = {"logits": model(torch.tensor([prompt], device=model.device), cache=cache)[0, -1]}

            def plain_step(token: torch.Tensor, cache: KVCache = cache) -> torch.Tensor:
                return model(token.view(1, 1), cache=cache)[0, -1]

        def plain_steps(
            plain_step: Callable[[torch.Tensor], torch.Tensor] = plain_step, state: dict = state
        ) -> None:
            with torch.no_grad():
                for _ in range(chunk):
                    token = sample_next(state["logits"], temperature=0)
                    int(token)  # the host reads the id, as generate does
                    state["logits"] = plain_step(token)

        times = alternate(
            {"session": lambda s=session: s.step(chunk), "plain": plain_steps},
            rounds,
            warmup=1,
            device=opts.device,
        )
        ratio = ratio_spread(times["session"], times["plain"])
        result.data[f"ratio_{kind}"] = ratio.as_dict()
        step_ms = Spread.of(times["plain"]).median / chunk * 1e3
        label = "by default (package)" if kind == "package" else "on the hookable path (fast=False)"
        result.rows.append(
            Row(
                "session",
                f"session step with record / plain decode step, {label} ({step_ms:.1f} ms plain)",
                ratio.text(),
                "≤ 1.1",
                ratio.median <= 1.1,
            )
        )
    result.data["ratio"] = result.data["ratio_hookable"]
    return result


def ragged_prompts(model: Any, n: int, shortest: int, longest: int) -> list[list[int]]:
    """``n`` random prompts with lengths spread evenly from ``shortest`` to ``longest`` tokens."""
    generator = torch.Generator().manual_seed(n)
    lengths = torch.linspace(shortest, longest, n).round().long().tolist()
    return [torch.randint(3, model.cfg.vocab_size, (k,), generator=generator).tolist() for k in lengths]


def phase_batch_forward(opts: Options) -> PhaseResult:
    """One padded forward of a ragged batch of 16 prompts / the same prompts one at a time."""
    result = PhaseResult("batch_forward")
    model = build_model(opts)
    longest = 60 if opts.quick else 200
    prompts = ragged_prompts(model, 16, 10, longest)
    batch = model.to_token_batch(prompts)
    singles = [torch.tensor([p], device=model.device) for p in prompts]
    with torch.inference_mode():
        variants = {
            "batch": lambda: model(batch),
            "one_at_a_time": lambda: [model(t) for t in singles],
        }
        times = alternate(variants, max(2, opts.reps // 3), warmup=1, device=opts.device)
    ratio = ratio_spread(times["batch"], times["one_at_a_time"])
    result.data.update(
        ratio=ratio.as_dict(), padded_positions=int(batch.ids.numel()), real=int(batch.mask.sum())
    )
    result.rows.append(
        Row(
            "batch_forward",
            f"forward of 16 prompts (10-{longest} tokens), one padded batch / one at a time "
            f"({Spread.of(times['batch']).median * 1e3:.0f} / "
            f"{Spread.of(times['one_at_a_time']).median * 1e3:.0f} ms)",
            ratio.text(),
            "≤ 0.5",
            ratio.median <= 0.5,
        )
    )
    return result


def phase_batch_decode(opts: Options) -> PhaseResult:
    """Batched greedy decode of 8 prompts: ours / transformers generate (same padded batch), and / ours
    one prompt at a time."""
    from llama3_lab.batch_generation import generate_batch
    from llama3_lab.generation import generate_tokens

    result = PhaseResult("batch_decode")
    model = build_model(opts)
    prompts = ragged_prompts(model, 8, 5, 24 if opts.quick else 60)
    n = opts.new_tokens

    def ours() -> list[list[int]]:
        return [g.tokens for g in generate_batch(model, prompts, n, temperature=0, stop=None)]

    def one_by_one() -> list[list[int]]:
        return [list(generate_tokens(model, p, n, temperature=0)) for p in prompts]

    # exactly n tokens per row on both sides: no stop token ends a row early
    saved_stop = model.tokenizer, model.cfg
    model.tokenizer, model.cfg = None, model.cfg.replace(eos_token_id=None)
    try:
        variants: dict[str, Callable[[], list[list[int]]]] = {"ours": ours, "one_by_one": one_by_one}
        outputs = {name: fn() for name, fn in variants.items()}
        if not opts.skip_transformers:
            twin = transformers_twin(model, attn="sdpa")
            batch = model.to_token_batch(prompts, padding_side="left")

            def theirs() -> list[list[int]]:
                return transformers_greedy_batch(twin, batch.ids, batch.mask, n)

            variants["transformers"] = theirs
            outputs["transformers"] = theirs()
        times = alternate(variants, max(2, opts.reps // 4), warmup=0, device=opts.device)
    finally:
        model.tokenizer, model.cfg = saved_stop
    tok_s = {name: Spread.of([len(prompts) * n / t for t in samples]) for name, samples in times.items()}
    for name, spread in tok_s.items():
        result.data[f"{name}_tok_s"] = spread.as_dict()
    same_alone = outputs["ours"] == outputs["one_by_one"]
    result.rows.append(
        Row(
            "batch_decode",
            f"greedy {n} tokens × 8 prompts, batched / batch-1 one by one, tok/s "
            f"({tok_s['ours'].median:.1f} / {tok_s['one_by_one'].median:.1f}; same tokens: {same_alone})",
            ratio_spread(times["one_by_one"], times["ours"]).text(),
        )
    )
    if "transformers" in times:
        same = outputs["ours"] == outputs["transformers"]
        speedup = ratio_spread(times["transformers"], times["ours"])
        result.rows.append(
            Row(
                "batch_decode",
                f"greedy {n} tokens × 8 prompts, ours / transformers generate (same left-padded batch), "
                "tok/s "
                f"({tok_s['ours'].median:.1f} / {tok_s['transformers'].median:.1f}; same tokens: {same})",
                speedup.text(),
                "≥ 1.5",
                speedup.median >= 1.5 and same,
            )
        )
    return result


def phase_gradients(opts: Options) -> PhaseResult:
    """Gradient cache of every hook / forward + backward; attribution vs actual patching of every head."""
    from benchmarks.gradients import measure

    result = PhaseResult("gradients")
    model = build_model(opts)
    m = measure(model, n_tokens=16 if opts.quick else 64, reps=max(2, opts.reps // 3))
    result.data.update(
        ratio=m["ratio"].as_dict(), attribution_s=m["attribution_s"], patching_s=m["patching_s"],
        correlation=m["correlation"],
    )  # fmt: skip
    cache_metric = f"gradient cache of all {m['hooks']} hook points / forward + backward"
    result.rows.append(Row("gradients", cache_metric, m["ratio"].text(), "≤ 1.3", m["ratio"].median <= 1.3))
    speedup = m["patching_s"] / m["attribution_s"]
    heads_metric = (
        f"every head ({m['heads']}): actual patching / attribution patching, wall time "
        f"({m['patching_s']:.1f} / {m['attribution_s']:.2f} s)"
    )
    result.rows.append(Row("gradients", heads_metric, f"{speedup:.0f}x", "≥ 20x", speedup >= 20))
    result.rows.append(
        Row("gradients", "correlation of attribution with actual patching", f"{m['correlation']:.3f}")
    )
    return result


def phase_peers(opts: Options) -> PhaseResult:
    """TransformerLens's TransformerBridge and nnsight on the same weights, where installed (``bench``)."""
    from benchmarks.peers import PeerReport, measure_peers

    result = PhaseResult("peers")
    if opts.model != EMBEDDED or torch.device(opts.device).type != "cpu" or opts.quick:
        result.rows.append(Row("peers", "peers", "not run (the embedded model on CPU, full runs only)"))
        return result
    report = PeerReport()
    measure_peers(
        build_model(opts),
        reps=max(3, opts.reps // 2),
        threads=opts.threads,
        echo=lambda _: None,
        report=report,
    )
    result.rows += [Row(row.phase, row.metric, row.value) for row in report.rows]
    result.data.update(report.data)
    return result


PHASE_FUNCTIONS: dict[str, Callable[[Options], PhaseResult]] = {
    "load": phase_load,
    "forward": phase_forward,
    "hooks": phase_hooks,
    "package": phase_package,
    "decode": phase_decode,
    "session": phase_session,
    "batch_forward": phase_batch_forward,
    "batch_decode": phase_batch_decode,
    "gradients": phase_gradients,
    "peers": phase_peers,
}


def run_phase(name: str, opts: Options) -> PhaseResult:
    """One phase in this process, with its peak RSS (meaningful when the process ran nothing else)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    load_at_start = os.getloadavg()[0]
    result = PHASE_FUNCTIONS[name](opts)
    synchronize(opts.device)
    rss = result.data.get("rss_mb", peak_rss_mb())
    result.data["peak_rss_mb"] = rss
    extra = ""
    if torch.device(opts.device).type == "cuda":
        result.data["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 1e6
        extra = f", GPU peak {result.data['cuda_peak_mb']:.0f} MB"
    result.data["load_average_at_start"] = load_at_start
    result.rows.append(
        Row(
            name,
            "peak RSS of the phase",
            f"{rss:.0f} MB{extra} (host load average {load_at_start:.1f} at start)",
        )
    )
    return result


def run_phase_subprocess(name: str, opts: Options) -> PhaseResult:
    """Run one phase in a fresh interpreter (clean peak RSS) and read back its result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--phase-json", str(out)]
        command += _flags(opts)
        completed = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
        if completed.returncode != 0:
            raise RuntimeError(f"phase {name!r} failed:\n{completed.stdout}\n{completed.stderr}")
        payload = json.loads(out.read_text())
    return PhaseResult(name, [Row(**row) for row in payload["rows"]], payload["data"])


def _flags(opts: Options) -> list[str]:
    flags = ["--device", opts.device, "--model", opts.model, "--fast-compile", opts.fast_compile]
    flags += ["--quick"] * opts.quick + ["--skip-transformers"] * opts.skip_transformers
    flags += ["--threads", str(opts.threads)] if opts.threads else []
    return flags


def run_all(opts: Options, echo: Callable[[str], None] = print) -> list[PhaseResult]:
    results = []
    for name in opts.phases:
        echo(f"[{time.strftime('%H:%M:%S')}] phase {name} ...")
        result = run_phase(name, opts) if opts.in_process else run_phase_subprocess(name, opts)
        for row in result.rows:
            echo(
                f"    {row.metric}: {row.value}" + (f"  [goal {row.goal}: {row.verdict}]" if row.goal else "")
            )
        results.append(result)
    return results


# ------------------------------------------------------------------------------------------- report


def _effective_compile(opts: Options) -> str:
    if _package_wanted(opts):
        return "AOTInductor package (llama3-lab compile; Inductor max-autotune, weights frozen)"
    if opts.quick and opts.fast_compile == "auto":
        return "none (quick run: no Inductor)"
    if opts.fast_compile in ("auto", "package"):
        return (
            "CUDA graph"
            if torch.device(opts.device).type == "cuda"
            else "Inductor, max-autotune-no-cudagraphs"
        )
    return opts.fast_compile


def render(results: list[PhaseResult], info: dict[str, Any], opts: Options) -> str:
    """The Markdown section for RESULTS.md: the machine, the date, the table, and the goals missed."""
    rows = [row for result in results for row in result.rows]
    model = "SmolLM2-135M-Instruct (embedded)" if opts.model == EMBEDDED else opts.model
    lines = [
        f"## `benchmarks/run.py` on {info['device']} ({_torch_dtype_name(opts.dtype)})"
        + (" — QUICK smoke run" if opts.quick else ""),
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"
        + (f"; GPU {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else "; no GPU used"),
        f"- software: torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}",
        f"- load average at start: {info['load_average']} (figures from a loaded host are noisy)",
        f"- model: {model}; fast decoder compile: {_effective_compile(opts)}",
        "- ratios: median of per-repetition ratios (variants alternating), IQR and min-max in brackets",
        "",
        markdown_table(
            ["phase", "metric", "value", "goal", "verdict"],
            [[r.phase, r.metric, r.value, r.goal, r.verdict] for r in rows],
        ),
    ]
    load = info["load_average"][0]
    if load > 0.5 * (info["cores"] or 1):
        lines += [
            "",
            f"**Warning: the host was busy (load average {load:.1f} on {info['cores']} cores).** "
            "Under oversubscription every OpenMP parallel region can stall for a scheduler time slice "
            "(seen here: one decode step 6-8x slower with 2 threads than with 1), so absolute figures and "
            "ratios against differently-threaded code are unreliable. Rerun on a quiet host.",
        ]
    missed = [r for r in rows if r.ok is False]
    lines += ["", f"Goals met: {sum(r.ok is True for r in rows)} of {sum(r.ok is not None for r in rows)}."]
    if missed:
        lines += [
            "Missed: "
            + "; ".join(f"{r.metric} = {r.value.split(' ')[0]} (goal {r.goal})" for r in missed)
            + "."
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu (float32) or cuda (bfloat16)")
    parser.add_argument("--model", default=EMBEDDED, help=f"{EMBEDDED} (default), a model path, or 'tiny'")
    parser.add_argument("--quick", action="store_true", help="short smoke run: few reps, short inputs")
    parser.add_argument("--skip-transformers", action="store_true", help="time ours only")
    parser.add_argument(
        "--fast-compile",
        default="package",
        help="package (default: the ahead-of-time compiled step, built once by the package phase, on CPU; "
        "on GPU as auto), or the FastDecoder compile: auto (Inductor on CPU, CUDA graph on GPU), inductor, "
        "eager, aot_eager, none (static step, no compile), skip (no fast decoder)",
    )
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}")
    parser.add_argument(
        "--in-process", action="store_true", help="no subprocess per phase (RSS not per phase)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--output",
        default=None,
        help="results file (default: benchmarks/RESULTS.md, for a full run without --quick)",
    )
    parser.add_argument("--json", default=None, help="also write every figure as JSON here")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {PHASES}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA device (CPU-only build or no GPU).")
    opts = Options(
        device=args.device,
        model=args.model,
        quick=args.quick,
        skip_transformers=args.skip_transformers,
        fast_compile=args.fast_compile,
        in_process=args.in_process,
        threads=args.threads,
        phases=phases,
    )
    return opts, args


def main(argv: list[str] | None = None) -> None:
    opts, args = parse_args(argv)
    if args.phase:  # a child process running one phase for the orchestrator
        result = run_phase(args.phase, opts)
        Path(args.phase_json).write_text(
            json.dumps({"rows": [asdict(r) for r in result.rows], "data": result.data})
        )
        return
    info = machine_info(opts.device)
    print(
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, device {opts.device}, "
        f"load {info['load_average']}"
    )
    results = run_all(opts)
    text = render(results, info, opts)
    print()
    print(text)
    partial = set(opts.phases) != set(PHASES)  # a subset must not replace the whole run's section
    default = None if opts.quick or partial else str(Path(__file__).resolve().parent / "RESULTS.md")
    output = args.output or default
    if output is None and partial and not opts.quick:
        print("\n(a subset of the phases: RESULTS.md left as it is; --output FILE writes this run)")
    if output:
        write_section(f"run-{torch.device(opts.device).type}", text, Path(output))
        print(f"\nwritten to {output}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, **{r.name: r.data for r in results}}, indent=2)
        )


if __name__ == "__main__":
    main()
