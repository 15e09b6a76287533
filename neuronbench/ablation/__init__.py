"""Ablation: remove units by hooks (zero or mean), measure perplexity, compare with random
controls of the same size per layer.

* :mod:`~neuronbench.ablation.neurons` — neuron sets ``{layer: sorted indices}`` and their union;
* :mod:`~neuronbench.ablation.hooks` — the :func:`ablated` context manager (modes, units);
* :mod:`~neuronbench.ablation.conditions` — conditions and the pruning priority order;
* :mod:`~neuronbench.ablation.controls` — seeded random controls, mean ± std (ddof=1), z-score;
* :mod:`~neuronbench.ablation.engine` — :class:`AblationRunner` (cached evaluations) and
  :class:`AblationResult`.
"""

from neuronbench.ablation.conditions import (Condition, check_ratio, pruning_order, pruning_set,
                                             rms, standard_conditions)
from neuronbench.ablation.controls import (ControlSummary, random_control, resolve_seeds,
                                           summarize_controls, z_score)
from neuronbench.ablation.engine import AblationResult, AblationRunner
from neuronbench.ablation.hooks import ABLATION_MODES, UNITS, ablated, checked_set, resolve_unit
from neuronbench.ablation.neurons import NeuronSet, counts, neuron_set, pairs, size, union

__all__ = [
    "ABLATION_MODES", "UNITS", "AblationResult", "AblationRunner", "Condition", "ControlSummary",
    "NeuronSet", "ablated", "check_ratio", "checked_set", "counts", "neuron_set", "pairs",
    "pruning_order", "pruning_set", "random_control", "resolve_seeds", "resolve_unit", "rms",
    "size", "standard_conditions", "summarize_controls", "union", "z_score",
]
