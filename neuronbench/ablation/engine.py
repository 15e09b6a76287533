"""The ablation runner: perplexity of a model under each condition and its random controls.

One :class:`AblationRunner` serves one model × evaluation data set. Its evaluation windows are
built once (a :class:`~neuronbench.perplexity.TokenEvaluation` or
:class:`~neuronbench.perplexity.DocumentEvaluation`) and reused by every condition; every
evaluation is cached by ``(mode, unit, {(layer, index)})``, so the baseline is computed once and no
set of units is evaluated twice (a random control equal to another condition's is reused, and an
empty set is the baseline).

For a condition with perplexity ``p`` and baseline ``p_0``::

    delta = p − p_0,    delta_rel = (p − p_0) / p_0

and its controls (:mod:`neuronbench.ablation.controls`) give mean, std (ddof=1) and z.

Random controls depend only on the seeds, the mode, the unit and the per-layer counts (the draw
rule of :func:`~neuronbench.ablation.controls.random_control`), so conditions with equal
per-layer counts have the very same controls: they are evaluated once and shared, and each
result says so (:class:`ControlSharing`: the draw's key, the earlier conditions it shares them
with, and how many control evaluations it ran itself).
Neurons are meant to be found on the analysis split (default ``train``) and perplexity measured
on another (default ``test``); the results record both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from neuronbench.ablation.conditions import Condition
from neuronbench.ablation.controls import (DEFAULT_SEEDS, ControlSummary, draw_control, draw_rule,
                                           resolve_seeds, summarize_controls)
from neuronbench.ablation.hooks import ablated, check_mode, checked_set, resolve_unit
from neuronbench.ablation.neurons import NeuronSetLike, counts, pairs
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.capture import ActivationStatistics


class PerplexityResult(Protocol):
    ppl: float
    n_tokens: int

    def to_record(self) -> dict: ...


class Evaluation(Protocol):
    """Prepared windows that can be scored under any ablation."""

    source: dict

    def evaluate(self, model: nn.Module, batch_size: int | None = ..., progress: bool = ...
                 ) -> PerplexityResult: ...


@dataclass(frozen=True)
class ControlSharing:
    """The experiment a condition's random controls are. ``key`` names the draw (mode, unit,
    per-layer counts, seeds): equal keys are the same controls. ``shared_with``: the conditions
    this runner ran earlier with the same key; ``new_evaluations``: control evaluations this
    condition ran itself (0 when every control was already evaluated)."""

    key: str
    shared_with: tuple[str, ...]
    new_evaluations: int

    def to_record(self) -> dict:
        return {"controls_key": self.key, "controls_shared_with": list(self.shared_with),
                "control_evaluations_run": self.new_evaluations}


def control_key(condition: Condition, unit: str, seeds: Sequence[int], rule: str = "uniform") -> str:
    """A short name of the random-control draw of ``condition`` with its unit resolved for the
    model (``unit``: Mamba's heads are its channels), see :class:`ControlSharing`; a ``matched``
    draw also depends on the condition's own neurons."""
    own = sorted(pairs(condition.neurons)) if rule == "matched" else None
    draw = (condition.mode, unit, sorted(counts(condition.neurons).items()), tuple(seeds), rule, own)
    return hashlib.sha256(repr(draw).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AblationResult:
    """One condition against the baseline and its random controls."""

    condition: str
    mode: str
    unit: str
    n_neurons: dict[int, int]
    ppl: float
    baseline_ppl: float
    controls: ControlSummary
    tokens_scored: int
    analysis_split: str
    eval_split: str | None
    metric: dict
    sharing: ControlSharing | None = None

    @property
    def delta(self) -> float:
        return self.ppl - self.baseline_ppl

    @property
    def delta_rel(self) -> float:
        return self.delta / self.baseline_ppl

    def to_record(self) -> dict:
        """A flat record; numbers stay numbers (``z`` may be ``±inf``/``nan``, see controls)."""
        return {
            "condition": self.condition, "mode": self.mode, "unit": self.unit,
            "n_neurons": sum(self.n_neurons.values()),
            "n_neurons_per_layer": {str(k): v for k, v in sorted(self.n_neurons.items())},
            "ppl": self.ppl, "baseline_ppl": self.baseline_ppl,
            "ppl_delta": self.delta, "ppl_delta_rel": self.delta_rel,
            "control_ppl_mean": self.controls.mean, "control_ppl_std": self.controls.std,
            "control_ppls": list(self.controls.ppls), "z": self.controls.z, "control": self.controls.rule,
            "seeds": list(self.controls.seeds), "tokens_scored": self.tokens_scored,
            "analysis_split": self.analysis_split, "eval_split": self.eval_split,
            **({} if self.sharing is None else self.sharing.to_record()),
            **{k: v for k, v in self.metric.items() if k not in ("ppl", "tokens_scored", "split")},
        }


STATELESS_MODES = ("zero",)
"""Ablation modes that need no activation statistics."""


class AblationRunner:
    """Evaluates conditions of one model on one prepared evaluation set, with caching.

    ``stats`` are the analysis split's statistics (needed for mean-ablation and matched controls), or
    a function that computes them, called when first needed; ``seeds`` the random-control seeds
    (:func:`~neuronbench.ablation.controls.resolve_seeds`); ``control`` the draw rule of the
    conditions that can be matched (:func:`~neuronbench.ablation.controls.draw_rule`); ``batch_size``
    the windows per forward pass (``None``: :func:`neuronbench.batching.windows_per_batch`).
    """

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, evaluation: Evaluation,
                 stats: ActivationStatistics | Callable[[], ActivationStatistics] | None = None,
                 seeds: int | Sequence[int] = DEFAULT_SEEDS, batch_size: int | None = None,
                 analysis_split: str = "train", progress: bool = False, control: str = "matched") -> None:
        self.model = model
        self.adapter = adapter
        self.evaluation = evaluation
        self._stats = stats
        self.seeds = resolve_seeds(seeds)
        self.batch_size = batch_size
        self.analysis_split = analysis_split
        self.eval_split = evaluation.source.get("split")
        self.progress = progress
        self.control = control
        self._cache: dict[tuple, PerplexityResult] = {}
        self._control_users: dict[str, list[str]] = {}

    @property
    def stats(self) -> ActivationStatistics | None:
        """The analysis split's statistics (computed on first use when given as a function)."""
        if callable(self._stats):
            self._stats = self._stats()
        return self._stats

    @property
    def evaluations(self) -> int:
        """Number of distinct evaluations run so far (forward passes over the data)."""
        return len(self._cache)

    def _run(self, key: tuple, neurons: NeuronSetLike, mode: str, unit: str) -> PerplexityResult:
        if key not in self._cache:
            stats = None if mode in STATELESS_MODES else self.stats
            with ablated(self.adapter, neurons, mode, unit, stats):
                self._cache[key] = self.evaluation.evaluate(self.model, self.batch_size, self.progress)
        return self._cache[key]

    def baseline(self) -> PerplexityResult:
        """Perplexity with nothing ablated (computed once)."""
        return self._run(("baseline",), {}, "zero", "neuron")

    def perplexity(self, neurons: NeuronSetLike, mode: str = "zero",
                   unit: str = "neuron") -> PerplexityResult:
        """Perplexity with ``neurons`` ablated; an empty set is the baseline."""
        resolved = resolve_unit(self.adapter, unit)
        check_mode(mode, resolved)
        normal = checked_set(self.adapter, neurons, resolved)
        if not normal:
            return self.baseline()
        return self._run((mode, resolved.name, pairs(normal)), normal, mode, unit)

    def alone(self, neurons: Iterable[tuple[int, int]], mode: str = "zero") -> dict[tuple[int, int], float]:
        """``{(layer, neuron): Δppl_rel}`` of ablating each neuron by itself, ``p_j / p_0 − 1``:
        one evaluation pass per neuron (no random control: a single neuron's effect is read
        against the others', not tested)."""
        base = self.baseline().ppl
        return {(layer, neuron): self.perplexity({layer: [neuron]}, mode).ppl / base - 1 for layer, neuron in neurons}

    def widths(self, layers: Iterable[int], unit: str) -> dict[int, int]:
        """Width of each layer in ``unit``s."""
        resolved = resolve_unit(self.adapter, unit)
        return {layer: resolved.width(self.adapter, layer) for layer in layers}

    def controls(self, condition: Condition) -> ControlSummary:
        """Random controls of ``condition`` over the runner's seeds."""
        widths = self.widths(condition.neurons, condition.unit)
        rule = draw_rule(condition.name, condition.unit, self.control)
        ppls = [self.perplexity(draw_control(rule, condition.neurons, widths, seed, self.stats), condition.mode,
                                condition.unit).ppl for seed in self.seeds]
        target = self.perplexity(condition.neurons, condition.mode, condition.unit).ppl
        return summarize_controls(target, self.seeds, ppls, rule)

    def shared_controls(self, condition: Condition) -> tuple[ControlSummary, ControlSharing]:
        """:meth:`controls`, and how they are shared with the conditions run before."""
        key = control_key(condition, resolve_unit(self.adapter, condition.unit).name, self.seeds,
                          draw_rule(condition.name, condition.unit, self.control))
        users = self._control_users.setdefault(key, [])
        shared_with = tuple(dict.fromkeys(name for name in users if name != condition.name))
        self.perplexity(condition.neurons, condition.mode, condition.unit)  # not counted as a control
        before = self.evaluations
        summary = self.controls(condition)
        users.append(condition.name)
        return summary, ControlSharing(key, shared_with, self.evaluations - before)

    def run(self, condition: Condition) -> AblationResult:
        """The condition, its controls (shared where equal), and its deltas against the baseline."""
        base = self.baseline()
        result = self.perplexity(condition.neurons, condition.mode, condition.unit)
        summary, sharing = self.shared_controls(condition)
        return AblationResult(
            condition=condition.name, mode=condition.mode, unit=condition.unit,
            n_neurons=counts(condition.neurons), ppl=result.ppl, baseline_ppl=base.ppl,
            controls=summary, tokens_scored=result.n_tokens,
            analysis_split=self.analysis_split, eval_split=self.eval_split,
            metric={**self.evaluation.source, **result.to_record()}, sharing=sharing,
        )

    def run_all(self, conditions: Iterable[Condition]) -> list[AblationResult]:
        """:meth:`run` for every condition, in order."""
        return [self.run(condition) for condition in conditions]
