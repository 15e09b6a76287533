"""Registry of attention-unit kinds, keyed by ``adapter.has_ssm``: Mamba channels for SSMs,
attention heads for transformers."""

from __future__ import annotations

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.attention.channels import MambaChannels
from neuronbench.attention.heads import TransformerHeads
from neuronbench.attention.units import AttentionUnits

UNIT_KINDS: dict[bool, AttentionUnits] = {True: MambaChannels(), False: TransformerHeads()}


def attention_units(adapter: ArchitectureAdapter) -> AttentionUnits:
    """The attention units of ``adapter``'s model kind."""
    return UNIT_KINDS[adapter.has_ssm]
