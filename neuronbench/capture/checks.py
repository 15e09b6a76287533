"""Non-finite activations fail the capture pass (SPEC §6: a NaN compares as inactive, so a model
with a NaN in its weights would otherwise report "dead" neurons).

Every tensor the hooks hand to the collector (neurons, and Δ for an SSM) is checked at its real
(unpadded) positions without a reduction of its own: the statistics already reduce every real
value once per batch (the moments' ``Σ a + Σ a²`` per neuron, :mod:`.moments`; the sums of
``log Δ`` for Δ), and a NaN or ±inf propagates into such a sum, so ``isfinite(Σ checksum)`` (a
sum of ``W`` float64 values) decides. The batch's sums stay on the device until the batch ends;
then :meth:`FiniteCheck.failed` reads all of them at once: one host read a batch, the only one
the capture makes on a GPU before the forward pass is done (the exact trigram tables of
``trigram_neurons`` then read their entering pairs, :class:`~.trigrams.TrigramCounts`).

Only when a sum is not finite are the tensors scanned element by element (:meth:`FiniteCheck.scan`,
after the collector hands them over once more: :meth:`~.collector.StatisticsCollector.end_batch`).
A non-finite value raises :class:`NonFiniteActivationError` naming the model, the layer, the
tensor, the batch and the first offending position; so does a Δ that underflowed to 0 (its
``log Δ`` is −inf, and its spread would come out NaN). A tensor that holds only finite values
but whose sums overflowed raises :class:`~neuronbench.errors.CaptureError`
(:meth:`FiniteCheck.overflow_error`): its moments would be ±inf. That needs values near the
float32 limit: on the tensor-op path (:mod:`.blocks`, float32 partial sums: a GPU, or a CPU
without the C library) ``Σ a²`` of a batch overflows from ``|a| ≈ 1.8e19 / √n`` of ``n`` such
values; the C reductions of a CPU (:mod:`.native`) sum in double and hold any float32 value.
"""

from __future__ import annotations

import torch

from neuronbench.errors import CaptureError, NonFiniteActivationError
from neuronbench.names import SSM_DELTA, parse_act_name


def model_label(adapter: object) -> str:
    """How errors name the model: its ``config._name_or_path`` (the alias, hub id or directory it
    was loaded from), else the adapter's class name (model-free feeding)."""
    name = getattr(getattr(adapter, "config", None), "_name_or_path", None)
    return str(name) if name else type(adapter).__name__


class FiniteCheck:
    """The non-finite check of every tensor received in a batch; :meth:`next_batch` starts a batch."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.batch = -1
        self._names: list[str] = []
        self._sums: list[torch.Tensor] = []

    def next_batch(self) -> None:
        self.batch += 1
        self._names, self._sums = [], []

    def add(self, name: str, checksum: torch.Tensor | None) -> None:
        """Keep ``Σ checksum`` of tensor ``name`` (the statistics' per-batch reduction of its real
        values; ``None``: no real position) on its device until :meth:`failed`."""
        if checksum is not None:
            self._names.append(name)
            self._sums.append(checksum.sum())

    def failed(self) -> list[str]:
        """The tensors of this batch whose checksum is not finite (one host read for all of them)."""
        if not self._sums:
            return []
        finite = torch.isfinite(torch.stack(self._sums)).tolist()
        return [name for name, ok in zip(self._names, finite) if not ok]

    def scan(self, name: str, tensor: torch.Tensor, real: torch.Tensor) -> float:
        """Raise :class:`NonFiniteActivationError` if ``tensor [B, T, ...]`` holds a NaN or ±inf
        (for Δ also a value ≤ 0) at a real position (``real [B, T]``); else return its largest
        ``|value|`` there (its checksum overflowed)."""
        layer, kind = parse_act_name(name)
        real = real.view(*real.shape, *([1] * (tensor.dim() - 2)))
        bad = ~torch.isfinite(tensor)
        if kind == SSM_DELTA:
            bad |= tensor <= 0  # Δ underflowed to 0: log Δ = −inf, its spread would be NaN
        bad &= real
        if not bool(bad.any()):
            return float(torch.where(real, tensor.abs(), 0.0).max())
        first = [int(i) for i in bad.nonzero()[0]]
        what = "NaN, inf or ≤ 0 (log Δ undefined)" if kind == SSM_DELTA else "NaN or inf"
        raise NonFiniteActivationError(
            f"model {self.model}: non-finite activations in layer {layer}, tensor {name!r} ({kind}), batch "
            f"{self.batch}: {int(bad.sum())} of {bad.numel()} values are {what}, the first at index "
            f"{tuple(first)} of shape {tuple(tensor.shape)}. Check the model's weights for NaN/inf "
            "(or run in float32: --dtype float32)."
        )

    def overflow_error(self, largest: dict[str, float]) -> CaptureError:
        """The error for tensors that hold only finite values (``{name: largest |value|}``) but whose
        checksum overflowed: their moments' sums would be ±inf."""
        named = ", ".join(f"{name!r} (largest |a| {value:.3g})" for name, value in sorted(largest.items()))
        return CaptureError(
            f"model {self.model}: in batch {self.batch}, {named} hold only finite values, but their float32 "
            "sums of a or a² overflow, so their moments would be inf: values this large are beyond the "
            "float32 reductions of the tensor-op path (a GPU, or a CPU without the C library). Check the "
            "model's weights and --dtype, or capture on a CPU with the C library (it sums in double)."
        )
