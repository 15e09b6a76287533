"""The statistics pass: one forward pass per batch over the analysis split feeds every detector.

Records the token count, the layer scales ``s_l`` of the activation rule (``thresholds``; 1 for an
absolute τ), the per-layer arrays ``freq``, ``mean``, ``max`` (to
``stats/<model>.npz``) and the time of the pass (pytest-benchmark; a disk-cache hit is marked, and
``cache_note`` says where the statistics came from or why the cache was not used).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.statistics, pytest.mark.capture()]


def test_statistics(workspace, record, benchmark):
    stats = benchmark.pedantic(lambda: workspace.stats, rounds=1, iterations=1)
    benchmark.extra_info["cache_hit"] = workspace.cache_hit
    assert stats.n_tokens > 0
    arrays = {}
    for layer in sorted(stats.layers):
        freq, mean = stats.freq(layer), stats.mean(layer)
        maximum = stats.layer(layer)["max"]
        assert np.isfinite(mean).all() and np.isfinite(maximum).all(), f"layer {layer}: non-finite statistics"
        assert ((freq >= 0) & (freq <= 1)).all()
        arrays |= {f"layer{layer}/freq": freq, f"layer{layer}/mean": mean, f"layer{layer}/max": maximum}
    record(workspace, analysis="statistics", method="one-pass capture",
           metrics={"n_tokens": stats.n_tokens, "n_windows": stats.n_windows, "n_layers": len(stats.layers),
                    "cache_hit": bool(workspace.cache_hit), "cache_note": workspace.cache_note},
           thresholds={"tau": stats.threshold, "sweep": list(stats.sweep),
                       "layer_scales": {str(layer): float(stats.layer(layer)["active_scale"])
                                        for layer in sorted(stats.layers)}},
           arrays=arrays,
           figures={"activation_distribution": {
               "freq": np.concatenate([stats.freq(layer) for layer in sorted(stats.layers)]).tolist(),
               "max": np.concatenate([stats.layer(layer)["max"] for layer in sorted(stats.layers)]).tolist()}})
