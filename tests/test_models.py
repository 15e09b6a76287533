"""Model registry and loading: aliases, local directories, hub ids offline, provenance."""

from __future__ import annotations

import time

import pytest
import torch

from neuronbench import hub
from neuronbench.adapters.base import parse_layers
from neuronbench.errors import LayerRangeError, ModelLoadError, UnknownModelError
from neuronbench.models import HUB_ALIASES, load_model, resolve_model, weights_sha256


def test_aliases_resolve_to_hub_ids_and_builtins():
    assert resolve_model("mamba-130m").location == "state-spaces/mamba-130m-hf"
    assert resolve_model("gpt2").kind == "hub"
    assert resolve_model("tiny-gpt2").kind == "builtin"
    assert resolve_model("EleutherAI/pythia-70m").location == "EleutherAI/pythia-70m"
    assert all(HUB_ALIASES[f"mamba-{size}"] == f"state-spaces/mamba-{size}-hf"
               for size in ("130m", "370m", "790m", "1.4b", "2.8b"))


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as error:
        resolve_model("gtp2")
    for alias in ("gpt2", "mamba-130m", "tiny-gpt2", "tiny-mamba", "opt-125m"):
        assert alias in str(error.value)


def test_local_path_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


def test_local_directory_loads_with_provenance(toy_model_dir):
    directory = toy_model_dir("gpt2")
    loaded = load_model(str(directory), device="cpu", dtype="float32")
    record = loaded.describe()
    assert record["source"] == "local" and record["model_type"] == "gpt2"
    assert record["weights_sha256"] == weights_sha256(str(directory)) and len(record["weights_sha256"]) == 64
    assert record["num_parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert record["num_layers"] == 2 and record["dtype"] == "float32"
    assert not loaded.model.training


def test_dtype_option(toy_model_dir):
    loaded = load_model(str(toy_model_dir("mamba")), device="cpu", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(toy_model_dir("mamba")), device="cpu", dtype="float8")


def test_uncached_hub_id_offline_fails_fast_with_a_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        load_model("neuronbench-test/not-a-cached-model", device="cpu")
    assert time.monotonic() - start < 5.0
    message = str(error.value)
    assert "not in the local Hugging Face cache" in message and "tiny-gpt2" in message


def test_uncached_hub_id_with_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: False)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_model("neuronbench-test/not-a-cached-model", device="cpu")
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize(("spec", "expected"), [("all", (0, 1, 2, 3)), ("0,3", (0, 3)), ("1-2", (1, 2)),
                                                 ([2, 0], (0, 2)), ("0-1,3", (0, 1, 3))])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 4) == expected


@pytest.mark.parametrize("spec", ["4", "0-4", "-1", "x", ""])
def test_parse_layers_rejects_out_of_range_and_garbage(spec):
    with pytest.raises(LayerRangeError, match=r"0\.\.3"):
        parse_layers(spec, 4)
