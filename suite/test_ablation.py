"""Ablation: remove a neuron type (zero- or mean-ablation, by hooks) and measure token perplexity
on the evaluation split, against random controls with the same number of units per layer over
``--seeds`` seeds (mean ± std, z-score). With ``--baseline`` the relative perplexity delta is
compared with ``results/baselines/<model>-<dataset>.json``.
"""

from __future__ import annotations

import math

import pytest

from fixtures.workspace import ABLATION_CAPTURE, ABLATION_TYPES
from results.baselines import check_against_baseline

pytestmark = pytest.mark.ablation
MODES = ("zero", "mean")
CASE_IDS = {"dead+positional": "union"}
"""Case ids that differ from the condition's name: the dead ∪ positional case is
``test_ablation[<model>-union-<mode>]``, so that ``-k dead`` selects the dead cases alone (which
read the moments only) and not a case that needs the positional statistics; ``-k union`` selects it."""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("neuron_type", [pytest.param(name, marks=ABLATION_CAPTURE.get(name, ()),
                                                      id=CASE_IDS.get(name, name)) for name in ABLATION_TYPES])
def test_ablation(workspace, record, neuron_type, mode):
    condition = workspace.ablation_condition(neuron_type, mode)
    runner = workspace.ablation_runner
    if mode == "mean" and condition.unit == "head" and not workspace.loaded.adapter.has_ssm:
        pytest.skip("mean-ablation of transformer heads needs per-head means, which are not streamed")
    result = runner.run(condition)
    metrics = result.to_record()
    controlled = ("control_ppl_mean",) if workspace.config.seeds else ()  # --seeds 0: no random controls
    for key in ("ppl", "baseline_ppl", *controlled):
        assert math.isfinite(metrics[key]), f"{key} is not finite: {metrics[key]}"
    if metrics["n_neurons"] == 0:
        assert metrics["ppl"] == metrics["baseline_ppl"]
    key = f"{neuron_type}-{mode}"
    if workspace.config.baseline:
        check_against_baseline(workspace.config, workspace.name, key, metrics["ppl_delta_rel"])
    record(workspace, analysis="ablation", method=f"{mode}-ablation", neuron_type=neuron_type, mode=mode,
           metrics=metrics, neurons=condition.neurons, split=workspace.config.eval_split,
           tokens=metrics["tokens_scored"], seed=None, baseline_key=key,
           thresholds={"pruning_ratio": workspace.config.pruning_ratio, "seeds": workspace.config.seeds,
                       "control": metrics["control"]},
           figures={"ablation": {"condition": neuron_type}})
