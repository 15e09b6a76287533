"""The report of a real (toy) run: findings first and narrow tables, neuron pages linked from it,
``report`` replay byte for byte, ``compare`` against itself and against another
``--pruning-ratio``, and ``report.html`` rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from neuronbench.__main__ import main
from neuronbench.browser import chromium, dump_dom, first_neuron_page, neuron_page_file, screenshot
from suite_run import run_pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max-tokens", "1024", "--dead-null-freq", "0.005", "--eval-max-tokens", "400", "--analysis-window", "32", "--max-length", "64",
         "--seeds", "2", "--top-contexts", "5", "--page-neurons", "2", "-p", "no:cacheprovider",
         "--benchmark-disable", "-q"]
SELECTION = "statistics or test_dead or neuron_pages or (pruning and zero)"


def neuronbench(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m neuronbench ARGS`` in this process: exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One toy GPT-2 run at --pruning-ratio 0.1 and one of its pruning case alone at 0.3 (sharing
    the statistics cache), in this process (:mod:`suite_run`)."""
    from neuronbench.toy import build_toy_model

    root = tmp_path_factory.mktemp("report_runs")
    model = str(build_toy_model("gpt2", root / "toy-gpt2", initializer_range=0.2))
    out = {}
    for name, ratio, selection in (("a", "0.1", SELECTION), ("b", "0.3", "statistics or (pruning and zero)")):
        out[name] = root / name
        done = run_pytest(str(ROOT / "suite"), *SMALL, "-k", selection, "--model", model, "--pruning-ratio", ratio,
                          "--cache-dir", str(root / "cache"), "--out", str(out[name]), env={"MPLBACKEND": "Agg"})
        assert done.returncode == 0, done.stdout[-3000:]
    return out


def tables(markdown: str) -> list[list[str]]:
    """The header row of every Markdown table."""
    lines = markdown.splitlines()
    return [lines[i - 1].split("|")[1:-1] for i, line in enumerate(lines) if re.match(r"^\|-", line)]


def test_report_opens_with_findings_and_every_table_is_narrow(runs):
    report = (runs["a"] / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Models") < report.index("## Configuration")
    headers = tables(report)
    assert headers[0][0].strip() == "model" and max(len(h) for h in headers) <= 10


def test_neuron_pages_are_linked_and_show_contexts(runs):
    report = (runs["a"] / "report.md").read_text()
    links = re.findall(r"\]\((neurons/[^)]+\.md)\)", report)
    assert links and all((runs["a"] / link).is_file() for link in links)
    page = (runs["a"] / links[0]).read_text()
    assert "activating contexts" in page and "**⟦" in page and "<sub>" in page


def test_report_replays_byte_for_byte_from_a_copied_run(runs, tmp_path, capsys):
    copy = Path(shutil.copytree(runs["a"], tmp_path / "copy"))
    for generated in ("report.md", "report.html", "plots", "neurons", ".parts"):
        target = copy / generated
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    code, _, err = neuronbench(capsys, "report", str(copy))
    assert code == 0, err
    assert (copy / "report.md").read_bytes() == (runs["a"] / "report.md").read_bytes()
    assert (copy / "report.html").is_file() and any((copy / "neurons").rglob("*.md"))


def test_compare_against_itself_and_against_another_pruning_ratio(runs, tmp_path, capsys):
    code, same, _ = neuronbench(capsys, "compare", str(runs["a"]), str(runs["a"]), "--out", str(tmp_path / "same.md"))
    assert code == 0 and "No differences." in same and "only in" not in same
    code, other, err = neuronbench(capsys, "compare", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "o.md"))
    assert code == 0, err
    rows = [line for line in other.splitlines() if line.startswith("| ") and "model" not in line]
    assert rows and all("ablation zero-ablation pruning zero" in row for row in rows)
    assert "Cases only in A:" in other and "neurons top-k contexts" in other
    assert any("| n_neurons " in row for row in rows) and (tmp_path / "o.md").read_text() == other


def test_bad_run_directory_is_a_clear_error(tmp_path, capsys):
    code, _, err = neuronbench(capsys, "report", str(tmp_path))
    assert code == 2 and "results.json does not exist" in err


@pytest.fixture
def browser() -> None:
    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("headless Chromium is required under CI=true: apt-get install chromium")
        pytest.skip("headless Chromium is not installed (apt-get install chromium); CI installs it")


def test_report_html_renders_in_chromium_without_console_errors(runs, browser, tmp_path):
    html = runs["a"] / "report.html"
    dom = dump_dom(html)
    assert dom.console == [], dom.console
    assert "<h2 id=\"findings\">Findings</h2>" in dom.output and '<section class="neuron"' in dom.output
    assert re.search(r'<span class="tok marked" style="background:rgba', dom.output)
    ids = set(re.findall(r' id="([^"]+)"', dom.output))
    assert {"findings", "report"} <= ids and set(re.findall(r'href="#([^"]+)"', dom.output)) <= ids
    shot = screenshot(html, tmp_path / "findings.png")
    page = neuron_page_file(html, first_neuron_page(html), tmp_path / "page.html")
    page_shot = screenshot(page, tmp_path / "page.png")
    assert shot.console == [] and page_shot.console == []
    assert (tmp_path / "findings.png").stat().st_size > 10_000 and (tmp_path / "page.png").stat().st_size > 10_000


def test_console_messages_are_caught(browser, tmp_path):
    """The check can fail: a page that logs to the console is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>console.error('broken')</script></body></html>")
    assert any("broken" in message for message in dump_dom(bad).console)


def test_a_run_without_arrays_replays_without_a_stats_directory(runs, tmp_path, capsys):
    """An ablation-only run attaches no arrays, so its session writes no stats/; ``report`` rebuilds it."""
    copied = shutil.copytree(runs["a"], tmp_path / "copy")
    payload = json.loads((copied / "results.json").read_text())
    payload["records"] = [{k: v for k, v in r.items() if k != "arrays_file"} for r in payload["records"]]
    (copied / "results.json").write_text(json.dumps(payload))
    shutil.rmtree(copied / "stats")
    code, out, err = neuronbench(capsys, "report", str(copied))
    assert code == 0 and out.strip().endswith("report.md"), err
