"""Writing the run's outputs under ``--out`` (SPEC §5), all atomically.

* ``results.json``: schema-versioned run payload (config, versions, records, failures).
* ``neurons.json``: analysis → model → layer → sorted neuron indices (from the records).
* ``stats/<model>.npz``: the per-layer arrays the cases recorded (``layer{l}/{name}``), merged
  from the per-case parts under ``.parts/``.
* ``plots/*.png``, ``report.md``, ``report.html`` and ``neurons/<model>/L<l>N<i>.md``: see
  :mod:`neuronbench.figures`, :mod:`neuronbench.report` and :mod:`neuronbench.neuron_pages`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fixtures.workspace import safe_name
from neuronbench.config import RunConfig
from neuronbench.storage import write_json_atomic, write_npz_atomic

PARTS = ".parts"


def write_part(out: Path, model: str, case: str, arrays: dict[str, np.ndarray]) -> Path:
    """A case's per-layer arrays (``{"layer3/freq": ...}``) for ``stats/<model>.npz``; one file
    per case (named by a hash of its node id)."""
    digest = hashlib.sha256(case.encode()).hexdigest()[:16]
    return write_npz_atomic(out / PARTS / f"{safe_name(model)}--{digest}.npz", arrays)


def write_results(out: Path, payload: dict) -> Path:
    return write_json_atomic(out / "results.json", payload)


def neurons_by_analysis(records: list[dict]) -> dict:
    """analysis (with neuron type) → model → layer → sorted indices."""
    table: dict[str, dict[str, dict[str, list[int]]]] = {}
    for record in records:
        if "neurons" in record:
            name = record["analysis"] if not record.get("neuron_type") else f"{record['analysis']}/{record['neuron_type']}"
            table.setdefault(name, {})[record["model"]] = record["neurons"]
    return table


def merged_stats(records: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """model → merged arrays of all its recorded parts."""
    merged: dict[str, dict[str, np.ndarray]] = {}
    for record in records:
        if "arrays_file" in record:
            with np.load(record["arrays_file"]) as part:
                merged.setdefault(record["model"], {}).update({name: part[name] for name in part.files})
    return merged


def write_session_outputs(out: Path, payload: dict, config: RunConfig) -> None:
    """Everything but ``results.json``: neurons, stats, figures, report, baselines."""
    from neuronbench.report import write_report
    from results.baselines import update_baselines

    records = payload["records"]
    write_json_atomic(out / "neurons.json", neurons_by_analysis(records))
    for model, arrays in merged_stats(records).items():
        write_npz_atomic(out / "stats" / f"{safe_name(model)}.npz", arrays)
    write_report(out, payload)
    if config.update_baselines:
        update_baselines(records, config)
