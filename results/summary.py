"""The terminal summary table: one row per record, its headline metric."""

from __future__ import annotations

from tabulate import tabulate

HEADLINE = ("ppl", "word_perplexity", "bits_per_byte", "ppl_delta_rel", "z", "count", "null_count", "percent", "top_score", "mean_distance", "n_neurons", "n_tokens")


def headline(metrics: dict) -> str:
    """The first headline metrics present in ``metrics``, formatted compactly."""
    shown = [f"{key}={_fmt(metrics[key])}" for key in HEADLINE if key in metrics]
    return ", ".join(shown[:3])


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_table(records: list[dict]) -> str:
    rows = [
        [r["model"], r["analysis"], r.get("neuron_type") or "", r.get("mode") or "", r["method"], headline(r["metrics"])]
        for r in records
    ]
    table = tabulate(rows, headers=["model", "analysis", "type", "mode", "method", "metrics"], tablefmt="github")
    return "\n".join([table, *null_warnings(records)])


def null_warnings(records: list[dict]) -> list[str]:
    """One line per record whose detection warns that its findings are mostly expected noise."""
    return [f"WARNING {r['model']} {r['analysis']}/{r['method']}: {r['metrics']['null_warning']}"
            for r in records if r["metrics"].get("null_warning")]


def sampling_notes(records: list[dict]) -> list[str]:
    """One line per model whose attention scores read fewer than all analysis windows."""
    notes = {}
    for r in records:
        metrics = r["metrics"]
        if r["analysis"] == "attention" and metrics.get("windows_scored", 0) < metrics.get("windows_offered", 0):
            notes[r["model"]] = (f"{r['model']}: attention scores read {metrics['windows_scored']} of "
                                 f"{metrics['windows_offered']} analysis windows (stopped by {metrics['stopped_by']}; "
                                 "raise --attention-budget or --attention-windows to read more)")
    return list(notes.values())
