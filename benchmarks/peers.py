"""Peers on the same weights: TransformerLens's ``TransformerBridge`` and nnsight beside llama3-lab.

    pip install -e ".[bench]"                    # the peers (a separate venv if they would move torch)
    python benchmarks/peers.py --reps 5          # table of figures on stdout
    python benchmarks/peers.py --reps 3 --json   # rows and raw data as JSON

On the embedded SmolLM2-135M-Instruct in float32 on CPU (two torch threads), for each peer that imports
(a peer that does not is skipped with its reason):

- the peer's logits on 128 random tokens against our forward's (max abs difference; within 1e-4?);
- forward of 128 tokens without hooks: peer time / ours;
- a full activation cache: the bridge's ``run_with_cache`` of every hook point, nnsight saving every
  module's output (see ``NNSIGHT_SAVED``) / our ``model.run_with_cache(tokens)``, with the number of
  cached tensors and their distinct megabytes on each side;
- greedy generate of 32 new tokens (no stop token): peer tokens/s / ours (``generate_tokens`` with
  ``temperature=0``), and whether the tokens are ours. The bridge is run with its KV cache (its default)
  and without it: with transformer-lens 4.3.0 on transformers 5.24 its attention reads the cache from
  ``past_key_values`` (or ``layer_past``), which transformers now passes as ``cache``, so nothing is
  cached and every decode step attends to itself alone (other tokens from the second new one on).

The peers load the Hugging Face directory our embedded model is converted into
(``converted_model_dir``), so every side computes with the same float32 tensors; the tokenizer, which
that directory lacks, is transformers' reading of the same GGUF. A ratio is the median of per-repetition
ratios (``benchmarks.common.alternate``: the two sides alternate within each repetition), printed with
its interquartile range and min-max.

From another script::

    from benchmarks.peers import measure_peers
    rows = measure_peers(model, reps=5)        # model: ours, loaded as below; None loads it
    for row in rows:
        print(row.phase, row.metric, row.value)  # goal and verdict are "" (no goals for peers)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import Spread, alternate, exactly_n_greedy, ratio_spread  # noqa: E402 - after the path set-up

EMBEDDED = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"  # benchmarks/run.py's decode prompt
LENGTH = 128
NEW_TOKENS = 32
TOLERANCE = 1e-4
#: peer name -> (module that must import, distribution name for the version, what to install)
PEERS = {
    "transformer_lens": ("transformer_lens.model_bridge", "transformer-lens", "transformer-lens>=4.3"),
    "nnsight": ("nnsight", "nnsight", "nnsight>=0.8"),
}
#: What the nnsight "full cache" saves, per decoder layer, in execution order (nnsight 0.8 wants
#: modules reached in the order they run); self_attn's output is (attention output, pattern) on eager.
NNSIGHT_SAVED = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.act_fn",
    "mlp.up_proj",
    "mlp.down_proj",
    "mlp",
    "",  # the layer's output (the residual stream after it)
)


@dataclass
class PeerRow:
    """One line of the table, in ``benchmarks/run.py``'s columns; peers have no goals."""

    phase: str
    metric: str
    value: str
    goal: str = ""
    verdict: str = ""


@dataclass
class PeerReport:
    """Rows and the raw figures behind them (per peer: seconds per repetition, counts, differences)."""

    rows: list[PeerRow] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ availability


def peer_problem(peer: str) -> str | None:
    """Why ``peer`` cannot be measured here (not installed, or its import fails), or None."""
    module, _dist, requirement = PEERS[peer]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except ImportError as error:
        return f"not installed ({error}); pip install '{requirement}' or the project's 'bench' extra"
    except Exception as error:  # noqa: BLE001 - a broken install is reported, not raised
        return f"import of {module} failed: {type(error).__name__}: {error}"
    return None


def peer_version(peer: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PEERS[peer][1])
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------ the peers


