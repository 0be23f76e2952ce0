"""y = x Wᵀ (+ b), with the few-row product of a decode step spread over the CPU's threads.

A decode step multiplies one row (a batch of a few rows) by every weight matrix: a matrix-vector
product, limited by how fast the weights stream from memory. On the CPU, ``F.linear`` hands such a
product to one BLAS call that runs on a single thread (measured: about 11 GB/s on a host that reads
28 GB/s with all threads). ``linear`` cuts W into ``c`` blocks of rows, a free view
``(c n) k -> c n k``, and multiplies the same input by every block in one ``torch.bmm``, which runs
the blocks on all threads:

    y[:, block j] = x · W[block j]ᵀ        for j = 0 … c−1   (one bmm over j)

Each output element is still one dot product of a row of W with x, and MKL computes it with the same
kernel either way, so the result is **bit-identical** to ``F.linear`` (measured for the model's
shapes, column-major as the loaders keep them, with 1-4, 8, 12-16 and 32 rows; with 5 rows it is not,
nor row-major with 5-7 or 9-11: MKL then picks other kernels).
Because that is a property of the BLAS build and the CPU, not a promise, the first product of each
shape on a machine is computed both ways and compared; a shape whose bits differ stays on
``F.linear``. So hooks see exactly what they saw before, and the model stays equal to transformers.

Used for float32 on the CPU with at most ``MAX_ROWS`` rows, no bias and no gradient to record;
everything else (prefill, bfloat16, where bmm gains nothing, CUDA, backward) is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 16
"""Products of at most this many rows (batch × positions: decode steps, short prompts) take the blocked
path (measured on two cores, column-major weights: 1.2x faster at 1 row, 1.3-1.6x at 2-8, 1.2x at 16)."""

BLOCKS_PER_THREAD = 4
"""Row blocks per torch thread: more blocks than threads balance the load (4 measured best of 1, 2, 4)."""


_VERIFIED: dict[tuple[int, int, int, int, bool], bool] = {}
"""(out features, in features, rows, blocks, column-major) → whether the blocked product equalled
F.linear on this machine."""


def row_blocks(out_features: int, threads: int | None = None) -> int:
    """How many row blocks to cut a weight of ``out_features`` rows into: 0 when not worth it."""
    threads = threads or torch.get_num_threads()
    if threads < 2:
        return 0
    for blocks in (BLOCKS_PER_THREAD * threads, threads):
        if out_features % blocks == 0:
            return blocks
    return 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x ``[..., k]``, weight ``[n, k]`` → ``[..., n]``, bit-identical.

    A product of at most ``MAX_ROWS`` rows in float32 on the CPU, with no gradient to record, runs as
    one ``torch.bmm`` over row blocks of ``weight`` (all threads) instead of one single-threaded call.
    ``weight`` may be row-major or column-major (the loaders' ``matvec_layout``): either way the
    blocks are views, nothing is copied.
    """
    n, k = weight.shape
    rows = x.numel() // k if k else 0
    if (
        0 < rows <= MAX_ROWS
        and not torch.compiler.is_compiling()  # a compiler makes its own matmul (and cannot trace this)
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and bias is None  # addmm adds a bias inside the BLAS call: no bit-identical split of that
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        blocks = row_blocks(n)
        blocked = _row_blocks_view(weight, blocks) if blocks else None  # [c k n/c]
        key = (n, k, rows, blocks, weight.stride(0) == 1)
        if blocked is not None and _VERIFIED.get(key, True):
            y = torch.bmm(x.reshape(rows, k).expand(blocks, rows, k), blocked)  # [c r n/c]
            y = y.transpose(0, 1).reshape(*x.shape[:-1], n)  # c r (n/c) -> r (c n/c)
            if key in _VERIFIED:
                return y
            expected = F.linear(x, weight)
            _VERIFIED[key] = torch.equal(y, expected)  # once per shape: same bits, or F.linear from now on
            return expected
    return F.linear(x, weight, bias)


def _row_blocks_view(weight: torch.Tensor, blocks: int) -> torch.Tensor | None:
    """Wᵀ cut into ``blocks`` column blocks, ``[c, k, n/c]``, as a view; None for other layouts."""
    n, k = weight.shape
    if weight.is_contiguous():  # row-major: (c n) k -> c n k, then each block transposed
        return weight.view(blocks, n // blocks, k).transpose(1, 2)
    if weight.T.is_contiguous():  # column-major (matvec_layout): Wᵀ [k n] is contiguous
        return weight.T.view(k, blocks, n // blocks).transpose(0, 1)  # k (c n) -> c k n
    return None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) whose forward is ``linear`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
