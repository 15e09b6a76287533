"""Per-unit reductions, top-k and the diversity summary against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronbench.attention import AttentionUnit, AttentionUnitScores, diversity_summary, unit_set
from neuronbench.attention.ablation import units_to_ablate
from neuronbench.attention.hidden import AttentionBlock
from neuronbench.attention.sampling import WindowSample
from neuronbench.attention.scores import reduce_blocks
from neuronbench.errors import CaptureError, ConfigError


def blocks_of(alpha: torch.Tensor, unit_block: int, query_block: int) -> list[AttentionBlock]:
    """Cut a full causal ``alpha [U, T, T]`` into blocks the way the hidden attention streams them."""
    units, length = alpha.shape[0], alpha.shape[1]
    return [AttentionBlock(torch.arange(u, min(u + unit_block, units)), q, min(q + query_block, length),
                           alpha[u : u + unit_block, q : q + query_block, : min(q + query_block, length)])
            for u in range(0, units, unit_block) for q in range(0, length, query_block)]


def test_reduce_blocks_equals_brute_force_on_signed_attention_with_an_empty_row():
    g = torch.Generator().manual_seed(0)
    units, length = 3, 7
    alpha = torch.randn(units, length, length, generator=g).tril()
    alpha[1, 4] = 0.0  # a query row without attention mass: left out of distance and entropy
    values = torch.randn(length, units, generator=g)
    reduced = reduce_blocks(blocks_of(alpha, 2, 3), units, length, values)
    for u in range(units):
        distance = entropy = rows = 0.0
        for i in range(length):
            row = alpha[u, i].double().abs()
            if row.sum() == 0:
                continue
            p = row / row.sum()
            rows += 1
            distance += sum(p[j].item() * (i - j) for j in range(length))
            entropy += -sum(p[j].item() * np.log(p[j].item()) for j in range(length) if p[j] > 0)
        assert reduced.rows[u].item() == rows
        assert reduced.distance[u].item() == pytest.approx(distance, rel=1e-6)
        assert reduced.entropy[u].item() == pytest.approx(entropy, rel=1e-6)
        last = alpha[u, -1].double().abs()
        assert torch.allclose(reduced.final_row[u].double(), last / last.sum(), atol=1e-7)
    mean_attention = alpha.double().mean(0)  # the signed unit mean (rollout of Ali et al.)
    assert torch.allclose(reduced.mean_attention, mean_attention, atol=1e-7)
    expected_mixed = torch.einsum("uij,ju->iu", alpha, values)
    assert torch.allclose(reduced.mixed, expected_mixed, atol=1e-5)


def test_reduce_blocks_rejects_blocks_that_do_not_cover_every_query():
    alpha = torch.rand(2, 4, 4).tril()
    with pytest.raises(CaptureError, match="exactly once"):
        reduce_blocks(blocks_of(alpha, 2, 2)[:-1], 2, 4)


def scores_of(per_layer: dict[int, dict[str, list[float]]]) -> AttentionUnitScores:
    layers = {layer: {name: np.asarray(values, dtype=float) for name, values in arrays.items()}
              for layer, arrays in per_layer.items()}
    return AttentionUnitScores(family="toy", unit="head", layers=layers, n_tokens=10, n_windows=1, rollout_mass=0.5,
                               sample=WindowSample(1, [0]))


SCORES = scores_of({
    0: {"attention_weighted": [3.0, 1.0, 2.0], "gradient_guided": [0.1, 0.3, 0.2], "rollout": [0.5, 0.5, 0.5],
        "distance": [1.0, 2.0, 3.0], "entropy": [0.1, 0.2, 0.3]},
    1: {"attention_weighted": [3.0, 0.5, 0.1], "gradient_guided": [0.0, 0.4, 0.1], "rollout": [0.5, 0.5, 0.5],
        "distance": [4.0, 5.0, float("nan")], "entropy": [0.4, 0.5, float("nan")]},
})


def test_top_k_per_layer_by_default_and_global_on_normalised_scores():
    assert SCORES.top_k("attention_weighted", 2) == [AttentionUnit(0, 0, 3.0), AttentionUnit(0, 2, 2.0),
                                                      AttentionUnit(1, 0, 3.0), AttentionUnit(1, 1, 0.5)]
    assert len(SCORES.top_k("gradient_guided", 100)) == 6
    # layer means 2.0 and 3.6/3 = 1.2: layer 1's unit 0 (3.0 / 1.2 = 2.5) beats layer 0's (1.5)
    assert SCORES.top_k("attention_weighted", 2, "global") == [AttentionUnit(1, 0, pytest.approx(2.5)),
                                                                AttentionUnit(0, 0, pytest.approx(1.5))]
    assert unit_set(SCORES.top_k("gradient_guided", 1)) == {0: (1,), 1: (1,)}
    zero = scores_of({0: {name: [0.0, 0.0] for name in ("attention_weighted", "gradient_guided", "rollout",
                                                          "distance", "entropy")}})
    assert [unit.score for unit in zero.top_k("rollout", 2, "global")] == [0.0, 0.0]
    with pytest.raises(ConfigError, match="unknown attention score"):
        SCORES.top_k("distance", 2)
    with pytest.raises(ConfigError, match="positive integer"):
        SCORES.top_k("rollout", 0)
    with pytest.raises(ConfigError, match="scope"):
        SCORES.top_k("rollout", 1, "everywhere")


def test_diversity_summary_by_hand():
    summary = diversity_summary(SCORES, 1)
    weighted, gradient = summary["methods"]["attention_weighted"], summary["methods"]["gradient_guided"]
    assert summary["scope"] == "layer"
    assert weighted["units"] == [[0, 0], [1, 0]] and gradient["units"] == [[0, 1], [1, 1]]
    assert weighted["per_layer"] == {0: 1, 1: 1} and weighted["n_layers"] == 2
    assert weighted["mean_distance"] == pytest.approx(2.5) and gradient["mean_entropy"] == pytest.approx(0.35)
    assert summary["overlap"]["attention_weighted|gradient_guided"] == 0.0
    assert summary["overlap"]["attention_weighted|rollout"] == pytest.approx(1.0)
    assert summary["rank_correlation"]["attention_weighted|rollout"] is None
    ranks_w, ranks_g = [5.5, 3, 4, 5.5, 2, 1], [2.5, 5, 4, 1, 6, 2.5]
    assert summary["rank_correlation"]["attention_weighted|gradient_guided"] == pytest.approx(
        np.corrcoef(ranks_w, ranks_g)[0, 1])
    assert summary["all_units"] == {"n_units": 6, "mean_distance": pytest.approx(3.0),
                                    "mean_entropy": pytest.approx(0.3)}
    assert diversity_summary(SCORES, 2, "global")["methods"]["attention_weighted"]["units"] == [[1, 0], [0, 0]]


def test_ablated_units_keep_at_most_half_of_each_layer_so_the_random_control_differs():
    # three units per layer: floor(0.5 · 3) = 1 kept per layer, the best one
    assert units_to_ablate(SCORES, "attention_weighted", 10) == {0: (0,), 1: (0,)}
    assert units_to_ablate(SCORES, "gradient_guided", 10, share=1.0) == {0: (0, 1, 2), 1: (0, 1, 2)}
    # global scope: the two best overall, still at most one per layer
    assert units_to_ablate(SCORES, "attention_weighted", 2, "global") == {0: (0,), 1: (0,)}
    single = scores_of({0: {name: [1.0] for name in ("attention_weighted", "gradient_guided", "rollout",
                                                      "distance", "entropy")}})
    assert units_to_ablate(single, "rollout", 5) == {0: (0,)}  # a one-unit layer keeps its unit
