"""Non-finite activations fail the capture pass (SPEC §6: a NaN compares as inactive, so a model
with a NaN in its weights would otherwise report "dead" neurons).

Every tensor the hooks hand to the collector (neurons, and Δ for an SSM) is checked at its real
(unpadded) positions without a reduction of its own: the statistics already reduce every real
value once per batch (:attr:`~neuronbench.capture.moments.Moments.checksum`, the float32 sums of
``log Δ`` for Δ), and a NaN or ±inf propagates into such a sum, so ``isfinite(Σ checksum)`` (a
sum of ``W`` float64 values) decides. Only when it is not finite is the tensor scanned element by
element, so a finite tensor whose sum overflows float32 is not mistaken for a non-finite one. A
non-finite value raises :class:`NonFiniteActivationError` naming the model, the layer, the
tensor, the batch and the first offending position; so does a Δ that underflowed to 0 (its
``log Δ`` is −inf, and its spread would come out NaN).

The check reads the result on the host (one synchronisation per batch and layer on a GPU).
"""

from __future__ import annotations

import torch

from neuronbench.errors import NonFiniteActivationError
from neuronbench.names import SSM_DELTA, parse_act_name


def model_label(adapter: object) -> str:
    """How errors name the model: its ``config._name_or_path`` (the alias, hub id or directory it
    was loaded from), else the adapter's class name (model-free feeding)."""
    name = getattr(getattr(adapter, "config", None), "_name_or_path", None)
    return str(name) if name else type(adapter).__name__


class FiniteCheck:
    """Checks every received tensor of the current batch; :meth:`next_batch` advances the index."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.batch = -1

    def next_batch(self) -> None:
        self.batch += 1

    def __call__(self, name: str, tensor: torch.Tensor, checksum: torch.Tensor | None,
                 real: torch.Tensor) -> None:
        """Raise :class:`NonFiniteActivationError` if ``tensor [B, T, ...]`` holds a NaN or ±inf at a
        real position (``real [B, T]``); ``checksum`` is the statistics' per-batch reduction of
        those values (``None``: no real position)."""
        if checksum is None or bool(torch.isfinite(checksum.sum())):
            return
        layer, kind = parse_act_name(name)
        bad = ~torch.isfinite(tensor)
        if kind == SSM_DELTA:
            bad |= tensor <= 0  # Δ underflowed to 0: log Δ = −inf, its spread would be NaN
        bad &= real.view(*real.shape, *([1] * (tensor.dim() - 2)))
        if not bool(bad.any()):
            return
        first = [int(i) for i in bad.nonzero()[0]]
        what = "NaN, inf or ≤ 0 (log Δ undefined)" if kind == SSM_DELTA else "NaN or inf"
        raise NonFiniteActivationError(
            f"model {self.model}: non-finite activations in layer {layer}, tensor {name!r} ({kind}), batch "
            f"{self.batch}: {int(bad.sum())} of {bad.numel()} values are {what}, the first at index "
            f"{tuple(first)} of shape {tuple(tensor.shape)}. Check the model's weights for NaN/inf "
            "(or run in float32: --dtype float32)."
        )
