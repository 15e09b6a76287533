"""The report's building blocks on hand-made records whose findings are known: rounding, constant
columns dropped into a sentence, the findings table (one row per model, nulls, Δppl with z and its
mark), long-format sections, and the figure helpers (integer layer ticks, a sentence for nothing)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from neuronbench.document import Link, Paragraph, Table, fmt, narrow, to_markdown
from neuronbench.figures import FIGURES, Note, found_nothing, layer_axis
from neuronbench.findings import ablation_blocks, ablation_cell, analysis_blocks, findings_blocks, significance
from neuronbench.html import anchor, page_html
from neuronbench.neuron_pages import page_blocks


def record(model: str, analysis: str, method: str, metrics: dict, **extra) -> dict:
    return {"model": model, "analysis": analysis, "method": method, "neuron_type": extra.pop("neuron_type", None),
            "mode": extra.pop("mode", None), "metrics": metrics, "tokens": 1000, "num_parameters": 10 ** 6,
            **extra}


def ablation(model: str, condition: str, mode: str, rel: float, z: object, n: int = 4) -> dict:
    return record(model, "ablation", f"{mode}-ablation",
                  {"n_neurons": n, "ppl": 100 * (1 + rel), "baseline_ppl": 100.0, "ppl_delta_rel": rel,
                   "control_ppl_mean": 100.0, "control_ppl_std": 1.0, "control_ppls": [99.0, 101.0], "z": z},
                  neuron_type=condition, mode=mode)


RECORDS = [
    record("a", "dead", "freq<=eps", {"count": 3, "percent": 1.5, "null_count": 0.2, "layer0": 1, "layer1": 2},
           neuron_type="dead"),
    record("b", "dead", "freq<=eps", {"count": 0, "percent": 0.0, "layer0": 0, "layer1": 0}, neuron_type="dead"),
    record("a", "positional", "mi", {"count": 7, "null_count": 0.5, "layer0": 7, "layer1": 0},
           neuron_type="positional"),
    record("b", "positional", "mi", {"count": 7, "layer0": 3, "layer1": 4}, neuron_type="positional"),
    ablation("a", "pruning", "zero", 0.1234, 4.2),
    ablation("a", "pruning", "mean", 0.01, "-inf"),
    ablation("b", "pruning", "zero", -0.002, 0.3),
    ablation("b", "pruning", "mean", 0.0, "nan", n=0),
]


def test_numbers_are_rounded_for_reading():
    assert [fmt(v) for v in (1071872, 0.664736660723803, 110.45475890736712, 1e-7, 3.0, None, float("inf"))] == \
        ["1,071,872", "0.665", "110", "1e-07", "3", "—", "inf"]


def test_constant_columns_are_dropped_and_named_only_across_several_rows():
    table, dropped = narrow(["model", "x", "y"], [["a", 1, 2], ["b", 1, 3]])
    assert table.headers == ["model", "y"] and dropped == ["x 1"]
    single, none = narrow(["model", "x"], [["a", 1]])
    assert single.headers == ["model", "x"] and none == []


def test_findings_table_one_row_per_model_with_nulls_and_marked_z():
    table, *notes = findings_blocks(RECORDS)
    assert isinstance(table, Table) and [row[0] for row in table.rows] == ["a", "b"]
    columns = dict(zip(table.headers, zip(*table.rows)))
    assert columns["dead"] == ("1.5 % (3) (null 0.2)", "0 % (0) (null —)")
    assert columns["positional (MI)"] == ("7 (null 0.5)", "7 (null —)")
    assert "parameters" not in table.headers  # the same for both models: named in the sentence instead
    assert any(isinstance(n, Paragraph) and "parameters 1,000,000" in n.text for n in notes)
    (ablations,) = [n for n in notes if isinstance(n, Table)]  # one row per condition, one column per model
    assert ablations.headers == ["Δppl (zero / mean-ablation)", "a", "b"]
    assert ablations.rows == [["pruning", "+12.3 % (z 4.2**) / +1 % (z -inf)", "-0.2 % (z 0.3) / —"]]
    calibrated = findings_blocks([*RECORDS, record("c", "calibration", "planted", {"missed": 0})])
    assert [row[0] for row in calibrated[0].rows] == ["a", "b"]  # a calibration model gets no row
    assert any(isinstance(n, Paragraph) and n.text == "c: calibration only, in its section below." for n in calibrated)
    assert significance(2.5) == "*" and significance(-3.1) == "**" and significance(float("nan")) == ""


def test_a_run_without_random_controls_says_so_instead_of_nan():
    uncontrolled = ablation("a", "pruning", "zero", 0.05, float("nan"))
    uncontrolled["metrics"].update(control_ppl_mean=float("nan"), control_ppl_std=float("nan"), control_ppls=[])
    assert ablation_cell(uncontrolled) == "+5 % (z —)"
    (table,) = [b for b in ablation_blocks([uncontrolled]) if isinstance(b, Table)]
    assert table.rows[0][-2:] == ["none (--seeds 0)", "—"]
    legend = [b for b in findings_blocks([uncontrolled]) if isinstance(b, Paragraph) and "Δppl" in b.text]
    assert legend and legend[0].text.endswith("; z —: no random controls (--seeds 0).")


def test_sections_are_long_format_with_layers_as_rows():
    blocks = analysis_blocks([r for r in RECORDS if r["analysis"] == "positional"])
    per_layer = [b for b in blocks if isinstance(b, Table) and "layer" in b.headers][0]
    assert per_layer.headers == ["model", "layer", "mi"]
    assert per_layer.rows == [["a", 0, 7], ["a", 1, 0], ["b", 0, 3], ["b", 1, 4]]
    ablations = [b for b in analysis_blocks(RECORDS) if isinstance(b, Table) and "condition" in b.headers]
    assert ablations and len(ablations[0].headers) <= 8


def test_markdown_and_html_come_from_the_same_blocks():
    blocks = [Table(["neuron"], [[Link("L0N3", "neurons/m/L0N3.md")]])]
    assert "[L0N3](neurons/m/L0N3.md)" in to_markdown(blocks)
    html = page_html("t", blocks, {"neurons/m/L0N3.md": [Paragraph("page")]})
    assert f'href="#{anchor("neurons/m/L0N3.md")}"' in html and f'id="{anchor("neurons/m/L0N3.md")}"' in html


def test_layer_axes_have_integer_ticks():
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2, 3], [1, 2, 3, 4])
    layer_axis(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 3]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks) and ax.get_xlabel() == "layer"


@pytest.mark.parametrize("series, nothing", [([[0, 0], [0.0, None]], True), ([[0, 0.5]], False)])
def test_found_nothing(series, nothing):
    assert found_nothing(*series) is nothing


def test_an_analysis_that_finds_nothing_gets_a_sentence_not_an_empty_plot(tmp_path):
    empty = [r for r in RECORDS if r["analysis"] == "ablation" and r["metrics"]["n_neurons"] == 0]
    for r in empty:
        r.setdefault("figures", {})["ablation"] = {"condition": r["neuron_type"]}
    (note,) = FIGURES["ablation"](empty, tmp_path)
    assert isinstance(note, Note) and "pruning" in note.text and not list(tmp_path.iterdir())


def test_a_neuron_page_shows_its_ablation_alone_only_when_measured(tmp_path):
    page = {"layer": 1, "neuron": 7, "reasons": [{"source": "dead", "reported": True}],
            "scores": {"dead": {"score": "freq", "value": 0.0}}, "freq": 0.0, "mean": 0.0, "max": 0.0,
            "covered": {}, "profile": [], "contexts": []}
    texts = [b.text for b in page_blocks("m", page, tmp_path) if isinstance(b, Paragraph)]
    assert not any("ablated" in str(t) for t in texts)
    page["ablated_alone"] = {"mode": "zero", "ppl_delta_rel": 0.0123}
    texts = [b.text for b in page_blocks("m", page, tmp_path) if isinstance(b, Paragraph)]
    assert "Zero-ablated by itself: Δppl +1.23 % on the eval split (no random control)." in texts


def test_findings_attention_column_names_the_top_k_it_counts():
    heads = record("a", "attention", "attention_weighted", {"n_units": 16}, neuron_type="head",
                   neurons={"0": [0, 1, 2, 3]}, thresholds={"top_k": 10, "scope": "layer"})
    table, *_ = findings_blocks([heads])
    assert dict(zip(table.headers, table.rows[0]))["attention (top by attention_weighted)"] == \
        "4 of 16 heads (top 10 per layer)"


def test_tau_sweep_names_models_without_dead_neurons_instead_of_flat_panels(tmp_path):
    def swept(model: str, percent: list[list[float]]) -> dict:
        return record(model, "dead", "sweep", {"null_count": 4e-19}, figures={"dead_sweep": {
            "tau": [0.0, 0.5], "layers": [0, 1], "dead_percent": percent}})

    outputs = FIGURES["dead_sweep"]([swept("a", [[0, 0], [0, 0]]), swept("b", [[0, 1.5], [2, 4]])], tmp_path)
    (note,) = [o for o in outputs if isinstance(o, Note)]
    assert note.text == "No dead neurons at any τ of the sweep in a."
    assert [o.name for o in outputs if not isinstance(o, Note)] == ["dead_tau_sweep.png"]
    (only,) = FIGURES["dead_sweep"]([swept("a", [[0, 0], [0, 0]])], tmp_path / "none")
    assert isinstance(only, Note) and not (tmp_path / "none").exists()


def test_ablation_chart_of_a_replayed_run_without_controls(tmp_path):
    """Replayed from results.json, a --seeds 0 run's non-finite control values are the strings "nan"."""
    replayed = ablation("a", "pruning", "zero", 0.05, "nan")
    replayed["metrics"].update(control_ppl_mean="nan", control_ppl_std="nan", control_ppls=[])
    replayed["figures"] = {"ablation": {"condition": "pruning"}}
    (chart,) = FIGURES["ablation"]([replayed], tmp_path)
    assert chart.name == "ablation.png" and chart.stat().st_size > 0


