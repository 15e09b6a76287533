"""Model registry and loading.

A model is named by an alias (``gpt2``, ``mamba-130m``, ``tiny-gpt2`` …), a hub id
(``org/name``) or a local directory holding a ``config.json``. :func:`load_model` returns a
:class:`LoadedModel` that records what it is: the name asked for, where it came from, the hub
revision or the SHA-256 of the weight files, and the parameter count.

Offline behaviour: a hub model is first looked up in the local cache only. If it is not cached
and the hub is unreachable (``HF_HUB_OFFLINE=1``, or a 2-second connection probe fails), loading
fails at once with a :class:`ModelLoadError` that says how to fix it; nothing is retried
(:mod:`neuronbench.hub`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from neuronbench.allocator import retain_freed_memory
from neuronbench.adapters import ArchitectureAdapter, adapter_for, require_supported
from neuronbench.errors import ConfigError, ModelLoadError, NeuronbenchError, UnknownModelError
from neuronbench.hub import hub_offline
from neuronbench.zoo.artifacts import ZOO_ROOT as ZOO_DIR
from neuronbench.zoo.artifacts import verify_builtin
from neuronbench.zoo.planted import PLANTED, plant
from neuronbench.zoo.recipe import RECIPES

BUILTIN_MODELS = (*RECIPES, *PLANTED)

HUB_ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "opt-125m": "facebook/opt-125m",
    "opt-350m": "facebook/opt-350m",
    "opt-1.3b": "facebook/opt-1.3b",
    "pythia-70m": "EleutherAI/pythia-70m",
    "pythia-160m": "EleutherAI/pythia-160m",
    "mamba-130m": "state-spaces/mamba-130m-hf",
    "mamba-370m": "state-spaces/mamba-370m-hf",
    "mamba-790m": "state-spaces/mamba-790m-hf",
    "mamba-1.4b": "state-spaces/mamba-1.4b-hf",
    "mamba-2.8b": "state-spaces/mamba-2.8b-hf",
}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")
"""Files a Hugging Face tokenizer is loaded from (a model needs ``tokenizer.json``, or
``vocab.json`` + ``merges.txt``, or a SentencePiece ``tokenizer.model``)."""
PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
"""Every loaded tokenizer must turn this into at least one token."""


def known_aliases() -> list[str]:
    return sorted([*HUB_ALIASES, *BUILTIN_MODELS])


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points: ``kind`` is ``"builtin"``, ``"hub"`` or ``"local"``."""

    name: str
    kind: str
    location: str


