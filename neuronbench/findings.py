"""What the report says, computed from the run's records (``results.json``): the findings table
(one row per model) and one long-format section per analysis.

The findings table is a registry (:data:`FINDINGS`): one :class:`Finding` per column, each a
header and a function of one model's records. Counts come with the count the same detector finds
on its null where a record carries one (the first of :data:`NULL_METRICS` present), ``—``
otherwise. The ablations follow as a second, transposed table (one row per condition, one column
per model, so that it stays narrow however many conditions run): the relative perplexity change
``Δppl = ppl/baseline − 1`` and ``z = (ppl − mean_control)/std_control`` against its random
control, marked by :func:`significance`. Sections are narrow: per-layer metrics (``layer{l}`` or
``layer{l}:{name}``) become rows, breakdowns (``type:{t}``, ``overlap[{pair}]``) become rows,
and every column that is the same in all rows is dropped and named in a sentence instead.
Analyses whose records repeat or pair metrics have their own layout (:data:`SECTIONS`): the
ablations, the attention knockouts (each measure beside its random knockouts), the attention
scores (the scoring pass once per model), perplexity and calibration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from neuronbench.calibration import calibration_blocks
from neuronbench.document import MISSING, Block, Heading, Paragraph, Table, fmt, narrow_blocks

NULL_METRICS = ("null_count",)
"""Metric keys under which a detector's record gives its null count (first present wins)."""

SIGNIFICANCE = ((3.0, "**"), (2.0, "*"))
"""``|z| ≥ 3`` → ``**``, ``|z| ≥ 2`` → ``*``: a reading aid against the random controls (few
seeds: not a calibrated test)."""

LAYER_KEY = re.compile(r"^layer(\d+)(?::(.+))?$")
BREAKDOWN_KEY = re.compile(r"^(.+?)(?::|\[)(.+?)\]?$")


def by_model(records: Sequence[dict]) -> dict[str, list[dict]]:
    models: dict[str, list[dict]] = {}
    for record in records:
        models.setdefault(record["model"], []).append(record)
    return models


def pick(records: Sequence[dict], analysis: str, method: str | None = None,
         neuron_type: str | None = None) -> dict | None:
    """The first record of ``analysis`` (with that method / neuron type), or ``None``."""
    for record in records:
        if record["analysis"] == analysis and (method is None or record["method"] == method) \
                and (neuron_type is None or record.get("neuron_type") == neuron_type):
            return record
    return None


def number(value: object) -> float:
    """A metric as a float (JSON writes non-finite floats as ``"inf"``/``"nan"``)."""
    return float(value)


def with_null(record: dict | None, text: str) -> str:
    """``"<count> (null <n>)"``; ``—`` for the null when the record carries none."""
    if record is None:
        return MISSING
    null = next((record["metrics"][k] for k in NULL_METRICS if k in record["metrics"]), None)
    return f"{text} (null {fmt(null)})"


def count_of(record: dict | None) -> str:
    return MISSING if record is None else fmt(record["metrics"]["count"])


def significance(z: float) -> str:
    return next((mark for bound, mark in SIGNIFICANCE if math.isfinite(z) and abs(z) >= bound), "")


def z_text(metrics: dict, measure: str = "ppl") -> str:
    """A condition's z on ``measure`` (``z`` for the perplexity, else ``z_{measure}``) with its
    significance mark; ``—`` for a run without random controls (``--seeds 0``)."""
    if not metrics[f"control_{measure}s"]:
        return MISSING
    z = number(metrics["z" if measure == "ppl" else f"z_{measure}"])
    return f"{fmt(z)}{significance(z)}"


def control_text(metrics: dict, measure: str = "ppl") -> str:
    """``mean ± std`` of the random controls' ``measure`` (``control_{measure}_mean`` / ``_std``),
    or why there are none."""
    if not metrics[f"control_{measure}s"]:
        return "none (--seeds 0)"
    return f"{fmt(metrics[f'control_{measure}_mean'])} ± {fmt(metrics[f'control_{measure}_std'])}"


def relative_text(metrics: dict) -> str:
    """``Δppl = ppl/baseline − 1`` in percent, signed."""
    return f"{100 * number(metrics['ppl_delta_rel']):+.3g} %"


def ablation_cell(record: dict | None) -> str:
    """``+0.56 % (z 1.2)`` with its significance mark; ``—`` when nothing was ablated."""
    if record is None or record["metrics"]["n_neurons"] == 0:
        return MISSING
    metrics = record["metrics"]
    return f"{relative_text(metrics)} (z {z_text(metrics)})"


