"""Eager attention only where attention probabilities are read.

Models load with the library's default attention implementation (SDPA on CPU, SDPA or flash
attention on a GPU), which never materialises the ``[B, H, T, T]`` probabilities. A pass that
reads them (``attn.pattern``) switches the model to ``"eager"`` for as long as its capture hooks
are registered (:func:`hold_eager`, called by the transformer adapter's ``register_capture``),
or explicitly with :func:`eager_attention`. Holds nest: the model returns to its own
implementation when the last one is released.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from neuronbench.errors import CaptureError

EAGER = "eager"
_HOLDS = "_neuronbench_eager_holds"
_RESTORE = "_neuronbench_attn_restore"


def attention_implementation(model: nn.Module) -> str | None:
    """The attention implementation ``model`` runs now (``None`` for models without one)."""
    return getattr(model.config, "_attn_implementation", None)


class EagerHold:
    """Keeps ``model`` on eager attention until :meth:`remove` (a hook-handle look-alike)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active = True
        holds = getattr(model, _HOLDS, 0)
        if holds == 0:
            setattr(model, _RESTORE, attention_implementation(model))
            if attention_implementation(model) != EAGER:
                model.set_attn_implementation(EAGER)
            if attention_implementation(model) != EAGER:
                raise CaptureError(
                    f"{type(model).__name__} cannot switch to eager attention at run time, which reading "
                    "attention probabilities needs: load it with attn_implementation='eager'")
        setattr(model, _HOLDS, holds + 1)

    def remove(self) -> None:
        if not self.active:
            return
        self.active = False
        holds = getattr(self.model, _HOLDS) - 1
        setattr(self.model, _HOLDS, holds)
        restore = getattr(self.model, _RESTORE)
        if holds == 0 and restore != attention_implementation(self.model):
            self.model.set_attn_implementation(restore)


def hold_eager(model: nn.Module) -> EagerHold:
    """Switch ``model`` to eager attention until the returned hold is removed."""
    return EagerHold(model)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the body with ``model`` on eager attention, then restore its implementation."""
    hold = hold_eager(model)
    try:
        yield
    finally:
        hold.remove()
