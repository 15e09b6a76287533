"""Which windows the attention scores read: the seeded order, the cap, the budget through the cost
model (no timing), the record, and the terminal note when fewer than all were read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.attention import AttentionConfig, attention_unit_scores
from neuronbench.attention.sampling import (ALPHA_SECONDS, PASS_SECONDS, SCAN_SECONDS, BudgetedWindows, allowed_windows,
                                           estimated_window_seconds, window_order)
from neuronbench.data import TokenWindows
from neuronbench.errors import ConfigError
from neuronbench.models import load_model
from results.summary import sampling_notes


def windows(n: int, length: int = 6) -> TokenWindows:
    ids = torch.randint(1, 300, (n, length), generator=torch.Generator().manual_seed(n))
    return TokenWindows(ids, torch.ones_like(ids), n * length)


def test_order_is_a_seeded_permutation_and_the_cap_keeps_its_prefix():
    order = window_order(10)
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert window_order(10).tolist() == order.tolist()
    assert window_order(10, 3).tolist() == order[:3].tolist()


def test_every_window_without_a_budget_and_the_cap_is_recorded():
    chosen = BudgetedWindows(windows(7), batch_size=3, window_seconds=1.0, time_budget_s=None)
    rows = [batch[0] for batch in chosen]
    assert [len(r) for r in rows] == [3, 3, 1] and sorted(sum(rows, [])) == list(range(7))
    assert chosen.sample.complete and chosen.sample.stopped_by == "all windows"
    capped = BudgetedWindows(windows(7), batch_size=2, window_seconds=1.0, time_budget_s=None, max_windows=3)
    list(capped)
    assert capped.sample.scored == window_order(7, 3).tolist() and capped.sample.stopped_by == "max_windows"


def test_the_budget_allows_floor_budget_over_the_estimate_and_at_least_one():
    order, why = allowed_windows(10, window_seconds=3.0, time_budget_s=10.0)
    assert order.tolist() == window_order(10)[:3].tolist() and why == "time budget"
    assert allowed_windows(10, 3.0, 1.0)[0].size == 1  # one window even when it alone overruns
    assert allowed_windows(10, 3.0, 30.0) == (pytest.approx(window_order(10)), "all windows")
    assert allowed_windows(10, 3.0, 100.0, max_windows=4)[1] == "max_windows"
    chosen = BudgetedWindows(windows(10), batch_size=2, window_seconds=3.0, time_budget_s=10.0)
    list(chosen)
    record = chosen.sample.to_record()
    assert record["windows_scored"] == 3 and record["windows_offered"] == 10 and record["stopped_by"] == "time budget"
    assert record["estimated_s_per_window"] == 3.0 and record["elapsed_s"] >= 0.0


@pytest.mark.parametrize("budget, cap", [(0.0, None), (-1.0, None), (None, 0), (None, 1.5)])
def test_bad_budget_raises(budget, cap):
    with pytest.raises(ConfigError, match="budget|max_windows"):
        BudgetedWindows(windows(3), 1, 1.0, budget, cap)


@pytest.mark.parametrize("family", ["mamba", "gpt2"])
def test_the_cost_model_by_hand(toy_model_dir, family):
    loaded = load_model(str(toy_model_dir(family)), device="cpu", dtype="float32")
    parameters = sum(p.numel() for p in loaded.model.parameters())
    expected = PASS_SECONDS * parameters * 16
    if family == "mamba":  # 2 layers of D = 64 channels, state 8
        expected += SCAN_SECONDS * 2 * 16 + ALPHA_SECONDS * 2 * 64 * 8 * 16**2
    assert estimated_window_seconds(loaded.model, loaded.adapter, [0, 1], 16) == pytest.approx(expected, rel=1e-12)


def test_scores_of_a_capped_sample_equal_the_scores_of_those_windows(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    offered = windows(5, length=8)
    capped = attention_unit_scores(loaded.model, loaded.adapter, offered,
                                   AttentionConfig(max_windows=2, time_budget_s=None), progress=False)
    picked = window_order(5, 2)
    direct = attention_unit_scores(loaded.model, loaded.adapter,
                                   TokenWindows(offered.input_ids[picked], offered.attention_mask[picked], 16),
                                   AttentionConfig(time_budget_s=None), progress=False)
    assert capped.n_windows == 2 and capped.n_tokens == 16
    assert capped.metadata()["windows_offered"] == 5 and capped.metadata()["windows_scored"] == 2
    for layer, arrays in direct.layers.items():
        for name in ("attention_weighted", "gradient_guided", "rollout"):
            assert np.allclose(capped.layers[layer][name], arrays[name], rtol=1e-6), (layer, name)


def test_terminal_note_only_when_fewer_than_all_windows_were_read():
    def record(model: str, scored: int, offered: int) -> dict:
        return {"model": model, "analysis": "attention",
                "metrics": {"windows_scored": scored, "windows_offered": offered, "stopped_by": "time budget"}}

    notes = sampling_notes([record("a", 3, 10), record("a", 3, 10), record("b", 10, 10),
                            {"model": "c", "analysis": "dead", "metrics": {}}])
    assert notes == ["a: attention scores read 3 of 10 analysis windows (stopped by time budget; raise "
                     "--attention-budget or --attention-windows to read more)"]