@dataclass(frozen=True)
class Finding:
    header: str
    value: Callable[[list[dict]], object]


def _parameters(records: list[dict]) -> object:
    return records[0].get("num_parameters")


def _tokens(records: list[dict]) -> object:
    record = pick(records, "statistics") or pick(records, "dead")
    return None if record is None else record["tokens"]


def _dead_percent(records: list[dict]) -> str:
    record = pick(records, "dead", neuron_type="dead")
    if record is None:
        return MISSING
    return with_null(record, f"{fmt(float(record['metrics']['percent']))} % ({count_of(record)})")


def _counted(analysis: str, neuron_type: str) -> Callable[[list[dict]], str]:
    """A column of the count of one detection with its null."""
    def column(records: list[dict]) -> str:
        record = pick(records, analysis, neuron_type=neuron_type)
        return with_null(record, count_of(record))
    return column


def _positional(records: list[dict]) -> str:
    record = pick(records, "positional", method="mi")
    return with_null(record, count_of(record))


def _token_detecting(records: list[dict]) -> str:
    record = pick(records, "ngram", neuron_type="token")
    if record is None:
        return MISSING
    return with_null(record, f"{count_of(record)} ({fmt(record['metrics'].get('tokens_covered'))} tokens)")


def _sensitive(records: list[dict]) -> str:
    record = pick(records, "delta")
    return MISSING if record is None else with_null(record, f"{count_of(record)} ({record['method']})")


def _attention(records: list[dict]) -> str:
    record = pick(records, "attention", method="attention_weighted")
    if record is None:
        return MISSING
    found = sum(len(v) for v in record.get("neurons", {}).values())
    thresholds = record.get("thresholds", {})
    scope = "per layer" if thresholds.get("scope", "layer") == "layer" else "overall"
    top = f" (top {thresholds['top_k']} {scope})" if "top_k" in thresholds else ""
    return f"{found} of {fmt(record['metrics']['n_units'])} {record.get('neuron_type') or 'unit'}s{top}"


FINDINGS: tuple[Finding, ...] = (
    Finding("parameters", _parameters),
    Finding("tokens analysed", _tokens),
    Finding("dead", _dead_percent),
    Finding("rarely active", _counted("dead", "rarely_active")),
    Finding("positional (MI)", _positional),
    Finding("token-detecting (tokens covered)", _token_detecting),
    Finding("trigram-detecting", _counted("ngram", "trigram")),
    Finding("Δ-sensitive", _sensitive),
    Finding("attention (top by attention_weighted)", _attention),
)
"""The findings table's columns after ``model``; the ablations follow in their own table (:func:`ablation_glance`)."""


def ablation_modes(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["mode"] for r in records if r["analysis"] == "ablation"))


def ablation_glance(records: Sequence[dict], models: Sequence[str]) -> list[Block]:
    """The ablation part of the findings, transposed so that it stays narrow: one row per
    condition, one column per model, each cell its modes' :func:`ablation_cell` joined by `` / ``."""
    conditions = list(dict.fromkeys(r["neuron_type"] for r in records if r["analysis"] == "ablation"))
    modes = ablation_modes(records)
    grouped = by_model(records)
    rows = [[condition, *(" / ".join(ablation_cell(pick(grouped[model], "ablation", method=f"{m}-ablation",
                                                          neuron_type=condition)) for m in modes)
                          for model in models)] for condition in conditions]
    return [Table([f"Δppl ({' / '.join(modes)}-ablation)", *models], rows)] if rows else []


FINDING_ANALYSES = frozenset(("statistics", "dead", "positional", "ngram", "delta", "attention", "ablation"))
"""Analyses that give a model a row of the findings table; a model with none of them (the
calibration models) is named in a sentence pointing to its own section."""


def uncontrolled(records: Sequence[dict]) -> bool:
    """Whether some ablation record has no random controls (``--seeds 0``)."""
    return any(r["analysis"] == "ablation" and not r["metrics"]["control_ppls"] for r in records)


