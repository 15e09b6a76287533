"""Every per-batch reduction of one layer in one read, by a small C loop (``native_rows.c``): the
CPU default of the capture.

The eager :func:`neuronbench.capture.blocks.reduce_layer` reads a cached block of rows once per
reduction: about 25 tensor operations a block, each a pass over the block and a dispatch. The C
loop reads each activation once and updates every accumulator the :class:`~neuronbench.capture.blocks.Plan`
asks for while it is in a register: per segment (a window's real rows) ``Σ a``, ``Σ (t − c) a``
(``c = (size − 1)/2``), ``Σ a²`` (double) and the extremes; over the batch ``Σ a``, ``Σ a²``, ``Σ |a|``
(double), the extremes and the counts at τ and at every τ_s of the sweep (int64, exact); the bool
table; per position of the full windows the active counts and ``Σ a`` (float32, as :mod:`.blocks`);
over the full windows the sum of their Pearson r (double; ``WindowMoments.pearson_sum``).
Every output is written by the loop (no zero-filled buffers: three output allocations per layer and batch).
:func:`add_token_rows` adds mask rows into the per-token count table (:mod:`.tokens`);
:func:`merge_top_rows` streams the top-k activating positions (:mod:`.topk`). Sums of float32 values and
of their products accumulate in double, so they are more exact than the blocks' float32 partial
sums (the exactness tests compare both with float64 brute force; counts are identical). The
:class:`~neuronbench.capture.blocks.Reductions` it returns are those of :mod:`.blocks`, formula
for formula (``Σ (a − ā)² = Σ a² − (Σ a)²/size``, in double).

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``;
``-O3 -march=native``, well under a second) into ``$XDG_CACHE_HOME/neuronbench`` (default
``~/.cache/neuronbench``), one file per source and CPU, written atomically so that parallel
workers can race. Without a compiler, or if compiling fails, :func:`library` warns once, naming
the error, and the capture runs :mod:`.blocks` (:data:`UNAVAILABLE` records why); a GPU always
runs :mod:`.blocks`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from neuronbench.activation import Mask
from neuronbench.capture.batch import BatchContext, WindowMoments, Workspace
from neuronbench.capture import blocks
from neuronbench.capture.blocks import Plan, Reductions

SOURCE = Path(__file__).with_name("native_rows.c")
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-shared", "-fPIC")
"""``-mprefer-vector-width=512``: on a CPU with AVX-512 the loop is 2.5× faster with 512-bit vectors
(measured, 2-core Xeon); elsewhere the flag is a no-op."""
UNAVAILABLE: dict[str, str] = {}
"""``{"reduce_rows": why}`` once the library could not be built (the capture then runs :mod:`.blocks`)."""
_LIBRARY: list[ctypes.CDLL] = []

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _cpu_key() -> str:
    """What the compiled code depends on besides its source: machine, compiler flags, CPU features."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return f"{platform.machine()} {' '.join(FLAGS)} {flags}"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set $CC or install cc/gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip() or result.stdout.strip()}")
        os.replace(built, target)


