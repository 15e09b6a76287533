"""The Markdown report: the run's configuration, one table per analysis (via tabulate), the
figures embedded, and the failures. Written atomically to ``<out>/report.md``."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from neuronbench.figures import render_figures
from neuronbench.storage import write_text_atomic


def _metric_columns(records: list[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for record in records:
        for key, value in record["metrics"].items():
            if isinstance(value, (int, float)):
                columns.setdefault(key)
    return list(columns)


def analysis_table(records: list[dict]) -> str:
    """One row per record of an analysis: model, type, mode, method, layer and its numbers."""
    columns = _metric_columns(records)
    rows = [[r["model"], r.get("neuron_type") or "", r.get("mode") or "", r["method"],
             "" if r.get("layer") is None else r["layer"], *(r["metrics"].get(c, "") for c in columns)]
            for r in records]
    return tabulate(rows, headers=["model", "type", "mode", "method", "layer", *columns],
                    tablefmt="github", floatfmt=".4g")


def report_markdown(payload: dict, figures: list[Path], out: Path) -> str:
    records = payload["records"]
    lines = ["# neuronbench report", "", f"Run started {payload['started']}.", ""]
    lines += ["## Configuration", "", tabulate(sorted(payload["config"].items()), headers=["option", "value"],
                                               tablefmt="github"), ""]
    lines += ["## Models", ""]
    models = {r["model"]: r for r in records}
    lines.append(tabulate([[m, r["model_type"], r["num_parameters"], r.get("revision") or r.get("weights_sha256"),
                            r["dataset"], r["analysis_split_sha256"][:16]] for m, r in models.items()],
                          headers=["model", "type", "parameters", "revision / weights sha256", "dataset",
                                   "analysis split sha256"], tablefmt="github"))
    lines.append("")
    for analysis in dict.fromkeys(r["analysis"] for r in records):
        lines += [f"## {analysis}", "", analysis_table([r for r in records if r["analysis"] == analysis]), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{path.stem}]({path.relative_to(out).as_posix()})\n" for path in figures]
    if payload["failures"]:
        lines += ["## Failures", ""]
        lines += [f"- `{f['case']}` ({f['when']}): {' '.join(f['message'])}" for f in payload["failures"]]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()), ""]
    return "\n".join(lines)


def write_report(out: Path, payload: dict) -> Path:
    """Render the figures into ``<out>/plots`` and write ``<out>/report.md``."""
    figures = render_figures(payload["records"], out / "plots")
    return write_text_atomic(out / "report.md", report_markdown(payload, figures, out))