def findings_blocks(records: Sequence[dict], link: Callable[[str], object] = str) -> list[Block]:
    """The findings: the detections (one row per model), the sentence naming their constant
    columns, the ablations (one row per condition, one column per model) and the legend."""
    grouped = by_model(records)
    models = [m for m, rs in grouped.items() if any(r["analysis"] in FINDING_ANALYSES for r in rs)]
    rows = [[link(model), *(c.value(grouped[model]) for c in FINDINGS)] for model in models]
    others = [m for m in grouped if m not in models]
    legend = Paragraph("Counts are over all analysed layers, with the count the detector finds on its null "
                       f"({MISSING}: no null recorded). Δppl: relative change of test perplexity against the "
                       "unablated model; z against the random control of the same size (* |z| ≥ 2, ** |z| ≥ 3); "
                       f"{MISSING}: nothing to ablate" + ("; z —: no random controls (--seeds 0)." if uncontrolled(records)
                                                          else "."))
    aside = [Paragraph(f"{model}: {', '.join(dict.fromkeys(r['analysis'] for r in grouped[model]))} only, "
                       "in its section below.") for model in others]
    return [*narrow_blocks(["model", *(c.header for c in FINDINGS)], rows, same_for="every model"),
            *ablation_glance(records, models), legend, *aside]


# -- per-analysis sections ---------------------------------------------------------------------
LABELS = ("method", "neuron_type", "mode")


def label(record: dict, varying: Sequence[str]) -> str:
    """A record's name within its analysis: its method / type / mode, those that vary."""
    return " ".join(str(record.get(k)) for k in varying) or record["method"]


def varying_labels(records: Sequence[dict]) -> list[str]:
    return [k for k in LABELS if len({r.get(k) for r in records}) > 1]


