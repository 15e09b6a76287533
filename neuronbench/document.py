"""A small document model shared by the Markdown and the HTML report, so that both are rendered
from the same data: a report is a list of blocks (:class:`Heading`, :class:`Paragraph`,
:class:`Table`, :class:`Image`, :class:`Contexts`); table cells may be :class:`Link` s.

Numbers are rounded for reading here (:func:`fmt`); full precision stays in ``results.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tabulate import tabulate

MISSING = "—"


@dataclass(frozen=True)
class Link:
    """A cell or text that links to another page: ``target`` is a path relative to the run
    directory (``neurons/tiny-gpt2/L0N3.md``); the HTML view turns it into an in-page anchor."""

    text: str
    target: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass(frozen=True)
class Paragraph:
    """Text; a tuple mixes plain strings and :class:`Link` s."""

    text: str | tuple[str | Link, ...]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True)
class Image:
    """A figure: ``path`` relative to the page's directory; ``file`` is where it lies (for
    embedding in HTML)."""

    title: str
    path: str
    file: str


@dataclass(frozen=True)
class Context:
    """One top-activating context of a neuron: its tokens (as strings), the neuron's activation on
    each, and which token is the activating one."""

    tokens: Sequence[str]
    activations: Sequence[float]
    marked: int


@dataclass(frozen=True)
class Contexts:
    contexts: Sequence[Context] = field(default_factory=tuple)


Block = Heading | Paragraph | Table | Image | Contexts


def fmt(value: object) -> str:
    """A number rounded for reading: integers with thousands separators, floats to 3 significant
    digits without trailing zeros (no exponent between 1e-3 and 1e6), non-finite as ``inf``/``nan``; ``None`` as ``—``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e6:
            return f"{int(value):,}"
        if 1e-3 <= abs(value) < 1e6:
            digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
            return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def display(value: object) -> str:
    """A cell as plain text (links by their text)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(display(v) for v in value)
    return value if isinstance(value, str) else str(value) if isinstance(value, Link) else fmt(value)


def narrow(headers: Sequence[str], rows: Sequence[Sequence[object]], keep: int = 1) -> tuple[Table, list[str]]:
    """Drop every column whose value is the same in all rows (only when there are ≥ 2 rows; the
    first ``keep`` columns, the row labels, always stay). Returns the table and, for the note
    under it, ``"header value"`` of each dropped column."""
    if len(rows) < 2:
        return Table(list(headers), [list(r) for r in rows]), []
    columns = range(len(headers))
    constant = [c for c in columns if c >= keep and len({str(r[c]) for r in rows}) == 1]
    chosen = [c for c in columns if c not in constant]
    dropped = [f"{headers[c]} {display(rows[0][c])}" for c in constant]
    return Table([headers[c] for c in chosen], [[r[c] for c in chosen] for r in rows]), dropped


def narrow_blocks(headers: Sequence[str], rows: Sequence[Sequence[object]], keep: int = 1,
                  same_for: str = "every row") -> list[Block]:
    """:func:`narrow`, then a sentence naming the dropped constant columns."""
    if not rows:
        return []
    table, dropped = narrow(headers, rows, keep)
    note = [Paragraph(f"Same for {same_for}: " + "; ".join(dropped) + ".")] if dropped else []
    return note if len(table.headers) <= keep and note else [table, *note]


# -- Markdown ----------------------------------------------------------------------------------
def _md_cell(value: object) -> str:
    if isinstance(value, Link):
        return f"[{value.text}]({value.target})"
    if isinstance(value, (list, tuple)):
        return ", ".join(_md_cell(v) for v in value)
    text = value if isinstance(value, str) else fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_token(token: str) -> str:
    return token.replace("\n", "↵").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_") \
        .replace("<", "&lt;").replace("`", "\\`")


def contexts_markdown(contexts: Contexts) -> str:
    """One table row per context: its top activation, then the tokens with the neuron's activation
    as subscript and the activating token in bold."""
    rows = []
    for rank, context in enumerate(contexts.contexts, 1):
        parts = []
        for i, (token, value) in enumerate(zip(context.tokens, context.activations)):
            text = f"{_md_token(token) or '∅'}<sub>{fmt(float(value))}</sub>"
            parts.append(f"**⟦{text}⟧**" if i == context.marked else text)
        rows.append([rank, fmt(float(context.activations[context.marked])), " ".join(parts)])
    return tabulate(rows, headers=["#", "activation", "context (activation per token)"], tablefmt="github",
                    disable_numparse=True)


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts = (block.text,) if isinstance(block.text, str) else block.text
            out.append("".join(f"[{p.text}]({p.target})" if isinstance(p, Link) else p for p in parts))
        elif isinstance(block, Table):
            out.append(tabulate([[_md_cell(v) for v in row] for row in block.rows], headers=list(block.headers),
                                tablefmt="github", disable_numparse=True))
        elif isinstance(block, Image):
            out.append(f"![{block.title}]({block.path})")
        elif isinstance(block, Contexts):
            out.append(contexts_markdown(block))
        out.append("")
    return "\n".join(out)