def test_an_ablation_that_removes_nothing_gets_a_sentence_not_a_row_of_nan():
    blocks = ablation_blocks([r for r in RECORDS if r["analysis"] == "ablation"])
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert [row[:3] for row in table.rows] == [["a", "pruning", "zero"], ["a", "pruning", "mean"],
                                               ["b", "pruning", "zero"]]
    assert "nan" not in to_markdown([table])
    assert any(isinstance(b, Paragraph) and b.text == "Nothing to ablate (no units found), so no row: b: pruning."
               for b in blocks)


def knockout(model: str, condition: str, pairs: int, z: float, rel: float) -> dict:
    return record(model, "knockout", condition, {
        "condition": condition, "pairs_per_window": pairs, "ppl": 100.0 * (1 + rel), "baseline_ppl": 100.0,
        "ppl_delta_rel": rel, "control_ppl_mean": 100.5 + rel, "control_ppl_std": 0.25 + rel, "control_ppls": [100.25, 100.75], "z": z,
        "target_prob": 0.25 + rel, "baseline_target_prob": 0.5, "control_target_prob_mean": 0.4 + rel,
        "control_target_prob_std": 0.05, "control_target_probs": [0.35, 0.45], "z_target_prob": -3.0 + rel,
        "n_windows": 16, "tokens_scored": 2048, "n_targets": 16}, neuron_type="head")