def split_metrics(metrics: dict) -> tuple[dict, dict, dict]:
    """``(scalars, per_layer {(layer, name | None): v}, breakdown {(group, name): v})`` of the
    numeric metrics (lists, dicts and strings stay in ``results.json``)."""
    scalars, per_layer, breakdown = {}, {}, {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if match := LAYER_KEY.match(key):
            per_layer[(int(match[1]), match[2])] = value
        elif match := BREAKDOWN_KEY.match(key):
            breakdown[(match[1], match[2])] = value
        else:
            scalars[key] = value
    return scalars, per_layer, breakdown


def scalar_blocks(records: Sequence[dict], columns: Sequence[str] | None = None) -> list[Block]:
    """One row per record: model, its label, its scalar metrics (``columns`` or all)."""
    varying = varying_labels(records)
    parts = [split_metrics(r["metrics"])[0] for r in records]
    names = list(columns or dict.fromkeys(k for p in parts for k in p))
    if not names:
        return []
    rows = [[r["model"], label(r, varying), *(p.get(n) for n in names)] for r, p in zip(records, parts)]
    return narrow_blocks(["model", "case", *names], rows, keep=2)


def per_layer_blocks(records: Sequence[dict]) -> list[Block]:
    """Rows ``(model, layer)``, one column per record label or per-layer metric name."""
    varying = varying_labels(records)
    table: dict[tuple[str, int], dict[str, object]] = {}
    for record in records:
        for (layer, name), value in split_metrics(record["metrics"])[1].items():
            column = name if name is not None else label(record, varying)
            if name is not None and varying:
                column = f"{label(record, varying)}: {name}"
            table.setdefault((record["model"], layer), {})[column] = value
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    rows = [[model, layer, *(values.get(c) for c in columns)] for (model, layer), values in sorted(table.items())]
    if rows and len(columns) and all(len({str(r[i]) for r in rows}) == 1 for i in range(2, len(columns) + 2)):
        return [Paragraph(f"Per layer: {'; '.join(f'{c} {fmt(rows[0][i + 2])}' for i, c in enumerate(columns))} "
                          "in every layer of every model.")]
    return narrow_blocks(["model", "layer", *columns], rows, keep=2, same_for="every layer")


def breakdown_blocks(records: Sequence[dict]) -> list[Block]:
    """Long format: rows ``(model, case, group, name)`` and the value."""
    varying = varying_labels(records)
    rows = [[r["model"], label(r, varying), group, name, value] for r in records
            for (group, name), value in split_metrics(r["metrics"])[2].items()]
    return narrow_blocks(["model", "case", "group", "name", "value"], rows, keep=4)


def ablation_blocks(records: Sequence[dict]) -> list[Block]:
    """Rows ``(model, condition, mode)``: units ablated, perplexity, Δppl, control, z. A condition
    that ablates nothing in a model (its perplexity is the baseline, its z undefined) gets no row:
    a sentence names them per model."""
    rows = [[r["model"], r["neuron_type"], r["mode"], r["metrics"]["n_neurons"], r["metrics"]["ppl"],
             relative_text(r["metrics"]), control_text(r["metrics"]), z_text(r["metrics"])]
            for r in records if r["metrics"]["n_neurons"] > 0]
    empty = {model: list(dict.fromkeys(r["neuron_type"] for r in chosen if r["metrics"]["n_neurons"] == 0))
             for model, chosen in by_model(records).items()}
    named = "; ".join(f"{model}: {', '.join(conditions)}" for model, conditions in empty.items() if conditions)
    note = [Paragraph(f"Nothing to ablate (no units found), so no row: {named}.")] if named else []
    return [*narrow_blocks(["model", "condition", "mode", "units", "ppl", "Δppl", "random control ppl", "z"], rows,
                           keep=3), *note]


def knockout_blocks(records: Sequence[dict]) -> list[Block]:
    """Rows ``(model, knockout)``: the knockout with its source→target pairs cut per window, the
    perplexity and its Δppl, the random knockouts' perplexity (``mean ± std``) and z, then the same
    for the targets' mean probability of the next token (knocked out with the unablated value,
    random knockouts, z)."""
    rows = [[r["model"], f"{r['method']} ({fmt(m['pairs_per_window'])} pairs)", m["ppl"], relative_text(m),
             control_text(m), z_text(m), f"{fmt(m['target_prob'])} ({fmt(m['baseline_target_prob'])})",
             control_text(m, "target_prob"), z_text(m, "target_prob"), m["n_windows"], m["tokens_scored"]]
            for r in records for m in (r["metrics"],)]
    return narrow_blocks(["model", "knockout (pairs / window)", "ppl", "Δppl", "random knockouts ppl", "z",
                          "target prob (unablated)", "random knockouts target prob", "z (target prob)", "windows",
                          "tokens scored"], rows, keep=2)


ATTENTION_SCORES = ("n_units", "top_score", "mean_score")
"""The attention section's score table: one row per model and score."""
ATTENTION_BUDGET = ("n_tokens", "windows_offered", "windows_scored", "estimated_s_per_window", "elapsed_s",
                    "time_budget_s", "stopped_by")
"""The attention section's budget table: one row per model (its scores share one scoring pass)."""


def attention_blocks(records: Sequence[dict]) -> list[Block]:
    """The attention section: the scores (:data:`ATTENTION_SCORES`, one row per model and score),
    the scoring pass of each model (:data:`ATTENTION_BUDGET`, one row per model: every score's
    record holds the same values; a row per score where they differ), then the summaries
    (diversity, overlaps) as :func:`generic_blocks`."""
    scores = [r for r in records if r["method"] != "summary"]
    summaries = [r for r in records if r["method"] == "summary"]
    budgets = list(dict.fromkeys((r["model"], *(r["metrics"].get(n) for n in ATTENTION_BUDGET)) for r in scores))
    shared = len(budgets) == len(by_model(scores))
    budget = (narrow_blocks(["model", *ATTENTION_BUDGET], [list(row) for row in budgets], same_for="every model")
              if shared else scalar_blocks(scores, ATTENTION_BUDGET))
    return [*scalar_blocks(scores, ATTENTION_SCORES), *budget, *generic_blocks(summaries)]


def generic_blocks(records: Sequence[dict]) -> list[Block]:
    return [*scalar_blocks(records), *per_layer_blocks(records), *breakdown_blocks(records)]


SECTION_COLUMNS = {
    "perplexity": ("ppl", "word_perplexity", "bits_per_byte", "tokens_scored", "window", "stride"),
}
"""Analyses whose scalar table shows only these metrics (the rest stays in ``results.json``)."""

SECTIONS: dict[str, Callable[[Sequence[dict]], list[Block]]] = {
    "ablation": ablation_blocks,
    "attention": attention_blocks,
    "knockout": knockout_blocks,
    "calibration": calibration_blocks,
    "perplexity": lambda records: scalar_blocks(records, SECTION_COLUMNS["perplexity"]),
}
"""Analyses with their own section layout; every other analysis gets :func:`generic_blocks`."""


def analysis_blocks(records: Sequence[dict], extras: dict[str, list[Block]] | None = None) -> list[Block]:
    """One section per analysis, in the order the cases ran; ``extras[analysis]`` (its figures)
    closes its section."""
    blocks: list[Block] = []
    for analysis in dict.fromkeys(r["analysis"] for r in records):
        chosen = [r for r in records if r["analysis"] == analysis]
        blocks += [Heading(analysis, 2, anchor=f"analysis-{analysis}"),
                   *SECTIONS.get(analysis, generic_blocks)(chosen), *(extras or {}).get(analysis, [])]
    return blocks
