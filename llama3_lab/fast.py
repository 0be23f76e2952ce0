"""Fast decoding: a fixed-shape decode step over the preallocated KV cache, compiled or graph-captured.

The eager path (``model(token, cache=cache)``) is what hooks need: every hook fires, every
shape is the length seen so far. Its price is Python work per step and shapes that change with every
token, which keep ``torch.compile`` and CUDA graphs out. ``FastDecoder`` trades the hooks for speed:

    decoder = FastDecoder(model, max_length=len(prompt) + 256)
    logits = decoder.prefill(prompt)            # the model's own forward (fused SDPA), fills the cache
    logits = decoder.step(token)                # one token at position decoder.position, fixed shapes
    ids = decoder.generate_greedy(prompt, 256)  # whole greedy loop; on CUDA no host sync per token
    ids = decoder.greedy_from(decoder.prefill(prompt).argmax(-1), 256)  # the same, in two timed parts

Why a step of its own. A decode step has one query at position p. The model's attention attends over
``cache[:p + 1]``, a shape that grows every step; here the query attends over the *whole* preallocated
cache ``[B, K, T_max, d]`` with the mask ``key position ≤ p``, and the new K/V are written with
``index_copy_`` at a position held in a tensor. Every tensor then has the same shape at every step, so
the step can be compiled once (CPU: Inductor, ``mode="max-autotune-no-cudagraphs"``, weights frozen so
they are pre-packed for the matmul kernels; or ahead of time, once per machine, by
``llama3_lab.packaged``, which ``generate`` then uses by default) or captured once as a CUDA graph
and replayed. Attention is the eager path's math (scores, float32 softmax, pattern · v), so the step
also returns every head's attention row and every block's residual, what a ``Session`` records.
Masked keys get probability exactly 0, so the result is the eager result up to summation order;
greedy tokens are tested equal.

Everything else is the model's own modules, called as they are: ``embed``, ``RMSNorm`` (ln1, ln2,
ln_final), the q/k/v/o projections, ``apply_rotary`` with the model's float32 RoPE tables, ``MLP``,
``unembed``; the block is the same ``h = x + attn(ln1(x)); out = h + mlp(ln2(h))``. Hook points are
not visited: a decoder refuses to run while hooks are registered (use the eager path to look inside).

Also here: ``run_with_cache_offloaded``, ``run_with_cache`` with activations copied to pinned CPU memory
asynchronously on CUDA (the copies overlap the rest of the forward; one sync at the end).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .activation_cache import ActivationCache
from .attention import apply_rotary, at_least_float32
from .hook_points import hide_context_hooks_from_compiler, hooked_names
from .hooks import spread_over_devices
from .kv_cache import KVCache
from .memory import check_cache_budget, estimate_cache

if TYPE_CHECKING:
    from .model import Attention, LlamaModel

COMPILE_MODE_CPU = "max-autotune-no-cudagraphs"


class FastPathError(RuntimeError):
    """The fast decoder cannot run in the requested way (hooks active, CUDA missing, cache full...)."""


class DecodeStep(nn.Module):
    """One decode step at a position held in a tensor, over a cache of fixed capacity: what is compiled.

    ``forward(token [B 1], position [], keys, values) -> (logits [B V], greedy [B], resid [L B D],
    pattern [L B H T])``, where ``keys`` and ``values`` are the cache's per-layer ``[B K T d]``
    tensors, ``T ≤ T_max`` (a package is called with views of the filled positions, see
    ``packaged.POSITION_BLOCK``; the step writes its K/V into them at ``position``); ``resid`` is
    every block's ``resid_post`` and ``pattern`` every head's attention row (0 beyond ``position``),
    what a ``Session`` records. The model's own modules, called as they are: ``embed``, ``RMSNorm`` (ln1,
    ln2, ln_final), the q/k/v/o projections, ``apply_rotary`` with the model's float32 RoPE tables,
    ``MLP``, ``unembed``; the block is the same ``h = x + attn(ln1(x)); out = h + mlp(ln2(h))``.
    Every shape but ``T`` is fixed, so the step compiles once (``torch.compile``, AOTInductor).

    ``reductions=True``: the two attention products (``q·kᵀ`` and ``pattern·v``) are written as
    multiply-and-sum reductions rather than matrix products, the same dot products summed in another
    order. For a step Inductor compiles for the CPU (the packages, ``FastDecoder``'s in-process
    compile), each layer's attention then becomes one fused loop instead of a batched matmul call, a
    GEMM template and a softmax kernel between them. Measured on SmolLM2-135M, 512 positions: the
    compiled step 1.08x faster in float32 and in bfloat16 (10 alternated rounds); the packages' greedy
    loops 1.06x in float32 (53.4 vs 50.4 tok/s, 8 alternated runs, the same tokens) and 1.15x in
    bfloat16 (105 vs 91 tok/s), whose greedy tokens now follow the eager bfloat16 path's for longer
    (62, 32, 46 and 64 of 64 tokens on four prompts, against 16, 4, 45 and 64). Run eagerly it would
    materialise ``[B K G T d]``, so the eager and CUDA steps keep the matrix products.

    ``unembed=False``: the step stops at the final norm and returns ``(final [B D], resid, pattern)``;
    the caller unembeds (``packaged`` does for float32 on the CPU: two float32 packages built the same
    day, greedy loops alternated 6 times, gave 36.5 tok/s with the eager blocked unembedding outside
    against 34.2 with it compiled inside, whose package also holds a second, pre-packed 113 MB copy of
    the 49152x576 matrix).
    """

    def __init__(
        self, model: LlamaModel, max_length: int, unembed: bool = True, reductions: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.unembed = unembed
        self.reductions = reductions
        cos, sin = model.rope(0, max_length)  # the model's float32 tables [T d], one row per position
        self.register_buffer("cos", cos.clone(), persistent=False)
        self.register_buffer("sin", sin.clone(), persistent=False)
        self.register_buffer("key_positions", torch.arange(max_length, device=cos.device), persistent=False)

    def attention(
        self,
        attn: Attention,
        x: torch.Tensor,
        position: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's attention for one query at ``position``, over the whole static cache; with its pattern.

        Same projections, RoPE and cache layout as ``Attention``, and its eager math (scores, float32
        softmax, pattern · v); what differs is the cache write (``index_copy_`` at a tensor position)
        and the mask ``key ≤ position`` over all T_max keys, so that no shape depends on the position.
        With one query position, the G query heads sharing a K/V head are G query *rows* of that head
        (``b (k g) 1 d -> b k g d``): the same dot products, no K/V expansion.
        """
        B = x.shape[0]
        H, K, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
        q = attn.q_proj(x).view(B, 1, H, d)  # b p (h d) -> b p h d
        k = attn.k_proj(x).view(B, 1, K, d)
        v = attn.v_proj(x).view(B, 1, K, d)
        rot_q, rot_k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        slot = position.view(1)
        keys.index_copy_(2, slot, rot_k.transpose(1, 2))  # [B K T d]
        values.index_copy_(2, slot, v.transpose(1, 2))
        grouped = rot_q.view(B, K, H // K, d)  # b 1 (k g) d -> b k g d: query heads grouped by K/V head
        if self.reductions:  # scores [B K G T] = Σ_d grouped [B K G 1 d] · keys [B K 1 T d]
            scores = (grouped.unsqueeze(3) * keys.unsqueeze(2)).sum(-1) * attn.scale
        else:
            # scores [B K G T] = (keys [B K T d] · groupedᵀ [B K d G])ᵀ: the same dot products as
            # q·kᵀ, with the cache as the matrix that streams (compiled, q·kᵀ made Inductor transpose
            # and re-pack all T_max keys of every layer at every step: 41 µs a layer, measured)
            scores = torch.matmul(keys, grouped.transpose(-1, -2)).transpose(-1, -2) * attn.scale
        visible = self.key_positions[: keys.shape[2]] <= position  # [T]: keys ≤ position
        scores = scores.masked_fill(~visible, float("-inf"))
        pattern = scores.softmax(dim=-1, dtype=at_least_float32(scores.dtype)).to(x.dtype)
        if self.reductions:  # z [B K G d] = Σ_t pattern [B K G T 1] · values [B K 1 T d]
            z = (pattern.unsqueeze(-1) * values.unsqueeze(2)).sum(-2)
        else:
            z = torch.einsum("bkgt,bktd->bkgd", pattern, values)  # [B K G d]
        out = attn.o_proj(z.reshape(B, 1, H * d))  # b k g d -> b 1 (k g d)
        return out, pattern.reshape(B, H, -1)  # b k g t -> b (k g) t

    def forward(
        self,
        token: torch.Tensor,
        position: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        slot = position.view(1)
        cos, sin = self.cos.index_select(0, slot), self.sin.index_select(0, slot)  # [1 d]
        x = model.embed(token)  # [B 1 D]
        resid, patterns = [], []
        for layer, block in enumerate(model.blocks):
            attn, pattern = self.attention(
                block.attn, block.ln1(x), position, keys[layer], values[layer], cos, sin
            )
            h = x + attn
            x = h + block.mlp(block.ln2(h))
            resid.append(x[:, -1])
            patterns.append(pattern)
        final = model.ln_final(x)[:, -1]  # [B D]
        if not self.unembed:
            return final, torch.stack(resid), torch.stack(patterns)
        logits = model.unembed(final)  # [B V]
        return logits, logits.argmax(dim=-1), torch.stack(resid), torch.stack(patterns)


class FastDecoder:
    """Fixed-shape greedy/sampling decoder for ``model`` with a static KV cache of ``max_length`` positions.

    ``compile``: ``"auto"`` (Inductor on CPU; nothing on CUDA, where the CUDA graph removes the Python
    cost), ``"inductor"``, another ``torch.compile`` backend name (``"eager"``, ``"aot_eager"``: quick,
    for tests), or ``None`` (plain eager step). ``cuda_graph``: capture the step as a CUDA graph
    (default: on CUDA). ``freeze_weights``: let Inductor treat the weights as constants (CPU: pre-packed
    oneDNN layouts; costs a second copy of the weights and ignores later edits of them).

    The first compiled step takes long (CPU Inductor: one to a few minutes for a 30-layer model): this
    is a mode for long generations and benchmarks, not for notebooks that change hooks every cell.
    """

    def __init__(
        self,
        model: LlamaModel,
        max_length: int,
        batch_size: int = 1,
        compile: str | None = "auto",  # noqa: A002 - the natural name; shadows the builtin only here
        cuda_graph: bool | None = None,
        freeze_weights: bool = True,
        package: str | Path | None = None,
    ) -> None:
        if spread_over_devices(model):
            raise FastPathError(
                f"this model is placed over {', '.join(map(str, model.placement.devices))} "
                "(load_model with device_map), but the fast decoder runs every layer on one device and "
                "calls the modules directly, past the hooks that bring offloaded weights in. Use the eager "
                "path (model.generate without fast=True, or a Session), or load the model onto one device."
            )
        self.model = model
        self.device = model.device
        self.options = {"batch_size": batch_size, "compile": compile, "cuda_graph": cuda_graph}
        self.options["freeze_weights"] = freeze_weights
        self.options["package"] = package
        on_cuda = self.device.type == "cuda"
        if cuda_graph and not on_cuda:
            raise FastPathError(
                f"cuda_graph=True needs a model on a CUDA device; this one is on {self.device}. "
                "Move it with model.to('cuda') or leave cuda_graph unset."
            )
        self.cuda_graph = on_cuda if cuda_graph is None else cuda_graph
        self.compile = ("inductor" if not on_cuda else None) if compile == "auto" else compile
        self.package = Path(package) if package is not None else None
        if self.package is not None:  # a step compiled ahead of time (llama3_lab.packaged)
            self.compile, self.cuda_graph = "aoti", False
        self.freeze_weights = freeze_weights
        # The cache is padded to a multiple of 64 keys (fused GPU kernels want aligned mask rows).
        capacity = min(-(-max_length // 64) * 64, model.cfg.max_position_embeddings)
        self.max_length = max(max_length, 1)
        self.cache = KVCache.allocate(model, batch_size=batch_size, max_length=max(capacity, max_length))
        for tensor in self.cache.keys + self.cache.values:
            tensor.zero_()  # masked slots get weight 0, but 0 · NaN from uninitialised memory would be NaN
        # the step: the model's modules (eager, compiled in-process or graph-captured), or a package's
        reductions = self.compile == "inductor" and self.device.type == "cpu"  # DecodeStep's docstring
        self.step_module: Callable[..., tuple[torch.Tensor, ...]] = DecodeStep(
            model, self.cache.max_length, reductions=reductions
        )
        self._token = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self._position = torch.zeros((), dtype=torch.long, device=self.device)
        self.position = 0  # host copy of the position of the next token to be fed
        self._advance: Callable[[], tuple[torch.Tensor, torch.Tensor]] = self._build_advance()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- properties -----------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    def __repr__(self) -> str:
        return (
            f"FastDecoder(position={self.position}/{self.max_length}, batch={self.batch_size}, "
            f"compile={self.compile!r}, cuda_graph={self.cuda_graph}, device={self.device})"
        )

    # -- the fixed-shape step -------------------------------------------------------------------------

    def _advance_impl(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One step, then the greedy token becomes the next input and the position advances (in place)."""
        logits, greedy, *_records = self.step_module(
            self._token, self._position, self.cache.keys, self.cache.values
        )
        self._token.copy_(greedy.view(-1, 1))
        self._position.add_(1)
        return logits, greedy

    def _build_advance(self) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        if self.package is not None:
            self.step_module = self._packaged_step()
            return self._advance_impl
        if self.compile is None:
            return self._advance_impl
        hide_context_hooks_from_compiler()  # the graph holds no hook; check_no_hooks runs before each step
        if self.compile == "inductor":
            mode = COMPILE_MODE_CPU if self.device.type == "cpu" else "max-autotune-no-cudagraphs"
            compiled = torch.compile(self._advance_impl, mode=mode, fullgraph=True, dynamic=False)
        else:
            compiled = torch.compile(self._advance_impl, backend=self.compile, fullgraph=True, dynamic=False)
        freeze = self.compile == "inductor" and self.freeze_weights

        def advance() -> tuple[torch.Tensor, torch.Tensor]:
            if freeze:
                import torch._inductor.config as inductor_config

                with inductor_config.patch(freezing=True):
                    return compiled()
            return compiled()

        return advance

    def _packaged_step(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """The step of a package built by ``packaged.build_package`` for this capacity and batch."""
        from .packaged import PackageError, packaged_step, record_of

        record = record_of(self.package)
        if (record.capacity, record.batch_size) != (self.cache.max_length, self.batch_size):
            raise PackageError(
                f"the package {self.package} holds {record.capacity} positions for batch "
                f"{record.batch_size}; "
                f"this decoder has {self.cache.max_length} for batch {self.batch_size}: build it with "
                f"max_length={record.capacity}, batch_size={record.batch_size}."
            )
        return packaged_step(self.model, self.package)

    def _run_advance(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.max_length:
            raise FastPathError(
                f"the decoder's cache is full ({self.max_length} positions): build a FastDecoder with a "
                "larger max_length."
            )
        with torch.inference_mode():
            if self.cuda_graph:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
                out = self._graph_out
            else:
                out = self._advance()
        self.position += 1
        return out

    def _capture(self) -> None:
        """Record one advance as a CUDA graph (after warm-up on a side stream, as PyTorch requires).

        Warm-up steps write K/V at the current position; the real step at that position overwrites
        them before anything reads them, and the token/position buffers are restored afterwards.
        """
        token, position = self._token.clone(), self._position.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._advance()
                self._token.copy_(token)
                self._position.copy_(position)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._advance()
        # capture does not execute the kernels: the buffers still hold token/position
        self._graph, self._graph_out = graph, out

    # -- public API -----------------------------------------------------------------------------------

    def check_no_hooks(self) -> None:
        """Raise if hooks are registered on the model: the fast step never visits hook points."""
        active = hooked_names(self.model.hook_dict)
        if active:
            shown = ", ".join(active[:5]) + (" ..." if len(active) > 5 else "")
            raise FastPathError(
                f"hooks are registered on {len(active)} hook point(s) ({shown}), but the fast decoder "
                "does not visit hook points. Use the eager path (model.generate without fast=True, or a "
                "Session) to hook or record steps, or remove the hooks (model.reset_hooks())."
            )

    def reset(self) -> None:
        """Forget every position (the cache memory and compiled step are kept)."""
        self.position = 0
        self.cache.reset()

    def prefill(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Run the prompt through the model's own forward (fused SDPA attention), filling the cache.

        Starts from an empty cache. Returns the logits of the last prompt position, ``[B, V]``.
        """
        self.check_no_hooks()
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        if tokens.shape[0] != self.batch_size:
            raise FastPathError(f"the decoder was built for batch {self.batch_size}, got {tokens.shape[0]}.")
        if tokens.shape[1] >= self.max_length:
            raise FastPathError(
                f"a prompt of {tokens.shape[1]} tokens leaves no room to decode in a cache of "
                f"{self.max_length} positions: build the decoder with max_length > prompt length."
            )
        self.reset()
        with torch.inference_mode():  # only the last position is unembedded (SmolLM2, float32, 2-core AMD
            # EPYC: 5 rows 45 ms, 1 row 6 ms)
            logits = self.model(tokens, cache=self.cache, logits_to_keep=1)[:, -1]
        self.position = self.cache.length
        self._position.fill_(self.position)
        return logits

    def step(self, token: int | torch.Tensor) -> torch.Tensor:
        """Feed ``token`` (an id, or ids ``[B]`` / ``[B, 1]``) at ``self.position``; next logits ``[B, V]``.

        The returned tensor is a copy (the graph's output buffer is reused by the next step).
        """
        self.check_no_hooks()  # ~0.1 ms: a hook added after prefill must not be silently skipped
        token = torch.as_tensor(token, dtype=torch.long, device=self.device).reshape(-1, 1)
        self._token.copy_(token.expand(self.batch_size, 1))
        self._position.fill_(self.position)
        logits, _ = self._run_advance()
        self.cache.length = self.position
        return logits.clone()

    def generate_greedy(
        self, prompt: torch.Tensor | Sequence[int], max_new_tokens: int, stop_ids: Iterable[int] = ()
    ) -> list[int]:
        """Greedy continuation of ``prompt`` (batch 1): the new ids, ending at a stop id if one comes.

        The argmax and the next input stay on the device; with no ``stop_ids`` the host reads the
        tokens only at the end (CUDA: the graph is replayed ``max_new_tokens - 1`` times back to back).
        """
        if self.batch_size != 1:
            raise FastPathError("generate_greedy is for batch 1; use prefill/step for batches.")
        prompt = list(prompt.flatten().tolist()) if isinstance(prompt, torch.Tensor) else list(prompt)
        self._check_room(len(prompt), max_new_tokens)  # before the prefill, not after it
        if max_new_tokens <= 0:
            return []
        return self.greedy_from(self.prefill(prompt).argmax(dim=-1), max_new_tokens, stop_ids)

    def _check_room(self, start: int, max_new_tokens: int) -> None:
        """Refuse ``max_new_tokens`` from position ``start`` (the last one is chosen, never fed) if they
        do not fit in the cache."""
        if start + max_new_tokens - 1 > self.max_length:
            raise FastPathError(
                f"{start} positions + {max_new_tokens} new tokens need a cache of "
                f"{start + max_new_tokens - 1} positions; this decoder holds {self.max_length}: "
                "build it with a larger max_length."
            )

    def greedy_from(
        self, token: torch.Tensor, max_new_tokens: int, stop_ids: Iterable[int] = ()
    ) -> list[int]:
        """The greedy loop of ``generate_greedy`` after its prefill: ``token`` ``[1]``, the id chosen from
        the last logits and not yet fed, is fed at ``self.position``, then each argmax in turn; returns
        ``token``'s id and the ``max_new_tokens - 1`` after it (fewer when a stop id comes).

        ``decoder.greedy_from(decoder.prefill(prompt).argmax(-1), n)`` is ``generate_greedy(prompt, n)``,
        in two calls that can be timed apart (``benchmarks/run.py`` does: the steps are what the
        memory-bandwidth limit bounds, the prefill is bound by arithmetic).
        """
        if self.batch_size != 1:
            raise FastPathError("greedy_from is for batch 1; use step for batches.")
        if max_new_tokens <= 0:
            return []
        self._check_room(self.position, max_new_tokens)
        stop_ids = frozenset(stop_ids)
        first = token.reshape(1)
        self._token.copy_(first.view(1, 1))
        new = [first]
        for _ in range(max_new_tokens - 1):
            if stop_ids and int(new[-1]) in stop_ids:  # a host sync per token only when stops are asked
                break
            _, greedy = self._run_advance()
            new.append(greedy.clone())
        self.cache.length = self.position
        ids = torch.cat(new).tolist()
        for i, token in enumerate(ids):
            if token in stop_ids:
                return ids[: i + 1]
        return ids


# --------------------------------------------------------------------------------------------------
# Decoders kept per model, so repeated generate(..., fast=True) calls compile once
# --------------------------------------------------------------------------------------------------

_DECODERS: weakref.WeakKeyDictionary[Any, FastDecoder] = weakref.WeakKeyDictionary()
_CAPACITY_STEP = 256


def fast_decoder(model: LlamaModel, length: int, **options: Any) -> FastDecoder:
    """The model's cached ``FastDecoder`` if it holds ``length`` positions with these options, else a new one.

    Capacity is rounded up to a multiple of 256 so that nearby lengths share one compiled step.
    """
    decoder = _DECODERS.get(model)
    capacity = -(-length // _CAPACITY_STEP) * _CAPACITY_STEP
    capacity = min(capacity, model.cfg.max_position_embeddings)
    if options.get("package") is not None:  # a compiled package fixes the capacity
        from .packaged import record_of

        capacity = record_of(options["package"]).capacity
    if (
        decoder is None
        or decoder.max_length < length
        or decoder.device != model.device
        or decoder.cache.dtype != model.dtype
        or decoder.options != {**decoder.options, **options}
    ):
        decoder = FastDecoder(model, capacity, **options)
        _DECODERS[model] = decoder
    return decoder


# --------------------------------------------------------------------------------------------------
# Activation caches offloaded to pinned CPU memory
# --------------------------------------------------------------------------------------------------


def run_with_cache_offloaded(
    model: LlamaModel,
    tokens: Any,
    names_filter: Any = None,
    dtype: torch.dtype | None = None,
    budget_bytes: int | None = None,
) -> tuple[torch.Tensor, ActivationCache]:
    """``model.run_with_cache(..., device="cpu")`` without stalling the GPU at every hook point.

    ``run_with_cache(device="cpu")`` does a blocking ``.to("cpu")`` inside each hook: the GPU idles
    while every activation crosses PCIe. Here, on CUDA, each activation is copied into a *pinned* CPU
    buffer with ``non_blocking=True`` on a side stream that waits only for the work already queued, so
    the copies overlap the rest of the forward; one synchronisation at the end makes the cache safe to
    read. On CPU there is nothing to move: this is ``run_with_cache(tokens, names_filter, dtype=dtype)``.
    The memory budget is checked before running, as in ``run_with_cache`` (the cache is on the host, so
    the default is ``model.cache_budget_bytes`` or the host's free memory less a margin).
    """
    if model.device.type != "cuda":
        return model.run_with_cache(tokens, names_filter=names_filter, dtype=dtype, budget_bytes=budget_bytes)

    ids = model.to_tokens(tokens)
    names = model.resolve_names(names_filter)
    batch, n_positions = ids.shape
    estimate = estimate_cache(model, names, n_positions, batch, dtype)
    check_cache_budget(model, estimate, "cpu", budget_bytes)  # pinned host memory

    main = torch.cuda.current_stream(model.device)
    copier = torch.cuda.Stream(model.device)
    store: dict[str, torch.Tensor] = {}

    def offload(name: str) -> Callable[[torch.Tensor, Any], None]:
        def hook(tensor: torch.Tensor, _hook: Any) -> None:
            source = (
                tensor.detach()
                if dtype is None or not tensor.is_floating_point()
                else tensor.detach().to(dtype)
            )
            pinned = torch.empty(source.shape, dtype=source.dtype, device="cpu", pin_memory=True)
            copier.wait_stream(main)  # the copy starts once the tensor exists, not before
            with torch.cuda.stream(copier):
                pinned.copy_(source, non_blocking=True)
            source.record_stream(copier)  # the allocator must not reuse it before the copy ran
            store[name] = pinned

        return hook

    with torch.no_grad(), model.hooks([(name, offload(name)) for name in names]):
        logits = model(ids)
    copier.synchronize()
    shapes = {name: model.hook_dict[name].shape for name in store}
    return logits, ActivationCache(store, model, shapes, tokens=ids)
