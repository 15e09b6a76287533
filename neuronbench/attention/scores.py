"""Attention-neuron scores: activation and importance of every attention unit, three ways.

A unit ``u`` (Mamba channel or transformer head, :mod:`neuronbench.attention.units`) of layer
``l`` has on each window an attention matrix ``α^{(u)}`` (hidden attention or probabilities),
an attention-mixed vector ``u_i`` (channel: ``(Σ_j α_ij x_j + D x_i) ⊙ silu(z_i)``; head:
``Σ_j p_ij v_j``) and a write matrix ``W_u`` into the residual stream (channel: its column of
``out_proj``; head: its block of ``W_O``), so that the unit writes ``c_i = u_i W_u`` at token
``i``. ``r_i`` is the residual stream right after the layer adds its output, ``L`` the summed
next-token loss (:mod:`neuronbench.attention.forward`). Over the real tokens ``i`` of every
window:

``attention_weighted``
    ``mean_i ‖c_i‖`` — the mean norm of the unit's attention-mixed contribution to the residual
    stream (computed as ``sqrt(u_i G_u u_iᵀ)`` with ``G_u = W_u W_uᵀ``, never forming ``c``).
``gradient_guided``
    ``mean_i |c_i · ∂L/∂r_i|`` — gradient × input of that contribution: the magnitude of the
    first-order change of the loss when the unit's contribution at token ``i`` is removed. Since
    ``r`` adds ``c`` linearly, ``c_i · ∂L/∂r_i = u_i · ∂L/∂u_i``, which is how it is computed.
    It uses the gradient that Mamba-Attribution (Ali, Zimerman & Wolf 2024) uses, the gradient of
    the prediction with respect to the residual stream of the layer; their method itself maps
    token relevance, not units, and does not give a per-unit score.
``rollout``
    *Relevant-token share*, neuronbench's own per-unit construct on top of attention rollout.
    Rollout, per window, over the analysed layers (first applied first)::

        Ã_l = rownorm(Ā_l + I),   R = Ã_L ⋯ Ã_1,   rownorm(M)_ij = M_ij / Σ_j' M_ij'

    with ``Ā_l`` the unit mean of the raw attention: for Mamba the *signed* channel mean of
    ``α`` (Ali, Zimerman & Wolf 2024, ``compute_rollout_attention`` of their released code:
    identity added, rows normalised by their sum); for heads the head mean of the
    probabilities, whose rows sum to 1, so that ``Ã_l = 0.5·Ā_l + 0.5·I`` exactly as Abnar &
    Zuidema (2020). The relevance of input token ``j`` to the last position is
    ``ρ_j = max(R_{T−1,j}, 0)`` (Ali et al. clamp the map at 0). The *relevant tokens* are the
    smallest set holding at least ``rollout_mass`` of ``Σ_j ρ_j`` (by decreasing ``ρ``, ties by
    position). A unit's score is the share of its own last-row attention magnitude on them,
    ``Σ_{j relevant} α̂_{T−1,j}``, averaged over windows.
``distance``
    mean attention distance ``mean_i Σ_j α̂_ij (i − j)`` in tokens.
``entropy``
    attention entropy ``mean_i −Σ_j α̂_ij ln α̂_ij`` in nats.

``α̂_ij = |α_ij| / Σ_j' |α_ij'|`` is the row-normalised magnitude; a row with no mass is left out
of the row averages. ``unit_mean`` is the unit's mean value in the tensor an ablation replaces
(the neuron for a channel, the head output ``[d_h]`` for a head), for mean-ablation.

Selecting units (:meth:`AttentionUnitScores.top_k`): by default the ``k`` best units of *each*
layer (scores of different layers have different scales); ``scope="global"`` ranks all units
together on scores divided by their layer's mean score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import parse_layers
from neuronbench.attention.forward import UnitPass, unit_pass
from neuronbench.attention.hidden import DEFAULT_MEMORY_BUDGET, AttentionBlock, mix
from neuronbench.attention.kinds import attention_units
from neuronbench.attention.sampling import (DEFAULT_TIME_BUDGET_S, BudgetedWindows, WindowSample,
                                           estimated_window_seconds)
from neuronbench.attention.units import AttentionUnits, UnitWindow
from neuronbench.batching import windows_per_batch
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, ConfigError

SCORE_METHODS = ("attention_weighted", "gradient_guided", "rollout")
"""The importance methods, each a per-unit array of :class:`AttentionUnitScores`."""

UNIT_MEASURES = (*SCORE_METHODS, "distance", "entropy")
"""Per-unit scalar measures (the columns of :meth:`AttentionUnitScores.to_frame`)."""

DEFAULT_ROLLOUT_MASS = 0.5
"""Default share of the final-row rollout mass that the relevant tokens must hold."""


@dataclass(frozen=True)
class AttentionConfig:
    """Options of :func:`attention_unit_scores`.

    ``layers``: the analysed layers (``None``/``"all"``: all; rollout runs over exactly these, so
    keep all layers for a faithful rollout); ``rollout_mass``: see the module docstring;
    ``memory_budget_bytes``: extra memory for one layer's hidden attention;
    ``batch_size``: windows per forward/backward pass (``None``: as many as fill
    :data:`neuronbench.batching.BATCH_TOKENS`); ``time_budget_s`` (``None``: no limit)
    and ``max_windows`` (``None``: all): how many windows are scored
    (:mod:`neuronbench.attention.sampling`).
    """

    layers: tuple[int, ...] | str | None = None
    rollout_mass: float = DEFAULT_ROLLOUT_MASS
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    batch_size: int | None = 1
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S
    max_windows: int | None = None


@dataclass(frozen=True)
class AttentionUnit:
    """One attention unit and its score under some method."""

    layer: int
    index: int
    score: float


@dataclass
class WindowReduction:
    """One window of one layer, reduced: per unit ``distance``/``entropy`` sums over rows with
    attention mass (``rows`` of them), ``final_row`` ``α̂_{T−1,·}`` ``[U, T]``, the unit mean of
    the raw attention ``mean_attention`` ``Ā`` ``[T, T]`` and, when mixed from the blocks,
    ``mixed`` ``m_i = Σ_j α_ij x_j`` ``[T, U]``."""

    distance: torch.Tensor
    entropy: torch.Tensor
    rows: torch.Tensor
    final_row: torch.Tensor
    mean_attention: torch.Tensor
    mixed: torch.Tensor | None


def reduce_blocks(blocks: Iterable[AttentionBlock], n_units: int, length: int,
                  values: torch.Tensor | None = None) -> WindowReduction:
    """Fold attention blocks covering ``n_units`` units × ``length`` queries into a
    :class:`WindowReduction` (``values [T, U]``: mix the outputs from the blocks)."""
    f32 = dict(dtype=torch.float32)
    out = WindowReduction(torch.zeros(n_units, dtype=torch.float64), torch.zeros(n_units, dtype=torch.float64),
                          torch.zeros(n_units, dtype=torch.long), torch.zeros(n_units, length, **f32),
                          torch.zeros(length, length, dtype=torch.float64),
                          None if values is None else torch.zeros(length, n_units, **f32))
    covered = torch.zeros(n_units, length, dtype=torch.long)
    for block in blocks:
        units, start, stop = block.channels.cpu(), block.query_start, block.query_stop
        if out.mixed is not None:
            out.mixed[start:stop, units] = mix(block, values).T.cpu()
        _fold_block(out, block, units)
        covered[units, start:stop] += 1
    if not bool((covered == 1).all()):
        raise CaptureError("attention blocks did not cover every (unit, query) pair exactly once")
    out.mean_attention /= n_units
    return out


def row_normalized(attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(α̂, has_mass)``: ``α̂_ij = |α_ij| / Σ_j' |α_ij'|`` over the last axis, and whether each
    row has any mass (rows without stay zero)."""
    norm = attention.abs()
    total = norm.sum(-1)
    valid = total > 0
    norm /= torch.where(valid, total, 1.0).unsqueeze(-1)
    return norm, valid


