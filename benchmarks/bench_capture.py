"""Capture overhead against a plain forward pass, neuronbench against its peers, and memory.

Run the table (one process, CPU, one thread, random weights of the real shapes)::

    nice -n 10 python benchmarks/bench_capture.py [--pairs 5] [--shapes gpt2-small mamba-130m]
                                                  [--device cpu] [--dtype float32] [--memory]
                                                  [--windows N]

* **Time.** For each shape and method, ``--pairs`` alternating pairs (plain forward, then the
  method, over the same batches) in one process; the ratio of each pair's CPU times (wall time on
  a GPU, after synchronising), reported as min / median / max. Methods: neuronbench's full
  statistics pass, its frequency-only pass (moments: counts, τ sweep, sums, extremes), and,
  when installed (``pip install -e .[peers]``), TransformerLens 4 ``run_with_cache`` of the
  neuron tensors (``mlp.hook_post`` / ``mixer.out_proj.hook_in``) and nnsight saving the inputs of
  every output projection. An absent peer is skipped with a message.
* **Memory** (``--memory``): peak extra resident memory of each method (RSS high-water mark
  after the run minus before it, in a fresh process) at two token counts per shape.

The pytest entry point keeps the flat-memory check on the built-in models (10k vs 100k tokens):
``python -m pytest benchmarks/bench_capture.py --benchmark-only``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from neuronbench.capture import CaptureConfig, batches, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.models import LoadedModel, load_model
from neuronbench.toy import build_toy_model

WINDOW = 512
SHAPES = {
    "gpt2-small": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=8192), 8),
    "mamba-130m": ("mamba", dict(hidden_size=768, num_hidden_layers=24, state_size=16, vocab_size=8192), 2),
}
"""``name: (family, config overrides, windows of 512 tokens per timed pass)`` (the issue's 8 × 512
and 2 × 512 tokens); weights are random, which does not change the cost."""
NEURON_PATH = {"gpt2": "transformer.h.{}.mlp.c_proj", "mamba": "backbone.layers.{}.mixer.out_proj"}
TL_HOOK = {"gpt2": "mlp.hook_post", "mamba": "mixer.out_proj.hook_in"}
FREQUENCY_ONLY = dict(positional=False, token_counts=False, trigrams=False, delta=False)
MEMORY_WINDOWS = {"gpt2-small": (2, 8), "mamba-130m": (1, 4)}
"""Windows of 512 tokens at which peak extra memory is measured (two token counts per shape)."""


def synthetic_windows(vocab: int, n_windows: int, window: int = WINDOW, seed: int = 0) -> TokenWindows:
    ids = torch.randint(0, vocab, (n_windows, window), generator=torch.Generator().manual_seed(seed))
    return TokenWindows(ids, torch.ones_like(ids), ids.numel())


def build_shape(name: str, root: Path, device: str, dtype: str) -> LoadedModel:
    family, overrides, _ = SHAPES[name]
    return load_model(str(build_toy_model(family, root / name, **overrides)), device=device, dtype=dtype)


def plain(loaded: LoadedModel, windows: TokenWindows) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            for ids, mask in batches(windows, windows.input_ids.shape[0]):
                loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device), use_cache=False)
    return run


def neuronbench_pass(**parts) -> Callable[[LoadedModel, TokenWindows], Callable[[], None]]:
    def make(loaded: LoadedModel, windows: TokenWindows) -> Callable[[], None]:
        config = CaptureConfig(batch_size=windows.input_ids.shape[0], **parts)
        return lambda: capture_statistics(loaded.model, loaded.adapter, windows, config, progress=False)
    return make


def transformer_lens(loaded: LoadedModel, windows: TokenWindows) -> Callable[[], None]:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(loaded.source.location, hf_model=loaded.model,
                                                 tokenizer=loaded.tokenizer, device=str(loaded.device))
    suffix = TL_HOOK[loaded.family]

    def run() -> None:
        with torch.inference_mode():
            bridge.run_with_cache(windows.input_ids.to(loaded.device), names_filter=lambda n: n.endswith(suffix))
    return run


def nnsight_save(loaded: LoadedModel, windows: TokenWindows) -> Callable[[], None]:
    from nnsight import NNsight

    traced = NNsight(loaded.model)
    paths = [NEURON_PATH[loaded.family].format(layer) for layer in range(loaded.adapter.num_layers)]

    def envoy(path: str):
        node = traced
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    def run() -> None:
        with torch.inference_mode(), traced.trace(windows.input_ids.to(loaded.device)):
            [envoy(path).input.save() for path in paths]
    return run


METHODS: dict[str, tuple[Callable[[LoadedModel, TokenWindows], Callable[[], None]], str | None]] = {
    "neuronbench full": (neuronbench_pass(), None),
    "neuronbench frequency only": (neuronbench_pass(**FREQUENCY_ONLY), None),
    "TransformerLens run_with_cache": (transformer_lens, "transformer_lens"),
    "nnsight save": (nnsight_save, "nnsight"),
}
"""Method name -> (factory of a run over the windows, the optional package it needs)."""


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


def paired_ratios(baseline: Callable[[], None], candidate: Callable[[], None], pairs: int,
                  now: Callable[[], float]) -> list[float]:
    """``candidate / baseline`` time of ``pairs`` alternating pairs (after one warm-up of each)."""
    baseline(), candidate()
    ratios = []
    for _ in range(pairs):
        start = now(); baseline(); middle = now(); candidate(); end = now()  # noqa: E702
        ratios.append((end - middle) / (middle - start))
    return ratios


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    sys.path.insert(0, sys.argv[1])
    import bench_capture as b
    torch.set_num_threads(1)
    loaded = b.load_model(sys.argv[2], device=sys.argv[5], dtype=sys.argv[6])
    windows = b.synthetic_windows(loaded.model.config.vocab_size, int(sys.argv[4]))
    factory = b.plain if sys.argv[3] == "plain forward" else b.METHODS[sys.argv[3]][0]
    run = factory(loaded, windows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_mib": (after - before) / 1024}))
""")


