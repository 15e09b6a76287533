"""Non-finite activations fail the capture pass (SPEC §6: a NaN compares as inactive, so a model
with a NaN in its weights would otherwise report "dead" neurons).

Every tensor the hooks hand to the collector (neurons, and Δ for an SSM) is checked with one
reduction per batch and layer: ``isfinite(Σ a)`` (float32 accumulation). Only when that sum is not
finite is the tensor scanned element by element, so a finite tensor whose sum overflows float32 is
not mistaken for a non-finite one. A non-finite value raises :class:`NonFiniteActivationError`
naming the model, the layer, the tensor, the batch and the first offending position.

The check reads the result on the host (one synchronisation per batch and layer on a GPU).
"""

from __future__ import annotations

import torch

from neuronbench.errors import NonFiniteActivationError
from neuronbench.names import parse_act_name


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

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        """Raise :class:`NonFiniteActivationError` if ``tensor`` holds a NaN or ±inf."""
        if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
            return
        bad = ~torch.isfinite(tensor)
        if not bool(bad.any()):
            return
        layer, kind = parse_act_name(name)
        first = [int(i) for i in bad.nonzero()[0]]
        raise NonFiniteActivationError(
            f"model {self.model}: non-finite activations in layer {layer}, tensor {name!r} ({kind}), batch "
            f"{self.batch}: {int(bad.sum())} of {bad.numel()} values are NaN or inf, the first at index "
            f"{tuple(first)} of shape {tuple(tensor.shape)}. Check the model's weights for NaN/inf "
            "(or run in float32: --dtype float32)."
        )