def _fold_block(out: WindowReduction, block: AttentionBlock, units: torch.Tensor) -> None:
    start, stop = block.query_start, block.query_stop
    norm, valid = row_normalized(block.alpha)
    keys = torch.arange(stop, dtype=norm.dtype, device=norm.device)
    queries = torch.arange(start, stop, dtype=norm.dtype, device=norm.device)
    distance = (queries - norm @ keys).where(valid, 0.0)
    entropy = -torch.xlogy(norm, norm).sum(-1)
    out.distance[units] += distance.double().sum(-1).cpu()
    out.entropy[units] += entropy.double().sum(-1).cpu()
    out.rows[units] += valid.sum(-1).cpu()
    out.mean_attention[start:stop, :stop] += block.alpha.double().sum(0).cpu()
    if stop == out.final_row.shape[1]:
        out.final_row[units] = norm[:, -1, :].cpu()


def rollout(mean_attentions: list[torch.Tensor]) -> torch.Tensor:
    """``R = Ã_L ⋯ Ã_1`` with ``Ã_l = rownorm(Ā_l + I)`` (module docstring); ``mean_attentions``
    ``Ā_l`` in layer order, each ``[T, T]``. Returns ``R`` ``[T, T]`` (float64). Raises
    :class:`CaptureError` when a row of some ``Ā_l + I`` sums to 0 (the normalisation is
    undefined) or the product is not finite."""
    length = mean_attentions[0].shape[0]
    eye = torch.eye(length, dtype=torch.float64)
    result = eye
    for layer, attention in enumerate(mean_attentions):
        augmented = attention.double() + eye
        totals = augmented.sum(-1, keepdim=True)
        if bool((totals == 0).any()):
            raise CaptureError(f"rollout: a row of Ā + I of analysed layer #{layer} sums to 0, so it "
                               "cannot be normalised")
        result = (augmented / totals) @ result
    if not bool(torch.isfinite(result).all()):
        raise CaptureError("rollout is not finite: the signed rows of Ā + I nearly cancel")
    return result