def peak_extra_mib(model_dir: str, method: str, n_windows: int, device: str, dtype: str) -> float:
    """Peak extra RSS (MiB) of one run of ``method`` over ``n_windows`` windows, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(Path(__file__).parent), model_dir, method,
                             str(n_windows), device, dtype], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_mib"]


def table(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)
    rows = ["| shape | tokens | method | ratio vs plain forward: min / median / max | plain forward s |",
            "| --- | --- | --- | --- | --- |"]
    memory = ["| shape | method | " + " | ".join("peak extra MiB at {} tokens" for _ in range(2)) + " |",
              "| --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as root:
        for shape in args.shapes:
            loaded = build_shape(shape, Path(root), args.device, args.dtype)
            windows = synthetic_windows(loaded.model.config.vocab_size, args.windows or SHAPES[shape][2])
            now, base = clock(loaded.device), plain(loaded, windows)
            for method, (factory, package) in METHODS.items():
                if missing(package):
                    rows.append(f"| {shape} | {windows.n_tokens} | {method} | skipped: `{package}` is not installed "
                                "(`pip install -e .[peers]`) | |")
                    print(f"skipping {method}: {package} is not installed", file=sys.stderr)
                    continue
                ratios = paired_ratios(base, factory(loaded, windows), args.pairs, now)
                start = now(); base(); seconds = now() - start  # noqa: E702
                rows.append(f"| {shape} | {windows.n_tokens} | {method} | {min(ratios):.2f} / "
                            f"{statistics.median(ratios):.2f} / {max(ratios):.2f} ({len(ratios)} pairs) | {seconds:.2f} |")
                print(rows[-1], file=sys.stderr, flush=True)
            if args.memory:
                counts = MEMORY_WINDOWS[shape]
                memory[0] = memory[0].format(*(n * WINDOW for n in counts))
                for method in ["plain forward", *(m for m, (_, p) in METHODS.items() if not missing(p))]:
                    values = [peak_extra_mib(loaded.source.location, method, n, args.device, args.dtype) for n in counts]
                    memory.append(f"| {shape} | {method} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
                    print(memory[-1], file=sys.stderr, flush=True)
    return rows + ([""] + memory if args.memory else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--windows", type=int, default=None,
                        help="windows of 512 tokens per timed pass (default: 8 for gpt2-small, 2 for mamba-130m)")
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
    capture_statistics(loaded.model, loaded.adapter, windows, CaptureConfig(batch_size=8), progress=False)
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
