"""Capture overhead against a plain forward pass, neuronbench against its peers, and memory.

Run the table (one process, CPU, random weights of the real shapes; the built-in tiny models)::

    nice -n 10 python benchmarks/bench_capture.py [--pairs 5] [--shapes gpt2-small mamba-130m tiny-gpt2 ...]
                                                  [--device cpu] [--dtype float32] [--memory]
                                                  [--windows N] [--batch-size B] [--threads N] [--compile]

* **Shapes.** ``gpt2-small``: ``GPT2Config()`` defaults (768 wide, 12 layers, 12 heads, vocabulary
  50,257), 8 × 512 tokens; ``mamba-130m``: 768 wide, 24 layers, intermediate 1536, state 16,
  Δ rank 48, vocabulary 50,280, 2 × 512 tokens; both with random weights (the weights do not change
  the cost). ``tiny-gpt2``, ``tiny-mamba``, ``tiny-opt``: the built-in models, as the default suite captures
  them: 390 × 128 tokens (50k) in batches of 32 windows (the default batch,
  :func:`neuronbench.batching.windows_per_batch`: 4096 tokens); ``--batch-size`` times another one.
* **Time.** For each shape and method, ``--pairs`` alternating pairs (plain forward, then the
  method, over the same batches) in one process (``--baseline backbone``: the plain forward of
  the model's ``base_model``, without the LM head, which is what the capture runs; the method
  ``plain backbone forward`` times that against the whole forward); the ratio of each pair's CPU times (wall time on
  a GPU, after synchronising), reported as min / median / max, and the tokens per second of the
  plain forward (one more run after the pairs) and of the method (median of its pairs), by the
  same clock (CPU seconds on a CPU). Methods: neuronbench's full
  statistics pass (every capture part, the τ sweep included), its frequency-only pass (moments:
  counts at τ, sums, extremes; no τ sweep), the full pass with the streamed top-20 activating
  positions per neuron that the suite's neuron pages read (``--top-contexts`` 20: the default
  suite's capture), the moments with the τ sweep (``sweep_count`` at the 7
  τ of ``DEFAULT_SWEEP``, the capture part ``sweep``), and,
  when installed (``pip install -e .[peers]``), TransformerLens 4 ``run_with_cache`` of the
  neuron tensors (``mlp.hook_post`` / ``mixer.out_proj.hook_in``) and nnsight saving the inputs of
  every output projection. An absent peer is skipped with a message. ``--compile`` adds the
  neuronbench passes with the compiled per-layer update (``CaptureConfig(compile=True)``) and
  reports the compile time (the warm-up pass, minus the plain forward's time).
* **Own share.** For neuronbench's passes, the median over pairs of the CPU time spent inside the
  collector (hooks' statistics, batch setup, result; :class:`OwnTime`) over the pair's plain
  forward: the capture's own cost (on a GPU the host's wall time there, unsynchronised:
  :func:`own_clock`, but for the wait for the forward's kernels before ``end_batch``'s read:
  :func:`settled`). ``ratio − 1 − own share`` is what the forward pass itself took
  longer (or shorter) beside it, plus a relative rule's layer-scale pass on the built-in models
  (a backbone forward over 2048 of their 50k tokens, :mod:`neuronbench.capture.scale`). On a CPU that part used to be glibc's: a GPT-2-small forward of
  4096 tokens makes about 108 temporaries of 48 MiB, above glibc's largest dynamic mmap threshold
  (32 MiB), each mapped afresh (12,288 page faults apiece) unless a free heap chunk that large was
  left by the previous pass: 0.2–1.0M minor faults plain, 1.0–1.6M beside the capture. :func:`neuronbench.allocator.retain_freed_memory`, which ``load_model`` calls
  for a CPU, keeps them in the heap (both forwards fault 201k, the logits); the table's first line
  says what it did. ``NEURONBENCH_MALLOC=default`` keeps glibc's defaults, to measure that.
* **Threads.** ``--threads`` (default 1: one thread, as in issue 10's measurements; CPU time of a
  multi-threaded pass on a shared machine also counts the OpenMP threads' spin-waiting).
* **Memory** (``--memory``): peak extra resident memory of each method at two token counts per
  shape, in a fresh process: the resident high-water mark during the run minus the RSS before it
  (the mark is reset after loading the model, :func:`reset_peak_kib`; Linux only).

The pytest entry point keeps the flat-memory check on the built-in models (10k vs 100k tokens):
``python -m pytest benchmarks/bench_capture.py --benchmark-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from neuronbench.allocator import retain_freed_memory
from neuronbench.batching import windows_per_batch
from neuronbench.capture import CaptureConfig, batches, capture_statistics
from neuronbench.capture.collector import StatisticsCollector
from neuronbench.capture.config import DEFAULT_SWEEP
from neuronbench.data import TokenWindows
from neuronbench.models import LoadedModel, load_model
from neuronbench.toy import build_toy_model

WINDOW = 512
BUILTIN_WINDOWS = 390
"""Windows of 128 tokens per timed pass of a built-in model: the default suite's capture (``--max-tokens``
50,000, ``--analysis-window`` 128, the default batch of 4096 tokens: 13 batches), so that its one-off costs per pass
(a relative rule's layer-scale pass over 16 spread windows, :mod:`neuronbench.capture.scale`; the tables' first
allocation; the result) weigh as they do there. The issue's shapes are one batch, which holds their sample: no
scale pass."""


@dataclass(frozen=True)
class Shape:
    """A benchmarked model: a random-weight ``family`` model with config ``overrides`` (or the
    built-in model ``builtin``), timed over ``n_windows`` windows of ``window`` tokens in batches of
    ``batch_size`` windows (``None``: one batch); peak memory at ``memory_windows`` (one batch)."""

    family: str
    overrides: dict = field(default_factory=dict)
    builtin: str | None = None
    window: int = WINDOW
    n_windows: int = 8
    batch_size: int | None = None
    memory_windows: tuple[int, int] = (2, 8)


SHAPES = {
    "gpt2-small": Shape("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    "mamba-130m": Shape("mamba", dict(hidden_size=768, num_hidden_layers=24, expand=2, state_size=16,
                                      time_step_rank=48, conv_kernel=4, vocab_size=50280),
                        n_windows=2, memory_windows=(1, 4)),
    **{name: Shape(family, builtin=name, window=128, n_windows=BUILTIN_WINDOWS, batch_size=windows_per_batch(None, 128))
       for name, family in (("tiny-gpt2", "gpt2"), ("tiny-mamba", "mamba"), ("tiny-opt", "opt"))},
}
"""The issue's shapes (GPT-2-small: ``GPT2Config()`` defaults; mamba-130m: intermediate 1536) with
random weights, which do not change the cost, in one batch as the issue measured them; and the
built-in models as the default suite captures them (:data:`BUILTIN_WINDOWS`)."""
NEURON_PATH = {"gpt2": "transformer.h.{}.mlp.c_proj", "mamba": "backbone.layers.{}.mixer.out_proj",
               "opt": "model.decoder.layers.{}.fc2"}
TL_HOOK = {"gpt2": "mlp.hook_post", "mamba": "mixer.out_proj.hook_in", "opt": "mlp.hook_post"}
FREQUENCY_ONLY = dict(sweep=(), positional=False, token_counts=False, trigrams=False, delta=False)
WITH_SWEEP = FREQUENCY_ONLY | dict(sweep=DEFAULT_SWEEP)


def synthetic_windows(vocab: int, n_windows: int, window: int = WINDOW, seed: int = 0) -> TokenWindows:
    ids = torch.randint(0, vocab, (n_windows, window), generator=torch.Generator().manual_seed(seed))
    return TokenWindows(ids, torch.ones_like(ids), ids.numel())


def build_shape(name: str, root: Path, device: str, dtype: str) -> LoadedModel:
    shape = SHAPES[name]
    source = shape.builtin or str(build_toy_model(shape.family, root / name, **shape.overrides))
    return load_model(source, device=device, dtype=dtype)


def plain(loaded: LoadedModel, windows: TokenWindows, batch_size: int, backbone: bool = False) -> Callable[[], None]:
    """A forward pass over the windows without hooks: the whole model (logits included), or with
    ``backbone`` its ``base_model`` only (no LM head), which is what the capture runs."""
    module = loaded.model.base_model if backbone else loaded.model

    def run() -> None:
        with torch.inference_mode():
            for ids, mask in batches(windows, batch_size):
                module(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device), use_cache=False)
    return run


def plain_backbone(loaded: LoadedModel, windows: TokenWindows, batch_size: int) -> Callable[[], None]:
    """The method ``plain backbone forward``: :func:`plain` of the backbone, timed against the whole forward."""
    return plain(loaded, windows, batch_size, backbone=True)


def neuronbench_pass(**parts) -> Callable[[LoadedModel, TokenWindows, int], Callable[[], None]]:
    def make(loaded: LoadedModel, windows: TokenWindows, batch_size: int) -> Callable[[], None]:
        config = CaptureConfig(batch_size=batch_size, **parts)
        return lambda: capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    return make


def transformer_lens(loaded: LoadedModel, windows: TokenWindows, batch_size: int) -> Callable[[], None]:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(loaded.source.location, hf_model=loaded.model,
                                                 tokenizer=loaded.tokenizer, device=str(loaded.device))
    suffix = TL_HOOK[loaded.family]

    def run() -> None:
        with torch.inference_mode():
            for ids, _ in batches(windows, batch_size):
                bridge.run_with_cache(ids.to(loaded.device), names_filter=lambda n: n.endswith(suffix))
    return run


def nnsight_save(loaded: LoadedModel, windows: TokenWindows, batch_size: int) -> Callable[[], None]:
    from nnsight import NNsight

    traced = NNsight(loaded.model)
    paths = [NEURON_PATH[loaded.family].format(layer) for layer in range(loaded.adapter.num_layers)]

    def envoy(path: str):
        node = traced
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    def run() -> None:
        for ids, _ in batches(windows, batch_size):
            with torch.inference_mode(), traced.trace(ids.to(loaded.device)):
                [envoy(path).input.save() for path in paths]
    return run


METHODS: dict[str, tuple[Callable[[LoadedModel, TokenWindows, int], Callable[[], None]], str | None]] = {
    "plain backbone forward": (plain_backbone, None),
    "neuronbench full": (neuronbench_pass(), None),
    "neuronbench full + top-20 contexts": (neuronbench_pass(top_activations=20), None),
    "neuronbench frequency only": (neuronbench_pass(**FREQUENCY_ONLY), None),
    "neuronbench frequency + τ sweep": (neuronbench_pass(**WITH_SWEEP), None),
    "neuronbench full, compiled": (neuronbench_pass(compile=True), None),
    "neuronbench frequency only, compiled": (neuronbench_pass(compile=True, **FREQUENCY_ONLY), None),
    "TransformerLens run_with_cache": (transformer_lens, "transformer_lens"),
    "nnsight save": (nnsight_save, "nnsight"),
}
"""Method name -> (factory of a run over the windows, the optional package it needs)."""
BASELINES = {"forward": "plain forward", "backbone": "plain backbone forward"}
"""``--baseline`` -> how the table names it."""
COMPILED = ("neuronbench full, compiled", "neuronbench frequency only, compiled")
"""The methods run only with ``--compile``."""


def missing(package: str | None) -> bool:
    if package is None:
        return False
    try:
        __import__(package)
    except ImportError:
        return True
    return False


def clock(device: torch.device) -> Callable[[], float]:
    """CPU time of this process on a CPU (robust on a shared machine), synchronised wall time on a GPU."""
    if device.type == "cuda":
        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return wall
    return time.process_time


def own_clock(device: torch.device) -> Callable[[], float]:
    """The clock of :class:`OwnTime`: the pairs' clock on a CPU; on a GPU host wall time without a
    synchronisation (one per collector call would serialise the timed pass): the host's time in the
    collector, its kernel launches and the synchronisations it makes itself, not its kernels' time."""
    return time.perf_counter if device.type == "cuda" else clock(device)


