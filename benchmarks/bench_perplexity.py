"""Perplexity and ablation cost (issue: ablation and perplexity).

Groups (candidate / baseline, same model, same windows, same run):

* ``perplexity-<family>``: sliding-window token perplexity (forward + NLL of scored tokens)
  against plain batched forward passes over the same windows;
* ``batching-<family>``: the batched evaluation against the unbatched Hugging Face recipe loop
  (one forward per window, the model's own loss);
* ``ablation-<family>``: the evaluation with 10% of every layer's neurons zero-ablated by hooks
  against the same evaluation unablated.

Run: ``python -m pytest benchmarks/bench_perplexity.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from neuronbench.ablation import ablated
from neuronbench.models import load_model
from neuronbench.perplexity import prepare_token_evaluation
from neuronbench.toy import build_toy_model

WINDOW, STRIDE, N_TOKENS, BATCH = 128, 64, 4096, 8
SHAPES = {
    "gpt2": dict(n_embd=128, n_layer=4, n_head=4, vocab_size=2048, n_positions=WINDOW),
    "mamba": dict(hidden_size=128, num_hidden_layers=4, vocab_size=2048),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def setup(request, tmp_path_factory):
    torch.set_num_threads(2)
    family = request.param
    directory = build_toy_model(family, tmp_path_factory.mktemp(family), **SHAPES[family])
    loaded = load_model(str(directory), device="cpu", dtype="float32")
    vocab = loaded.model.config.vocab_size
    stream = torch.randint(0, vocab, (N_TOKENS,), generator=torch.Generator().manual_seed(0))
    evaluation = prepare_token_evaluation(loaded.model.config, stream, WINDOW, STRIDE)
    return loaded, stream, evaluation


def plain_forward(loaded, evaluation) -> None:
    windows = evaluation.windows
    with torch.inference_mode():
        for start in range(0, windows.n_windows, BATCH):
            loaded.model(input_ids=windows.inputs[start:start + BATCH],
                         attention_mask=windows.attention_mask[start:start + BATCH], use_cache=False)


def hf_recipe(loaded, stream: torch.Tensor) -> float:
    nll, prev_end = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, stream.numel(), STRIDE):
            end = min(begin + WINDOW, stream.numel())
            ids = stream[begin:end].unsqueeze(0)
            target = ids.clone()
            target[:, : -(end - prev_end)] = -100
            nll += loaded.model(ids, labels=target).loss.item()
            prev_end = end
            if end == stream.numel():
                break
    return nll


def ten_percent(loaded) -> dict[int, list[int]]:
    adapter = loaded.adapter
    return {layer: list(range(0, adapter.neuron_width(layer), 10)) for layer in range(adapter.num_layers)}


def test_plain_forward(benchmark, setup):
    loaded, _, evaluation = setup
    benchmark.group, benchmark.extra_info["role"] = f"perplexity-{loaded.family}", "baseline"
    benchmark.pedantic(plain_forward, args=(loaded, evaluation), rounds=5, warmup_rounds=1)


def test_token_perplexity(benchmark, setup):
    loaded, _, evaluation = setup
    benchmark.group, benchmark.extra_info["role"] = f"perplexity-{loaded.family}", "candidate"
    result = benchmark.pedantic(evaluation.evaluate, args=(loaded.model, BATCH), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(tokens_scored=result.n_tokens, ppl=result.ppl)


def test_hf_recipe_unbatched(benchmark, setup):
    loaded, stream, _ = setup
    benchmark.group, benchmark.extra_info["role"] = f"batching-{loaded.family}", "baseline"
    benchmark.pedantic(hf_recipe, args=(loaded, stream), rounds=3, warmup_rounds=1)


def test_token_perplexity_batched(benchmark, setup):
    loaded, _, evaluation = setup
    benchmark.group, benchmark.extra_info["role"] = f"batching-{loaded.family}", "candidate"
    benchmark.pedantic(evaluation.evaluate, args=(loaded.model, BATCH), rounds=3, warmup_rounds=1)


def test_unablated(benchmark, setup):
    loaded, _, evaluation = setup
    benchmark.group, benchmark.extra_info["role"] = f"ablation-{loaded.family}", "baseline"
    benchmark.pedantic(evaluation.evaluate, args=(loaded.model, BATCH), rounds=5, warmup_rounds=1)


def test_ablated(benchmark, setup):
    loaded, _, evaluation = setup
    benchmark.group, benchmark.extra_info["role"] = f"ablation-{loaded.family}", "candidate"

    def run():
        with ablated(loaded.adapter, ten_percent(loaded)):
            return evaluation.evaluate(loaded.model, BATCH)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
