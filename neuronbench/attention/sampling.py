"""Which analysis windows the attention scores read: all of them by default, as many as a time
budget allows.

Order. The windows are visited in the order of ``numpy.random.default_rng(ORDER_SEED)
.permutation(n)``, so that whatever number of windows the budget allows is a uniform random
sample of the whole split, not its first documents; ``max_windows`` keeps only the first
``max_windows`` of that order.

Budget. The number of windows is fixed before any is scored, from a cost model of one window of
``T`` tokens (:func:`estimated_window_seconds`), so that a run reads the same windows on every
machine and the suite's baselines stay reproducible::

    seconds(window) = PASS_SECONDS · P · T + Σ_l (SCAN_SECONDS · T + ALPHA_SECONDS · D_l · T² · N_l)

(``P`` the model's parameters: one forward and backward pass; per Mamba layer ``l`` the
reference scan's per-token cost and the hidden attention ``D_l · T² · N_l`` of ``D_l`` channels
with state size ``N_l``; nothing for heads, whose probabilities the model computes anyway). The
constants are CPU seconds measured on 2 shared CPU cores (README, "Attention scores: time and
memory"): ``PASS_SECONDS`` from tiny-gpt2 (0.43 s per 128-token window), ``SCAN_SECONDS`` from
tiny-mamba (6.3 s per window, almost all of it the reference scan's per-token loop) and
``ALPHA_SECONDS`` from one chunked L = 1024 hidden attention of a mamba-130m layer. The windows scored are
``min(n, max_windows, max(1, floor(time_budget_s / seconds(window))))``; ``time_budget_s = None``
scores every window. The time actually spent is recorded next to the estimate. Memory is bounded
separately: the hidden attention is streamed in blocks within ``memory_budget_bytes``
(:mod:`neuronbench.attention.hidden`).

:class:`WindowSample` records what was scored: how many windows were offered, which were scored,
the estimate, the time spent, the budget and why the scoring stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError

ORDER_SEED = 0
"""Seed of the permutation in which windows are scored."""

DEFAULT_TIME_BUDGET_S = 30.0
"""Default seconds per model for the attention scores (``--attention-budget``). By the measured
cost it reads 70 of the 391 windows of tiny-gpt2's default sample (0.43 s each) and 4 of
tiny-mamba's (6.5 s each), which keeps ``pytest tests`` (it runs the suite's ablation cases) under
its 6 minutes on 2 shared cores; raise it (or 0: no limit) to read the whole sample."""

PASS_SECONDS = 3.1e-9
"""CPU seconds per parameter and token of one forward + backward pass."""

SCAN_SECONDS = 1.2e-2
"""CPU seconds per Mamba layer and token of the reference (sequential) scan, forward + backward."""

ALPHA_SECONDS = 1.0e-9
"""CPU seconds per hidden-attention element ``D · T² · N`` (built, folded and mixed)."""

STOPPED_BY = ("all windows", "max_windows", "time budget")
"""Why :class:`BudgetedWindows` stopped."""


def check_budget(time_budget_s: float | None, max_windows: int | None) -> None:
    """:class:`ConfigError` unless the budget is ``None`` or positive and ``max_windows`` is
    ``None`` or a positive integer."""
    if time_budget_s is not None and not (isinstance(time_budget_s, (int, float)) and time_budget_s > 0):
        raise ConfigError(f"the attention time budget must be a positive number of seconds or None, "
                          f"got {time_budget_s!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows <= 0):
        raise ConfigError(f"max_windows must be a positive integer or None (all), got {max_windows!r}")


def window_order(n_windows: int, max_windows: int | None = None) -> np.ndarray:
    """Window indices in scoring order: a seeded permutation, cut to ``max_windows``."""
    order = np.random.default_rng(ORDER_SEED).permutation(n_windows)
    return order if max_windows is None else order[:max_windows]


def estimated_window_seconds(model: nn.Module, adapter: ArchitectureAdapter, layers: Sequence[int],
                             length: int) -> float:
    """The cost model of the module docstring for one window of ``length`` tokens."""
    parameters = sum(p.numel() for p in model.parameters())
    ssm_layers = list(layers) if adapter.has_ssm else []
    alpha = sum(math.prod(adapter.ssm_parameters(layer)["A"].shape) for layer in ssm_layers)
    return (PASS_SECONDS * parameters * length + SCAN_SECONDS * len(ssm_layers) * length
            + ALPHA_SECONDS * alpha * length**2)


@dataclass
class WindowSample:
    """What the attention scores read (module docstring)."""

    offered: int
    scored: list[int] = field(default_factory=list)
    estimated_s_per_window: float = 0.0
    elapsed_s: float = 0.0
    time_budget_s: float | None = None
    max_windows: int | None = None
    stopped_by: str = "all windows"

    @property
    def complete(self) -> bool:
        """True when every offered window was scored."""
        return len(self.scored) == self.offered

    def to_record(self) -> dict:
        return {"windows_offered": self.offered, "windows_scored": len(self.scored),
                "estimated_s_per_window": self.estimated_s_per_window, "elapsed_s": self.elapsed_s,
                "time_budget_s": self.time_budget_s, "max_windows": self.max_windows, "stopped_by": self.stopped_by}


def allowed_windows(n_windows: int, window_seconds: float, time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
                    max_windows: int | None = None) -> tuple[np.ndarray, str]:
    """``(indices in scoring order, stopped_by)`` of the windows the budget allows."""
    check_budget(time_budget_s, max_windows)
    order = window_order(n_windows, max_windows)
    stopped_by = "max_windows" if order.size < n_windows else "all windows"
    if time_budget_s is not None:
        affordable = max(1, math.floor(time_budget_s / window_seconds)) if window_seconds > 0 else order.size
        if affordable < order.size:
            order, stopped_by = order[:affordable], "time budget"
    return order, stopped_by


class BudgetedWindows:
    """Batches of ``batch_size`` of the windows :func:`allowed_windows` chooses; iterating yields
    ``(indices, input_ids, attention_mask)`` and fills :attr:`sample`."""

    def __init__(self, windows: TokenWindows, batch_size: int, window_seconds: float,
                 time_budget_s: float | None = DEFAULT_TIME_BUDGET_S, max_windows: int | None = None) -> None:
        self.windows = windows
        order, stopped_by = allowed_windows(windows.input_ids.shape[0], window_seconds, time_budget_s, max_windows)
        self.chunks = [order[i : i + batch_size].tolist() for i in range(0, order.size, batch_size)]
        self.sample = WindowSample(windows.input_ids.shape[0], estimated_s_per_window=window_seconds,
                                   time_budget_s=time_budget_s, max_windows=max_windows, stopped_by=stopped_by)

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        start = time.perf_counter()
        for rows in self.chunks:
            index = torch.tensor(rows)
            yield rows, self.windows.input_ids[index], self.windows.attention_mask[index]
            self.sample.scored.extend(rows)
        self.sample.elapsed_s = time.perf_counter() - start
