"""glibc's malloc thresholds (:mod:`neuronbench.allocator`): a repeated step's large temporaries
reuse the heap's pages instead of faulting in fresh ones; the user's own settings win."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

FAULTS_SCRIPT = """
import json, resource, torch
from neuronbench.allocator import retain_freed_memory
done = retain_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # three temporaries of 48 MiB, above glibc's largest dynamic mmap threshold (32 MiB)
    a = torch.ones(4096, 3072)
    b = a * 2
    return float((b + a)[0, 0])
for _ in range(10):  # until the heap holds the step's temporaries
    step()
before = faults()
for _ in range(20):
    step()
print(json.dumps({"done": done, "faults": (faults() - before) / 60}))
"""
"""Faults per temporary of a repeated step (60 temporaries measured)."""
PAGES = 4096 * 3072 * 4 // 4096
"""Pages of one of its temporaries."""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")


def run_script(**environment: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "NEURONBENCH_MALLOC")}
    result = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], env=env | environment,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@glibc_only
def test_repeated_large_temporaries_reuse_the_heap_pages():
    tuned, default = run_script(), run_script(NEURONBENCH_MALLOC="default")
    assert tuned["done"] == "mallopt: mmap 256 MiB, trim 1024 MiB"
    assert default["done"] == "glibc defaults (NEURONBENCH_MALLOC=default)"
    assert default["faults"] > 0.9 * PAGES  # mapped afresh each time
    assert tuned["faults"] < 0.05 * PAGES  # the same heap pages again (the heap grew at most twice)


@glibc_only
def test_glibc_tunables_of_the_user_are_left_alone():
    kept = run_script(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert kept["done"] == "glibc malloc tunables from GLIBC_TUNABLES"
    assert kept["faults"] > 0.9 * PAGES
