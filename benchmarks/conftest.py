"""Benchmark plumbing: offline, and a closing table of ratios measured in the same run.

A benchmark marks itself with ``benchmark.group = "<what>"`` and
``benchmark.extra_info["role"] = "baseline"`` or ``"candidate"``; at the end of the session each
group's candidate time is reported as a ratio of its baseline's. Both mean and min are shown;
the min is the robust one on a shared machine. ``extra_info`` numbers (peak memory …) of every
benchmark are printed too.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter, config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, object]] = {}
    terminalreporter.section("neuronbench ratios and extra numbers (same run)")
    for bench in session.benchmarks:
        role = bench.extra_info.get("role")
        if role:
            groups.setdefault(bench.group, {})[role] = bench
        numbers = {k: v for k, v in bench.extra_info.items() if k != "role"}
        if numbers:
            terminalreporter.write_line(f"{bench.name}: {numbers}")
    for group, roles in sorted(groups.items()):
        if {"baseline", "candidate"} <= set(roles):
            base, cand = roles["baseline"].stats, roles["candidate"].stats
            terminalreporter.write_line(
                f"{group}: candidate/baseline = {cand.mean / base.mean:.3f} (mean), "
                f"{cand.min / base.min:.3f} (min); {cand.min * 1e3:.1f} ms vs {base.min * 1e3:.1f} ms"
            )
