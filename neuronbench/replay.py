"""Replay and compare finished runs without rerunning anything.

``python -m neuronbench report DIR`` rebuilds ``report.md``, ``report.html``, ``plots/`` and
``neurons/`` from ``DIR/results.json`` (the report reads nothing else; ``stats/`` must be there,
as a sign that the run finished). ``python -m neuronbench compare DIR_A DIR_B [--out FILE]``
prints the differences between two runs as a Markdown table and writes it to ``FILE`` (default
``compare.md``): the cases only one run has, then every numeric metric of every case both have
(counts, per-layer counts, perplexities, Δppl, z, …) side by side with its change, one row per
metric that differs; a run against itself has none. Values are compared exactly.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tabulate import tabulate

from neuronbench.document import fmt
from neuronbench.errors import ConfigError
from neuronbench.findings import split_metrics
from neuronbench.report import write_report
from neuronbench.storage import write_text_atomic

VOLATILE = frozenset({"cache_hit", "case_duration"})
"""Metrics that describe how a run went, not what it found (never compared)."""


def load_run(directory: str | Path) -> dict:
    """The ``results.json`` payload of a finished run, or a :class:`ConfigError` saying what is missing."""
    path = Path(directory) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{directory} is not a finished neuronbench run: {path} does not exist "
                          "(pass the --out directory of a `pytest suite` run)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); was the run interrupted while writing it?") from error


def report_command(argv: list[str]) -> int:
    args = argparse.ArgumentParser(prog="python -m neuronbench report",
                                   description="Rebuild the report of a finished run.")
    args.add_argument("directory")
    directory = Path(args.parse_args(argv).directory)
    payload = load_run(directory)
    if any("arrays_file" in r for r in payload["records"]) and not (directory / "stats").is_dir():
        raise ConfigError(f"{directory / 'stats'} is missing: the run did not finish (its session end writes stats/ "
                          "for the records that carry arrays)")
    print(write_report(directory, payload))
    return 0


def case_key(record: dict) -> tuple[str, str]:
    """``(model, case)``: what a record measures, across runs."""
    parts = [record["analysis"], record["method"], record.get("neuron_type"), record.get("mode")]
    return record["model"], " ".join(str(p) for p in parts if p)


def flat_metrics(payload: dict) -> dict[tuple[str, str, str], float]:
    """``{(model, case, metric): value}`` of every numeric metric (per-layer ones included)."""
    flat = {}
    for record in payload["records"]:
        model, case = case_key(record)
        scalars, per_layer, breakdown = split_metrics(record["metrics"])
        named = {**scalars, **{f"layer{l}" + (f":{n}" if n else ""): v for (l, n), v in per_layer.items()},
                 **{f"{g}:{n}": v for (g, n), v in breakdown.items()}}
        for metric, value in named.items():
            if metric not in VOLATILE:
                flat[(model, case, metric)] = float(value)
        if "ppl_delta_rel" in record["metrics"]:
            flat[(model, case, "z")] = float(record["metrics"]["z"])
    return flat


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def differences(a: dict, b: dict) -> list[list[object]]:
    """Rows ``[model, case, metric, A, B, change]`` for every metric of a case both runs have that
    differs (``None`` where one run lacks that metric)."""
    left, right = flat_metrics(a), flat_metrics(b)
    cases = {key[:2] for key in left} & {key[:2] for key in right}
    rows = []
    for key in dict.fromkeys([*left, *right]):
        x, y = left.get(key), right.get(key)
        if key[:2] in cases and not _same(x, y):
            rows.append([*key, x, y, None if x is None or y is None else y - x])
    return rows


def only_in(a: dict, b: dict) -> list[str]:
    """``model: case`` of the cases of run ``a`` that run ``b`` does not have."""
    theirs = {case_key(r) for r in b["records"]}
    return list(dict.fromkeys(f"{m}: {c}" for m, c in map(case_key, a["records"]) if (m, c) not in theirs))


def compare_markdown(a_name: str, b_name: str, a: dict, b: dict) -> str:
    text = f"# neuronbench compare\n\nA: `{a_name}`\n\nB: `{b_name}`\n\n"
    for side, cases in (("A", only_in(a, b)), ("B", only_in(b, a))):
        if cases:
            text += f"Cases only in {side}: " + "; ".join(cases) + ".\n\n"
    rows = differences(a, b)
    if not rows:
        return text + "No differences.\n"
    shown = [[m, c, k, fmt(x), fmt(y), "—" if d is None else f"{d:+.4g}"] for m, c, k, x, y, d in rows]
    table = tabulate(shown, headers=["model", "case", "metric", "A", "B", "change (B − A)"], tablefmt="github",
                     disable_numparse=True)
    return text + f"{len(rows)} metrics differ.\n\n{table}\n"


def compare_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuronbench compare",
                                     description="The differences between two finished runs.")
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--out", default="compare.md", help="Markdown file to write (default compare.md)")
    args = parser.parse_args(argv)
    text = compare_markdown(args.run_a, args.run_b, load_run(args.run_a), load_run(args.run_b))
    print(text, end="")
    write_text_atomic(args.out, text)
    return 0
