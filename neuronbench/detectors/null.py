"""Null calibration: how many neurons a detector finds where there is nothing to find.

Every detector that tests neurons one by one gives, for each neuron ``j`` of a layer, the
probability ``p_j`` that the detector fires on it under that detector's *null* (no signal) with the
same sample size (the null of each detector is documented in its module). From these:

* ``null_count = Σ_j p_j``: the expected number of detections if every neuron were null;
* ``null_std = sqrt(Σ_j p_j (1 − p_j) + mc²)``: its standard deviation (a Poisson-binomial count;
  ``mc`` is the Monte Carlo error of the ``p_j`` where they are simulated);
* ``expected_false_positives = π̂₀ · null_count``, with ``π̂₀ = min(1, (W − found) / (W − null_count))``
  the estimated share of null neurons (Storey's estimate: the neurons not found are null neurons
  that escaped, a share ``1 − null_count/W`` of all null neurons); ``π̂₀ = 1`` when
  ``null_count ≥ W``;
* a **warning** when ``found > 0`` and ``expected_false_positives > fraction · found``
  (``--null-warn-fraction``, default :data:`WARN_FRACTION` = 0.1: more than one finding in ten
  is expected to be noise).

Summed over layers (:func:`combine`): counts and expectations add, variances add.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from neuronbench.detectors.result import Detection

WARN_FRACTION = 0.1
"""Warn when the expected false positives exceed this share of the findings."""


@dataclass(frozen=True)
class NullCalibration:
    """A detection's null: see the module docstring for every field."""

    method: str
    null_count: float
    null_std: float
    expected_false_positives: float
    found: int
    tested: int
    warn_fraction: float

    @property
    def warning(self) -> str | None:
        if self.found == 0 or self.expected_false_positives <= self.warn_fraction * self.found:
            return None
        return (f"{self.expected_false_positives:.3g} of {self.found} findings are expected false positives "
                f"(> {self.warn_fraction:g} of them; null: {self.method}, {self.null_count:.3g} ± "
                f"{self.null_std:.2g} found on a null of the same sample size)")

    def record(self) -> dict:
        return {"null_method": self.method, "null_count": self.null_count, "null_std": self.null_std,
                "expected_false_positives": self.expected_false_positives, "null_warning": self.warning}


def calibrate(method: str, p: np.ndarray, found: int, warn_fraction: float = WARN_FRACTION,
              monte_carlo_std: float = 0.0) -> NullCalibration:
    """The calibration of one layer's detection from per-neuron null probabilities ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    tested = int(p.size)
    null_count = float(p.sum())
    std = math.sqrt(float((p * (1 - p)).sum()) + monte_carlo_std**2)
    pi0 = 1.0 if null_count >= tested else min(1.0, (tested - found) / (tested - null_count))
    return NullCalibration(method, null_count, std, pi0 * null_count, int(found), tested, warn_fraction)


def combine(calibrations: Iterable[NullCalibration]) -> NullCalibration | None:
    """Totals over layers (``None`` when no layer has a null)."""
    parts = [c for c in calibrations if c is not None]
    if not parts:
        return None
    return NullCalibration(parts[0].method, sum(c.null_count for c in parts),
                           math.sqrt(sum(c.null_std**2 for c in parts)),
                           sum(c.expected_false_positives for c in parts), sum(c.found for c in parts),
                           sum(c.tested for c in parts), parts[0].warn_fraction)


def null_metrics(detections: Mapping[int, Detection]) -> dict:
    """The record metrics of a detection's null: totals over layers (``null_count``, ``null_std``,
    ``expected_false_positives``, ``null_warning``) and ``layer{l}:null_count`` per layer; empty for
    a detector without a null."""
    total = combine(d.null for d in detections.values())
    if total is None:
        return {}
    return {**total.record(), **{f"layer{layer}:null_count": d.null.null_count for layer, d in detections.items()}}
