"""Activation rules: when a neuron counts as *active* (SPEC §4 "Active").

Every frequency-based statistic (dead, rarely active, positional, token and trigram detectors)
counts the tokens on which a neuron is active. Which rule is right depends on the family's
nonlinearity, so each adapter declares its default rule (with the reason in its docstring) and
the rules that make no sense for it (:func:`resolve_rule`); ``--active`` selects another one.

=============  ======================  ===========  ==============================================
rule           active iff              default τ    τ means
=============  ======================  ===========  ==============================================
``positive``   ``a > τ``               0            an absolute level in the neuron tensor's units;
                                                    the paper's rule, exact for ReLU (OPT)
``magnitude``  ``|a| > τ · s_l``       0.5          a multiple of the layer's scale ``s_l``
=============  ======================  ===========  ==============================================

**The layer scale** ``s_l = median_j sqrt(Σ_t a_{t,j}² / n)`` is the median over the layer's
neurons of each neuron's RMS over the ``n`` real tokens of a **sample of windows spread evenly
over the analysed corpus** (:mod:`neuronbench.capture.scale`: 2048 tokens, 16 windows of 128;
the whole corpus when it is smaller; torch's median: the lower middle value for an even width; a
median, so that a few outlier neurons with huge activations do not make every other neuron of the
layer look inactive). A scale must be fixed before any count is made, so a short forward pass over
the sample (through the model's backbone, no logits) measures it before the capture, unless every
sample window is in the first batch, whose sample rows then measure it; the same mask is then
applied to every batch. A collector fed without a model (:meth:`StatisticsCollector.feed`)
measures it on its first batch. It is per layer, not per neuron, on purpose: a scale
of the neuron's own would make every neuron active on a similar share of tokens and "dead" would
lose its meaning (a neuron that writes ten times less than its layer is inert, whatever its own
scale). ``s_l`` is stored with the statistics (``active_scale``) and reused by the second
(trigram) pass, so both passes use the same mask. With ``s_l = 0`` the rule is ``|a| > 0``.

A τ that is NaN is rejected for every rule; ``magnitude`` also rejects a negative τ (``|a| > −c``
holds everywhere, which would make every neuron always active).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from neuronbench.errors import ConfigError

SCALE_BYTES = 3 << 19
"""Size of the float64 block of the first batch that :meth:`ActivationRule.layer_scale` squares and
sums at a time (1.5 MiB: 64 rows of 3072, so that it stays in cache)."""


def scale_rows(width: int) -> int:
    """Rows of a :data:`SCALE_BYTES` float64 block of ``width`` columns (at least 1)."""
    return max(1, SCALE_BYTES // (8 * width))


def _above(values: torch.Tensor, level: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``values > level`` as float32 0/1, written straight into a float32 tensor (``out`` when given:
    a reused buffer costs no fresh pages)."""
    if out is None:
        out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    return torch.gt(values, level, out=out)


