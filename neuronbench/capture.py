"""One-pass capture: a single forward pass per batch feeds streaming statistics for every
requested layer at once.

Hooks registered through the adapter hand each named activation (``blocks.{l}.neurons``,
``blocks.{l}.ssm.delta``) to the statistics that consume it *while the forward pass runs*; the
tensor is reduced at once and dropped, so nothing of size tokens × neurons is ever kept and host
memory stays flat as the number of tokens grows. Padded positions (``attention_mask == 0``)
never count.

Statistics kept per layer (``a`` is a neuron's activation on one real token, τ the threshold):

====================  ===========================  ==============================================
array                 shape                        definition
====================  ===========================  ==============================================
``active_count``      ``[W]``                      ``#{tokens : a > τ}``
``sweep_count``       ``[S, W]``                   ``#{tokens : a > τ_s}`` for each sweep τ_s
``sum``, ``sum_sq``   ``[W]``                      ``Σ a``, ``Σ a²`` (float64)
``max``, ``min``      ``[W]``                      extremes of ``a``
``pos_tokens``        ``[T]``                      full-length windows seen (per position)
``pos_active``        ``[T, W]``                   ``#{full windows : a(pos) > τ}``
``pos_sum``           ``[T, W]``                   ``Σ a(pos)`` over full windows
``pearson_sum``       ``[W]``                      ``Σ_windows r(pos, a)`` (r := 0 for a neuron
                                                   constant within a window)
``token_occurrences`` ``[V]``                      occurrences of each token (BOS etc. excluded)
``token_active``      ``[V_seen, W]``              ``#{occurrences of token t : a > τ}``, rows in
                                                   the order of ``token_ids``
``log_delta_*``       ``[D]``                      Mamba: sum, sum_sq, min, max of ``log Δ``
====================  ===========================  ==============================================

``n_tokens`` counts real tokens; ``n_windows`` the full-length windows. Derived quantities
(frequency, mean, spread) are properties of :class:`LayerStatistics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.adapters.base import parse_layers
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, ConfigError
from neuronbench.names import NEURONS, SSM_DELTA, parse_act_name

DEFAULT_SWEEP = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class CaptureConfig:
    """What one capture pass computes.

    ``threshold`` is τ (``None``: the adapter's default); ``sweep`` the extra τ values for the
    dead-neuron sweep; ``exclude_token_ids`` tokens left out of the per-token counts (BOS);
    ``delta`` reads Δ statistics (only for SSMs; ``None`` means "when the model has Δ").
    """

    layers: tuple[int, ...] | str | None = None
    threshold: float | None = None
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    positional: bool = True
    token_counts: bool = True
    delta: bool | None = None
    exclude_token_ids: frozenset[int] = frozenset()
    batch_size: int = 8


class TokenRows:
    """Maps token ids to compact row indices, growing as new tokens appear.

    Shared by every layer so that ``token_active`` rows mean the same token in all layers.
    """

    def __init__(self, vocab_size: int) -> None:
        self.row_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self.token_ids = torch.empty(0, dtype=torch.long)
        self.occurrences = torch.zeros(vocab_size, dtype=torch.long)

    @property
    def size(self) -> int:
        return self.token_ids.numel()

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """Row index of each token, assigning rows to unseen ones; counts the occurrences."""
        self.occurrences += torch.bincount(tokens, minlength=self.row_of.numel())
        new = torch.unique(tokens[self.row_of[tokens] < 0])
        self.row_of[new] = torch.arange(self.size, self.size + new.numel())
        self.token_ids = torch.cat([self.token_ids, new])
        return self.row_of[tokens]


@dataclass
class LayerStatistics:
    """Streaming statistics of one layer's neurons (and Δ channels, for an SSM)."""

    layer: int
    width: int
    threshold: float
    sweep: tuple[float, ...]
    window: int
    device: torch.device
    token_rows: TokenRows | None = None
    n_tokens: int = 0
    n_windows: int = 0
    n_delta_tokens: int = 0
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w, t, d = self.width, self.window, self.device
        long, f64 = torch.long, torch.float64
        self.arrays.update(
            active_count=torch.zeros(w, dtype=long, device=d),
            sweep_count=torch.zeros(len(self.sweep), w, dtype=long, device=d),
            sum=torch.zeros(w, dtype=f64, device=d),
            sum_sq=torch.zeros(w, dtype=f64, device=d),
            max=torch.full((w,), -torch.inf, dtype=f64, device=d),
            min=torch.full((w,), torch.inf, dtype=f64, device=d),
            pos_tokens=torch.zeros(t, dtype=long, device=d),
            pos_active=torch.zeros(t, w, dtype=long, device=d),
            pos_sum=torch.zeros(t, w, dtype=f64, device=d),
            pearson_sum=torch.zeros(w, dtype=f64, device=d),
        )
        if self.token_rows is not None:
            self.arrays["token_active"] = torch.zeros(0, w, dtype=torch.int32)

    # -- updates -------------------------------------------------------------------------------
    def update_neurons(self, acts: torch.Tensor, mask: torch.Tensor, token_keep: torch.Tensor | None,
                       token_rows: torch.Tensor | None, positional: bool) -> None:
        """Fold one batch ``acts [B, T, W]`` (real positions where ``mask``) into the totals."""
        if acts.shape[-1] != self.width or acts.shape[:2] != mask.shape:
            raise CaptureError(
                f"layer {self.layer}: neuron tensor of shape {tuple(acts.shape)} does not match "
                f"the batch {tuple(mask.shape)} and width {self.width}"
            )
        acts = acts.float()
        flat = acts[mask]
        self._update_moments(flat)
        if positional:
            self._update_positions(acts[mask.all(dim=1)])
        if token_rows is not None:
            self._update_tokens(flat[token_keep], token_rows)

    def _update_moments(self, flat: torch.Tensor) -> None:
        a = self.arrays
        self.n_tokens += flat.shape[0]
        a["active_count"] += (flat > self.threshold).sum(0)
        for i, tau in enumerate(self.sweep):
            a["sweep_count"][i] += (flat > tau).sum(0)
        a["sum"] += flat.sum(0, dtype=torch.float64)
        a["sum_sq"] += flat.double().square().sum(0)
        if flat.shape[0]:
            torch.maximum(a["max"], flat.max(0).values.double(), out=a["max"])
            torch.minimum(a["min"], flat.min(0).values.double(), out=a["min"])

    def _update_positions(self, windows: torch.Tensor) -> None:
        """Full-length windows ``[n, T, W]``: per-position counts and the Pearson score."""
        if windows.shape[0] == 0:
            return
        a = self.arrays
        self.n_windows += windows.shape[0]
        a["pos_tokens"] += windows.shape[0]
        a["pos_active"] += (windows > self.threshold).sum(0)
        a["pos_sum"] += windows.sum(0, dtype=torch.float64)
        a["pearson_sum"] += pearson_with_position(windows).sum(0)

    def _update_tokens(self, flat: torch.Tensor, rows: torch.Tensor) -> None:
        """Add ``a > τ`` of each kept token to its token's row (rows grow as tokens appear)."""
        table = self.arrays["token_active"]
        if table.shape[0] < self.token_rows.size:
            grown = torch.zeros(max(self.token_rows.size, 2 * table.shape[0]), self.width, dtype=torch.int32)
            grown[: table.shape[0]] = table
            self.arrays["token_active"] = table = grown
        table.index_add_(0, rows, (flat > self.threshold).to(torch.int32).cpu())

    def update_delta(self, delta: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold ``log Δ`` of the real positions into per-channel moments and extremes."""
        log_delta = delta[mask].double().log()
        a = self.arrays
        if "log_delta_sum" not in a:
            d, dev = log_delta.shape[-1], self.device
            a.update(
                log_delta_sum=torch.zeros(d, dtype=torch.float64, device=dev),
                log_delta_sum_sq=torch.zeros(d, dtype=torch.float64, device=dev),
                log_delta_max=torch.full((d,), -torch.inf, dtype=torch.float64, device=dev),
                log_delta_min=torch.full((d,), torch.inf, dtype=torch.float64, device=dev),
            )
        self.n_delta_tokens += log_delta.shape[0]
        a["log_delta_sum"] += log_delta.sum(0)
        a["log_delta_sum_sq"] += log_delta.square().sum(0)
        if log_delta.shape[0]:
            torch.maximum(a["log_delta_max"], log_delta.max(0).values, out=a["log_delta_max"])
            torch.minimum(a["log_delta_min"], log_delta.min(0).values, out=a["log_delta_min"])


def pearson_with_position(windows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between position and activation, per window and neuron.

    ``r = Σ_t (t − t̄)(a_t − ā) / sqrt(Σ_t (t − t̄)² · Σ_t (a_t − ā)²)`` over the T positions of
    a window; defined as 0 where the neuron is constant within the window. Returns ``[n, W]``
    (float64).
    """
    x = windows.double()
    positions = torch.arange(x.shape[1], dtype=torch.float64, device=x.device)
    positions = positions - positions.mean()
    centred = x - x.mean(dim=1, keepdim=True)
    numerator = torch.einsum("t,ntw->nw", positions, centred)
    denominator = positions.norm() * centred.norm(dim=1)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0)


@dataclass
class ActivationStatistics:
    """The result of one capture pass: per-layer arrays plus what produced them."""

    layers: dict[int, dict[str, np.ndarray]]
    n_tokens: int
    n_windows: int
    window: int
    threshold: float
    sweep: tuple[float, ...]
    token_ids: np.ndarray | None
    token_occurrences: np.ndarray | None
    excluded_token_ids: tuple[int, ...]

    def layer(self, layer: int) -> dict[str, np.ndarray]:
        if layer not in self.layers:
            raise CaptureError(f"layer {layer} was not captured; captured: {sorted(self.layers)}")
        return self.layers[layer]

    def freq(self, layer: int) -> np.ndarray:
        """Activation frequency ``freq_j = active_count_j / n_tokens``."""
        return self.layer(layer)["active_count"] / self.n_tokens

    def mean(self, layer: int) -> np.ndarray:
        """Mean activation ``Σ a / n_tokens`` (the value used by mean-ablation)."""
        return self.layer(layer)["sum"] / self.n_tokens

    def metadata(self) -> dict:
        return {
            "n_tokens": self.n_tokens,
            "n_windows": self.n_windows,
            "window": self.window,
            "threshold": self.threshold,
            "sweep": list(self.sweep),
            "layers": sorted(self.layers),
            "excluded_token_ids": list(self.excluded_token_ids),
        }


class StatisticsCollector:
    """Receives named activations from the hooks and routes them to each layer's statistics."""

    def __init__(self, adapter: ArchitectureAdapter, config: CaptureConfig, window: int,
                 vocab_size: int, device: torch.device) -> None:
        self.adapter = adapter
        self.config = config
        self.layers = parse_layers(config.layers, adapter.num_layers)
        self.threshold = adapter.default_threshold if config.threshold is None else float(config.threshold)
        self.delta = adapter.has_ssm if config.delta is None else config.delta
        self.rows = TokenRows(vocab_size) if config.token_counts else None
        self.exclude = torch.tensor(sorted(config.exclude_token_ids), dtype=torch.long, device=device)
        self.stats = {
            layer: LayerStatistics(layer, adapter.neuron_width(layer), self.threshold, tuple(config.sweep),
                                   window, device, self.rows)
            for layer in self.layers
        }
        self._batch: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None
        self._seen: set[str] = set()

    @property
    def kinds(self) -> tuple[str, ...]:
        return (NEURONS, SSM_DELTA) if self.delta else (NEURONS,)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handles = [h for layer in self.layers for h in self.adapter.register_capture(layer, self.kinds, self.receive)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def start_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        mask = attention_mask.bool()
        keep = rows = None
        if self.rows is not None:
            tokens = input_ids[mask]
            keep = ~torch.isin(tokens, self.exclude)
            rows = self.rows.rows(tokens[keep].cpu())
        self._batch = (mask, keep, rows)
        self._seen = set()

    def receive(self, name: str, tensor: torch.Tensor) -> None:
        layer, kind = parse_act_name(name)
        mask, keep, rows = self._batch
        if kind == NEURONS:
            self.stats[layer].update_neurons(tensor, mask, keep, rows, self.config.positional)
        else:
            self.stats[layer].update_delta(tensor, mask)
        self._seen.add(name)

    def end_batch(self) -> None:
        """Fail loudly if any hook did not fire during the forward pass."""
        expected = {f"blocks.{layer}.{kind}" for layer in self.layers for kind in self.kinds}
        missing = expected - self._seen
        if missing:
            raise CaptureError(
                f"hooks did not fire for {sorted(missing)}: the model's forward pass did not call "
                "the hooked modules (is the adapter right for this model?)"
            )

    def result(self) -> ActivationStatistics:
        first = self.stats[self.layers[0]]
        layers = {}
        for layer, stats in self.stats.items():
            arrays = {name: value.cpu().numpy() for name, value in stats.arrays.items()}
            if "token_active" in arrays:
                arrays["token_active"] = arrays["token_active"][: self.rows.size]
            layers[layer] = arrays
        return ActivationStatistics(
            layers=layers,
            n_tokens=first.n_tokens,
            n_windows=first.n_windows,
            window=first.window,
            threshold=self.threshold,
            sweep=tuple(self.config.sweep),
            token_ids=None if self.rows is None else self.rows.token_ids.numpy(),
            token_occurrences=None if self.rows is None else self.rows.occurrences.numpy(),
            excluded_token_ids=tuple(sorted(self.config.exclude_token_ids)),
        )


def batches(windows: TokenWindows, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(input_ids, attention_mask)`` batches of ``batch_size`` windows."""
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    for start in range(0, windows.input_ids.shape[0], batch_size):
        yield (windows.input_ids[start : start + batch_size],
               windows.attention_mask[start : start + batch_size])


def capture_statistics(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                       config: CaptureConfig, progress: bool = True) -> ActivationStatistics:
    """Run one forward pass per batch of ``windows`` and return the streamed statistics."""
    if windows.n_tokens == 0:
        raise CaptureError("no tokens to capture: the token windows are empty")
    device = next(model.parameters()).device
    collector = StatisticsCollector(adapter, config, windows.input_ids.shape[1],
                                    model.config.vocab_size, device)
    total = -(-windows.input_ids.shape[0] // config.batch_size)
    with torch.inference_mode(), collector.hooked():
        for input_ids, attention_mask in tqdm(batches(windows, config.batch_size), total=total,
                                              desc="capture", unit="batch", disable=not progress):
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            collector.start_batch(input_ids, attention_mask)
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            collector.end_batch()
    return collector.result()
