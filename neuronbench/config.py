"""The run configuration shared by the suite, its fixtures and the command-line entry points.

Every threshold is an option with a documented default here, never a constant hidden in code.
:data:`OPTIONS` is the single table from which ``conftest.py`` registers the pytest options and
``python -m neuronbench main`` maps its flags.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from neuronbench.activation import ACTIVATION_RULES
from neuronbench.errors import ConfigError

DEFAULT_MODELS = ("tiny-gpt2", "tiny-opt", "tiny-mamba")
DEFAULT_KNOCKOUTS = ("last<-previous:4", "all<-first:4")
"""Default ``--knockout`` patterns (:mod:`neuronbench.attention.knockout`): the last token loses
its 4 preceding tokens; every token loses the first 4."""
SEED_MODELS = ("gpt2", "mamba-130m", "mamba-370m", "mamba-790m", "mamba-1.4b", "mamba-2.8b")


@dataclass(frozen=True)
class RunConfig:
    """Options of one benchmark run (``pytest suite ...``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    dataset: str = "pydocs"
    wikitext_format: str = "lm-eval"
    analysis_split: str = "train"
    eval_split: str = "test"
    layers: str = "all"
    max_tokens: int | None = 50_000
    min_tokens: int = 1000
    eval_max_tokens: int | None = None
    max_length: int | None = None
    stride: int | None = None
    analysis_window: int = 128
    batch_size: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    seeds: int = 5
    control: str = "matched"
    attention_windows: int = 0
    attention_budget: float = 30.0
    attention_memory: float = 2.0
    attention_scope: str = "layer"
    knockouts: tuple[str, ...] = DEFAULT_KNOCKOUTS
    knockout_windows: int = 16
    top_k: int = 10
    pruning_ratio: float = 0.1
    top_contexts: int = 20
    page_neurons: int = 5
    page_ablation: bool = False
    active: str | None = None
    threshold: float | None = None
    dead_freq: float = 0.0
    dead_null_freq: float = 1e-3
    null_warn_fraction: float = 0.1
    rare_freq: float = 0.05
    rare_null_freq: float | None = None
    positional_mi: float = 0.05
    positional_r: float = 0.3
    positional_extreme: float = 0.05
    ngram_coverage: float = 0.95
    token_max_unigrams: int = 5
    token_occurrence_rate: float = 0.95
    token_covered_share: float = 0.95
    fig2_layers: str = "first_half"
    min_occurrences: int = 5
    baseline_tolerance: float = 0.02
    out: str = "analysis_outputs"
    cache_dir: str = str(Path.home() / ".cache" / "neuronbench")
    no_cache: bool = False
    baseline: bool = False
    update_baselines: bool = False
    baseline_dir: str = str(Path(__file__).resolve().parents[1] / "results" / "baselines")

    def __post_init__(self) -> None:
        """Validate every option against its :data:`OPTIONS` entry (``Option.check``)."""
        for option in OPTIONS:
            value = getattr(self, option.field)
            if option.check is not None and value is not None:
                option.check(option.flag, value)
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ConfigError(f"--max-tokens {self.max_tokens} is below --min-tokens {self.min_tokens}, the smallest "
                              "sample an analysis accepts; raise --max-tokens (or lower --min-tokens)")

    def analysis_key(self) -> dict:
        """The options that determine activation statistics (part of the disk-cache key)."""
        keys = ("dataset", "analysis_split", "layers", "max_tokens", "analysis_window", "active", "threshold")
        return {key: getattr(self, key) for key in keys}

    def to_record(self) -> dict:
        record = asdict(self)
        record["models"] = list(self.models)
        return record


def config_hash(payload: dict) -> str:
    """A short stable hash of a JSON-serialisable payload (cache keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


Check = Callable[[str, object], None]
"""Validates one option's value: ``check(flag, value)`` raises :class:`ConfigError` naming the
flag, the value and the valid range."""


def _bad(flag: str, value: object, valid: str) -> ConfigError:
    return ConfigError(f"{flag} {value!r} is not valid: {valid}")


def integer(minimum: int, why: str = "") -> Check:
    """An integer ≥ ``minimum``."""
    def check(flag: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _bad(flag, value, f"valid values are integers ≥ {minimum}{why}")
    return check


def seed_count(flag: str, value: object) -> None:
    """``0`` (no random controls) or an integer ≥ 2 (the controls report a standard deviation)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value == 1:
        raise _bad(flag, value, "valid values are 0 (no random controls) or integers ≥ 2 (the random controls "
                                "report a standard deviation)")


def _bound(value: float) -> str:
    return {math.inf: "∞", -math.inf: "-∞"}.get(value, f"{value:g}")


def real(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False, open_high: bool = False) -> Check:
    """A finite number ``x`` with ``low ≤ x ≤ high`` (``<`` at an open end)."""
    left = "(" if open_low or math.isinf(low) else "["
    right = ")" if open_high or math.isinf(high) else "]"
    interval = f"{left}{_bound(low)}, {_bound(high)}{right}"

    def check(flag: str, value: object) -> None:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        above = low < number if open_low else low <= number
        below = number < high if open_high else number <= high
        if not (math.isfinite(number) and above and below):
            raise _bad(flag, value, f"valid values are finite numbers in {interval}")
    return check


def choice(*allowed: str) -> Check:
    """One of ``allowed``."""
    def check(flag: str, value: object) -> None:
        if value not in allowed:
            raise _bad(flag, value, f"choose one of {', '.join(allowed)}")
    return check


def knockout_specs(flag: str, value: object) -> None:
    """Syntax of each ``TARGETS<-SOURCES`` knockout pattern."""
    from neuronbench.attention.knockout import parse_knockout

    for spec in value:
        try:
            parse_knockout(spec, [0])
        except ConfigError as error:
            raise _bad(flag, spec, str(error)) from None


def layer_spec(flag: str, value: object) -> None:
    """Syntax of a layer selection (the range is checked against each model when it loads)."""
    from neuronbench.adapters.base import layer_ranges

    layer_ranges(value)


def draw_rule_spec(flag: str, value: object) -> None:
    """A draw rule of random controls (imported here: the ablation package imports the data module,
    which imports this one)."""
    from neuronbench.ablation.controls import DRAW_RULES

    choice(*DRAW_RULES)(flag, value)


def device_spec(flag: str, value: object) -> None:
    """A device that exists on this machine."""
    from neuronbench.models import check_device

    check_device(str(value))


@dataclass(frozen=True)
class Option:
    """One command-line option: the pytest flag, the RunConfig field, its type and help, and the
    check its value must pass (:data:`Check`)."""

    flag: str
    field: str
    type: type | None
    help: str
    repeat: bool = False
    flag_only: bool = False
    check: Check | None = None


SPLIT_NAMES = ("train", "validation", "test")
FRACTION = real(0.0, 1.0)


OPTIONS: tuple[Option, ...] = (
    Option("--model", "models", str, "model alias, hub id or local directory (repeatable); "
           f"default: {', '.join(DEFAULT_MODELS)}", repeat=True),
    Option("--dataset", "dataset", str, "wikitext-2, pydocs, or a path to raw text (default pydocs)"),
    Option("--wikitext-format", "wikitext_format", str, "WikiText documents: lm-eval (document-level pages, "
           "lm-eval's detokenizer; default) or raw (articles as written)", check=choice("lm-eval", "raw")),
    Option("--analysis-split", "analysis_split", str, "split where neurons are found (default train)",
           check=choice(*SPLIT_NAMES)),
    Option("--eval-split", "eval_split", str, "split where perplexity is measured (default test)",
           check=choice(*SPLIT_NAMES)),
    Option("--layers", "layers", str, "layers to analyse: all, 0,3,5 or 0-11 (default all)",
           check=layer_spec),
    Option("--max-tokens", "max_tokens", int, "tokens of the analysis split to analyse (default 50000; 0: all)",
           check=integer(1, ", or 0 for all tokens")),
    Option("--min-tokens", "min_tokens", int, "fewest analysis tokens an analysis accepts (default 1000)",
           check=integer(1)),
    Option("--eval-max-tokens", "eval_max_tokens", int, "tokens of the eval split to score (default: all)",
           check=integer(1)),
    Option("--max-length", "max_length", int, "perplexity window (default: model context, at most 1024)",
           check=integer(2, " (one token of context and one to score)")),
    Option("--stride", "stride", int, "perplexity stride (default: half the window)",
           check=integer(1)),
    Option("--analysis-window", "analysis_window", int, "analysis window length T (default 128)",
           check=integer(2, " (positions need at least two)")),
    Option("--batch-size", "batch_size", int, "windows per forward pass (default: enough for 4096 tokens and at "
           "least 8: 32 windows of the default --analysis-window; backs off on OOM)", check=integer(1)),
    Option("--device", "device", str, "cpu, cuda, cuda:1 … (default auto)", check=device_spec),
    Option("--dtype", "dtype", str, "float32, bfloat16, float16 (default auto: bf16 on GPU, else fp32)",
           check=choice("auto", "float32", "bfloat16", "float16")),
    Option("--seeds", "seeds", int, "random-control seeds per ablation condition (default 5; 0: no random controls, "
           "each condition's own Δppl only, no z: what a --baseline regression needs)", check=seed_count),
    Option("--control", "control", str, "random controls of the dead/positional/token conditions: matched (alive "
           "neurons with the same activation-frequency distribution, default) or uniform", check=draw_rule_spec),
    Option("--top-k", "top_k", int, "neurons kept by top-k analyses (default 10)",
           check=integer(1)),
    Option("--attention-windows", "attention_windows", int, "at most this many analysis windows for attention "
           "scores (default 0: all, within --attention-budget)", check=integer(0, ", or 0 for all windows")),
    Option("--attention-budget", "attention_budget", float, "seconds per model for attention scores; windows are "
           "scored in a seeded random order, as many as its cost model allows (default 30; 0: no limit)", check=real(0.0)),
    Option("--attention-memory", "attention_memory", float, "GiB for one layer's hidden-attention blocks (default 2)",
           check=real(0.0, open_low=True)),
    Option("--attention-scope", "attention_scope", str, "top-k attention units per 'layer' (default) or 'global' "
           "(on scores divided by their layer's mean)", check=choice("layer", "global")),
    Option("--knockout", "knockouts", str, "attention knockout TARGETS<-SOURCES (repeatable): targets last or all, "
           "sources earlier, first:k or previous:k (default: last<-previous:4, all<-first:4)", repeat=True,
           check=knockout_specs),
    Option("--knockout-windows", "knockout_windows", int, "evaluation windows an attention knockout is measured on "
           "(default 16)", check=integer(1)),
    Option("--pruning-ratio", "pruning_ratio", float, "fraction of neurons the pruning condition removes (default 0.1)",
           check=real(0.0, 1.0, open_low=True, open_high=True)),
    Option("--top-contexts", "top_contexts", int, "top-activating contexts kept per neuron for neuron pages (default 20)",
           check=integer(1)),
    Option("--page-neurons", "page_neurons", int, "neurons per detector and model that get a page (default 5)",
           check=integer(1)),
    Option("--page-ablation", "page_ablation", None, "zero-ablate each neuron that has a page by itself and show "
           "its Δppl on the eval split there (one evaluation pass per page; default off)", flag_only=True),
    Option("--active", "active", str, "activation rule: positive (a > τ) or magnitude (|a| > τ·layer scale); "
           "default: the model family's (positive for OPT, magnitude for GPT-2, NeoX, Llama, Mamba)",
           check=choice(*ACTIVATION_RULES)),
    Option("--threshold", "threshold", float, "activation threshold τ (default: the rule's, 0 for positive, "
           "0.5 for magnitude; ≥ 0 for magnitude)", check=real()),
    Option("--dead-freq", "dead_freq", float, "ε: dead iff activation frequency ≤ ε (default 0)",
           check=FRACTION),
    Option("--dead-null-freq", "dead_null_freq", float, "ρ₀: the dead detector's null is an alive neuron active on "
           "this share of tokens; it sets the minimum sample (default 0.001: 4603 tokens)",
           check=real(0.0, 1.0, open_low=True, open_high=True)),
    Option("--null-warn-fraction", "null_warn_fraction", float, "warn when a detection's expected false positives "
           "exceed this share of its findings (default 0.1)", check=FRACTION),
    Option("--rare-freq", "rare_freq", float, "rarely active iff 0 < freq < this (default 0.05)",
           check=FRACTION),
    Option("--rare-null-freq", "rare_null_freq", float, "ρ₁: the rarely-active detector's null is a neuron active "
           "on this share of tokens, in (rare-freq, 1]; it sets the minimum sample (default twice --rare-freq, "
           "at most 1: 183 tokens)", check=real(0.0, 1.0, open_low=True)),
    Option("--positional-mi", "positional_mi", float, "positional iff I(act; pos) > this (default 0.05)",
           check=real(0.0, math.log(2))),
    Option("--positional-r", "positional_r", float, "Pearson positional iff |r| > this (default 0.3)",
           check=FRACTION),
    Option("--positional-extreme", "positional_extreme", float, "δ: a strong positional neuron's frequency comes "
           "within δ of 0 and of 1 (default 0.05)", check=real(0.0, 0.5, open_high=True)),
    Option("--ngram-coverage", "ngram_coverage", float, "coverage of activations by n-grams (default 0.95)",
           check=real(0.0, 1.0, open_low=True)),
    Option("--token-max-unigrams", "token_max_unigrams", int, "token-detecting iff unigram count ≤ this (default 5)",
           check=integer(1)),
    Option("--token-occurrence-rate", "token_occurrence_rate", float, "a covered token: the neuron is active on at "
           "least this share of its occurrences (default 0.95)", check=real(0.0, 1.0, open_low=True)),
    Option("--token-covered-share", "token_covered_share", float, "token-detecting iff its covered tokens account "
           "for at least this share of its activations (default 0.95)", check=real(0.0, 1.0, open_low=True)),
    Option("--fig2-layers", "fig2_layers", str, "layers of Figure 2: first_half (the paper's, default) or all",
           check=choice("first_half", "all")),
    Option("--min-occurrences", "min_occurrences", int, "occurrences a covered token needs (default 5)",
           check=integer(1)),
    Option("--baseline-tolerance", "baseline_tolerance", float, "relative tolerance of the baseline regression (default 0.02)",
           check=real(0.0)),
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
    if "knockouts" in chosen:
        chosen["knockouts"] = tuple(chosen["knockouts"]) or DEFAULT_KNOCKOUTS
    return RunConfig(**chosen)