def resolve_model(name: str) -> ModelSource:
    """Resolve an alias, a local directory or a hub id; raise a clear error otherwise."""
    if name in PLANTED:
        return ModelSource(name, "planted", str(ZOO_DIR / PLANTED[name].base))
    if name in BUILTIN_MODELS:
        return ModelSource(name, "builtin", str(ZOO_DIR / name))
    if name in HUB_ALIASES:
        return ModelSource(name, "hub", HUB_ALIASES[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"local model directory {str(path)!r} has no config.json")
        require_supported(_local_model_type(path), name)
        return ModelSource(name, "local", str(path.resolve()))
    if HUB_ID.match(name) and not name.startswith("."):
        return ModelSource(name, "hub", name)
    if name.startswith((".", "/", "~")) or "/" in name or os.sep in name:
        raise ModelLoadError(f"local model path {name!r} does not exist")
    raise UnknownModelError(
        f"unknown model {name!r}: not an alias, a local directory or a hub id (org/name). "
        f"Known aliases: {', '.join(known_aliases())}"
    )


def _local_model_type(directory: Path) -> str | None:
    """``model_type`` of a local directory's ``config.json``."""
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {error}") from error


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer, adapter and provenance."""

    name: str
    source: ModelSource
    model: nn.Module
    tokenizer: object
    revision: str | None
    weights_sha256: str | None
    num_parameters: int
    device: torch.device
    dtype: torch.dtype
    adapter: ArchitectureAdapter = field(init=False)

    def __post_init__(self) -> None:
        self.adapter = adapter_for(self.model)

    @property
    def family(self) -> str:
        return self.adapter.family

    def describe(self) -> dict:
        """Provenance record stored with every result."""
        return {
            "model": self.name,
            "source": self.source.kind,
            "location": self.source.location,
            "model_type": self.family,
            "revision": self.revision,
            "weights_sha256": self.weights_sha256,
            "num_parameters": self.num_parameters,
            "num_layers": self.adapter.num_layers,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def available_devices() -> list[str]:
    """The devices of this machine: ``cpu``, ``cuda:0`` … and ``mps`` where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` unless ``device`` is ``auto`` or exists here; the message lists
    the devices that do."""
    if device == "auto":
        return
    here = available_devices()
    listed = f"devices on this machine: auto, {', '.join(here)}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device name; {listed}") from None
    if parsed.type == "cpu":
        return
    any_index = parsed.index is None and any(d.startswith(f"{parsed.type}:") for d in here)
    if not (any_index or str(parsed) in here):
        raise ConfigError(f"--device {device!r} does not exist on this machine; {listed}")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else CPU; any other device must exist
    (:func:`check_device`)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on a GPU that supports it, else float32."""
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


def _from_pretrained(location: str, dtype: torch.dtype, local_only: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(location, local_files_only=local_only)
    require_supported(getattr(config, "model_type", None), location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
    check_tokenizer(tokenizer, location)
    return model, tokenizer


def check_tokenizer(tokenizer: object, location: str) -> None:
    """Raise :class:`ModelLoadError` unless ``tokenizer`` turns :data:`PROBE_TEXT` into at least one
    token (a directory without tokenizer files loads an empty tokenizer that tokenizes every text
    to ``[]``); the message names the tokenizer files that are missing."""
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if len(ids) > 0:
        return
    directory = Path(location)
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()] if directory.is_dir() else []
    where = f"missing from {location}: {', '.join(missing)}" if missing else f"in {location} they hold no vocabulary"
    raise ModelLoadError(
        f"the tokenizer of {location} turns the probe text {PROBE_TEXT!r} into no tokens: its tokenizer files "
        f"are missing or empty ({where}). Fix: save the model's tokenizer next to its weights "
        "(`AutoTokenizer.from_pretrained(<original>).save_pretrained(<dir>)`).")


def _load_hub(source: ModelSource, dtype: torch.dtype):
    try:
        return _from_pretrained(source.location, dtype, local_only=True)
    except OSError as cache_error:  # not (fully) in the local cache: the hub, or a fast failure
        if hub_offline():
            raise ModelLoadError(
                f"model {source.name!r} ({source.location}) is not in the local Hugging Face cache and "
                "the hub cannot be reached (offline). Fix: download it once with network access "
                f"(`huggingface-cli download {source.location}`), pass a local directory, or use a "
                f"built-in model ({', '.join(BUILTIN_MODELS)}). Cache lookup said: {cache_error}"
            ) from cache_error
        return _from_pretrained(source.location, dtype, local_only=False)


def _load_local(source: ModelSource, dtype: torch.dtype):
    if source.kind in ("builtin", "planted"):
        verify_builtin(Path(source.location).name, source.location)
    try:
        return _from_pretrained(source.location, dtype, local_only=True)
    except NeuronbenchError:
        raise
    except Exception as error:  # re-raised with the path and a fix
        hint = (
            f" Regenerate it with `python -m neuronbench zoo train {Path(source.location).name}`."
            if source.kind in ("builtin", "planted")
            else ""
        )
        raise ModelLoadError(
            f"could not load model {source.name!r} from {source.location}: {error}.{hint}"
        ) from error


def weights_sha256(directory: str) -> str | None:
    """SHA-256 over the weight files of a local model directory (sorted by name)."""
    files = sorted(p for p in Path(directory).iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_model(name: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load ``name`` (alias, hub id or local directory) in eval mode on ``device``/``dtype``.

    Transformers are loaded with the library's default attention implementation (SDPA, or flash
    attention where installed); only passes that read attention probabilities (``attn.pattern``)
    switch to eager attention, while their hooks are registered
    (:mod:`neuronbench.adapters.attention_impl`).
    """
    source = resolve_model(name)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if torch_device.type == "cpu":
        retain_freed_memory()
    if source.kind == "hub":
        model, tokenizer = _load_hub(source, torch_dtype)
    else:
        model, tokenizer = _load_local(source, torch_dtype)
    local = source.kind != "hub"
    weights = weights_sha256(source.location) if local else None
    if source.kind == "planted":
        weights = plant(name, model, tokenizer)
    model.to(torch_device).eval()
    return LoadedModel(
        name=name,
        source=source,
        model=model,
        tokenizer=tokenizer,
        revision=getattr(model.config, "_commit_hash", None),
        weights_sha256=weights,
        num_parameters=sum(p.numel() for p in model.parameters()),
        device=torch_device,
        dtype=torch_dtype,
    )
