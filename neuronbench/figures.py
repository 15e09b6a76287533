"""The paper figures and the suite's charts, rendered from the figure data the cases recorded.

Each renderer is registered in ``FIGURES`` under the ``figures`` key a record carries; it gets
every record with that key and writes one or more PNGs, or returns a :class:`Note` (a sentence)
where the analysis found nothing to plot. One seaborn style for all; layer axes have integer
ticks (:func:`layer_axis`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from neuronbench.document import fmt  # noqa: E402
from neuronbench.storage import write_bytes_atomic  # noqa: E402



@dataclass(frozen=True)
class Note:
    """What a figure says instead of an empty plot: ``title`` and one sentence."""

    title: str
    text: str


Output = Path | Note
Renderer = Callable[[list[dict], Path], list[Output]]
FIGURES: dict[str, Renderer] = {}


def figure(name: str) -> Callable[[Renderer], Renderer]:
    def register(renderer: Renderer) -> Renderer:
        FIGURES[name] = renderer
        return renderer

    return register


def save(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def layer_axis(ax: plt.Axes, axis: str = "x") -> None:
    """Label a layer axis with integer ticks only."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))
    getattr(ax, f"set_{axis}label")("layer")


def found_nothing(*series: object) -> bool:
    """True when every value of every series is 0 or missing (nothing to plot)."""
    values = [v for s in series for v in np.ravel(np.asarray(s, dtype=object)) if v is not None]
    return not any(float(v) != 0 and not np.isnan(float(v)) for v in values)


