"""The report of a run, rendered from its ``results.json`` payload alone (so that
``python -m neuronbench report DIR`` rebuilds it byte for byte): findings first (one row per
model), the models, one narrow section per analysis with its figures, the failures, and the
configuration and versions last. The same blocks (:mod:`neuronbench.document`) are written as
``report.md`` and as the self-contained ``report.html`` (:mod:`neuronbench.html`), which also
holds every neuron page (:mod:`neuronbench.neuron_pages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from neuronbench.document import Block, Heading, Image, Paragraph, Table, narrow_blocks, to_markdown
from neuronbench.figures import Note, Output, render_figures
from neuronbench.findings import analysis_blocks, by_model, findings_blocks
from neuronbench.html import page_html
from neuronbench.neuron_pages import index_blocks, pages_of
from neuronbench.storage import write_text_atomic


def figure_blocks(outputs: Sequence[Output], out: Path) -> list[Block]:
    return [Paragraph(f"{o.title}: {o.text}") if isinstance(o, Note)
            else Image(o.stem, o.relative_to(out).as_posix(), str(o)) for o in outputs]


def figures_by_analysis(records: Sequence[dict], figures: dict[str, list[Output]]) -> dict[str, list[str]]:
    """analysis → the figure names its records carry."""
    chosen: dict[str, list[str]] = {}
    for record in records:
        for name in record.get("figures") or {}:
            if name in figures and name not in chosen.setdefault(record["analysis"], []):
                chosen[record["analysis"]].append(name)
    return chosen


def models_blocks(records: Sequence[dict]) -> list[Block]:
    rows = [[m, rs[0]["model_type"], rs[0]["num_parameters"], rs[0].get("revision") or rs[0].get("weights_sha256", "")[:16],
             rs[0]["dataset"], rs[0]["analysis_split_sha256"][:16]] for m, rs in by_model(records).items()]
    return narrow_blocks(["model", "type", "parameters", "revision / weights sha256", "dataset", "analysis split sha256"],
                         rows, same_for="every model")


def configuration_blocks(payload: dict) -> list[Block]:
    return [Heading("Configuration"), Table(["option", "value"], sorted(payload["config"].items())),
            Paragraph("Versions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()) + ".")]


def report_blocks(payload: dict, figures: dict[str, list[Output]], out: Path,
                  extra: Sequence[Block] = ()) -> list[Block]:
    """The whole report as blocks; ``extra`` (the neuron pages' index) goes after the analyses."""
    records = payload["records"]
    blocks: list[Block] = [Heading("neuronbench report", 1, anchor="report"), Paragraph(f"Run started {payload['started']}.")]
    blocks += [Heading("Findings", anchor="findings"), *findings_blocks(records)]
    blocks += [Heading("Models"), *models_blocks(records)]
    shown = {analysis: [b for name in names for b in figure_blocks(figures[name], out)]
             for analysis, names in figures_by_analysis(records, figures).items()}
    blocks += [*analysis_blocks(records, shown), *extra]
    if payload["failures"]:
        blocks += [Heading("Failures"), Table(["case", "when", "message", "raised at"],
                                              [[f["case"], f["when"], " ".join(f["message"]), f.get("location")]
                                               for f in payload["failures"]])]
    return blocks + configuration_blocks(payload)


def write_report(out: Path, payload: dict) -> Path:
    """Render the figures into ``<out>/plots``; write the neuron pages under ``<out>/neurons``,
    ``<out>/report.md`` and ``<out>/report.html`` (the report and every page in one file)."""
    records = payload["records"]
    figures = render_figures(records, out / "plots")
    pages = pages_of(records, out)
    for path, page in pages.items():
        write_text_atomic(out / path, to_markdown(page))
    blocks = report_blocks(payload, figures, out, index_blocks(records))
    write_text_atomic(out / "report.html", page_html("neuronbench report", blocks, html_pages(pages, out)))
    return write_text_atomic(out / "report.md", to_markdown(blocks))


def html_pages(pages: dict[str, list[Block]], out: Path) -> dict[str, list[Block]]:
    """The neuron pages for the HTML view: image paths relative to the run directory."""
    def moved(block: Block, path: str) -> Block:
        if isinstance(block, Image):
            return Image(block.title, str(Path(path).parent / block.path), block.file)
        return block

    return {path: [moved(b, path) for b in blocks] for path, blocks in pages.items()}
