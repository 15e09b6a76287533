"""Voita et al. 2023 Figures 7 and 8, rendered from the ``positional`` figure data of the suite's
MI case (:func:`neuronbench.detectors.figures.positional_type_examples` and
:func:`~neuronbench.detectors.figures.positional_per_layer`); registered in
:data:`neuronbench.figures.FIGURES` under ``positional``.

* Figure 7: activation *frequency* against position of the strongest positional neurons, one
  panel per positional type (solid: strong, dashed: weak), one row per model.
* Figure 8: positional neurons per layer, stacked by type (hatched part: strong), one panel per
  model; the x axis is the relative depth ``layer / (L − 1)`` so models of different depth line up,
  with each bar labelled by its layer.

A model without positional neurons gets a sentence instead of empty panels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from neuronbench.figures import Note, Output, _model_label, figure, relative_depth, save


def _figure7(records: list[dict], plots: Path) -> list[Output]:
    kinds = [kind for kind in records[0]["figures"]["positional"]["fig7"]["types"]
             if any(r["figures"]["positional"]["fig7"]["types"][kind] for r in records)]
    fig, axes = plt.subplots(len(records), len(kinds), figsize=(4.2 * len(kinds), 3.2 * len(records)),
                             squeeze=False)
    for row, record in zip(axes, records):
        data = record["figures"]["positional"]["fig7"]
        for ax, kind in zip(row, kinds):
            for example in data["types"][kind]:
                ax.plot(data["positions"], example["frequency"], linestyle="-" if example["strength"] == "strong" else "--",
                        label=f"L{example['layer']}.{example['neuron']} ({example['strength']}, I = {example['score']:.2f})")
            ax.set(title=f"{_model_label(record)}: {kind}", xlabel="position", ylabel="activation frequency",
                   ylim=(-0.03, 1.03))
            if data["types"][kind]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "none of this type", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Figure 7: activation frequency by position of the strongest positional neurons")
    return [save(fig, plots / "fig7_positional_types.png")]


def _figure8(records: list[dict], plots: Path) -> list[Output]:
    fig, axes = plt.subplots(1, len(records), figsize=(5.5 * len(records), 3.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, record in zip(axes[0], records):
        data = record["figures"]["positional"]["fig8"]
        x = relative_depth(data["layers"], data["num_layers"])
        width = 0.8 * (np.min(np.diff(x)) if x.size > 1 else 1.0)
        counts, strong = np.asarray(data["counts"], dtype=float), np.asarray(data["strong"], dtype=float)
        bottom = np.zeros(x.size)
        for i, kind in enumerate(data["types"]):
            colour = colours[i % len(colours)]
            ax.bar(x, counts[:, i], width=width, bottom=bottom, color=colour, label=kind)
            ax.bar(x, strong[:, i], width=width, bottom=bottom, color=colour, hatch="//", edgecolor="white",
                   linewidth=0)
            bottom += counts[:, i]
        ax.set_xticks(x, [f"{d:.2f}\n(L{layer})" for d, layer in zip(x, data["layers"])], fontsize=7)
        ax.set(title=f"Figure 8: {_model_label(record)}", xlabel="relative depth layer/(L−1)",
               ylabel="positional neurons (hatched: strong)")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    return [save(fig, plots / "fig8_positional_per_layer.png")]


@figure("positional")
def positional_figures(records: list[dict], plots: Path) -> list[Output]:
    """Figures 7 and 8 for the models with positional neurons; a sentence naming the others."""
    empty = [r for r in records if not any(r["figures"]["positional"]["fig7"]["types"].values())]
    notes = [Note("Figures 7 and 8", f"No positional neurons in {', '.join(_model_label(r) for r in empty)}.")
             ] if empty else []
    found = [r for r in records if r not in empty]
    return [*(_figure7(found, plots) + _figure8(found, plots) if found else []), *notes]