def relevant_tokens(relevance: torch.Tensor, mass: float) -> torch.Tensor:
    """The smallest set of positions (by decreasing ``relevance``, ties by position) whose
    relevance sums to at least ``mass`` of the total; a bool mask ``[T]``. ``relevance`` must be
    non-negative with a positive total (:class:`CaptureError` otherwise)."""
    if bool((relevance < 0).any()) or not float(relevance.sum()) > 0:
        raise CaptureError("rollout relevance must be non-negative with a positive total; the last "
                           "row of this window's rollout has no positive mass")
    order = torch.sort(relevance, descending=True, stable=True).indices
    cumulative = relevance[order].cumsum(0)
    needed = int(torch.searchsorted(cumulative, mass * cumulative[-1] * (1 - 1e-12))) + 1
    mask = torch.zeros_like(relevance, dtype=torch.bool)
    mask[order[: min(needed, relevance.numel())]] = True
    return mask


def contribution_norms(vectors: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``‖u_i W_u‖ = sqrt(u_i G_u u_iᵀ)`` ``[T, U]`` from ``vectors`` ``u`` ``[T, U, k]`` and
    ``gram`` ``G`` ``[U, k, k]`` (float64; rounding below 0 is clamped)."""
    squared = torch.einsum("tuk,ukl,tul->tu", vectors, gram, vectors)
    return squared.clamp_min(0.0).sqrt()


@dataclass
class LayerAccumulator:
    """Running sums of one layer's unit measures over windows; ``gram`` ``[U, k, k]`` of the units'
    write matrices (:meth:`~neuronbench.attention.units.AttentionUnits.write_gram`)."""

    n_units: int
    gram: torch.Tensor
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    unit_sum: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.sums = {name: torch.zeros(self.n_units, dtype=torch.float64) for name in UNIT_MEASURES}
        self.rows = torch.zeros(self.n_units, dtype=torch.long)

    def add(self, window: UnitWindow, reduced: WindowReduction) -> None:
        vectors = window.assemble(reduced.mixed).cpu().double()
        grads = window.grads.cpu().double()
        self.sums["attention_weighted"] += contribution_norms(vectors, self.gram).sum(0)
        self.sums["gradient_guided"] += (vectors * grads).sum(-1).abs().sum(0)
        self.sums["distance"] += reduced.distance
        self.sums["entropy"] += reduced.entropy
        self.rows += reduced.rows
        unit_total = window.unit_values.cpu().double().sum(0)
        self.unit_sum = unit_total if self.unit_sum is None else self.unit_sum + unit_total

    def add_rollout(self, final_row: torch.Tensor, relevant: torch.Tensor) -> None:
        self.sums["rollout"] += final_row[:, relevant].double().sum(-1)

    def result(self, n_tokens: int, n_windows: int) -> dict[str, np.ndarray]:
        rows = self.rows.double()
        per_row = {name: torch.where(self.rows > 0, self.sums[name] / rows.clamp_min(1), torch.nan)
                   for name in ("distance", "entropy")}
        return {
            "attention_weighted": (self.sums["attention_weighted"] / n_tokens).numpy(),
            "gradient_guided": (self.sums["gradient_guided"] / n_tokens).numpy(),
            "rollout": (self.sums["rollout"] / n_windows).numpy(),
            "distance": per_row["distance"].numpy(),
            "entropy": per_row["entropy"].numpy(),
            "unit_mean": (self.unit_sum / n_tokens).numpy(),
        }


@dataclass
class AttentionUnitScores:
    """Per-unit measures of every analysed layer: ``layers[l][name]`` is an array over the layer's
    units for each name of :data:`UNIT_MEASURES`, plus ``unit_mean`` (``[U]`` or ``[U, d_h]``);
    ``sample`` says which windows were scored."""

    family: str
    unit: str
    layers: dict[int, dict[str, np.ndarray]]
    n_tokens: int
    n_windows: int
    rollout_mass: float
    sample: WindowSample

    def measure(self, name: str) -> dict[int, np.ndarray]:
        """``{layer: per-unit array}`` of a measure of :data:`UNIT_MEASURES`."""
        if name not in UNIT_MEASURES:
            raise ConfigError(f"unknown attention measure {name!r}; choose one of {list(UNIT_MEASURES)}")
        return {layer: arrays[name] for layer, arrays in self.layers.items()}

    def top_k(self, method: str, k: int, scope: str = "layer") -> list[AttentionUnit]:
        """The best units under ``method``: with ``scope="layer"`` the ``k`` best of each layer
        (all of a layer with fewer), in layer order; with ``scope="global"`` the ``k`` best of all
        layers on per-layer normalised scores (:data:`TOP_K_SCOPES`). Highest first within a
        layer (resp. overall), ties broken by (layer, index); ``AttentionUnit.score`` is the
        ranked value."""
        if method not in SCORE_METHODS:
            raise ConfigError(f"unknown attention score {method!r}; choose one of {list(SCORE_METHODS)}")
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ConfigError(f"top-k needs a positive integer k, got {k!r}")
        if scope not in TOP_K_SCOPES:
            raise ConfigError(f"unknown top-k scope {scope!r}; choose one of {sorted(TOP_K_SCOPES)}")
        return TOP_K_SCOPES[scope](self.measure(method), k)

    def to_frame(self) -> pd.DataFrame:
        """One row per unit: ``layer``, ``unit`` and every measure of :data:`UNIT_MEASURES` — the
        data of the score distributions, activation (``attention_weighted``) vs importance
        (``gradient_guided``) and distance vs entropy figures."""
        frames = [pd.DataFrame({"layer": layer, "unit": np.arange(arrays["distance"].shape[0]),
                                **{name: arrays[name] for name in UNIT_MEASURES}})
                  for layer, arrays in self.layers.items()]
        return pd.concat(frames, ignore_index=True)

    def metadata(self) -> dict:
        return {"family": self.family, "unit": self.unit, "layers": sorted(self.layers),
                "n_tokens": self.n_tokens, "n_windows": self.n_windows, "rollout_mass": self.rollout_mass,
                "methods": list(SCORE_METHODS), **self.sample.to_record()}


def _ranked(scores: dict[int, np.ndarray]) -> list[AttentionUnit]:
    units = [AttentionUnit(layer, index, float(score)) for layer, values in scores.items()
             for index, score in enumerate(values)]
    return sorted(units, key=lambda unit: (-unit.score, unit.layer, unit.index))


def top_k_per_layer(scores: dict[int, np.ndarray], k: int) -> list[AttentionUnit]:
    """The ``k`` highest-scoring units of every layer, layers in ascending order."""
    return [unit for layer in sorted(scores) for unit in _ranked({layer: scores[layer]})[:k]]


def layer_normalized(values: np.ndarray) -> np.ndarray:
    """``s_u / mean_u' s_u'`` over one layer's non-negative scores (all 0 for a layer whose mean
    is 0), so that layers of different scale compare."""
    mean = float(np.mean(values))
    return np.zeros_like(values, dtype=float) if mean == 0 else values / mean


def top_k_global(scores: dict[int, np.ndarray], k: int) -> list[AttentionUnit]:
    """The ``k`` units with the highest :func:`layer_normalized` score over all layers."""
    return _ranked({layer: layer_normalized(values) for layer, values in scores.items()})[:k]


TOP_K_SCOPES: dict[str, Callable[[dict[int, np.ndarray], int], list[AttentionUnit]]] = {
    "layer": top_k_per_layer,
    "global": top_k_global,
}
"""How :meth:`AttentionUnitScores.top_k` selects: per layer (default) or globally on
per-layer normalised scores."""


def _real_length(mask_row: torch.Tensor) -> int:
    """Number of real tokens of a right-padded window; :class:`ConfigError` otherwise."""
    length = int(mask_row.sum())
    if not bool(mask_row[:length].all()):
        raise ConfigError("attention scores need right-padded windows (real tokens first, then padding)")
    return length


def _check_config(config: AttentionConfig) -> None:
    if not 0.0 < config.rollout_mass <= 1.0:
        raise ConfigError(f"rollout_mass must be in (0, 1], got {config.rollout_mass!r}")


def attention_unit_scores(model: nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                          config: AttentionConfig = AttentionConfig(),
                          progress: bool = True) -> AttentionUnitScores:
    """Score every attention unit of ``config.layers`` on ``windows`` (module docstring).

    One forward and backward pass per batch; for Mamba the hidden attention of each layer and
    window is streamed in blocks within ``config.memory_budget_bytes``. Windows are taken in a
    seeded random order, as many as ``config.time_budget_s`` allows by the cost model of
    :mod:`neuronbench.attention.sampling` (``scores.sample`` records them).
    """
    _check_config(config)
    if windows.n_tokens == 0:
        raise ConfigError("no tokens to analyse: the token windows are empty")
    units = attention_units(adapter)
    layers = parse_layers(config.layers, adapter.num_layers)
    accumulators = {layer: LayerAccumulator(units.count(adapter, layer), units.write_gram(adapter, layer))
                    for layer in layers}
    device = next(model.parameters()).device
    n_tokens = n_windows = 0
    window_seconds = estimated_window_seconds(model, adapter, layers, windows.input_ids.shape[1])
    batch_size = windows_per_batch(config.batch_size, windows.input_ids.shape[1])
    chosen = BudgetedWindows(windows, batch_size, window_seconds, config.time_budget_s, config.max_windows)
    for _rows, input_ids, mask in tqdm(chosen, total=len(chosen), desc="attention units", unit="batch",
                                       disable=not progress):
        seen = unit_pass(model, adapter, layers, units.kinds, input_ids.to(device), mask.to(device))
        for row in range(input_ids.shape[0]):
            length = _real_length(mask[row])
            if length == 0:
                continue
            _score_window(units, adapter, layers, accumulators, seen, row, length, config)
            n_tokens += length
            n_windows += 1
    return AttentionUnitScores(
        family=adapter.family, unit=units.name,
        layers={layer: acc.result(n_tokens, n_windows) for layer, acc in accumulators.items()},
        n_tokens=n_tokens, n_windows=n_windows, rollout_mass=config.rollout_mass, sample=chosen.sample,
    )


def _score_window(units: AttentionUnits, adapter: ArchitectureAdapter, layers: tuple[int, ...],
                  accumulators: dict[int, LayerAccumulator], seen: UnitPass, row: int, length: int,
                  config: AttentionConfig) -> None:
    """Add one window (``row`` of the batch ``seen``) to every layer's accumulator."""
    finals, means = {}, []
    for layer in layers:
        window = units.window(adapter, layer, seen, row, length, config.memory_budget_bytes)
        reduced = reduce_blocks(window.blocks, accumulators[layer].n_units, length, window.values)
        accumulators[layer].add(window, reduced)
        finals[layer] = reduced.final_row
        means.append(reduced.mean_attention)
    relevant = relevant_tokens(rollout(means)[-1].clamp_min(0.0), config.rollout_mass)
    for layer in layers:
        accumulators[layer].add_rollout(finals[layer], relevant)
