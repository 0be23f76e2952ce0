"""The fast decoder's step compiled ahead of time (AOTInductor), kept in the user cache, loaded in seconds.

    llama3-lab compile smollm2-135m-instruct     # once: a few minutes (CPU Inductor, weights frozen)
    model.generate("Once upon a time")           # any later process: loads the package (2-5 s) and uses it

``torch.compile`` of the fast decoder's step costs most of a minute in *every* new process, so
notebooks and the CLI never used it. Here the same step (``fast.DecodeStep``) is exported once
(``torch.export``) and compiled by AOTInductor into a ``.pt2`` package, with the weights frozen into
it (pre-packed for the CPU's own matmul micro-kernels): what ``torch.compile`` would build, built
once and kept under ``<cache>/compiled/`` beside a JSON record of what it was built for (torch
version, CPU capability, dtype, batch size, cache capacity, config and a fingerprint of the weights).

``generate``, ``generate_tokens`` and ``Session`` use a package by default (``fast="auto"``; a
``Session`` step also takes every head's attention row and every block's residual from it) when all
of this holds, and otherwise decode with the model's own hookable forward, as before:

- the model is on the CPU, on one device, and nothing is hooked (no hook point, no module hook):
  the package never visits a hook point, so a hooked generation stays on the exact eager path;
- a package was built for this torch, this CPU capability, this dtype and batch, with a capacity of
  at least prompt + new tokens;
- the weights are the ones it was built from: a fingerprint of every parameter's bytes is compared
  once per model object, and afterwards each parameter's identity and in-place version counter (an
  edited or replaced weight, or a replaced, deleted or inserted module, falls back to the eager path;
  the module tree is walked again when torch's registration hooks saw a module or parameter set
  anywhere, or when a module's children changed);
- its frozen weights, a second copy of the model's, fit in the free memory (they are loaded on first
  use, never at ``load_model``).

The package's tokens equal the eager path's greedy tokens (tested); its logits agree to float32
rounding, not bit for bit (another matmul kernel sums in another order).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .assets import atomic_path, cache_dir, write_atomic
from .hook_points import any_hook_would_run
from .hooks import spread_over_devices
from .kv_cache import KVCache
from .memory import free_memory_bytes
from .units import format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .model import LlamaModel

FORMAT = 5
"""Bumped whenever ``DecodeStep``'s inputs, outputs or math change: older packages are then ignored
(5: the cache's positions are a dynamic size, ``POSITION_BLOCK`` at a time)."""

POSITION_BLOCK = 64
"""A package's step attends over the filled cache rounded up to this many positions, not its capacity:
it is exported with the cache's length as a dynamic size (a multiple of this) and called with views
of the first ``filled`` positions. Measured on SmolLM2-135M in float32: the step at 128 positions
1.11x faster than the same step over all 512 (12 alternated rounds), with the same bits."""

DEFAULT_CAPACITY = 512
"""Positions (prompt + new tokens) a package holds by default; a multiple of 64 (the decoder's padding)."""

INDUCTOR_CONFIGS: dict[str, Any] = {
    "freezing": True,  # weights become constants, pre-packed for the matmul kernels
    "max_autotune": True,  # the CPU's C++ GEMM micro-kernels, timed against MKL per shape
    "max_autotune_gemm_backends": "CPP,ATEN",
    "cpp.enable_concat_linear": True,  # q|k|v and gate|up as one product each: 1.22x the step, measured
}
"""What a package is compiled with (the fast decoder's CPU compile: Inductor, max-autotune, frozen)."""

STEP_OPTIONS: dict[str, Any] = {"reductions": True}
"""The ``fast.DecodeStep`` options a package is compiled with (the attention products as reductions:
one fused loop per layer, 1.08x the compiled step; measured in ``DecodeStep``'s docstring)."""

QUICK_CONFIGS: dict[str, Any] = {"freezing": True}
"""A quicker compile (no autotuning: seconds for a tiny model, a slower step): for tests and smoke runs."""


def _compiler_key(configs: dict[str, Any], dtype: torch.dtype) -> str:
    """The part of a package's key that says how it was compiled: the Inductor configs, whether the
    projection + residual add fusion was kept out (``_no_linear_add_fusion``) and the step's options."""
    unfused = dtype == torch.float32 and _fusion_pass() is not None
    how = {**configs, "llama3_lab.unfused_linear_add": unfused, "llama3_lab.step": STEP_OPTIONS}
    text = json.dumps(how, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def step_to_compile(model: LlamaModel, capacity: int) -> torch.nn.Module:
    """The ``fast.DecodeStep`` a package of ``capacity`` positions compiles for ``model`` (in eval mode)."""
    from .fast import DecodeStep

    unembed = _record_for(model, 1, capacity, "").unembed_inside
    return DecodeStep(model, capacity, unembed=unembed, **STEP_OPTIONS).eval()


def _fusion_pass() -> Any:
    """Inductor's oneDNN fusion pass, if it has the check (``_is_valid_binary``) for fusing a computation
    with the add after it; None otherwise."""
    try:
        from torch._inductor.fx_passes import mkldnn_fusion
    except ImportError:  # pragma: no cover - every torch this package supports has it
        return None
    return mkldnn_fusion if hasattr(mkldnn_fusion, "_is_valid_binary") else None


@contextmanager
def _no_linear_add_fusion(dtype: torch.dtype) -> Iterator[None]:
    """While compiling a float32 step: no fusion of a projection with the residual add after it.

    Freezing turns ``o_proj(z) + x`` and ``down_proj(·) + h`` into oneDNN's linear+add
    (``mkldnn._linear_pointwise.binary``), which streamed a one-row float32 product at 14-18 GB/s here
    (a microbenchmark with unpacked weights, against 19-24 GB/s for the eager blocked product);
    unfused, the projections become the C++ GEMM templates that max-autotune picks for the other
    projections (46-53 GB/s at a quiet moment), and the add fuses into the next kernel. Measured: the
    float32 package's greedy loop at 52.2 against 38.2 tok/s (1.38x, 8 alternated runs, same tokens).
    A private Inductor check, so where a torch has none, nothing is changed (and the package key says
    so).
    """
    mkldnn_fusion = _fusion_pass()
    if dtype != torch.float32 or mkldnn_fusion is None:
        yield
        return
    real = mkldnn_fusion._is_valid_binary
    linear = torch.ops.mkldnn._linear_pointwise.default

    def check(match: Any, computation_op: Any, binary_op: Any) -> bool:
        return computation_op is not linear and real(match, computation_op, binary_op)

    mkldnn_fusion._is_valid_binary = check
    try:
        yield
    finally:
        mkldnn_fusion._is_valid_binary = real


class PackageError(RuntimeError):
    """A compiled package cannot be built or loaded as asked (wrong device, hooks on, corrupt file...)."""


@dataclass(frozen=True)
class PackageRecord:
    """What a package was built for; stored as JSON beside the ``.pt2``."""

    format: int
    torch: str
    cpu: str
    dtype: str
    batch_size: int
    capacity: int
    config: str  # hash of the model's config
    weights: str  # fingerprint of the weights
    unembed_inside: bool = True  # False: the step ends at the final norm, the caller unembeds
    compiler: str = ""  # how it was compiled: hash of the Inductor configs and fusions (_compiler_key)
    build_seconds: float = 0.0
    weight_bytes: int = 0


# --------------------------------------------------------------------------------------------------
# Where packages live and what they are for


def package_dir() -> Path:
    """``<cache>/compiled``: the packages and their JSON records."""
    return cache_dir() / "compiled"


def environment() -> dict[str, str]:
    """The torch version and the CPU's vector capability a package's code was generated for."""
    capability = torch.backends.cpu.get_cpu_capability()
    return {"torch": torch.__version__, "cpu": f"{platform.machine()}-{capability}"}


def config_hash(model: LlamaModel) -> str:
    """A short hash of the model's config (the shapes the compiled code was generated for)."""
    text = json.dumps(model.cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(model: LlamaModel) -> str:
    """A hash of every parameter's name, shape, dtype and bytes (0.7 s for SmolLM2 in float32, measured)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, param in model.named_parameters(remove_duplicate=False):
        tensor = param.detach()
        if not tensor.is_contiguous():  # the loaders keep 2-D weights column-major (matvec_layout)
            tensor = tensor.T if tensor.T.is_contiguous() else tensor.contiguous()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.cpu().view(torch.uint8).numpy()))
    return digest.hexdigest()


def _record_for(model: LlamaModel, batch_size: int, capacity: int, weights: str) -> PackageRecord:
    env = environment()
    return PackageRecord(
        format=FORMAT,
        torch=env["torch"],
        cpu=env["cpu"],
        dtype=str(model.dtype).removeprefix("torch."),
        batch_size=batch_size,
        capacity=capacity,
        config=config_hash(model),
        weights=weights,
        unembed_inside=model.dtype != torch.float32,  # float32: the eager blocked product is faster (fast.py)
    )


def package_path(record: PackageRecord) -> Path:
    """``<cache>/compiled/decode-<weights>-<key>.pt2``: one file per build target."""
    key = hashlib.sha256(json.dumps({**asdict(record), "build_seconds": 0}, sort_keys=True).encode())
    return package_dir() / f"decode-{record.weights[:12]}-{key.hexdigest()[:12]}.pt2"


def _records() -> list[tuple[PackageRecord, Path]]:
    """Every package record in the cache whose package file is there (unreadable records skipped)."""
    found = []
    for meta in sorted(package_dir().glob("decode-*.json")):
        try:
            record = PackageRecord(**json.loads(meta.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        path = meta.with_suffix(".pt2")
        if path.exists():
            found.append((record, path))
    return found


# --------------------------------------------------------------------------------------------------
# The weights a model object holds: fingerprinted once, then watched through version counters


@dataclass
class _Weights:
    fingerprint: str
    state: tuple[tuple[int, int, int], ...]


_WEIGHTS: weakref.WeakKeyDictionary[Any, _Weights] = weakref.WeakKeyDictionary()

_tree_edits = 0
"""Bumped whenever any module anywhere gains a submodule or a parameter (``setattr``, ``add_module``,
``register_parameter``: torch's global registration hooks)."""


@dataclass
class _Tree:
    edits: int  # _tree_edits when walked
    modules: list[torch.nn.Module]  # every module but the root (a weak key its value held would never go)
    containers: list[torch.nn.Module]  # those of them with children, when walked
    shape: list[tuple[int, int]]  # (id, len) of the root's ``_modules`` dict, then each container's


_TREES: weakref.WeakKeyDictionary[Any, _Tree] = weakref.WeakKeyDictionary()


def _count_tree_edit(*_args: Any) -> None:
    global _tree_edits
    _tree_edits += 1


def _watch_tree_edits() -> None:
    from torch.nn.modules import module as torch_module

    if _count_tree_edit not in torch_module._global_module_registration_hooks.values():
        torch_module.register_module_module_registration_hook(_count_tree_edit)
        torch_module.register_module_parameter_registration_hook(_count_tree_edit)


def _all_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module of the tree: walked once, then reused while nothing was registered anywhere (torch's
    registration hooks) and the root's and every container's ``_modules`` dict is the same dict with as
    many entries.

    The second check catches what bypasses registration: ``del module.child``, ``ModuleList`` deletion,
    ``pop`` and ``insert`` (they rebuild or edit ``_modules`` directly). A Session asks before each
    ``step`` call's first token: the walk costs ~0.3 ms for SmolLM2's 1,033 modules (hook points
    included), the check of its 155 modules with children ~0.03 ms.
    """
    _watch_tree_edits()
    known = _TREES.get(model)
    if known is not None and known.edits == _tree_edits:
        if list(map(_children_key, [model, *known.containers])) == known.shape:
            return [model, *known.modules]
    found, stack = [], [model]
    while stack:
        module = stack.pop()
        found.append(module)
        stack.extend(child for child in module._modules.values() if child is not None)
    containers = [m for m in found[1:] if m._modules]  # a leaf gains children only through add_module
    _TREES[model] = _Tree(_tree_edits, found[1:], containers, list(map(_children_key, [model, *containers])))
    return found


def _children_key(module: torch.nn.Module) -> tuple[int, int]:
    return id(module._modules), len(module._modules)


def _param_state(modules: list[torch.nn.Module]) -> tuple[tuple[int, int, int], ...]:
    """(identity, version counter, data pointer) of every parameter where it sits in the tree (a tied
    or reused one at each place: a module inserted twice changes the state): any edit changes it."""
    return tuple(
        (id(p), p._version, p.data_ptr())
        for module in modules
        for p in module._parameters.values()  # read every step: a dict edit past setattr shows too
        if p is not None
    )


def current_fingerprint(model: LlamaModel, modules: list[torch.nn.Module] | None = None) -> str:
    """The model's weights fingerprint, recomputed only when a parameter was replaced or edited in place
    (``modules``: ``_all_modules(model)`` if the caller has it)."""
    state = _param_state(_all_modules(model) if modules is None else modules)
    known = _WEIGHTS.get(model)
    if known is None or known.state != state:
        known = _Weights(weights_fingerprint(model), state)
        _WEIGHTS[model] = known
    return known.fingerprint


# --------------------------------------------------------------------------------------------------
# Build


def _check_model(model: LlamaModel, action: str) -> None:
    if spread_over_devices(model) or model.device.type != "cpu":
        raise PackageError(
            f"{action} needs a model on the CPU, on one device; this one is on {model.device}"
            + (" and placed over several devices" if spread_over_devices(model) else "")
            + ". On CUDA the fast decoder captures a CUDA graph instead (generate(..., fast=True))."
        )
    if model.dtype not in (torch.float32, torch.bfloat16):
        raise PackageError(f"{action} is for float32 or bfloat16 models; this one is {model.dtype}.")


def build_package(
    model: LlamaModel,
    capacity: int = DEFAULT_CAPACITY,
    batch_size: int = 1,
    *,
    force: bool = False,
    inductor_configs: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = print,
) -> Path:
    """Compile ``model``'s decode step for ``capacity`` positions into the cache; returns the package path.

    Takes minutes on a CPU (a 30-layer model: about two on two cores); a package already built for
    the same weights and target is kept unless ``force``. ``inductor_configs`` replaces
    ``INDUCTOR_CONFIGS`` (tests use a quicker compile).
    """
    from .fast import FastDecoder

    _check_model(model, "build_package")
    if capacity % POSITION_BLOCK or capacity <= 0 or capacity > model.cfg.max_position_embeddings:
        raise PackageError(
            f"capacity={capacity}: a package holds a positive multiple of {POSITION_BLOCK} positions, at "
            f"most the model's context ({model.cfg.max_position_embeddings}); "
            f"e.g. capacity={DEFAULT_CAPACITY}."
        )
    FastDecoder(model, capacity, batch_size, compile=None).check_no_hooks()
    compiler = os.environ.get("CXX") or next(
        (name for name in ("c++", "g++", "clang++") if shutil.which(name)), None
    )
    if compiler is None or not shutil.which(compiler):
        raise PackageError(
            "compiling the decode step needs a C++ compiler (AOTInductor writes C++) and none was found: "
            "install one (Debian/Ubuntu: apt-get install g++; macOS: xcode-select --install) or set CXX."
        )
    configs = INDUCTOR_CONFIGS if inductor_configs is None else inductor_configs
    compiler = _compiler_key(configs, model.dtype)
    record = replace(_record_for(model, batch_size, capacity, current_fingerprint(model)), compiler=compiler)
    path = package_path(record)
    say = echo or (lambda _text: None)
    if path.exists() and path.with_suffix(".json").exists() and not force:
        size = format_bytes(path.stat().st_size)
        say(f"already compiled for this model, torch and CPU ({size}; --force rebuilds)")
        return path
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = 3 * weight_bytes  # the model, the frozen copy, the compiler's working copies
    free = free_memory_bytes("cpu")
    if needed > free:
        raise PackageError(
            f"compiling needs about {format_bytes(needed)} of memory (the weights three times) and "
            f"{format_bytes(free)} is free: close other programs, or keep using the eager path."
        )
    say(f"compiling the decode step ({capacity} positions, batch {batch_size}); this takes a few minutes ...")
    start = time.perf_counter()
    cache = KVCache.allocate(model, batch_size=batch_size, max_length=capacity)
    step = step_to_compile(model, capacity)
    token = torch.zeros(batch_size, 1, dtype=torch.long)
    position = torch.zeros((), dtype=torch.long)
    from .hook_points import hide_context_hooks_from_compiler

    hide_context_hooks_from_compiler()
    with torch.no_grad():
        keys, values, dynamic = _example_cache(cache, capacity)
        program = torch.export.export(
            step, (token, position, keys, values), dynamic_shapes=dynamic, strict=False
        )
        with atomic_path(path) as tmp:
            built = tmp.with_suffix(".pt2")  # AOTInductor wants the suffix; renamed into tmp, then path
            try:
                with _no_linear_add_fusion(model.dtype):
                    torch._inductor.aoti_compile_and_package(
                        program,
                        package_path=str(built),
                        inductor_configs=dict(configs),  # AOTInductor adds its own keys to the dict
                    )
                built.replace(tmp)
            finally:
                built.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    done = PackageRecord(
        **{**asdict(record), "build_seconds": round(seconds, 1), "weight_bytes": weight_bytes}
    )
    write_atomic(path.with_suffix(".json"), json.dumps(asdict(done), indent=2).encode())
    say(f"compiled in {seconds:.0f} s: {path} ({format_bytes(path.stat().st_size)})")
    for older in _older_builds(done, path):
        size = format_bytes(older.stat().st_size)
        try:
            older.unlink()
            older.with_suffix(".json").unlink(missing_ok=True)
        except OSError as error:  # e.g. held open on Windows: it stays usable, this build is preferred
            say(f"kept an older build of the same package ({older.name}, {size}): {error}")
        else:
            say(f"removed an older build of the same package ({older.name}, {size})")
    return path


def _example_cache(
    cache: KVCache, capacity: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[Any, ...] | None]:
    """What the step is exported with: views of the first positions of a full-capacity cache (the strides
    a call will have) and their length as a dynamic size, a multiple of ``POSITION_BLOCK`` up to
    ``capacity``; a package of one block has the static length."""
    if capacity <= POSITION_BLOCK:
        return cache.keys, cache.values, None
    blocks = torch.export.Dim("position_blocks", min=1, max=capacity // POSITION_BLOCK)
    length = {2: POSITION_BLOCK * blocks}  # keys/values [B K T d]: T dynamic
    layers = len(cache.keys)
    example = 2 * POSITION_BLOCK  # a size that is neither 0, 1 nor the capacity, so none is assumed
    keys = [tensor[:, :, :example] for tensor in cache.keys]
    values = [tensor[:, :, :example] for tensor in cache.values]
    return keys, values, (None, None, [length] * layers, [length] * layers)


def _filled_views(
    position: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The cache a package step at ``position`` reads: its first ``position + 1`` positions rounded up to
    ``POSITION_BLOCK`` (views; the step writes its K/V through them into the full cache)."""
    capacity = keys[0].shape[2]
    filled = min(capacity, -(-(int(position) + 1) // POSITION_BLOCK) * POSITION_BLOCK)
    if filled == capacity:
        return keys, values
    return [k[:, :, :filled] for k in keys], [v[:, :, :filled] for v in values]


def _older_builds(record: PackageRecord, path: Path) -> list[Path]:
    """Packages for the same target as ``record`` (torch, CPU, dtype, batch, capacity, config, weights)
    compiled another way or in an older format: superseded by the build at ``path``."""
    same = ("torch", "cpu", "dtype", "batch_size", "capacity", "config", "weights")
    return [
        other
        for found, other in _records()
        if other != path
        and (found.compiler, found.format) != (record.compiler, record.format)
        and all(getattr(found, k) == getattr(record, k) for k in same)
    ]


# --------------------------------------------------------------------------------------------------
# Find and load


def usable_package(model: LlamaModel, length: int, batch_size: int = 1) -> Path | None:
    """The smallest package that can decode ``length`` positions of ``model`` now, or None; of two with
    that capacity, the one built the way ``build_package`` builds now (an older build stays usable).

    Cheap when no package was built for this model's config (no weights are hashed then). None, too,
    while anything is hooked, on a non-CPU or placed model, or when the frozen copy of the weights
    would not fit the free memory.
    """
    if model.device.type != "cpu" or spread_over_devices(model) or _anything_hooked(model):
        return None
    if model.dtype not in (torch.float32, torch.bfloat16):
        return None
    target = _record_for(model, batch_size, 0, "")
    same_target = ("format", "torch", "cpu", "dtype", "batch_size", "config")
    candidates = [
        (record, path)
        for record, path in _records()
        if record.capacity >= length and all(getattr(record, k) == getattr(target, k) for k in same_target)
    ]
    if not candidates:
        return None
    fingerprint = current_fingerprint(model)  # hashed only now that a package could serve this model
    current = _compiler_key(INDUCTOR_CONFIGS, model.dtype)  # of two builds, the one `compile` makes now
    fitting = sorted(
        (r.capacity, r.compiler != current, str(p), r) for r, p in candidates if r.weights == fingerprint
    )
    if not fitting:
        return None
    _capacity, _older, name, record = fitting[0]
    path = Path(name)
    if path in _LOADED or record.weight_bytes <= free_memory_bytes("cpu") // 2:
        return path
    return None


def still_usable(model: LlamaModel, path: Path) -> bool:
    """Whether the package ``usable_package`` gave for ``model`` may still decode its next step: nothing
    hooked since, and the weights unchanged (identity and version counters; rehashed only if edited)."""
    modules = _all_modules(model)  # once for both questions
    if any_hook_would_run(modules):
        return False
    return record_of(path).weights == current_fingerprint(model, modules)


def _anything_hooked(model: LlamaModel) -> bool:
    return any_hook_would_run(_all_modules(model))


_LOADED: dict[Path, Any] = {}


def load_package(path: str | Path) -> Any:
    """The AOTInductor runner of a package (loaded once per process): ``runner(token, position, keys,
    values)`` returns ``DecodeStep``'s outputs (see ``packaged_step`` for the logits)."""
    path = Path(path)
    if path in _LOADED:
        return _LOADED[path]
    import torch._inductor

    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as error:  # a truncated or foreign file: say which and how to rebuild
        raise PackageError(
            f"the compiled package {path} could not be loaded ({type(error).__name__}: {error}). "
            "Delete it, or rebuild it with `llama3-lab compile MODEL --force`."
        ) from error
    _LOADED[path] = runner
    return runner


def packaged_step(model: LlamaModel, path: str | Path) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``step(token, position, keys, values) -> (logits [B V], greedy [B], resid [L B D], pattern [L B H T])``
    from a package; a float32 package ends at the final norm and the model's own ``unembed`` (the
    blocked product of ``linear``, bit-identical to the eager one) makes the logits here."""
    record = record_of(path)
    if record.format != FORMAT:  # another step's inputs and outputs: a static cache, other records
        raise PackageError(
            f"the package {path} was built by another version of llama3-lab (format {record.format}, this "
            f"one reads {FORMAT}): rebuild it with `llama3-lab compile` (it replaces the older build)."
        )
    runner = load_package(path)
    unembed_inside = record.unembed_inside

    def step(
        token: torch.Tensor, position: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        outputs = runner(token, position, *_filled_views(position, keys, values))
        if unembed_inside:
            return outputs
        final, resid, pattern = outputs
        logits = model.unembed(final)  # [B V]
        return logits, logits.argmax(dim=-1), resid, pattern

    return step


def record_of(path: str | Path) -> PackageRecord:
    """The JSON record beside a package (read once per process)."""
    path = Path(path)
    if path not in _RECORDS:
        _RECORDS[path] = PackageRecord(**json.loads(path.with_suffix(".json").read_text()))
    return _RECORDS[path]


_RECORDS: dict[Path, PackageRecord] = {}
