"""The paper figures and the suite's charts, rendered from the figure data the cases recorded.

Each renderer is registered in ``FIGURES`` under the ``figures`` key a record carries; it gets
every record with that key and writes one or more PNGs. One seaborn style for all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from neuronbench.storage import write_bytes_atomic  # noqa: E402

Renderer = Callable[[list[dict], Path], list[Path]]
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


def render_figures(records: list[dict], plots: Path) -> list[Path]:
    """Render every registered figure whose data some record carries."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    written: list[Path] = []
    for name, renderer in FIGURES.items():
        chosen = [r for r in records if name in r.get("figures", {})]
        if chosen:
            written.extend(renderer(chosen, plots))
    return written
