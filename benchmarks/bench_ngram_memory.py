"""Memory of the n-gram statistics (issue 3) for a mamba-130m-shaped layer set.

24 layers × 1536 neurons, vocabulary 50,280, windows of 1024 tokens, batches of 8 windows. Tokens
are drawn from a Zipf–Mandelbrot law ``p(rank r) ∝ (r + 2.7)^−1`` (a random rank → id map; BOS =
token 0, excluded). Activations are synthetic, already thresholded, and fed straight to the
statistics objects (:meth:`StatisticsCollector.feed_ngrams`, no model): per layer 10% dead
neurons, 5% token detectors (active exactly on 1–3 tokens drawn by frequency), and the rest
active with a neuron-specific probability, log-uniform in [1e-5, 0.3]. The memory of the
per-token table depends only on the token stream (which tier each token sits in), not on the
activation values, so one activation mask per batch is shared by the 24 layers to keep the
runtime modest; every layer still has its own tables, filled by its own updates.

Each size runs in a fresh process and reports the peak resident memory (``ru_maxrss``) after
each step of the exact trigram design (:mod:`neuronbench.detectors.trigram`):

1. ``pass1``: per-token tables (count tiers), trigram index, ``E_j`` — the one-pass statistics;
2. ``candidates``: the neurons that may have ≤ 50 covering trigrams (the exact bounds);
3. ``pass2``: exact trigram tables for the candidates (the same stream fed again);
4. ``detect``: token- and trigram-detecting neurons of every layer.

The baseline is the previous layout, ``int32 [V_seen, W]`` per layer: its size is computed from
the same run's ``V_seen`` (it would not be allocated on a small machine), and reported next to
the tiered table's measured bytes. Target: peak ≤ 4 GiB at 1M tokens.

Run: ``python -m pytest benchmarks/bench_ngram_memory.py --benchmark-only`` (a few minutes), or
one size directly: ``python benchmarks/bench_ngram_memory.py 100000``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

LAYERS, WIDTH, VOCAB, WINDOW, BATCH_WINDOWS = 24, 1536, 50_280, 1024, 8
BOS = 0
LIMIT_MIB = 4096
SEED = 0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def zipf_windows(n_tokens: int, generator: np.random.Generator) -> np.ndarray:
    """``[n_windows, WINDOW]`` token ids (the last window cut to ``n_tokens`` by the mask)."""
    ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
    p = (ranks + 2.7) ** -1.0
    ids_by_rank = generator.permutation(VOCAB)
    n_windows = -(-n_tokens // WINDOW)
    ids = ids_by_rank[generator.choice(VOCAB, size=n_windows * WINDOW, p=p / p.sum())]
    ids[::WINDOW] = BOS
    return ids.reshape(n_windows, WINDOW)


class SyntheticNeurons:
    """Per-neuron activation rules (module docstring), shared by the layers."""

    def __init__(self, generator: np.random.Generator) -> None:
        kinds = generator.choice(3, size=WIDTH, p=[0.10, 0.05, 0.85])
        self.rate = torch.from_numpy(np.where(kinds == 2, 10 ** generator.uniform(-5, np.log10(0.3), WIDTH), 0.0))
        self.detectors = np.flatnonzero(kinds == 1)
        ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
        p = (ranks + 2.7) ** -1.0
        self.triggers = torch.zeros(VOCAB, self.detectors.size, dtype=torch.bool)
        for column in range(self.detectors.size):
            tokens = generator.choice(VOCAB, size=generator.integers(1, 4), p=p / p.sum(), replace=False)
            self.triggers[tokens, column] = True
        self.generator = torch.Generator().manual_seed(SEED)

    def active(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T, W]`` bool for one batch (the random part is seeded, so a second pass repeats it)."""
        active = torch.rand(*ids.shape, WIDTH, generator=self.generator) < self.rate.float()
        active[..., torch.from_numpy(self.detectors)] = self.triggers[ids]
        return active


