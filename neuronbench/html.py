"""The HTML view of the report: one self-contained file (``report.html``) rendered from the same
blocks as the Markdown (:mod:`neuronbench.document`). Figures are embedded as base64 PNGs, links
to neuron pages become in-page anchors (every page is a section of the same file), and token
contexts are coloured by activation (opacity ∝ activation / the context's largest |activation|;
positive orange, negative blue). No script, no external resource.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from neuronbench.document import Block, Context, Contexts, Heading, Image, Link, Paragraph, Table, fmt

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
img { max-width: 100%; }
section.neuron { border-top: 3px solid #888; margin-top: 2em; }
.context { font-family: monospace; white-space: pre-wrap; line-height: 1.9; }
.tok { padding: 0.1em 0.05em; border-radius: 2px; }
.tok.marked { outline: 2px solid #000; font-weight: bold; }
"""


def anchor(target: str) -> str:
    """The in-page id of a linked page (``neurons/tiny-gpt2/L0N3.md`` → ``neurons-tiny-gpt2-L0N3``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", target.removesuffix(".md")).strip("-")


def _cell(value: object) -> str:
    if isinstance(value, Link):
        return f'<a href="#{anchor(value.target)}">{html.escape(value.text)}</a>'
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return html.escape(value if isinstance(value, str) else fmt(value))


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(image: Image) -> str:
    data = base64.b64encode(Path(image.file).read_bytes()).decode("ascii")
    title = html.escape(image.title)
    return f'<figure><img alt="{title}" src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'


def _token(token: str, value: float, scale: float, marked: bool) -> str:
    alpha = 0.0 if scale == 0 else min(1.0, abs(value) / scale)
    colour = f"rgba(230,120,20,{alpha:.2f})" if value >= 0 else f"rgba(40,110,220,{alpha:.2f})"
    classes = "tok marked" if marked else "tok"
    return (f'<span class="{classes}" style="background:{colour}" title="{fmt(float(value))}">'
            f"{html.escape(token.replace(chr(10), '↵')) or '∅'}</span>")


def _context(context: Context) -> str:
    scale = max((abs(float(v)) for v in context.activations), default=0.0)
    spans = "".join(_token(t, float(v), scale, i == context.marked)
                    for i, (t, v) in enumerate(zip(context.tokens, context.activations)))
    return f'<tr><td>{fmt(float(context.activations[context.marked]))}</td><td class="context">{spans}</td></tr>'


def _contexts(contexts: Contexts) -> str:
    rows = "".join(_context(c) for c in contexts.contexts)
    return f"<table><thead><tr><th>activation</th><th>context</th></tr></thead><tbody>{rows}</tbody></table>"


def _heading(heading: Heading) -> str:
    ident = f' id="{html.escape(heading.anchor)}"' if heading.anchor else ""
    level = min(heading.level, 6)
    return f"<h{level}{ident}>{html.escape(heading.text)}</h{level}>"


def _paragraph(paragraph: Paragraph) -> str:
    parts = (paragraph.text,) if isinstance(paragraph.text, str) else paragraph.text
    return "<p>" + "".join(_cell(p) for p in parts) + "</p>"


RENDERERS = {
    Heading: _heading,
    Paragraph: _paragraph,
    Table: _table,
    Image: _image,
    Contexts: _contexts,
}


def blocks_html(blocks: Sequence[Block]) -> str:
    return "\n".join(RENDERERS[type(block)](block) for block in blocks)


def page_html(title: str, report: Sequence[Block], pages: dict[str, Sequence[Block]]) -> str:
    """The report followed by every neuron page (``{relative path: blocks}``), each a section whose
    id is :func:`anchor` of its path."""
    sections = [f'<section class="neuron" id="{anchor(path)}">{blocks_html(blocks)}</section>'
                for path, blocks in pages.items()]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            f"<main>{blocks_html(report)}</main>\n" + "\n".join(sections) + "\n</body></html>\n")