def hf_tokenizer(name: str = EMBEDDED) -> Any:
    """transformers' tokenizer read from the model's GGUF (the converted directory has none)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars of each peer's load, in a table's output
    from llama3_lab.assets import asset_path

    gguf = asset_path(f"{name}.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


class BridgePeer:
    """TransformerLens's ``TransformerBridge`` booted from the Hugging Face directory."""

    name = "TransformerBridge"

    def __init__(self, directory: Path, tokenizer: Any) -> None:
        from transformer_lens.model_bridge import TransformerBridge

        self.bridge = TransformerBridge.boot_transformers(
            str(directory), device="cpu", dtype=torch.float32, tokenizer=tokenizer
        )
        self.attn = self.bridge.original_model.config._attn_implementation
        self.saved = "run_with_cache(), every hook point"

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bridge(tokens)

    def cache(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        _, cache = self.bridge.run_with_cache(tokens)
        return list(cache.values())

    def generate(self, prompt: list[int], n: int, kv_cache: bool = True) -> list[int]:
        out = self.bridge.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            use_past_kv_cache=kv_cache,
        )
        return out[0, len(prompt) :].tolist()


class NnsightPeer:
    """nnsight wrapping transformers' ``LlamaForCausalLM`` (eager attention, so patterns can be saved)."""

    name = "nnsight"

    def __init__(self, directory: Path, tokenizer: Any) -> None:
        import nnsight
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, attn_implementation="eager"
        )
        wrapper = getattr(nnsight, "TransformersModel", None) or nnsight.LanguageModel
        self.lm = wrapper(hf.eval(), tokenizer=tokenizer)
        self.attn = hf.config._attn_implementation
        self.saved = (
            f"saving every module's output ({len(NNSIGHT_SAVED)} per layer: norms, q/k/v/o projections, "
            "attention output and pattern, gate/act/up/down, MLP, layer; embed_tokens, norm, logits)"
        )

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.lm.trace(tokens):
            logits = self.lm.lm_head.output.save()
        return logits

    def cache(self, tokens: torch.Tensor) -> list[Any]:
        saved: list[Any] = []
        with self.lm.trace(tokens):
            saved.append(self.lm.model.embed_tokens.output.save())
            for layer in self.lm.model.layers:
                for path in NNSIGHT_SAVED:
                    module = layer
                    for part in filter(None, path.split(".")):
                        module = getattr(module, part)
                    saved.append(module.output.save())
            saved.append(self.lm.model.norm.output.save())
            saved.append(self.lm.lm_head.output.save())
        return saved

    def generate(self, prompt: list[int], n: int) -> list[int]:
        # exactly n tokens, as on our side: no stop token
        with self.lm.generate(torch.tensor([prompt]), **exactly_n_greedy(n)) as tracer:
            out = tracer.result.save()
        return out[0, len(prompt) :].tolist()


LOADERS: dict[str, Callable[[Path, Any], Any]] = {"transformer_lens": BridgePeer, "nnsight": NnsightPeer}


# ------------------------------------------------------------------------------------------ measuring


def tensor_stats(values: Iterable[Any]) -> tuple[int, float]:
    """Number of tensors (tuples flattened, Nones dropped) and their distinct storage in MB."""
    count, seen, n_bytes = 0, set(), 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, (tuple, list)):
            stack.extend(value)
        elif isinstance(value, torch.Tensor):
            count += 1
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                n_bytes += storage.nbytes()
    return count, n_bytes / 1e6


def _ms(seconds: list[float]) -> str:
    return f"{Spread.of(seconds).median * 1e3:.0f} ms"


