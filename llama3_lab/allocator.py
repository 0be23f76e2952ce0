"""The CPU allocator: let glibc's malloc keep a cache's freed memory for the next cache.

A forward without hooks frees each intermediate as soon as the next one is computed, so malloc hands the
same memory back again and again; ``run_with_cache`` keeps every intermediate alive (SmolLM2-135M, 128
tokens: 236 MiB in 667 tensors of 0.1-0.8 MB each). When that cache is dropped, glibc gives the top of its
heap back to the kernel if more than its *trim threshold* is free there (by default adjusted on the fly:
twice the largest mmapped block freed so far, at most 64 MiB). So the next cache gets fresh pages, and the
kernel zeroes every one of them before the forward writes it. Measured on that model (float32, 2-core AMD
EPYC, the hooks phase of ``benchmarks/run.py`` run twice each way, alternated): ``run_with_cache`` of
everything took 1.29x and 1.18x the plain forward with ``KEEP_FREED`` off, 1.06x and 1.09x with it on.

``keep_freed(nbytes)`` raises the trim threshold to twice ``nbytes``: glibc trims the whole free top once
it passes the threshold, and a dropped cache joins whatever was free there already (a loop that makes the
next cache before it drops the last frees two). The threshold is never lowered, and is capped at a quarter
of the machine's memory and at 2 GiB (``mallopt`` takes an int). It is raised before a CPU cache of at
least ``MIN_KEPT`` bytes is taken (``memory.check_cache_budget``). Setting it stops glibc's own
adjustments, so the mmap threshold is set too, to the largest value those adjustments would reach (32 MiB
on 64-bit): blocks above it still go straight back to the kernel when freed.

The kept memory still counts as free: ``kept_bytes()`` (the free chunks in malloc's arenas, which the
kernel counts as used) is added to the available RAM by ``memory.free_memory_bytes``, so a budget never
refuses because of it. ``release_freed()`` hands it back at once (``malloc_trim``). Elsewhere (macOS,
Windows, musl) this module does nothing; the allocators there, and jemalloc or tcmalloc preloaded, keep
freed memory on their own.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import cache

KEEP_FREED = True
"""Set to False to leave glibc's trim threshold alone (a cache's memory then goes back after each cache)."""

MIN_KEPT = 32 << 20
"""Caches below this size leave malloc's settings alone (its trim threshold adjusts itself up to 64 MiB)."""

MMAP_THRESHOLD = 32 << 20
"""glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit: the largest mmap threshold its own adjustments set."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's <malloc.h>


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc with ``mallopt``, ``malloc_trim`` and ``mallinfo2`` (2.33+)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        for name in ("mallopt", "malloc_trim", "mallinfo2"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_kept_limit = 0  # the trim threshold this module set, 0 while glibc adjusts its own
_released = 0  # free bytes in malloc's arenas right after the last release_freed (pages given back)


def keep_freed(nbytes: int) -> int:
    """Let malloc keep freed memory for a cache of ``nbytes``: a trim threshold of twice that (at most a
    quarter of RAM and 2 GiB, never lowered); returns the threshold now set.

    Returns the limit unchanged (0 if never set) where this does nothing: not glibc, ``nbytes`` below
    ``MIN_KEPT``, or ``KEEP_FREED`` off.
    """
    global _kept_limit
    libc = _glibc()
    if libc is None or nbytes < MIN_KEPT or not KEEP_FREED:
        return _kept_limit
    limit = min(2 * int(nbytes), _total_memory() // 4, 2**31 - 1)  # mallopt takes an int
    if limit > _kept_limit and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        if libc.mallopt(_M_TRIM_THRESHOLD, limit):
            _kept_limit = limit
    return _kept_limit


def kept_limit() -> int:
    """The trim threshold ``keep_freed`` set, or 0 while glibc adjusts its own (or elsewhere)."""
    return _kept_limit


def kept_bytes() -> int:
    """Freed memory malloc holds for reuse, resident (its arenas' free chunks), 0 elsewhere.

    Counted from the last ``release_freed``: the pages it gave back leave their chunks in malloc's free
    lists, so those are not counted again (an undercount, never an overcount, as they are reused).
    """
    libc = _glibc()
    return max(0, int(libc.mallinfo2().fordblks) - _released) if libc is not None else 0


def release_freed() -> int:
    """Hand every freed page malloc holds back to the kernel now (``malloc_trim``); the bytes it kept."""
    global _released
    libc = _glibc()
    if libc is None:
        return 0
    kept = kept_bytes()
    libc.malloc_trim(0)
    _released = int(libc.mallinfo2().fordblks)
    return kept


def _total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