def render_figures(records: list[dict], plots: Path) -> dict[str, list[Output]]:
    """Render every registered figure whose data some record carries: ``{figure name: outputs}``."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    written: dict[str, list[Output]] = {}
    for name, renderer in FIGURES.items():
        chosen = [r for r in records if name in r.get("figures", {})]
        if chosen:
            written[name] = renderer(chosen, plots)
    return written


def _model_label(record: dict) -> str:
    return Path(record["model"]).name if "/" in record["model"] else record["model"]


@figure("ablation")
def ablation_chart(records: list[dict], plots: Path) -> list[Output]:
    """Relative perplexity change of each condition (bars) against its random control (mean ± std
    over seeds, error bars), one panel per model and ablation mode. Conditions that ablate nothing
    are not drawn (the section's table names them); when no condition ablates anything, a sentence
    replaces the figure."""
    drawn = [r for r in records if r["metrics"]["n_neurons"] > 0]
    if not drawn:
        empty = ", ".join(sorted({r["figures"]["ablation"]["condition"] for r in records}))
        return [Note("ablation", f"Nothing to ablate (no units found) for: {empty}.")] if records else []
    records = drawn
    panels = sorted({(_model_label(r), r["mode"]) for r in records})
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ax, (model, mode) in zip(axes[:, 0], panels):
        chosen = [r for r in records if _model_label(r) == model and r["mode"] == mode]
        names = [r["figures"]["ablation"]["condition"] for r in chosen]
        base = np.array([r["metrics"]["baseline_ppl"] for r in chosen])
        cond = np.array([r["metrics"]["ppl"] for r in chosen]) / base - 1
        # dtype=float: a replayed run's JSON writes a non-finite value as the string "nan" (--seeds 0)
        ctrl = np.array([r["metrics"]["control_ppl_mean"] for r in chosen], dtype=float) / base - 1
        err = np.array([r["metrics"]["control_ppl_std"] for r in chosen], dtype=float) / base
        x = np.arange(len(names))
        bars = [ax.bar(x - 0.2, 100 * cond, width=0.4, label="condition")]
        controlled = bool(np.isfinite(ctrl).any())  # a run with --seeds 0 has no random controls
        if controlled:
            bars.append(ax.bar(x + 0.2, 100 * ctrl, width=0.4, yerr=100 * err, capsize=3,
                               label="random control (mean ± std)"))
        for container in bars:  # the value on each bar: a small one stays readable beside a large one
            ax.bar_label(container, labels=[f"{v:+.3g}" for v in container.datavalues], fontsize=7, padding=2)
        ax.margins(y=0.15)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel("Δ perplexity (%)")
        ax.set_title(f"{model}: {mode}-ablation" + ("" if controlled else " (no random controls: --seeds 0)"))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [save(fig, plots / "ablation.png")]


@figure("attention")
def attention_panels(records: list[dict], plots: Path) -> list[Path]:
    """Six panels per model: score histogram, top units, activation (attention_weighted) against
    importance (gradient_guided), a heatmap of the strongest unit, diversity, summary."""
    written = []
    for record in records:
        data = record["figures"]["attention"]
        frame = data["frame"]
        weighted, guided = np.asarray(frame["attention_weighted"]), np.asarray(frame["gradient_guided"])
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        sns.histplot(weighted, ax=axes[0, 0], bins=40)
        axes[0, 0].set(title="activation (attention_weighted)", xlabel="score", ylabel="units")
        order = np.argsort(-weighted)[:10]
        labels = [f"L{frame['layer'][i]}.{frame['unit'][i]}" for i in order]
        axes[0, 1].barh(labels[::-1], weighted[order][::-1])
        axes[0, 1].set(title=f"top {data['unit']}s", xlabel="attention_weighted")
        axes[0, 1].ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        by_layer = axes[0, 2].scatter(weighted, guided, s=8, c=frame["layer"], cmap="viridis")
        axes[0, 2].set(title="activation vs importance", xlabel="attention_weighted", ylabel="gradient_guided")
        axes[0, 2].legend(*by_layer.legend_elements(), title="layer", fontsize=7, title_fontsize=8)
        heat = data["heatmap"]
        sns.heatmap(np.asarray(heat["values"]), ax=axes[1, 0], cmap="magma", cbar=True, xticklabels=False,
                    yticklabels=False)
        axes[1, 0].set(title=f"attention of L{heat['layer']}.{heat['unit']}", xlabel="key", ylabel="query")
        by_layer = axes[1, 1].scatter(frame["distance"], frame["entropy"], s=8, c=frame["layer"], cmap="viridis")
        axes[1, 1].set(title="diversity: distance vs entropy", xlabel="mean distance (tokens)",
                       ylabel="entropy (nats)")
        axes[1, 1].legend(*by_layer.legend_elements(), title="layer", fontsize=7, title_fontsize=8)
        diversity = data["diversity"]
        lines = [f"{method}: {len(v['per_layer'])} layers, mean distance {v['mean_distance'] or float('nan'):.2f}"
                 for method, v in diversity["methods"].items()]
        lines += [f"overlap {pair}: {value:.2f}" for pair, value in diversity["overlap"].items()]
        axes[1, 2].axis("off")
        axes[1, 2].text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
        axes[1, 2].set(title="summary")
        fig.suptitle(f"{_model_label(record)}: attention {data['unit']}s")
        written.append(save(fig, plots / f"attention_{_model_label(record)}.png"))
    return written


@figure("activation_distribution")
def activation_distributions(records: list[dict], plots: Path) -> list[Path]:
    """Per-neuron max activation and activation frequency: histograms, frequency against max,
    and the cumulative distribution of frequency, one row per model."""
    fig, axes = plt.subplots(len(records), 4, figsize=(16, 3.4 * len(records)), squeeze=False)
    for row, record in zip(axes, records):
        data = record["figures"]["activation_distribution"]
        freq, maximum = np.asarray(data["freq"]), np.asarray(data["max"])
        sns.histplot(maximum, bins=50, ax=row[0])
        row[0].set(title=f"{_model_label(record)}: max activation", xlabel="max a", ylabel="neurons")
        sns.histplot(freq, bins=50, ax=row[1])
        row[1].set(title="activation frequency", xlabel="freq", ylabel="neurons")
        row[2].scatter(maximum, freq, s=4, alpha=0.5)
        row[2].set(title="frequency vs max", xlabel="max a", ylabel="freq")
        ordered = np.sort(freq)
        row[3].plot(ordered, np.arange(1, ordered.size + 1) / ordered.size)
        row[3].set(title="cumulative", xlabel="freq", ylabel="fraction of neurons ≤ freq")
    return [save(fig, plots / "activation_distributions.png")]


def relative_depth(layers: list[int], num_layers: int | None) -> np.ndarray:
    """``layer / (L − 1)`` (the layer index itself when ``L`` is unknown or 1)."""
    layers = np.asarray(layers, dtype=float)
    return layers / (num_layers - 1) if num_layers and num_layers > 1 else layers


def depth_axis(ax: plt.Axes, records: list[dict], key: str) -> None:
    """The x axis of a cross-model overlay: relative depth ``layer/(L−1)`` at the bottom and, when
    every model has the same depth ``L``, integer layer ticks on top."""
    depths = {record["figures"][key].get("num_layers") for record in records}
    ax.set(xlabel="relative depth layer/(L−1)", xlim=(-0.05, 1.05))
    if len(depths) == 1 and None not in depths and depths != {1}:
        last = depths.pop() - 1
        top = ax.secondary_xaxis("top", functions=(lambda d: d * last, lambda layer: layer / last))
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.set_xlabel("layer")


def _per_model_lines(ax: plt.Axes, records: list[dict], key: str, part: str, field: str, label: str) -> None:
    """One line per model against relative depth (:func:`depth_axis`)."""
    for record in records:
        data = record["figures"][key][part]
        values = [np.nan if v is None else v for v in data[field]]
        x = relative_depth(data["layers"], record["figures"][key].get("num_layers"))
        ax.plot(x, values, marker="o", label=_model_label(record))
    ax.set(ylabel=label)
    depth_axis(ax, records, key)
    ax.legend(fontsize=8)


@figure("dead")
def dead_figures(records: list[dict], plots: Path) -> list[Output]:
    """Figure 1a (% dead neurons per layer; a sentence when no layer has any) and 1b (mean
    activation frequency of the alive neurons), overlaid across models."""
    none_dead = found_nothing(*(r["figures"]["dead"]["fig1a"]["dead_percent"] for r in records))
    fig, axes = plt.subplots(1, 1 if none_dead else 2, figsize=(5.5 if none_dead else 11, 3.8), squeeze=False)
    axes = list(axes[0])
    written: list[Output] = []
    if none_dead:
        written.append(Note("Figure 1a", "No dead neurons in any layer of any model."))
    else:
        _per_model_lines(axes[0], records, "dead", "fig1a", "dead_percent", "dead neurons (%)")
        axes[0].set_title("Figure 1a: dead neurons")
    _per_model_lines(axes[-1], records, "dead", "fig1b", "mean_freq_alive", "mean frequency of alive neurons")
    axes[-1].set_title("Figure 1b: activation frequency")
    return [*written, save(fig, plots / "fig1_dead.png")]


@figure("dead_sweep")
def dead_sweep_figure(records: list[dict], plots: Path) -> list[Output]:
    """The τ sweep: dead % per layer at every τ of the capture's sweep, one panel per model that has
    dead neurons at some τ; the models with none at any τ are named in a sentence instead."""
    empty = [r for r in records if found_nothing(r["figures"]["dead_sweep"]["dead_percent"])]
    notes: list[Output] = ([Note("τ sweep", f"No dead neurons at any τ of the sweep in {', '.join(map(_model_label, empty))}.")]
                           if empty else [])
    shown = [r for r in records if r not in empty]
    if not shown:
        return notes
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.8), squeeze=False)
    for ax, record in zip(axes[0], shown):
        sweep = record["figures"]["dead_sweep"]
        for tau, column in zip(sweep["tau"], np.asarray(sweep["dead_percent"]).T):
            ax.plot(sweep["layers"], column, marker=".", label=f"τ = {tau}")
        null = record["metrics"].get("null_count")
        ax.set(title=f"{_model_label(record)}: τ sweep" + ("" if null is None else f" (null {fmt(null)} at every τ)"),
               ylabel="dead neurons (%)")
        layer_axis(ax)
        ax.legend(fontsize=7)
    return [*notes, save(fig, plots / "dead_tau_sweep.png")]


def _dashed_lines(ax: plt.Axes, records: list[dict], part: str, field: str, suffix: str) -> None:
    """A second, dashed series per model on an n-gram panel."""
    for record in records:
        data = record["figures"]["ngram"][part]
        x = relative_depth(data["layers"], record["figures"]["ngram"].get("num_layers"))
        ax.plot(x, data[field], linestyle="--", marker=".", label=f"{_model_label(record)} ({suffix})")
    ax.legend(fontsize=7)


@figure("ngram")
def ngram_figures(records: list[dict], plots: Path) -> list[Output]:
    """Figure 2 per model (alive neurons per layer binned by unigram count, stacked; as in the paper
    the first half of the network unless the data say otherwise), and overlaid, against relative
    depth, across models 3a (token-detecting neurons per layer), 3b (tokens covered per layer and
    cumulatively) and 4 (tokens new against all earlier layers and against the previous one); a
    sentence instead of 3 and 4 when no model has a token-detecting neuron."""
    written: list[Output] = []
    for record in records:
        data = record["figures"]["ngram"]["fig2"]
        if not data["layers"]:
            written.append(Note("Figure 2", f"{_model_label(record)}: no analysed layer in the chosen part of the network."))
            continue
        counts = np.asarray(data["counts"], dtype=float)
        fig, ax = plt.subplots(figsize=(7, 3.8))
        bottom = np.zeros(len(data["layers"]))
        for column, name in zip(counts.T, data["bins"]):
            ax.bar(data["layers"], column, bottom=bottom, label=name)
            bottom += column
        part = (f"first half: layers 0–{max(data['layers'])} of {data['num_layers']}" if data.get("part") == "first_half"
                else "all layers")
        ax.set(title=f"Figure 2: {_model_label(record)}, alive neurons ({part})", ylabel="alive neurons")
        layer_axis(ax)
        ax.legend(title="unigrams", fontsize=7, ncols=2)
        written.append(save(fig, plots / f"fig2_unigram_bins_{_model_label(record)}.png"))
    if found_nothing(*(r["figures"]["ngram"]["fig3a"]["token_detecting"] for r in records)):
        return [*written, Note("Figures 3 and 4", "No token-detecting neurons in any layer of any model.")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    _per_model_lines(axes[0], records, "ngram", "fig3a", "token_detecting", "token-detecting neurons")
    axes[0].set_title("Figure 3a")
    _per_model_lines(axes[1], records, "ngram", "fig3b", "covered", "tokens covered (layer)")
    _dashed_lines(axes[1], records, "fig3b", "cumulative", "cumulative")
    axes[1].set_title("Figure 3b")
    _per_model_lines(axes[2], records, "ngram", "fig4", "new_vs_all_earlier", "new tokens")
    _dashed_lines(axes[2], records, "fig4", "new_vs_previous", "vs previous layer")
    axes[2].set_title("Figure 4")
    written.append(save(fig, plots / "fig3_fig4_token_detectors.png"))
    return written


from neuronbench import paper_figures  # noqa: E402,F401  (registers Figures 7 and 8)