def test_knockout_section_pairs_each_measure_with_its_random_knockouts_in_few_columns():
    blocks = analysis_blocks([knockout("a", "last<-previous:4", 4, 2.0, 0.01),
                              knockout("a", "all<-first:4", 502, -1.0, 0.2)])
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert len(table.headers) <= 9
    row = dict(zip(table.headers, table.rows[0]))
    assert row["knockout (pairs / window)"] == "last<-previous:4 (4 pairs)" and row["Δppl"] == "+1 %"
    assert row["random knockouts ppl"] == "101 ± 0.26" and row["z"] == "2*"
    assert row["target prob (unablated)"] == "0.26 (0.5)" and row["random knockouts target prob"] == "0.41 ± 0.05"
    assert row["z (target prob)"] == "-2.99*"
    assert any(isinstance(b, Paragraph) and b.text == "Same for every row: windows 16; tokens scored 2,048."
               for b in blocks)


def attention(model: str, method: str, elapsed: float, score: float = 2.0) -> dict:
    metrics = {"n_units": 16, "top_score": score, "mean_score": score / 2, "n_tokens": 512, "windows_offered": 40,
               "windows_scored": 4, "estimated_s_per_window": 0.5, "elapsed_s": elapsed, "time_budget_s": 30.0,
               "stopped_by": "time budget"}
    return record(model, "attention", method, metrics, neuron_type="head")


