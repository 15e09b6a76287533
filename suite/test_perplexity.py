"""Perplexity of the unablated model on the evaluation split.

``sliding``: token perplexity with the sliding-window method (window ``--max-length``, stride
``--stride``; context tokens not scored). ``rolling``: lm-evaluation-harness rolling windows per
document, giving word perplexity and bits per byte. Every number must be finite.
"""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.perplexity, pytest.mark.capture()]

METHODS = {
    "sliding": lambda workspace: workspace.ablation_runner.baseline(),
    "rolling": lambda workspace: workspace.document_evaluation.evaluate(
        workspace.loaded.model, workspace.config.batch_size),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_perplexity(workspace, record, benchmark, method):
    result = benchmark.pedantic(METHODS[method], args=(workspace,), rounds=1, iterations=1)
    metrics = result.to_record()
    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    assert all(math.isfinite(v) for v in numbers.values()), f"non-finite perplexity metrics: {numbers}"
    assert metrics["tokens_scored"] > 0
    record(workspace, analysis="perplexity", method=method, metrics=metrics, split=workspace.config.eval_split,
           tokens=metrics["tokens_scored"])