def library() -> ctypes.CDLL | None:
    """The compiled ``reduce_rows`` (built on first use), or ``None`` when it cannot be built."""
    if _LIBRARY or UNAVAILABLE:
        return _LIBRARY[0] if _LIBRARY else None
    digest = hashlib.sha256(SOURCE.read_bytes() + _cpu_key().encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuronbench"
    target = cache / f"native_rows-{digest}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as error:
        UNAVAILABLE["reduce_rows"] = f"{type(error).__name__}: {error}"
        warnings.warn(f"the capture's C reduction could not be built ({UNAVAILABLE['reduce_rows']}); "
                      "using the slower tensor blocks (neuronbench.capture.blocks)", RuntimeWarning, stacklevel=2)
        return None
    lib.reduce_rows.restype = None
    lib.reduce_rows.argtypes = [_P, _I, _I, _P, _P, _P, _P, _I, ctypes.c_int, *([_P] * 15)]
    lib.add_token_rows.restype = None
    lib.add_token_rows.argtypes = [_P, _I, _P, _P, _I, _P, _I]
    lib.column_square_sums.restype = None
    lib.column_square_sums.argtypes = [_P, _I, _I, _P]
    lib.transpose_rows.restype = None
    lib.transpose_rows.argtypes = [_P, _I, _I, _I, _I, _I, _P]
    lib.shifted_moments.restype = None
    lib.shifted_moments.argtypes = [_P, _I, _I, *([_P] * 5)]
    lib.merge_top_rows.restype = None
    lib.merge_top_rows.argtypes = [_P, _I, _I, _P, _I, _P, _P]
    _LIBRARY.append(lib)
    return lib


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def square_sums(flat: torch.Tensor) -> torch.Tensor | None:
    """``Σ_t a_{t,j}²`` of ``flat [n, W]`` (float32, contiguous) in double (float64 ``[W]``), by the C
    loop; ``None`` off the CPU or without the library."""
    lib = library() if flat.device.type == "cpu" else None
    if lib is None:
        return None
    out = torch.empty(flat.shape[1], dtype=torch.float64)
    lib.column_square_sums(flat.data_ptr(), flat.shape[0], flat.shape[1], out.data_ptr())
    return out


def shifted_moments(x: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor | None:
    """``[Σ (x − c), Σ (x − c)², max x, min x]`` per column of ``x [n, D]`` (float32, contiguous,
    ``n ≥ 1``) around ``pivot [D]`` (float32), as float64 ``[4, D]``, by one C loop; ``None`` off
    the CPU or without the library."""
    lib = library() if x.device.type == "cpu" else None
    if lib is None or not (x.is_contiguous() and x.dtype == pivot.dtype == torch.float32 and pivot.is_contiguous()):
        return None
    out = torch.empty(4, x.shape[1], dtype=torch.float64)
    lib.shifted_moments(x.data_ptr(), x.shape[0], x.shape[1], pivot.data_ptr(), *(row.data_ptr() for row in out))
    return out


def merge_top_rows(flat: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, kept: torch.Tensor) -> bool:
    """Merge ``flat [n, W]`` (float32, contiguous; row ``i`` at ``positions[i]``, int64, increasing)
    into the top-k state ``values [k, W]`` (float32, descending, -inf where unfilled) and ``kept
    [k, W]`` (int64 positions, -1 where unfilled), in place, by one C pass (:mod:`.topk`'s order:
    value descending, position ascending). ``False`` (nothing done) off the CPU or without the
    library."""
    lib = library() if flat.device.type == "cpu" else None
    if lib is None:
        return False
    lib.merge_top_rows(flat.data_ptr(), flat.shape[0], flat.shape[1], positions.data_ptr(), values.shape[0],
                       values.data_ptr(), kept.data_ptr())
    return True


def copy_rows(acts: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out.copy_(acts)`` for ``acts [B, T, W]`` into the contiguous ``out``. A transposed float32
    ``acts`` on the CPU (``stride(1) == 1``: Mamba's ``out_proj`` input, the ``[B, W, T]`` scan output
    transposed) is copied by the tiled C transpose (``transpose_rows``), in 0.2× the time of torch's
    strided copy of a ``[2, 512, 1536]`` one (both timed in one run)."""
    lib = library() if acts.device.type == "cpu" else None
    transposed = acts.dtype == out.dtype == torch.float32 and acts.dim() == 3 and acts.stride(1) == 1
    if lib is None or not transposed or not out.is_contiguous() or out.shape != acts.shape:
        return out.copy_(acts)
    batches, length, width = acts.shape
    lib.transpose_rows(acts.data_ptr(), batches, acts.stride(0), length, width, acts.stride(2), out.data_ptr())
    return out


def add_token_rows(table: torch.Tensor, slots: torch.Tensor, active: torch.Tensor,
                   positions: torch.Tensor | None) -> bool:
    """``table[slots[i]] += active[positions[i]]`` (``active [n, W]`` bool, rows ``positions``, all
    when ``None``; ``table`` a contiguous integer count tier) by the C loop; ``False`` (nothing done)
    off the CPU, without the library, or for tensors it does not take (not contiguous, not bool / int64)."""
    lib = library() if table.device.type == "cpu" else None
    plain = active.dtype == torch.bool and active.is_contiguous() and table.is_contiguous() and all(
        index.dtype == torch.int64 and index.is_contiguous() for index in (slots, positions) if index is not None)
    if lib is None or not plain:
        return False
    lib.add_token_rows(active.data_ptr(), active.shape[1], _pointer(positions), slots.data_ptr(), slots.numel(),
                       table.data_ptr(), table.element_size())
    return True


def reduce_layer(flat: torch.Tensor, batch: BatchContext, mask: Mask, plan: Plan,
                 workspace: Workspace) -> Reductions:
    """:func:`neuronbench.capture.blocks.reduce_layer` by one C loop over ``flat [n_real, W]``
    (float32, contiguous, on the CPU); falls back to it when the library cannot be built."""
    lib = library() if flat.device.type == "cpu" else None
    if lib is None:
        return blocks.reduce_layer(flat, batch, mask, plan, workspace)
    (n, width), length, table = flat.shape, batch.real.shape[1], batch.segment_table
    others = [tau for tau in plan.sweep if tau != plan.threshold]
    cuts = torch.tensor([mask.cut(tau) for tau in (plan.threshold, *others)], dtype=torch.float32)
    positional = plan.windowed and batch.n_full > 0
    keep = table.full if plan.windowed else torch.zeros_like(table.full)
    k, f = table.starts.numel(), batch.n_full if positional else 0
    doubles = torch.empty(3 * f + 3 + (1 if positional else 0), width, dtype=torch.float64)
    floats = torch.empty(2 * f + 2 + (2 * length if positional else 0), width, dtype=torch.float32)
    seg_sum, seg_moment, seg_centred = doubles[:f], doubles[f:2 * f], doubles[2 * f:3 * f]
    total, total_sq, abs_sum = doubles[3 * f:3 * f + 3].unbind()
    pearson_sum = doubles[3 * f + 3] if positional else None
    seg_max, seg_min, (high, low) = floats[:f], floats[f:2 * f], floats[2 * f:2 * f + 2].unbind()
    counts = torch.empty(len(cuts), width, dtype=torch.int64)
    active = workspace.buffer("active", (n, width), flat.device, torch.bool) if plan.active else None
    position_active = position_sum = None
    if positional:
        position_active, position_sum = floats[2 * f + 2:].view(2, length, width).unbind()
    lib.reduce_rows(flat.data_ptr(), width, k, table.starts.data_ptr(), table.sizes.data_ptr(), keep.data_ptr(),
                    cuts.data_ptr(), len(cuts), int(mask.relative), *(_pointer(t) for t in (
                        seg_sum, seg_moment, seg_centred, seg_max, seg_min, total, total_sq, high, low, abs_sum,
                        counts, active, position_active, position_sum, pearson_sum)))
    windows = WindowMoments(seg_sum, seg_moment, seg_centred, seg_max, seg_min, length,
                            pearson_sum) if positional else None
    at_tau, rest = counts[0], iter(counts[1:])
    sweep = torch.stack([at_tau if tau == plan.threshold else next(rest) for tau in plan.sweep]) if plan.sweep else None
    return Reductions(counts=at_tau, sweep=sweep, abs_sum=abs_sum, total=total, total_sq=total_sq, max=high, min=low,
                      active=active, windows=windows, position_active=position_active, position_sum=position_sum)
