"""Neuron pages ``neurons/<model>/L<layer>N<index>.md`` rendered from the ``neuron_pages`` data of
the ``neurons`` records (:mod:`neuronbench.neuron_choice`): why the neuron has a page, its score
under every detector, frequency, covered tokens / trigrams as strings, its positional frequency
profile ``fr(pos)`` (a plot, or a sentence when it never varies), with ``--page-ablation`` the
perplexity change of zero-ablating it by itself, and its top activating contexts with the
activating token marked and the activation on every token shown. The report links
them from its "Neuron pages" table.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from neuronbench.document import Block, Context, Contexts, Heading, Image, Link, Paragraph, Table, fmt, narrow_blocks
from neuronbench.figures import layer_axis, save
from neuronbench.names import safe_name


def page_path(model: str, layer: int, neuron: int) -> str:
    """The page of a neuron, relative to the run directory."""
    return f"neurons/{safe_name(model)}/L{layer}N{neuron}.md"


def profile_plot(page: dict, freq: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.plot(range(len(page["profile"])), page["profile"], marker=".", linewidth=1)
    ax.axhline(freq, color="grey", linestyle="--", linewidth=0.8, label=f"overall {fmt(freq)}")
    ax.set(ylabel="fr(pos)", title=f"L{page['layer']} N{page['neuron']}: activation frequency by position")
    layer_axis(ax)
    ax.set_xlabel("position")
    ax.legend(fontsize=7)
    return save(fig, path)


def _reason(page: dict, source: str) -> str:
    for reason in page["reasons"]:
        if reason["source"] == source:
            return "reported" if reason["reported"] else "strongest unreported"
    return ""


def page_blocks(model: str, page: dict, out: Path) -> list[Block]:
    """The blocks of one neuron page (figure written under ``out``)."""
    layer, neuron = page["layer"], page["neuron"]
    relative = page_path(model, layer, neuron)
    blocks: list[Block] = [Heading(f"{model}: layer {layer}, neuron {neuron}", 1),
                           Paragraph(("Back to the ", Link("report", "../../report.md"), "."))]
    rows = [[source, score["score"], score["value"], _reason(page, source)] for source, score in page["scores"].items()]
    uncounted = [score["score"] for score in page["scores"].values() if not math.isfinite(float(score["value"]))]
    blocks += [Table(["detector", "score", "value", "page because"], rows),
               *([Paragraph(f"{', '.join(uncounted)} inf: more than the detector counts (a trigram count of inf: more "
                            "trigrams than its maximum would be needed to cover the neuron's activations).")]
                 if uncounted else []),
               Paragraph(f"Activation frequency {fmt(page['freq'])}, mean activation {fmt(page['mean'])}, "
                         f"max {fmt(page['max'])}.")]
    if "ablated_alone" in page:
        effect = page["ablated_alone"]
        blocks.append(Paragraph(f"{effect['mode'].capitalize()}-ablated by itself: Δppl "
                                f"{100 * effect['ppl_delta_rel']:+.3g} % on the eval split (no random control)."))
    blocks += [Paragraph(f"Covered by {source}: " + ", ".join(repr(t) for t in tokens) + ".")
               for source, tokens in page["covered"].items()]
    profile = page["profile"]
    if profile and max(profile) > min(profile):
        file = profile_plot(page, page["freq"], out / relative.replace(".md", "_profile.png"))
        blocks.append(Image("positional profile", file.name, str(file)))
    elif profile:
        blocks.append(Paragraph(f"Positional profile: active with frequency {fmt(profile[0])} at every position."))
    contexts = [Context(c["tokens"], c["activations"], c["marked"]) for c in page["contexts"]]
    blocks += [Heading(f"Top {len(contexts)} activating contexts", 2), Contexts(contexts)] if contexts else \
        [Paragraph("No contexts (no real token was seen).")]
    return blocks


def pages_of(records: list[dict], out: Path) -> dict[str, list[Block]]:
    """``{relative path: blocks}`` of every neuron page of the run."""
    pages: dict[str, list[Block]] = {}
    for record in records:
        for page in (record.get("figures") or {}).get("neuron_pages", {}).get("pages", []):
            pages[page_path(record["model"], page["layer"], page["neuron"])] = page_blocks(record["model"], page, out)
    return pages


def index_blocks(records: list[dict]) -> list[Block]:
    """The report's table of neuron pages: one row per model and detector, the pages as links
    (``*``: strongest unreported)."""
    rows = []
    for record in records:
        pages = (record.get("figures") or {}).get("neuron_pages", {}).get("pages", [])
        by_source: dict[str, list[Link]] = {}
        for page in pages:
            for reason in page["reasons"]:
                text = f"L{page['layer']}N{page['neuron']}" + ("" if reason["reported"] else "*")
                by_source.setdefault(reason["source"], []).append(
                    Link(text, page_path(record["model"], page["layer"], page["neuron"])))
        rows += [[record["model"], source, links] for source, links in by_source.items()]
    if not rows:
        return []
    return [Heading("Neuron pages", anchor="neuron-pages"),
            *narrow_blocks(["model", "detector", "pages"], rows, keep=3),
            Paragraph("*: not reported by that detector, shown as its strongest neuron below the threshold.")]