def measure_peers(
    model: Any = None,
    reps: int = 5,
    *,
    peers: Iterable[str] = tuple(PEERS),
    name: str = EMBEDDED,
    length: int = LENGTH,
    new_tokens: int = NEW_TOKENS,
    threads: int | None = 2,
    echo: Callable[[str], None] = print,
    report: PeerReport | None = None,
) -> list[PeerRow]:
    """Rows comparing each importable peer with ``model`` (ours, float32 on CPU; None: load ``name``).

    ``reps`` alternating repetitions per ratio (after one warm-up round; generate: ``max(2, reps // 2)``).
    ``threads``: torch threads for the run (restored after; None leaves them). Peers that do not import
    give one row saying why, and nothing is loaded for them. Pass a ``PeerReport`` to also get the raw
    figures in its ``data``.
    """
    report = report if report is not None else PeerReport()
    rows = report.rows
    problems = {peer: peer_problem(peer) for peer in peers}
    for peer, problem in problems.items():
        if problem:
            echo(f"skipping {peer}: {problem}")
            rows.append(PeerRow("peers", f"{peer}: skipped", problem))
    ready = [peer for peer, problem in problems.items() if problem is None]
    if not ready:
        return rows

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _measure(model, reps, ready, name, length, new_tokens, echo, report)
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _measure(
    model: Any,
    reps: int,
    ready: list[str],
    name: str,
    length: int,
    new_tokens: int,
    echo: Callable[[str], None],
    report: PeerReport,
) -> None:
    from llama3_lab.generation import generate_tokens
    from llama3_lab.loading import converted_model_dir, load_model

    rows, data = report.rows, report.data
    if model is None:
        model = load_model(name, device="cpu", dtype=torch.float32, progress=False)
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError(
            f"measure_peers compares float32 on CPU; got {model.dtype} on {model.device}: load ours with "
            f"load_model({name!r}, device='cpu', dtype=torch.float32)"
        )
    directory = converted_model_dir(name, progress=False)
    tokenizer = hf_tokenizer(name)
    tokens = torch.randint(
        3, model.cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(length)
    )
    prompt = model.tokenizer.encode(PROMPT)
    data.update(threads=torch.get_num_threads(), length=length, new_tokens=new_tokens, prompt=prompt)
    rows.append(
        PeerRow("peers", "setup", f"{name} float32 CPU, {torch.get_num_threads()} torch threads, reps={reps}")
    )

    with torch.inference_mode():
        ours_logits = model(tokens)
        ours_cache_logits, ours_cache = model.run_with_cache(tokens)
        ours_count, ours_mb = tensor_stats(ours_cache.values())
        del ours_cache
    ours_tokens = list(generate_tokens(model, prompt, new_tokens, temperature=0))
    data["ours"] = {"cache_tensors": ours_count, "cache_mb": ours_mb, "tokens": ours_tokens}

    for peer in ready:
        label = f"{peer} {peer_version(peer)}"
        echo(f"measuring {label}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices from the peers and transformers
            start = time.perf_counter()
            runner = LOADERS[peer](directory, tokenizer)
            load_s = time.perf_counter() - start
            figures = _measure_one(
                runner, model, tokens, (ours_logits, ours_cache_logits), prompt, ours_tokens, new_tokens, reps
            )
        figures.update(version=peer_version(peer), load_s=load_s, attn=runner.attn, saved=runner.saved)
        data[peer] = figures
        peer_rows = _peer_rows(runner.name, label, figures, length, new_tokens, ours_count, ours_mb)
        rows += peer_rows
        for row in peer_rows:
            echo(f"    {row.metric}: {row.value}")
        del runner
        gc.collect()


def _measure_one(
    runner: Any,
    model: Any,
    tokens: torch.Tensor,
    ours_logits: tuple[torch.Tensor, torch.Tensor],
    prompt: list[int],
    ours_tokens: list[int],
    new_tokens: int,
    reps: int,
) -> dict[str, Any]:
    from llama3_lab.generation import generate_tokens

    figures: dict[str, Any] = {}
    with torch.inference_mode():
        theirs = runner.logits(tokens).float()
        forward_logits, cache_logits = ours_logits  # our default forward; run_with_cache (unfused)
        figures["max_abs_dlogit"] = (theirs - forward_logits.float()).abs().max().item()
        figures["max_abs_dlogit_vs_cache"] = (theirs - cache_logits.float()).abs().max().item()
        figures["logit_scale"] = forward_logits.abs().max().item()
        count, mb = tensor_stats(runner.cache(tokens))
        figures.update(cache_tensors=count, cache_mb=mb)

        forward = alternate({"ours": lambda: model(tokens), "peer": lambda: runner.logits(tokens)}, reps)
        cache = alternate(
            {"ours": lambda: model.run_with_cache(tokens), "peer": lambda: runner.cache(tokens)}, reps
        )
    figures["forward_s"], figures["cache_s"] = forward, cache

    def ours() -> list[int]:
        return list(generate_tokens(model, prompt, new_tokens, temperature=0))

    variants: dict[str, Callable[[], list[int]]] = {
        "ours": ours,
        "peer": lambda: runner.generate(prompt, new_tokens),
    }
    if isinstance(runner, BridgePeer):
        variants["peer_no_kv"] = lambda: runner.generate(prompt, new_tokens, kv_cache=False)
    with torch.inference_mode():
        figures["tokens"] = {key: fn() for key, fn in variants.items() if key != "ours"}
        figures["generate_s"] = alternate(variants, max(2, reps // 2), warmup=0)
    figures["same_tokens"] = {key: out == ours_tokens for key, out in figures["tokens"].items()}
    figures["first_difference"] = {
        key: next((i for i, (a, b) in enumerate(zip(out, ours_tokens)) if a != b), None)
        for key, out in figures["tokens"].items()
    }
    return figures


def _peer_rows(
    who: str, label: str, f: dict[str, Any], length: int, n: int, ours_count: int, ours_mb: float
) -> list[PeerRow]:
    phase = f"peers: {label}"
    diff = f["max_abs_dlogit"]
    rows = [
        PeerRow(phase, f"load ({f['attn']} attention)", f"{f['load_s']:.2f} s"),
        PeerRow(
            phase,
            f"logits on {length} tokens vs ours, max abs difference (|logit| up to {f['logit_scale']:.1f})",
            f"{diff:.2e} (within {TOLERANCE:g}: {'yes' if diff <= TOLERANCE else 'NO'}); "
            f"{f['max_abs_dlogit_vs_cache']:.2e} against our run_with_cache logits (unfused attention)",
        ),
        PeerRow(
            phase,
            f"forward {length} tokens, {who} / ours ({_ms(f['forward_s']['peer'])} / "
            f"{_ms(f['forward_s']['ours'])})",
            ratio_spread(f["forward_s"]["peer"], f["forward_s"]["ours"]).text(),
        ),
        PeerRow(
            phase,
            f"full cache, {who} {f['saved']}: {f['cache_tensors']} tensors ({f['cache_mb']:.0f} MB) / ours "
            f"run_with_cache: {ours_count} tensors ({ours_mb:.0f} MB), {length} tokens "
            f"({_ms(f['cache_s']['peer'])} / {_ms(f['cache_s']['ours'])})",
            ratio_spread(f["cache_s"]["peer"], f["cache_s"]["ours"]).text(),
        ),
    ]
    ours_tok_s = Spread.of([n / t for t in f["generate_s"]["ours"]]).median
    for key, what in (("peer", "generate"), ("peer_no_kv", "generate(use_past_kv_cache=False)")):
        if key not in f["generate_s"]:
            continue
        peer_tok_s = Spread.of([n / t for t in f["generate_s"][key]]).median
        same = f["same_tokens"][key]
        first = f["first_difference"][key]
        rows.append(
            PeerRow(
                phase,
                f"greedy {n} tokens, {who} {what} / ours, tok/s ({peer_tok_s:.1f} / {ours_tok_s:.1f}; "
                f"same tokens: {same}" + ("" if same else f", first differs at new token {first}") + ")",
                # tokens/s ratio peer / ours = our seconds / theirs, per repetition
                ratio_spread(f["generate_s"]["ours"], f["generate_s"][key]).text(),
            )
        )
    return rows


# ------------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="alternating repetitions per ratio (default 5)")
    parser.add_argument("--json", action="store_true", help="print rows and raw figures as JSON")
    parser.add_argument(
        "--peers", nargs="+", choices=list(PEERS), default=list(PEERS), help="which peers (default all)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    report = PeerReport()
    measure_peers(None, args.reps, peers=args.peers, threads=2, echo=echo, report=report)
    versions = {"torch": torch.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        versions["transformers"] = None
    versions.update({peer: peer_version(peer) for peer in PEERS})
    if args.json:
        print(
            json.dumps({"versions": versions, "rows": [asdict(r) for r in report.rows], "data": report.data})
        )
        return
    print()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for row in report.rows:
        print(f"{row.phase} | {row.metric} | {row.value}")


if __name__ == "__main__":
    main()
