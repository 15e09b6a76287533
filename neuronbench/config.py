"""The run configuration shared by the suite, its fixtures and the command-line entry points.

Every threshold is an option with a documented default here, never a constant hidden in code.
:data:`OPTIONS` is the single table from which ``conftest.py`` registers the pytest options and
``python -m neuronbench main`` maps its flags.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from neuronbench.errors import ConfigError

DEFAULT_MODELS = ("tiny-gpt2", "tiny-mamba")
SEED_MODELS = ("gpt2", "mamba-130m", "mamba-370m", "mamba-790m", "mamba-1.4b", "mamba-2.8b")


@dataclass(frozen=True)
class RunConfig:
    """Options of one benchmark run (``pytest suite ...``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    dataset: str = "pydocs"
    analysis_split: str = "train"
    eval_split: str = "test"
    layers: str = "all"
    max_tokens: int | None = 50_000
    eval_max_tokens: int | None = None
    max_length: int | None = None
    stride: int | None = None
    analysis_window: int = 128
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seeds: int = 5
    attention_windows: int = 4
    top_k: int = 10
    pruning_ratio: float = 0.1
    threshold: float | None = None
    dead_freq: float = 0.0
    rare_freq: float = 0.05
    positional_mi: float = 0.05
    positional_r: float = 0.3
    ngram_coverage: float = 0.95
    token_max_unigrams: int = 5
    min_occurrences: int = 5
    baseline_tolerance: float = 0.02
    out: str = "analysis_outputs"
    cache_dir: str = str(Path.home() / ".cache" / "neuronbench")
    no_cache: bool = False
    baseline: bool = False
    update_baselines: bool = False
    baseline_dir: str = str(Path(__file__).resolve().parents[1] / "results" / "baselines")

    def __post_init__(self) -> None:
        self._check_range("pruning_ratio", 0.0, 1.0, open_interval=True)
        for name in ("dead_freq", "rare_freq", "ngram_coverage"):
            self._check_range(name, 0.0, 1.0)
        if self.seeds < 2 or min(self.top_k, self.batch_size, self.attention_windows) < 1 or self.analysis_window < 2:
            raise ConfigError("--seeds must be ≥ 2 (controls report a std), --top-k, --batch-size and "
                              "--attention-windows ≥ 1, --analysis-window ≥ 2")

    def _check_range(self, name: str, low: float, high: float, open_interval: bool = False) -> None:
        value = getattr(self, name)
        inside = low < value < high if open_interval else low <= value <= high
        if not inside:
            brackets = "()" if open_interval else "[]"
            raise ConfigError(f"--{name.replace('_', '-')} must lie in {brackets[0]}{low}, {high}{brackets[1]}, got {value}")

    def analysis_key(self) -> dict:
        """The options that determine activation statistics (part of the disk-cache key)."""
        keys = ("dataset", "analysis_split", "layers", "max_tokens", "analysis_window", "threshold")
        return {key: getattr(self, key) for key in keys}

    def to_record(self) -> dict:
        record = asdict(self)
        record["models"] = list(self.models)
        return record


def config_hash(payload: dict) -> str:
    """A short stable hash of a JSON-serialisable payload (cache keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Option:
    """One command-line option: the pytest flag, the RunConfig field, its type and help."""

    flag: str
    field: str
    type: type | None
    help: str
    repeat: bool = False
    flag_only: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("--model", "models", str, "model alias, hub id or local directory (repeatable); "
           f"default: {', '.join(DEFAULT_MODELS)}", repeat=True),
    Option("--dataset", "dataset", str, "wikitext-2, pydocs, or a path to raw text (default pydocs)"),
    Option("--analysis-split", "analysis_split", str, "split where neurons are found (default train)"),
    Option("--eval-split", "eval_split", str, "split where perplexity is measured (default test)"),
    Option("--layers", "layers", str, "layers to analyse: all, 0,3,5 or 0-11 (default all)"),
    Option("--max-tokens", "max_tokens", int, "tokens of the analysis split to analyse (default 50000; 0: all)"),
    Option("--eval-max-tokens", "eval_max_tokens", int, "tokens of the eval split to score (default: all)"),
    Option("--max-length", "max_length", int, "perplexity window (default: model context, at most 1024)"),
    Option("--stride", "stride", int, "perplexity stride (default: half the window)"),
    Option("--analysis-window", "analysis_window", int, "analysis window length T (default 128)"),
    Option("--batch-size", "batch_size", int, "windows per forward pass (default 8; backs off on OOM)"),
    Option("--device", "device", str, "cpu, cuda, cuda:1 … (default auto)"),
    Option("--dtype", "dtype", str, "float32, bfloat16, float16 (default auto: bf16 on GPU, else fp32)"),
    Option("--seeds", "seeds", int, "random-control seeds per ablation condition (default 5)"),
    Option("--top-k", "top_k", int, "neurons kept by top-k analyses (default 10)"),
    Option("--attention-windows", "attention_windows", int, "analysis windows scored for attention units (default 4)"),
    Option("--pruning-ratio", "pruning_ratio", float, "fraction of neurons the pruning condition removes (default 0.1)"),
    Option("--threshold", "threshold", float, "activation threshold τ (default: the adapter's, 0)"),
    Option("--dead-freq", "dead_freq", float, "ε: dead iff activation frequency ≤ ε (default 0)"),
    Option("--rare-freq", "rare_freq", float, "rarely active iff 0 < freq < this (default 0.05)"),
    Option("--positional-mi", "positional_mi", float, "positional iff I(act; pos) > this (default 0.05)"),
    Option("--positional-r", "positional_r", float, "Pearson positional iff |r| > this (default 0.3)"),
    Option("--ngram-coverage", "ngram_coverage", float, "coverage of activations by n-grams (default 0.95)"),
    Option("--token-max-unigrams", "token_max_unigrams", int, "token-detecting iff unigram count ≤ this (default 5)"),
    Option("--min-occurrences", "min_occurrences", int, "occurrences a covered token needs (default 5)"),
    Option("--baseline-tolerance", "baseline_tolerance", float, "relative tolerance of the baseline regression (default 0.02)"),
    Option("--out", "out", str, "output directory (default analysis_outputs/)"),
    Option("--cache-dir", "cache_dir", str, "disk cache of activation statistics (default ~/.cache/neuronbench)"),
    Option("--no-cache", "no_cache", None, "ignore and do not write the disk cache", flag_only=True),
    Option("--baseline", "baseline", None, "compare perplexity deltas with results/baselines/", flag_only=True),
    Option("--update-baselines", "update_baselines", None, "rewrite results/baselines/ from this run", flag_only=True),
    Option("--baseline-dir", "baseline_dir", str, "where baselines live (default results/baselines/)"),
)


def run_config_from(values: dict) -> RunConfig:
    """Build a :class:`RunConfig` from ``{field: value}``, ignoring ``None`` (= default)."""
    known = {f.name for f in fields(RunConfig)}
    chosen = {k: v for k, v in values.items() if k in known and v is not None}
    if chosen.get("max_tokens") == 0:
        chosen["max_tokens"] = None
    if "models" in chosen:
        chosen["models"] = tuple(chosen["models"]) or DEFAULT_MODELS
    return RunConfig(**chosen)