def feed(collector, ids: np.ndarray, n_tokens: int, neurons: SyntheticNeurons, layers) -> None:
    neurons.generator.manual_seed(SEED)
    mask = (np.arange(ids.size) < n_tokens).reshape(ids.shape)
    for start in range(0, ids.shape[0], BATCH_WINDOWS):
        batch = torch.from_numpy(ids[start:start + BATCH_WINDOWS])
        active = neurons.active(batch)
        collector.feed_ngrams(batch, torch.from_numpy(mask[start:start + BATCH_WINDOWS]).long(),
                              {layer: active for layer in layers})


def run(n_tokens: int) -> dict:
    """One size, in this process: the steps of the module docstring, with peaks and sizes."""
    from neuronbench.capture import CaptureConfig, NeuronLayout, StatisticsCollector
    from neuronbench.detectors import detect_token_detecting, detect_trigram, trigram_candidates

    torch.set_num_threads(1)  # on a shared machine, thread wake-ups cost more than a second core gives
    generator = np.random.default_rng(SEED)
    ids = zipf_windows(n_tokens, generator)
    neurons = SyntheticNeurons(generator)
    layout = NeuronLayout(num_layers=LAYERS, width=WIDTH)
    report: dict = {"n_tokens": n_tokens, "peak_mib": {"setup": peak_mib()}, "seconds": {}}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        report["peak_mib"][name] = peak_mib()
        report["seconds"][name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    config = CaptureConfig(sweep=(), positional=False, exclude_token_ids=frozenset({BOS}))
    collector = StatisticsCollector(layout, config, WINDOW, VOCAB, torch.device("cpu"))
    feed(collector, ids, n_tokens, neurons, range(LAYERS))
    stats = collector.result()
    del collector
    step("pass1")
    tier_bytes = sum(a.nbytes for arrays in stats.layers.values() for name, a in arrays.items()
                     if name.startswith("token_active_tier"))
    report.update(v_seen=int(stats.token_ids.size), n_trigrams=int(stats.trigram_tokens.shape[0]),
                  tiers_rows=[int((stats.token_tier == t).sum()) for t in range(4)],
                  token_table_mib=tier_bytes / 2**20,
                  int32_table_mib=LAYERS * WIDTH * stats.token_ids.size * 4 / 2**20)
    candidates = trigram_candidates(stats)
    step("candidates")
    second = StatisticsCollector(layout, CaptureConfig(layers=tuple(sorted(candidates)), sweep=(), positional=False,
                                                       token_counts=False, exclude_token_ids=frozenset({BOS}),
                                                       trigram_neurons=candidates),
                                 WINDOW, VOCAB, torch.device("cpu"))
    feed(second, ids, n_tokens, neurons, sorted(candidates))
    tables = second.result()
    del second
    step("pass2")
    report.update(candidates=int(sum(c.size for c in candidates.values())),
                  trigram_pairs=int(sum(a["trigram_pair_count"].size for a in tables.layers.values())))
    token, trigram = detect_token_detecting(stats), detect_trigram(stats, trigram_stats=tables)
    step("detect")
    report.update(token_detecting=int(sum(d.indices.size for d in token.values())),
                  trigram_detecting=int(sum(d.indices.size for d in trigram.values())))
    return report


def measure(n_tokens: int) -> dict:
    """:func:`run` in a fresh process (so that its peak is its own)."""
    out = subprocess.run([sys.executable, str(Path(__file__)), str(n_tokens)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n_tokens", [100_000, 1_000_000], ids=["100k", "1M"])
def test_ngram_statistics_memory(benchmark, n_tokens):
    benchmark.group = "ngram-memory"
    report = benchmark.pedantic(measure, args=(n_tokens,), rounds=1, iterations=1)
    peak = max(report["peak_mib"].values())
    benchmark.extra_info.update(report, peak_mib_max=peak,
                                table_vs_int32=report["token_table_mib"] / report["int32_table_mib"])
    print(json.dumps(report, indent=1))
    assert peak <= LIMIT_MIB, f"peak {peak:.0f} MiB exceeds {LIMIT_MIB} MiB"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(run(int(sys.argv[1]))))
