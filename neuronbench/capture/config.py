"""What one capture pass computes, and a model-free layer layout for synthetic streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from neuronbench.activation import ActivationRule, resolve_rule

DEFAULT_SWEEP = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class CaptureConfig:
    """What one capture pass computes.

    ``activation`` is the activation rule (:mod:`neuronbench.activation`; ``None``: the adapter's
    default); ``threshold`` is τ (``None``: the rule's default); ``scales`` fixes the layer scales
    ``s_l`` of a relative rule (``None``: measured on windows spread over the corpus, :mod:`.scale`;
    by the first batch for a collector fed without a model); ``sweep`` the extra τ values for the
    dead-neuron sweep; ``exclude_token_ids`` tokens left out of the per-token and trigram counts
    (BOS); ``delta`` reads Δ statistics (only for SSMs; ``None`` means "when the model has Δ");
    ``trigrams`` keeps the trigram index (and, with ``token_counts``, ``trigram_active_count``);
    ``trigram_neurons`` the neurons that get exact ``(trigram, neuron)`` tables: ``None``,
    ``"all"`` or ``{layer: neuron indices}``; ``top_activations`` k of the streamed top-k
    activating positions per neuron (:mod:`.topk`; 0: not kept); ``compile`` computes the moments' and
    the window statistics' per-batch reductions with ``torch.compile`` (:mod:`.compiled`; off by
    default: the first batch compiles for tens of seconds on a CPU; a failure to compile falls back
    to the eager code with a warning); ``batch_size`` windows per forward pass (``None``:
    :func:`neuronbench.batching.windows_per_batch`: 4096 tokens, at least 8 windows).
    """

    layers: tuple[int, ...] | str | None = None
    activation: str | None = None
    threshold: float | None = None
    scales: Mapping[int, float] | None = None
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    positional: bool = True
    token_counts: bool = True
    delta: bool | None = None
    exclude_token_ids: frozenset[int] = frozenset()
    batch_size: int | None = None
    trigrams: bool = True
    trigram_neurons: Mapping[int, Sequence[int]] | str | None = None
    top_activations: int = 0
    compile: bool = False


@dataclass(frozen=True)
class NeuronLayout:
    """A model-free stand-in for an adapter: the layer set that synthetic activations are fed
    to (:meth:`StatisticsCollector.feed`), for tests and benchmarks."""

    num_layers: int
    width: int
    activation_rule: str = "positive"
    invalid_rules: Mapping[str, str] = field(default_factory=dict)
    has_ssm: bool = False
    family: str = "synthetic"

    def activation(self, name: str | None = None) -> ActivationRule:
        return resolve_rule(name, self.activation_rule, self.invalid_rules, self.family)

    def neuron_width(self, layer: int) -> int:
        return self.width
