"""The moments' per-batch reductions as one ``torch.compile``d function (``CaptureConfig.compile``).

:func:`moment_reductions` computes, from one layer's batch ``flat [n, W]`` (float32) and the cut
levels ``cuts [S]`` (τ, then the sweep's τ_s, already multiplied by the layer scale for a relative
rule), everything :class:`~neuronbench.capture.moments.Moments` adds to its totals:

``counts[s] = Σ_rows [level(a) > cuts[s]]`` (int64, exact), ``Σ (a − p)`` and ``Σ (a − p)²`` around
the first row ``p`` (as :func:`~neuronbench.capture.moments.shifted_sums`), ``Σ |a|``, ``max``,
``min``. Eager, these are about ``2S + 8`` passes over the batch; compiled (Inductor), the
reductions share loops, and nothing of size ``[n, W]`` is written. Compiled, the sums accumulate
in float64 (the eager update: float32 per batch).

The first call compiles (tens of seconds on a CPU; Inductor caches the result on disk for later
processes). If compiling or running the compiled function fails, :func:`reductions` warns once,
names the error, and uses the eager function for the rest of the process
(:data:`FALLBACK` records why). Counts are identical either way; float sums differ only by the
order of float32 additions.
"""

from __future__ import annotations

import time
import warnings

import torch

FALLBACK: list[str] = []
"""Why the compiled function is not used (empty while it is)."""
COMPILE_SECONDS: list[float] = []
"""Wall time of each call that compiled (the first call for each new kind of input)."""


def moment_reductions(flat: torch.Tensor, cuts: torch.Tensor, relative: bool) -> tuple[torch.Tensor, ...]:
    """``(counts [S, W] int64, Σ (a − p), Σ (a − p)², Σ |a|, max, min)`` of ``flat``; the sums are
    accumulated in float64 (inside the fused loop this costs no memory traffic; eager, the fallback
    pays for the copies)."""
    magnitude = flat.abs()
    level = magnitude if relative else flat
    counts = torch.stack([(level > cuts[i]).sum(0) for i in range(cuts.shape[0])])
    shifted = flat.double() - flat[0].double()
    return (counts, shifted.sum(0), (shifted * shifted).sum(0), magnitude.double().sum(0), flat.amax(0),
            flat.amin(0))


_compiled = torch.compile(moment_reductions, dynamic=True)
_shapes_seen: set[tuple[int, bool]] = set()


def reductions(flat: torch.Tensor, cuts: torch.Tensor, relative: bool) -> tuple[torch.Tensor, ...]:
    """:func:`moment_reductions`, compiled unless compiling failed in this process (then eager)."""
    if FALLBACK:
        return moment_reductions(flat, cuts, relative)
    key = (cuts.shape[0], relative)
    start = time.perf_counter()
    try:
        result = _compiled(flat, cuts, relative)
    except Exception as error:  # any compiler or runtime failure of the compiled code: eager from now on
        FALLBACK.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"torch.compile of the capture's moment update failed ({FALLBACK[0].splitlines()[0]}); "
                      "using the eager update", RuntimeWarning, stacklevel=2)
        return moment_reductions(flat, cuts, relative)
    if key not in _shapes_seen:
        _shapes_seen.add(key)
        COMPILE_SECONDS.append(time.perf_counter() - start)
    return result
