"""Attention neurons (SPEC §4): Mamba's hidden attention and attention-unit scores.

* :mod:`~neuronbench.attention.hidden` — the hidden attention ``α`` of a selective scan, exact,
  numerically stable and streamed in memory-bounded blocks;
* :mod:`~neuronbench.attention.channels` — Mamba channels as units (capture, per-layer ``α``);
* :mod:`~neuronbench.attention.heads` — transformer heads as units (real probabilities);
* :mod:`~neuronbench.attention.kinds` — the registry choosing between the two;
* :mod:`~neuronbench.attention.forward` — the forward/backward pass exposing unit outputs and
  their LM-loss gradients;
* :mod:`~neuronbench.attention.scores` — ``attention_weighted``, ``gradient_guided``,
  ``rollout``, distance, entropy; top-k;
* :mod:`~neuronbench.attention.diversity` — how the methods' choices differ;
* :mod:`~neuronbench.attention.figures` — heatmaps and score tables for the figures;
* :mod:`~neuronbench.attention.ablation` — ablating attention units through the adapter.
"""

from neuronbench.attention.ablation import ablated_attention_units, unit_set
from neuronbench.attention.channels import SsmTensors, capture_ssm, layer_hidden_attention, require_ssm
from neuronbench.attention.diversity import diversity_summary
from neuronbench.attention.figures import AttentionFigureData, attention_figure_data, attention_heatmaps
from neuronbench.attention.forward import UnitPass, next_token_loss, unit_pass
from neuronbench.attention.heads import head_attention
from neuronbench.attention.hidden import (DEFAULT_MEMORY_BUDGET, AttentionBlock, ChunkPlan, hidden_attention,
                                          iter_hidden_attention, mix, plan_chunks)
from neuronbench.attention.kinds import UNIT_KINDS, attention_units
from neuronbench.attention.scores import (SCORE_METHODS, UNIT_MEASURES, AttentionConfig, AttentionUnit,
                                          AttentionUnitScores, attention_unit_scores, relevant_tokens,
                                          rollout)

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "SCORE_METHODS", "UNIT_KINDS", "UNIT_MEASURES", "AttentionBlock",
    "AttentionConfig", "AttentionFigureData", "AttentionUnit", "AttentionUnitScores", "ChunkPlan",
    "SsmTensors", "UnitPass", "ablated_attention_units", "attention_figure_data", "attention_heatmaps",
    "attention_unit_scores", "attention_units", "capture_ssm", "diversity_summary", "head_attention",
    "hidden_attention", "iter_hidden_attention", "layer_hidden_attention", "mix", "next_token_loss",
    "plan_chunks", "relevant_tokens", "require_ssm", "rollout", "unit_pass", "unit_set",
]