def settled(device: torch.device) -> Callable[[], None]:
    """What :class:`OwnTime` runs before it times ``end_batch``: on a GPU, wait for the queued forward
    pass (``end_batch`` reads the batch's checksums, and that read would wait for the forward's
    kernels, which are not the collector's time; the capture waits there anyway, so the total is
    unchanged), else nothing."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


class OwnTime:
    """Time spent inside neuronbench's collector (its hooks' statistics, the batch setup, the
    result), by the same clock as the pairs, while :meth:`measuring`: the capture's own cost,
    free of the forward pass's share of the run-to-run noise."""

    METHODS = ("prepare_batch", "begin_batch", "receive", "end_batch", "result")
    """The collector's entry points (``start_batch`` is ``prepare_batch`` then ``begin_batch``). On
    a GPU ``prepare_batch`` runs while the device computes the previous batch, so its time counts
    here although it may not lengthen the capture."""

    def __init__(self, now: Callable[[], float], settle: Callable[[], None] = lambda: None) -> None:
        self.now, self.settle, self.seconds = now, settle, 0.0

    @contextmanager
    def measuring(self) -> Iterator[None]:
        originals = {name: getattr(StatisticsCollector, name) for name in self.METHODS}

        def timed(method):
            def run(*args, **kwargs):
                if method is originals["end_batch"]:
                    self.settle()
                start = self.now()
                try:
                    return method(*args, **kwargs)
                finally:
                    self.seconds += self.now() - start
            return run

        for name, method in originals.items():
            setattr(StatisticsCollector, name, timed(method))
        try:
            yield
        finally:
            for name, method in originals.items():
                setattr(StatisticsCollector, name, method)


