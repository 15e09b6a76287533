"""Shared fixtures of the project's own tests: offline, CPU, tiny models saved and loaded back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from neuronbench.toy import build_toy_model  # noqa: E402

FAMILIES = ("gpt2", "opt", "llama", "gpt_neox", "mamba")


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """``toy_model_dir(family, seed=0, **config)``: a saved random tiny model (built once)."""
    root = tmp_path_factory.mktemp("toy_models")
    built: dict[tuple, Path] = {}

    def build(family: str, seed: int = 0, **overrides) -> Path:
        key = (family, seed, tuple(sorted(overrides.items())))
        if key not in built:
            name = "-".join([family, str(seed), *(f"{k}{v}" for k, v in sorted(overrides.items()))])
            built[key] = build_toy_model(family, root / name, seed=seed, **overrides)
        return built[key]

    return build


@pytest.fixture
def copy_dir(tmp_path: Path):
    """Copy a directory into this test's temporary folder (to corrupt or edit it safely)."""

    def copy(source: Path, name: str = "copy") -> Path:
        return Path(shutil.copytree(source, tmp_path / name))

    return copy


torch.set_num_threads(1)  # tiny models gain nothing from threads; avoids oversubscribing shared cores


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def gpu_code_path(monkeypatch) -> None:
    """On the CPU, the capture code that a GPU runs: no C library (the tensor-op reductions,
    token-row adds and copies, top-k's dense merge), no block sizes (whole segments and all
    consecutive full windows in one block: :data:`~neuronbench.capture.blocks.BLOCK_BYTES`), and no
    host read inside the hooks (:data:`~neuronbench.capture.batch.HOST_READ_DEVICES`: top-k's dense
    merge on a full state too, the exact trigram tables read at the batch's end)."""
    from neuronbench.capture import batch, blocks, native

    monkeypatch.setattr(native, "library", lambda: None)
    monkeypatch.delitem(blocks.BLOCK_BYTES, "cpu")
    monkeypatch.delitem(blocks.GROUP_BYTES, "cpu")
    monkeypatch.setattr(batch, "HOST_READ_DEVICES", frozenset())
