"""glibc's malloc thresholds for forward passes over large tensors on a CPU.

glibc serves a request of at least ``M_MMAP_THRESHOLD`` bytes with a fresh ``mmap`` and gives it
back with ``munmap`` when it is freed, so every such tensor costs one page fault per 4 KiB page
the first time it is written. The threshold is dynamic, but it rises to at most 32 MiB, and the
trim threshold (free memory at the heap's top that is handed back) follows it at twice that.
A GPT-2-small forward pass over 8 × 512 tokens makes about 108 temporaries of 48 MiB (the
``[4096, 3072]`` float32 MLP activations and the GELU's intermediates): each is mapped afresh,
12,288 faults apiece. Whether a previous pass left a free heap chunk that large decides how many:
a plain forward took 0.2–1.0M minor faults, the same forward beside
neuronbench's capture 1.0–1.6M (its own frees changed which heap chunks remained), measured on
this project's 2-core machine. With the mmap threshold at 256 MiB and the trim threshold at
1 GiB, every pass reuses the same heap memory: 201k faults for both (the 785 MiB logits, still
mapped).

:func:`retain_freed_memory` sets those two thresholds once per process, by ``mallopt``. It is
process-wide: freed memory up to :data:`TRIM_THRESHOLD` at the heap's top stays resident instead
of being handed back to the system, and allocations below :data:`MMAP_THRESHOLD` no longer come
back to the system one by one. The heap fragments, so peak memory grows: a plain GPT-2-small
forward of 4096 tokens peaked 1877 MiB above the loaded model instead of 1331, neuronbench's full
capture 2790 instead of 1814 (``benchmarks/bench_capture.py --memory``). It does nothing where the
C library is not glibc, and it leaves glibc alone where ``GLIBC_TUNABLES`` already names a ``glibc.malloc.`` setting (the user's own
choice wins) or ``NEURONBENCH_MALLOC=default`` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""``mallopt`` parameter numbers (glibc's ``malloc.h``)."""
MMAP_THRESHOLD = 256 * 2**20
"""Requests of at least this many bytes are still mapped one by one (a GPT-2 vocabulary's logits)."""
TRIM_THRESHOLD = 2**30
"""Free memory at the heap's top beyond this is handed back to the system. A mamba-130m forward over
2 × 512 tokens leaves more than this free at the top (its selective scan's ``[B, D, L, N]``
temporaries, 100 MiB each), so its heap is trimmed after a capture pass and the next pass faults
150k–425k pages back in (about +0.03–0.09 of that forward). Never trimming (``-1``) removes those
faults but not the cost. The peak extra memory of one full capture pass over 4 × 512 tokens of
mamba-130m, each in a fresh process (``benchmarks/bench_capture.py``'s memory script), was
1942–5949 MiB in 7 processes without trimming, 1726–2472 MiB in 6 and 6534 MiB in a 7th with this
threshold, 1732–1774 MiB in 3 with glibc's defaults, and 1799–1835 MiB in 3 with this threshold and
a 64 MiB mmap threshold (which maps the scan's 201 MiB temporaries again, but took the paired
ratios of mamba-130m at 2 × 512 tokens to 1.51 full and 1.25 frequency only); a 1 GiB top pad
(``M_TOP_PAD``) peaked at 4194 MiB. So a heap that keeps 200 MiB temporaries can fragment to
several GiB in the first batch: the capture's totals, made while the model ran, split the space of
the freed temporaries. With every total allocated before the first forward pass
(:class:`~neuronbench.capture.positions.Positions`), that pass peaks at 1763–2123 MiB (6 processes;
a plain forward 1545–1872). Memory is the
capture's advantage over its peers, so the trim threshold stays finite; where memory is the
limit, ``NEURONBENCH_MALLOC=default``."""
OPT_OUT = "NEURONBENCH_MALLOC"
"""Environment variable: ``default`` keeps glibc's own thresholds."""

_STATE: list[str] = []


def retain_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`) once per
    process and return what was done, e.g. ``"mallopt: mmap 256 MiB, trim 1024 MiB"`` or why not."""
    if not _STATE:
        _STATE.append(_apply())
    return _STATE[0]


def _apply() -> str:
    if os.environ.get(OPT_OUT, "").strip().lower() == "default":
        return f"glibc defaults ({OPT_OUT}=default)"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc malloc tunables from GLIBC_TUNABLES"
    mallopt = _mallopt()
    if mallopt is None:
        return "not glibc: allocator left as it is"
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "mallopt refused the thresholds: glibc defaults"
    return f"mallopt: mmap {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB"


def _mallopt():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc.mallopt