class Pairs(NamedTuple):
    ratios: list[float]
    """``candidate / baseline`` time of each pair."""
    shares: list[float]
    """The candidate's own time inside neuronbench's collector over the pair's baseline time
    (:class:`OwnTime`; zeros for a peer)."""
    seconds: list[float]
    """The candidate's time in each pair."""
    warm_up: float
    """The candidate's warm-up run (which includes any compilation)."""


def paired_ratios(baseline: Callable[[], None], candidate: Callable[[], None], pairs: int,
                  now: Callable[[], float], own: OwnTime) -> Pairs:
    """``pairs`` alternating pairs (baseline, then candidate) after one warm-up of each."""
    baseline()
    start = now(); candidate(); warm_up = now() - start  # noqa: E702
    ratios, shares, seconds = [], [], []
    for _ in range(pairs):
        own.seconds = 0.0
        start = now(); baseline(); middle = now()  # noqa: E702
        with own.measuring():
            candidate()
        end = now()
        ratios.append((end - middle) / (middle - start))
        shares.append(own.seconds / (middle - start))
        seconds.append(end - middle)
    return Pairs(ratios, shares, seconds, warm_up)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    import bench_capture as b
    torch.set_num_threads(int(sys.argv[8]))
    loaded = b.load_model(sys.argv[2], device=sys.argv[5], dtype=sys.argv[6])
    windows = b.synthetic_windows(loaded.model.config.vocab_size, int(sys.argv[4]), int(sys.argv[7]))
    factory = b.plain if sys.argv[3] == "plain forward" else b.METHODS[sys.argv[3]][0]
    run = factory(loaded, windows, windows.input_ids.shape[0])
    before = b.reset_peak_kib()
    run()
    print(json.dumps({"extra_mib": (b.status_kib("VmHWM") - before) / 1024}))
