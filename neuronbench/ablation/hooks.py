"""Ablation hooks: replace chosen units by a fixed value while the model runs, weights untouched.

For unit ``j`` of layer ``l`` with activation ``a_j``:

* zero-ablation: ``a_j := 0``;
* mean-ablation: ``a_j := μ_j = Σ a_j / n_tokens`` on the analysis split
  (:meth:`neuronbench.capture.ActivationStatistics.mean`).

The replacement is ``torch.where(mask, fill, a)``: every other unit keeps its exact value. Hooks go
through the adapter (:meth:`~neuronbench.adapters.base.ArchitectureAdapter.register_neuron_edit`
and ``register_head_edit``), in the index space where the units were found. :func:`ablated`
removes every hook on exit, also when the body raises, so the model is exactly restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from neuronbench.ablation.neurons import NeuronSet, NeuronSetLike, neuron_set
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import TensorEdit
from neuronbench.capture import ActivationStatistics
from neuronbench.errors import (CaptureError, ConfigError,
                                NeuronRangeError)


def _head_count(adapter: ArchitectureAdapter, _layer: int) -> int:
    return adapter.num_heads


@dataclass(frozen=True)
class Unit:
    """A kind of ablatable unit: its width per layer, the hook that edits it, and the axis of
    the edited tensor that indexes it (``-1``: neurons ``[..., W]``; ``-2``: heads
    ``[B, T, H, d_h]``)."""

    name: str
    width: Callable[[ArchitectureAdapter, int], int]
    register: Callable[[ArchitectureAdapter, int, TensorEdit], RemovableHandle]
    axis: int
    has_means: bool
    """True when :class:`ActivationStatistics` holds this unit's mean (mean-ablation)."""


UNITS: dict[str, Unit] = {
    "neuron": Unit("neuron", lambda a, layer: a.neuron_width(layer),
                   lambda a, layer, edit: a.register_neuron_edit(layer, edit), -1, True),
    "head": Unit("head", _head_count,
                 lambda a, layer, edit: a.register_head_edit(layer, edit), -2, False),
}


def resolve_unit(adapter: ArchitectureAdapter, unit: str) -> Unit:
    """The :class:`Unit` named ``unit``. For SSMs (Mamba) the attention units are channels of
    the neuron tensor, so ``"head"`` resolves to ``"neuron"``."""
    if unit not in UNITS:
        raise ConfigError(f"unknown ablation unit {unit!r}; choose one of {sorted(UNITS)}")
    return UNITS["neuron"] if unit == "head" and adapter.has_ssm else UNITS[unit]


def _zero_fill(_stats: ActivationStatistics | None, _layer: int, width: int) -> np.ndarray:
    return np.zeros(width)


def _mean_fill(stats: ActivationStatistics | None, layer: int, width: int) -> np.ndarray:
    if stats is None:
        raise ConfigError("mean-ablation needs the activation statistics of the analysis split "
                          "(pass stats=capture_statistics(...) of the split the neurons were found on)")
    means = stats.mean(layer)
    if means.shape != (width,):
        raise CaptureError(f"layer {layer}: the statistics hold {means.shape[0]} neuron means but "
                           f"the layer has {width} neurons")
    return means


ABLATION_MODES: dict[str, Callable[[ActivationStatistics | None, int, int], np.ndarray]] = {
    "zero": _zero_fill,
    "mean": _mean_fill,
}
"""mode -> ``fill(stats, layer, width)``: the value each ablated unit of the layer takes."""


def check_mode(mode: str, unit: Unit) -> None:
    """``ConfigError`` for an unknown mode, or mean-ablation of units without streamed means."""
    if mode not in ABLATION_MODES:
        raise ConfigError(f"unknown ablation mode {mode!r}; choose one of {sorted(ABLATION_MODES)}")
    if mode == "mean" and not unit.has_means:
        raise ConfigError(f"mean-ablation of {unit.name} units is not available: the capture "
                          "statistics hold no per-head means; use mode 'zero'")


def checked_set(adapter: ArchitectureAdapter, neurons: NeuronSetLike, unit: Unit) -> NeuronSet:
    """Normalise ``neurons`` and check every layer and index against the adapter.

    Raises ``LayerRangeError`` for a bad layer and ``NeuronRangeError`` naming the layer's width
    for an index outside ``0..width-1``.
    """
    normal = neuron_set(neurons)
    for layer, indices in normal.items():
        adapter.check_layer(layer)
        width = unit.width(adapter, layer)
        bad = [i for i in indices if not 0 <= i < width]
        if bad:
            raise NeuronRangeError(
                f"{unit.name} indices {bad} are out of range for layer {layer}, which has "
                f"{width} {unit.name}s (valid indices 0..{width - 1})"
            )
    return normal


def replacement_edit(mask: torch.Tensor, fill: torch.Tensor, axis: int) -> TensorEdit:
    """An edit that sets the units where ``mask`` (``[U]`` bool) to ``fill`` (``[U]``) along
    ``axis`` of the edited tensor and leaves every other value exactly as it was."""
    shape = (-1,) + (1,) * (-axis - 1)
    placed: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def edit(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[axis] != mask.numel():
            raise CaptureError(f"ablation hook saw a tensor of shape {tuple(tensor.shape)}; "
                               f"expected {mask.numel()} units along axis {axis}")
        key = (tensor.device, tensor.dtype)
        if key not in placed:  # moved once per device and dtype, not on every forward pass
            placed[key] = (mask.to(tensor.device).view(shape),
                           fill.to(device=tensor.device, dtype=tensor.dtype).view(shape))
        where, value = placed[key]
        return torch.where(where, value, tensor)

    return edit


def _layer_edit(adapter: ArchitectureAdapter, layer: int, indices: tuple[int, ...], unit: Unit,
                mode: str, stats: ActivationStatistics | None) -> TensorEdit:
    width = unit.width(adapter, layer)
    mask = torch.zeros(width, dtype=torch.bool)
    mask[list(indices)] = True
    fill = torch.from_numpy(np.asarray(ABLATION_MODES[mode](stats, layer, width), dtype=np.float64))
    return replacement_edit(mask, fill, unit.axis)


@contextmanager
def ablated(adapter: ArchitectureAdapter, neurons: NeuronSetLike, mode: str = "zero",
            unit: str = "neuron", stats: ActivationStatistics | None = None) -> Iterator[NeuronSet]:
    """Within the ``with`` block, the units ``neurons`` (``{layer: indices}``) are ablated.

    ``mode`` is a key of :data:`ABLATION_MODES`; ``stats`` (the analysis split's statistics) is
    needed for ``"mean"``. Everything is validated before any hook is registered; every hook is
    removed on exit, exception or not. Yields the normalised set.
    """
    resolved = resolve_unit(adapter, unit)
    check_mode(mode, resolved)
    normal = checked_set(adapter, neurons, resolved)
    edits = {layer: _layer_edit(adapter, layer, idx, resolved, mode, stats) for layer, idx in normal.items()}
    handles: list[RemovableHandle] = []
    try:
        for layer, edit in edits.items():
            handles.append(resolved.register(adapter, layer, edit))
        yield normal
    finally:
        for handle in handles:
            handle.remove()
