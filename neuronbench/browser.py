"""Rendering ``report.html`` in a real browser (headless Chromium, the Debian ``chromium``
package): screenshots, the rendered DOM, and the page's console messages (any message is a
defect: the report has no script, so a message means a broken resource or markup).

``python -m neuronbench screenshots DIR [--out docs]`` writes ``report-findings.png`` (the top of
the report: the findings table) and ``report-neuron-page.png`` (the first neuron page of the
report) from a finished run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from neuronbench.errors import ConfigError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0")


def chromium() -> str | None:
    """The Chromium executable on PATH, or ``None``."""
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass(frozen=True)
class Rendering:
    output: str
    """stdout: the DOM (``--dump-dom``) or Chromium's own messages."""
    console: list[str]
    """The page's console messages."""


def run_chromium(url: str, *args: str, timeout: int = 120) -> Rendering:
    binary = chromium()
    if binary is None:
        raise ConfigError("headless Chromium is not installed: apt-get install chromium (Debian)")
    with tempfile.TemporaryDirectory(prefix="neuronbench-chromium-") as profile:
        done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                              text=True, timeout=timeout)
    if done.returncode != 0:
        raise ConfigError(f"chromium failed on {url} (exit {done.returncode}): {done.stderr[-2000:]}")
    return Rendering(done.stdout, CONSOLE.findall(done.stderr))


def screenshot(html: Path, png: Path, fragment: str = "", size: tuple[int, int] = (1400, 1000)) -> Rendering:
    """Render ``html`` (scrolled to ``#fragment``) into ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    url = html.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return run_chromium(url, f"--screenshot={png.resolve()}", f"--window-size={size[0]},{size[1]}")


def dump_dom(html: Path) -> Rendering:
    return run_chromium(html.resolve().as_uri(), "--dump-dom")


def first_neuron_page(html: Path) -> str:
    """The id of the first neuron page section of a report."""
    found = re.search(r'<section class="neuron" id="([^"]+)"', html.read_text())
    if found is None:
        raise ConfigError(f"{html} has no neuron page (did the run include the neurons case?)")
    return found[1]


def neuron_page_file(html: Path, section: str, target: Path) -> Path:
    """One neuron page of ``html`` alone, as its own self-contained HTML file (for a screenshot
    that starts at the page)."""
    text = html.read_text()
    head = text[:text.index("<body>") + len("<body>")]
    start = text.index(f'<section class="neuron" id="{section}">')
    stop = text.index("</section>", start) + len("</section>")
    target.write_text(head + text[start:stop] + "</body></html>\n")
    return target


def screenshots_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuronbench screenshots",
                                     description="Screenshots of a run's report.html (findings, one neuron page).")
    parser.add_argument("directory")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    html, out = Path(args.directory) / "report.html", Path(args.out)
    shots = [screenshot(html, out / "report-findings.png", size=(1400, 900))]
    with tempfile.TemporaryDirectory() as scratch:
        page = neuron_page_file(html, first_neuron_page(html), Path(scratch) / "page.html")
        shots.append(screenshot(page, out / "report-neuron-page.png", size=(1400, 1400)))
    for shot in shots:
        for message in shot.console:
            print(f"console: {message}")
    print(out / "report-findings.png", out / "report-neuron-page.png")
    return 1 if any(shot.console for shot in shots) else 0