""")


def status_kib(field: str) -> int:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_kib() -> int:
    """Reset this process's resident high-water mark ``VmHWM`` to its current RSS (writing ``5``
    to ``/proc/self/clear_refs``, Linux) and return that RSS in KiB. Without the reset the peak
    of loading the model (``getrusage``'s ``ru_maxrss`` never goes down) hides a smaller pass."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def peak_extra_mib(model_dir: str, method: str, n_windows: int, window: int, args: argparse.Namespace) -> float:
    """Peak extra RSS (MiB) of one run of ``method`` over ``n_windows`` windows, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(Path(__file__).parent), model_dir, method,
                             str(n_windows), args.device, args.dtype, str(window), str(args.threads)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_mib"]


ALLOCATOR_VARIABLES = ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES", "NEURONBENCH_MALLOC")
"""The environment variables that change the forward pass's page faults (see *Own share*)."""


def allocator_environment() -> str:
    """The allocator settings a table was measured under, e.g. ``mallopt: mmap 256 MiB, trim 1024
    MiB; THP_MEM_ALLOC_ENABLE=1`` (applying :func:`retain_freed_memory` first, as ``load_model`` does)."""
    chosen = [f"{name}={os.environ[name]}" for name in ALLOCATOR_VARIABLES if name in os.environ]
    return "; ".join([retain_freed_memory(), *chosen])


def table(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(args.threads)
    print(f"allocator: {allocator_environment()}; torch threads: {args.threads}", file=sys.stderr, flush=True)
    rows = [f"Allocator: {allocator_environment()}; torch threads: {args.threads}.", "",
            f"| shape | tokens | method | ratio vs {BASELINES[args.baseline]}: min / median / max | own share: median | "
            f"{BASELINES[args.baseline]} s | first pass s | tokens/s: baseline / pass |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    memory = ["| shape | method | peak extra MiB at the smaller token count | at the larger |", "| --- | --- | --- | --- |"]
    chosen = [m for m in METHODS if (args.compile or m not in COMPILED) and (args.peers or METHODS[m][1] is None)
              and (args.methods is None or m in args.methods)]
    with tempfile.TemporaryDirectory() as root:
        for name in args.shapes:
            shape = SHAPES[name]
            loaded = build_shape(name, Path(root), args.device, args.dtype)
            windows = synthetic_windows(loaded.model.config.vocab_size, args.windows or shape.n_windows, shape.window)
            batch_size = min(args.batch_size or shape.batch_size or windows.input_ids.shape[0], windows.input_ids.shape[0])
            now, own = clock(loaded.device), OwnTime(own_clock(loaded.device), settled(loaded.device))
            base = plain(loaded, windows, batch_size, backbone=args.baseline == "backbone")
            tokens = f"{windows.n_tokens} ({-(-windows.input_ids.shape[0] // batch_size)} batches)"
            for method in chosen:
                factory, package = METHODS[method]
                if missing(package):
                    rows.append(f"| {name} | {tokens} | {method} | skipped: `{package}` is not installed "
                                "(`pip install -e .[peers]`) | | | | |")
                    print(f"skipping {method}: {package} is not installed", file=sys.stderr)
                    continue
                timed = paired_ratios(base, factory(loaded, windows, batch_size), args.pairs, now, own)
                start = now(); base(); seconds = now() - start  # noqa: E702
                share = f"{statistics.median(timed.shares):.3f}" if package is None else "—"
                rate = windows.n_tokens / seconds, windows.n_tokens / statistics.median(timed.seconds)
                rows.append(f"| {name} | {tokens} | {method} | {min(timed.ratios):.2f} / "
                            f"{statistics.median(timed.ratios):.2f} / {max(timed.ratios):.2f} ({len(timed.ratios)} pairs) | "
                            f"{share} | {seconds:.2f} | {timed.warm_up:.2f} | {rate[0]:,.0f} / {rate[1]:,.0f} |")
                print(rows[-1], file=sys.stderr, flush=True)
            if args.memory:
                counts = shape.memory_windows
                for method in ["plain forward", *(m for m in chosen if not missing(METHODS[m][1]))]:
                    values = [peak_extra_mib(loaded.source.location, method, n, shape.window, args) for n in counts]
                    memory.append(f"| {name} | {method} | " + " | ".join(
                        f"{v:.0f} ({n * shape.window} tokens)" for v, n in zip(values, counts)) + " |")
                    print(memory[-1], file=sys.stderr, flush=True)
    return rows + ([""] + memory if args.memory else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--baseline", choices=list(BASELINES), default="forward",
                        help="what each pair's first run is: the whole model's forward (default, issue 10's "
                             "measure) or its backbone's (no LM head: what the capture runs)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--windows", type=int, default=None,
                        help="windows per timed pass (default: 2 for mamba-130m, 390 for the built-in models, else 8)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per batch (default: one batch for gpt2-small and mamba-130m, 32 for the built-in models)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the passes with the compiled per-layer update")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                        help="time only these methods (default: every one that the other options allow)")
    parser.add_argument("--no-peers", dest="peers", action="store_false",
                        help="time only neuronbench's passes (not TransformerLens, nnsight)")
    args = parser.parse_args(argv)
    if args.pairs < 5:
        parser.error(f"--pairs must be at least 5 for a median of pairs, got {args.pairs}")
    print("\n".join(table(args)))


# -- pytest-benchmark: memory stays flat in tokens on the built-in models -----------------------
PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from neuronbench.capture import CaptureConfig, capture_statistics
    from neuronbench.models import load_model
    sys.path.insert(0, "benchmarks")
    from bench_capture import synthetic_windows
    loaded = load_model(sys.argv[1], device="cpu", dtype="float32")
    windows = synthetic_windows(loaded.model.config.vocab_size, int(sys.argv[2]), window=128)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(), progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": after / 1024, "growth_mib": (after - before) / 1024}))
""")


def peak_memory(model: str, n_windows: int) -> dict:
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, model, str(n_windows)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-mamba"])
def test_peak_memory_is_flat(benchmark, model):
    small = peak_memory(model, 10_000 // 128)
    large = benchmark.pedantic(peak_memory, args=(model, 100_000 // 128), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_mib_10k=small["peak_mib"], peak_mib_100k=large["peak_mib"])
    print(f"\n{model}: peak RSS 10k tokens {small['peak_mib']:.0f} MiB, 100k tokens {large['peak_mib']:.0f} MiB")
    assert large["peak_mib"] < small["peak_mib"] * 1.25


if __name__ == "__main__":
    main()
