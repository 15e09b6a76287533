"""Vocabulary projection of output weights: ranks of trigger tokens among promoted/suppressed."""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture import CaptureConfig, capture_statistics
from neuronbench.data import TokenWindows
from neuronbench.detectors.projection import vocabulary_projection
from neuronbench.models import load_model


def test_a_neuron_writing_minus_a_token_embedding_suppresses_it_first(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2", n_layer=1)), device="cpu", dtype="float32")
    model, target, other = loaded.model, 7, 11
    w_u = model.get_output_embeddings().weight
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.weight[3] = -5 * w_u[target]
        model.transformer.h[0].mlp.c_proj.weight[4] = 5 * w_u[target]
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    stats = capture_statistics(model, loaded.adapter, TokenWindows(ids, torch.ones_like(ids), 32),
                               CaptureConfig(activation="positive", batch_size=2), progress=False)
    ranks = vocabulary_projection(model, loaded.adapter, stats, 0, {3: [target, other], 4: [target]})
    assert ranks[3][target]["suppressed_rank"] == 1 and ranks[4][target]["promoted_rank"] == 1
    scores = (w_u @ model.transformer.h[0].mlp.c_proj.weight[3]).detach().numpy()  # brute force
    assert ranks[3][other]["promoted_rank"] == 1 + int((scores > scores[other]).sum())
    vocab = model.config.vocab_size
    assert ranks[3][other]["suppressed_rank"] == vocab + 1 - ranks[3][other]["promoted_rank"]
    assert vocabulary_projection(model, loaded.adapter, stats, 0, {}) == {}


def test_a_signed_neuron_is_projected_in_the_direction_of_its_mean(toy_model_dir):
    loaded = load_model(str(toy_model_dir("mamba", num_hidden_layers=1)), device="cpu", dtype="float32")
    model = loaded.model
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    stats = capture_statistics(model, loaded.adapter, TokenWindows(ids, torch.ones_like(ids), 32),
                               CaptureConfig(batch_size=2), progress=False)
    j, target = 2, 5
    sign = np.sign(stats.mean(0)[j])
    with torch.no_grad():
        model.backbone.layers[0].mixer.out_proj.weight[:, j] = -5 * sign * model.get_output_embeddings().weight[target]
    assert vocabulary_projection(model, loaded.adapter, stats, 0, {j: [target]})[j][target]["suppressed_rank"] == 1
