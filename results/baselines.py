"""CI regression on perplexity deltas.

``results/baselines/<model>-<dataset>.json`` (``--baseline-dir``) holds, per ablation condition (its baseline key,
e.g. ``dead-zero``), the relative perplexity delta ``Δ = ppl_condition / ppl_baseline − 1``.
With ``--baseline`` a case fails when ``|Δ_new − Δ_old| > tol · max(|Δ_old|, FLOOR)`` (``tol`` is
``--baseline-tolerance``, default 0.02; ``FLOOR = 1e-3`` keeps near-zero deltas from demanding
exact equality) and its message gives both numbers. ``--update-baselines`` rewrites the files
from the run's records. A condition's own Δ does not depend on its random controls, so the
``seeds`` in a file's ``config`` only says how the file was made (the committed files were made
with 2), and the CI regression checks them with ``--seeds 0``: no random controls at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.workspace import safe_name
from neuronbench.config import RunConfig
from neuronbench.errors import NeuronbenchError
from neuronbench.storage import write_json_atomic

FLOOR = 1e-3
METRIC = "ppl_delta_rel"


class BaselineRegression(NeuronbenchError):
    """A perplexity delta moved beyond the tolerance of its stored baseline."""


def baseline_path(directory: str | Path, model: str, dataset: str) -> Path:
    return Path(directory) / f"{safe_name(model)}-{safe_name(Path(dataset).name if '/' in dataset else dataset)}.json"


def load_baseline(directory: str | Path, model: str, dataset: str) -> dict:
    path = baseline_path(directory, model, dataset)
    if not path.is_file():
        raise NeuronbenchError(f"no baseline for {model} on {dataset}: expected {path}; "
                               "create it with --update-baselines")
    return json.loads(path.read_text())


def check_against_baseline(config: RunConfig, model: str, key: str, value: float) -> None:
    """Raise :class:`BaselineRegression` (old and new numbers) if ``value`` left the band."""
    dataset, tolerance = config.dataset, config.baseline_tolerance
    stored = load_baseline(config.baseline_dir, model, dataset)["conditions"]
    if key not in stored:
        raise NeuronbenchError(f"baseline for {model} on {dataset} has no condition {key!r}; "
                               f"it has {sorted(stored)}. Rerun with --update-baselines")
    old = stored[key][METRIC]
    if abs(value - old) > tolerance * max(abs(old), FLOOR):
        raise BaselineRegression(
            f"{model} {dataset} {key}: {METRIC} regressed: baseline {old:.6g}, now {value:.6g} "
            f"(|difference| {abs(value - old):.3g} > tolerance {tolerance} × max(|baseline|, {FLOOR}))"
        )


def update_baselines(records: list[dict], config: RunConfig) -> list[Path]:
    """Write one baseline file per (model, dataset) from the records that carry a baseline key."""
    grouped: dict[tuple[str, str], dict] = {}
    for record in records:
        if "baseline_key" in record:
            conditions = grouped.setdefault((record["model"], record["dataset"]), {})
            conditions[record["baseline_key"]] = {METRIC: record["metrics"][METRIC], "ppl": record["metrics"]["ppl"]}
    written = []
    for (model, dataset), conditions in grouped.items():
        payload = {"model": model, "dataset": dataset, "metric": METRIC,
                   "config": {k: v for k, v in config.to_record().items() if k in ("max_tokens", "eval_max_tokens", "max_length", "stride", "seeds", "pruning_ratio")},
                   "conditions": dict(sorted(conditions.items()))}
        written.append(write_json_atomic(baseline_path(config.baseline_dir, model, dataset), payload))
    return written