def square_sums(flat: torch.Tensor, block: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_t a_{t,j}²`` of ``flat [n, W]`` in float64 (``[W]``; float32 squares are exact in
    double), a :func:`scale_rows` block of rows at a time, each block's float64 copy written into
    ``block`` (float64 ``[rows, W]``, e.g. a reused buffer) when given."""
    total = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
    rows = scale_rows(flat.shape[1]) if block is None else block.shape[0]
    for start in range(0, flat.shape[0], rows):
        part = flat[start:start + rows]
        squares = part.double() if block is None else block[:part.shape[0]].copy_(part)
        total += squares.mul_(squares).sum(dim=0)
    return total


@dataclass(frozen=True)
class Mask:
    """A rule with its layer scale bound: ``active(a, τ) ⇔ level(a) > cut(τ)``, where
    ``level(a) = |a|`` and ``cut(τ) = τ·s_l`` for a relative rule, else ``a`` and ``τ``.
    ``mask(a, τ)`` is a float32 0/1 tensor of the shape of ``a`` (counts are sums or matmuls of it);
    the level is separate so that one ``|a|`` serves every τ of a sweep."""

    relative: bool
    scale: float

    def level(self, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``|a|`` (into ``out`` when given) for a relative rule, else ``a`` itself."""
        if not self.relative:
            return a
        return torch.abs(a) if out is None else torch.abs(a, out=out)

    def cut(self, tau: float) -> float:
        return tau * self.scale if self.relative else tau

    def above(self, level: torch.Tensor, tau: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """The mask from an already computed :meth:`level`."""
        return _above(level, self.cut(tau), out)

    def __call__(self, a: torch.Tensor, tau: float) -> torch.Tensor:
        return self.above(self.level(a), tau)


@dataclass(frozen=True)
class ActivationRule:
    """One rule: its name, formula, default τ, and whether τ is relative to the layer scale."""

    name: str
    formula: str
    default_tau: float
    relative: bool
    allows_negative_tau: bool

    def layer_scale(self, flat: torch.Tensor, block: torch.Tensor | None = None) -> float:
        """``s_l = median_j sqrt(Σ_t a_{t,j}² / n)`` over the first batch ``flat [n, W]``, in float64
        (exact squares of the float32 values), a block of rows at a time (:func:`scale_rows`; each
        block's float64 copy stays in cache: about 20× cheaper on a CPU than ``pow`` of a whole
        float64 copy); ``block`` (float64 ``[rows, W]``, e.g. a reused buffer) receives each block.
        1.0 for an absolute τ; 0.0 for a batch without real tokens."""
        if not self.relative:
            return 1.0
        if not flat.numel():
            return 0.0
        return self.scale_from_squares(square_sums(flat, block), flat.shape[0])

    def scale_from_squares(self, square_sums: torch.Tensor, n: int) -> float:
        """``s_l = median_j sqrt(square_sums_j / n)`` from the float64 ``Σ_t a_{t,j}²`` of ``n > 0``
        tokens (1.0 for an absolute τ)."""
        if not self.relative:
            return 1.0
        return float((square_sums.double() / n).sqrt_().median())

    def bind(self, scale: float) -> Mask:
        """The mask with ``s_l`` fixed."""
        return Mask(self.relative, scale)

    def check_tau(self, tau: float) -> float:
        """``tau`` as a float, or :class:`ConfigError` naming the valid range."""
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or math.isinf(tau):
            raise ConfigError(f"--threshold (τ) must be a finite number for the {self.name!r} rule, got {tau!r}")
        if tau < 0 and not self.allows_negative_tau:
            raise ConfigError(f"--threshold (τ) must be ≥ 0 for the {self.name!r} rule ({self.formula}), got {tau!r}")
        return float(tau)


ACTIVATION_RULES: dict[str, ActivationRule] = {
    "positive": ActivationRule("positive", "a > τ", 0.0, relative=False, allows_negative_tau=True),
    "magnitude": ActivationRule("magnitude", "|a| > τ·s_l", 0.5, relative=True, allows_negative_tau=False),
}
"""The activation rules by name (``--active``)."""


def resolve_rule(name: str | None, default: str, invalid: Mapping[str, str], family: str) -> ActivationRule:
    """The rule ``name`` (``None``: the family's ``default``), or :class:`ConfigError` naming the
    valid choices for an unknown rule or one the family declares invalid (with its reason)."""
    chosen = default if name is None else name
    valid = [rule for rule in ACTIVATION_RULES if rule not in invalid]
    if chosen not in ACTIVATION_RULES:
        raise ConfigError(f"--active {chosen!r} is not an activation rule; valid for {family}: {valid}")
    if chosen in invalid:
        raise ConfigError(f"--active {chosen!r} makes no sense for {family} models: {invalid[chosen]}; "
                          f"valid for {family}: {valid}")
    return ACTIVATION_RULES[chosen]


def resolve_threshold(rule: ActivationRule, tau: float | None) -> float:
    """τ: the rule's default when ``tau`` is None, else the checked value."""
    return rule.default_tau if tau is None else rule.check_tau(tau)
