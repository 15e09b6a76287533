"""Attention knockout as an ablation condition: its effect on perplexity and on the probability of
the next token, against random knockouts of the same size (the knockout itself is
:mod:`neuronbench.attention.knockout`).

Windows. The evaluation split cut into consecutive windows ``s`` of ``T + 1`` tokens (only full
windows; the remainder, fewer than ``T + 1`` tokens, is not used and the records say how many
tokens were). The model reads ``s[:T]`` unpadded, so every sequence has the same length ``T`` and
the knockout's positions mean the same in each; the logits at position ``i`` predict ``s[i+1]``.

Metrics of a knockout ``K`` (and of the unablated model, ``baseline_*``), over ``n`` windows::

    ppl         = exp( Σ_windows Σ_{i<T} −log p(s[i+1] | s[≤i]) / (n·T) )
    target_prob = mean over windows and target rows i of p(s[i+1] | s[≤i])

where the target rows are the rows of ``K`` with a knocked-out source (for ``last<-…`` the last
position, whose prediction is the window's final token). Random controls
(:func:`~neuronbench.attention.knockout.random_knockout`, seeds ``0..seeds−1``) knock out as
many sources in the same rows; each metric gets the controls' mean, std (ddof = 1) and the
condition's z-score (:func:`~neuronbench.ablation.controls.summarize_controls`).

Batches. ``batch_size`` sequences per forward pass (``None``:
:func:`neuronbench.batching.windows_per_batch`); on a GPU probed once, by scoring the first
sequences under the first knockout that a :meth:`KnockoutRunner.run` scores (the condition's own,
before its controls and the baseline; :func:`neuronbench.batching.fit_batch_size`), and halved on
out-of-memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from neuronbench.ablation.controls import ControlSummary, resolve_seeds, summarize_controls
from neuronbench.adapters import ArchitectureAdapter
from neuronbench.attention.hidden import DEFAULT_MEMORY_BUDGET
from neuronbench.attention.knockout import NO_KNOCKOUT, Knockout, knocked_out, random_knockout
from neuronbench.batching import fit_batch_size, windows_per_batch
from neuronbench.errors import ConfigError, NonFiniteLossError
from neuronbench.perplexity import token_nll


@dataclass(frozen=True)
class KnockoutScore:
    """Summed next-token NLL over every prediction, and the next-token probability summed over
    the target rows."""

    nll_sum: float
    n_predictions: int
    target_prob_sum: float
    n_targets: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.n_predictions)

    @property
    def target_prob(self) -> float:
        return self.target_prob_sum / self.n_targets if self.n_targets else math.nan


def knockout_score(model: nn.Module, sequences: torch.Tensor, targets: torch.Tensor,
                   batch_size: int | None) -> KnockoutScore:
    """:class:`KnockoutScore` of ``sequences`` ``[n, T + 1]`` (the model reads the first ``T``)
    with target rows ``targets`` (bool ``[T]``), under whatever knockout is active, in batches of
    ``batch_size`` sequences (``None``: :func:`neuronbench.batching.windows_per_batch`)."""
    device = next(model.parameters()).device
    batch_size = windows_per_batch(batch_size, sequences.shape[1] - 1)
    nll_sum, prob_sum = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, sequences.shape[0], batch_size):
            batch = sequences[start : start + batch_size].to(device)
            nll = token_nll(model(input_ids=batch[:, :-1], use_cache=False).logits, batch[:, 1:])
            if not bool(torch.isfinite(nll).all()):
                raise NonFiniteLossError(f"non-finite next-token loss in knockout windows {start}..{start + batch.shape[0] - 1}"
                                         " (check the dtype, e.g. --dtype float32)")
            nll_sum += float(nll.double().sum())
            prob_sum += float(torch.exp(-nll[:, targets.to(device)].double()).sum())
    n = sequences.shape[0]
    return KnockoutScore(nll_sum, n * (sequences.shape[1] - 1), prob_sum, n * int(targets.sum()))


@dataclass(frozen=True)
class KnockoutResult:
    """One knockout against the baseline and its random controls."""

    condition: str
    layers: tuple[int, ...]
    pairs_per_window: int
    score: KnockoutScore
    baseline: KnockoutScore
    ppl_controls: ControlSummary
    prob_controls: ControlSummary
    n_windows: int
    window_length: int

    def to_record(self) -> dict:
        """A flat record of numbers (``z`` may be ``±inf``/``nan``, as for every ablation)."""
        return {
            "condition": self.condition, "layers": list(self.layers), "pairs_per_window": self.pairs_per_window,
            "ppl": self.score.ppl, "baseline_ppl": self.baseline.ppl,
            "ppl_delta_rel": self.score.ppl / self.baseline.ppl - 1.0,
            "control_ppl_mean": self.ppl_controls.mean, "control_ppl_std": self.ppl_controls.std,
            "control_ppls": list(self.ppl_controls.ppls), "z": self.ppl_controls.z,
            "target_prob": self.score.target_prob, "baseline_target_prob": self.baseline.target_prob,
            "control_target_prob_mean": self.prob_controls.mean, "control_target_prob_std": self.prob_controls.std,
            "control_target_probs": list(self.prob_controls.ppls), "z_target_prob": self.prob_controls.z,
            "seeds": list(self.ppl_controls.seeds), "n_windows": self.n_windows,
            "window_length": self.window_length, "tokens_scored": self.score.n_predictions,
            "n_targets": self.score.n_targets,
        }


class KnockoutRunner:
    """Knockouts of one model on one set of equal-length windows (module docstring); the
    baseline is computed once."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, sequences: torch.Tensor,
                 seeds: int | Sequence[int] = 5, batch_size: int | None = None,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> None:
        if sequences.dim() != 2 or sequences.shape[0] == 0 or sequences.shape[1] < 3:
            raise ConfigError(f"knockout windows must be [n ≥ 1, T + 1 ≥ 3] token ids, got {tuple(sequences.shape)}")
        self.model, self.adapter, self.sequences = model, adapter, sequences
        self.seeds = resolve_seeds(seeds)
        self.batch_size = batch_size
        self.memory_budget_bytes = memory_budget_bytes
        self._baselines: dict[tuple[int, ...], KnockoutScore] = {}
        self._fitted: int | None = None

    @property
    def length(self) -> int:
        """``T``, the length of the sequences the model reads."""
        return self.sequences.shape[1] - 1

    def score(self, knockout: Knockout | None, targets: torch.Tensor) -> KnockoutScore:
        """The windows' score under ``knockout`` (``None``: unablated) on ``targets`` rows."""
        if knockout is None:
            key = tuple(targets.nonzero().flatten().tolist())
            if key not in self._baselines:
                self._baselines[key] = self.score(NO_KNOCKOUT, targets)
            return self._baselines[key]
        with knocked_out(self.adapter, knockout, self.memory_budget_bytes):
            return knockout_score(self.model, self.sequences, targets, self._fitted_batch_size(targets))

    def _fitted_batch_size(self, targets: torch.Tensor) -> int:
        """Sequences per batch, fitted (on a GPU) by the first call, under whatever knockout is active."""
        if self._fitted is None:
            requested = min(windows_per_batch(self.batch_size, self.length), self.sequences.shape[0])
            self._fitted = fit_batch_size(
                lambda size: knockout_score(self.model, self.sequences[:size], targets, size),
                requested, next(self.model.parameters()).device)
        return self._fitted

    def run(self, knockout: Knockout) -> KnockoutResult:
        """``knockout``, its random controls and the baseline."""
        mask = knockout.mask(self.length)
        targets = mask.any(-1)
        if not bool(targets.any()):
            raise ConfigError(f"knockout {knockout.name!r} removes nothing at window length {self.length}")
        score = self.score(knockout, targets)
        controls = [self.score(random_knockout(knockout, seed), targets) for seed in self.seeds]
        return KnockoutResult(
            condition=knockout.name, layers=knockout.layers, pairs_per_window=int(mask.sum()), score=score,
            baseline=self.score(None, targets),
            ppl_controls=summarize_controls(score.ppl, self.seeds, [c.ppl for c in controls]),
            prob_controls=summarize_controls(score.target_prob, self.seeds, [c.target_prob for c in controls]),
            n_windows=self.sequences.shape[0], window_length=self.length,
        )