def test_attention_section_gives_each_scoring_pass_one_row_per_model():
    summary = record("a", "attention", "summary", {"n_units": 16, "mean_distance": 3.0, "mean_entropy": 1.5},
                     neuron_type="head")
    shared = [attention("a", "attention_weighted", 5.0, 2.0), attention("a", "rollout", 5.0, 0.5),
              attention("b", "attention_weighted", 7.0, 3.0), attention("b", "rollout", 7.0, 0.25), summary]
    scores, budget, *rest = [b for b in analysis_blocks(shared) if isinstance(b, Table)]
    assert scores.headers == ["model", "case", "top_score", "mean_score"] and len(scores.rows) == 4
    assert budget.headers == ["model", "elapsed_s"] and budget.rows == [["a", 5.0], ["b", 7.0]]
    assert rest and "mean_distance" in rest[0].headers
    differing = analysis_blocks([attention("a", "attention_weighted", 5.0), attention("a", "rollout", 6.0)])
    budgets = [b for b in differing if isinstance(b, Table) and "elapsed_s" in b.headers]
    assert len(budgets) == 1 and len(budgets[0].rows) == 2 and "case" in budgets[0].headers


def test_attention_figure_names_the_layer_of_each_colour(tmp_path, monkeypatch):
    frame = {"attention_weighted": [0.1, 0.2, 0.3, 0.4], "gradient_guided": [0.4, 0.3, 0.2, 0.1],
             "layer": [0, 0, 1, 1], "unit": [0, 1, 0, 1], "distance": [1.0, 2.0, 3.0, 4.0],
             "entropy": [0.5, 1.0, 1.5, 2.0]}
    data = {"frame": frame, "unit": "head", "heatmap": {"values": [[1.0, 0.0], [0.5, 0.5]], "layer": 1, "unit": 1},
            "diversity": {"methods": {"attention_weighted": {"per_layer": [1, 2], "mean_distance": 2.5}},
                          "overlap": {"attention_weighted|rollout": 0.5}}}
    saved = []
    monkeypatch.setattr("neuronbench.figures.save", lambda fig, path: saved.append(fig) or path)
    FIGURES["attention"]([record("m", "attention", "attention_weighted", {}, figures={"attention": data})], tmp_path)
    (fig,) = saved
    scatters = [ax for ax in fig.axes if ax.get_title() in ("activation vs importance", "diversity: distance vs entropy")]
    assert len(scatters) == 2
    for ax in scatters:
        legend = ax.get_legend()
        assert legend is not None and legend.get_title().get_text() == "layer"
        assert ["".join(filter(str.isdigit, t.get_text())) for t in legend.get_texts()] == ["0", "1"]
    plt.close(fig)


def test_a_neuron_page_explains_an_uncounted_trigram_score(tmp_path):
    page = {"layer": 0, "neuron": 1, "reasons": [{"source": "trigram", "reported": False}],
            "scores": {"trigram": {"score": "trigram_count", "value": "inf"}, "dead": {"score": "freq", "value": 0.5}},
            "freq": 0.5, "mean": 0.1, "max": 1.0, "covered": {}, "profile": [], "contexts": []}
    texts = [b.text for b in page_blocks("m", page, tmp_path) if isinstance(b, Paragraph)]
    assert any(isinstance(t, str) and t.startswith("trigram_count inf: more than the detector counts") for t in texts)
    page["scores"]["trigram"]["value"] = 3.0
    texts = [b.text for b in page_blocks("m", page, tmp_path) if isinstance(b, Paragraph)]
    assert not any(isinstance(t, str) and "inf:" in t for t in texts)


def test_ablation_bars_carry_their_values(tmp_path, monkeypatch):
    chosen = [ablation("a", "pruning", "zero", 0.0002, 1.0), ablation("a", "attention", "zero", 1.77, 5.0)]
    for r in chosen:
        r["figures"] = {"ablation": {"condition": r["neuron_type"]}}
    saved = []
    monkeypatch.setattr("neuronbench.figures.save", lambda fig, path: saved.append(fig) or path)
    FIGURES["ablation"](chosen, tmp_path)
    (fig,) = saved
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"+0.02", "+177", "+0"} <= labels  # the small condition stays readable beside the large one
    plt.close(fig)
