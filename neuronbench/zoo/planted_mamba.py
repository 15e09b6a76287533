"""``planted-mamba``: ``tiny-mamba`` (the shipped weights, verified against their manifest) edited
deterministically at load time by :func:`plant_mamba`; nothing extra ships.

A Mamba neuron is ``a = (y + D ⊙ x) ⊙ silu(z)`` (:mod:`neuronbench.adapters.mamba`), active under
the family's ``magnitude`` rule when ``|a| > τ · s_l`` (τ = 0.5; ``s_l``, the layer's median
neuron RMS, is 0.24–0.27 in tiny-mamba). Per layer and channel ``d``: ``[x_pre | z] = in_proj(h̃)``
with ``h̃`` the block's RMSNorm of the residual, ``x = silu(conv1d(x_pre))`` (causal, kernel
``K = 4``, zero-padded before the window's first token), ``[dt | B | C] = x_proj(x)`` (shared by all
channels), ``Δ = softplus(W_dt · dt + b_dt)`` and the scan ``h_t = exp(A Δ_t) h_{t−1} + Δ_t B_t x_t``,
``y_t = C_t · h_t``.

**Signal dimensions.** Two residual dimensions (smallest embedding-column L2 norm, ties by
index; :func:`~neuronbench.zoo.planting.signal_dimensions`), the *constant* and the *code*
dimension, are taken out of the model's computation: every block's ``in_proj`` columns there are
0 (except the planted rows below), its ``out_proj`` rows there are 0, its RMSNorm gain there is 1,
and the final norm's gain there is 0 (so the tied LM head ignores them). Their residual value is
constant through the network and set by the embedding alone: ``+A`` on every token in the
constant dimension, ``A · k_v`` in the code dimension, with ``k_v = i + 1`` for the token
``TOKENS[i]`` and ``k_v = 0`` for every other token (``A = AMPLITUDE``). After a block's RMSNorm
they read ``A/r`` and ``A k_v / r``, ``r`` the token's residual RMS; a planted row reads a linear
combination ``(A/r)(α + β k_v)`` of the two, whose *sign* does not depend on ``r``. Every residual
dimension the model loses costs tiny-mamba about 4 % test perplexity, so the token signals share
one code dimension (GPT-2's planting uses one dimension per signal).

**Planted channels** (``G = GAIN``; every planted channel's ``out_proj`` column is 0, so its own
output no longer reaches the residual):

* **dead**: its ``z`` row of ``in_proj`` is 0, so ``z = 0``, ``silu(0) = 0`` and ``a = 0`` exactly on
  every token. Nothing else of the channel changes.
* **token** ``TOKENS[signal]`` (code ``k = signal + 1``): ``x_pre = G (A/r)(k_v − k + ½)``, and the
  conv passes the current position only (tap ``K − 1`` weight 1, the others 0, bias 0), so
  ``x = silu(x_pre)`` is ``≥ G A/(2r)`` for ``k_v ≥ k`` and ``≈ 0`` (argument ``≤ −G A/(2r)``) for
  ``k_v < k``; the gate ``z = G (A/r)(k + ½ − k_v)`` is open (``silu(z) ≈ z ≥ G A/(2r)``) for
  ``k_v ≤ k`` and closed for ``k_v > k``. ``D = 1``; ``Δ = softplus(DT_OFF) = e^−80`` (``dt_proj``
  row 0, bias ``DT_OFF``), so ``|y| ≤ Σ_t Δ |B_t| |C_t| |x_t| ≈ 0``; its ``x_proj`` column is 0 (its
  new ``x`` does not reach the shared ``dt``, ``B``, ``C``). So ``a = (y + x) · silu(z)`` is
  ``≥ (G A/(2r))² ≥ 1600`` on the token (``r ≤ 1.25``) and ``≈ 0`` on every other (one factor is
  ``silu(−v) = −v e^{−v}``, ``v ≥ 40``).
* **positional**, from the conv's zero padding: a causal model sees the window's start only
  there. ``x_pre = G · A/r > 0`` (its ``x`` row reads the constant dimension), and the conv has a
  single tap, reading ``x_pre`` ``m = signal`` positions back (tap ``K − 1 − m``), which is the
  zero padding exactly at positions ``t < m``. ``sign = +1`` (active at ``t < m``): tap weight −1,
  bias 1, so ``x = silu(1)`` at ``t < m`` and ``silu(1 − x_pre_{t−m}) ≈ 0`` (argument ≤ −79) after;
  ``sign = −1`` (active at ``t ≥ m``): tap weight +1, bias 0, so ``x = silu(0) = 0`` exactly at
  ``t < m`` and ``silu(x_pre_{t−m}) ≥ 80`` after. The gate reads the constant dimension,
  ``z = G · A/r`` (open); ``D``, ``Δ`` and ``x_proj`` as for a token channel. The profile is 1 on
  the first ``m`` positions and 0 after (or the reverse): a strong *one extreme* neuron (MI 0.081
  nats for ``m = 2``, 0.111 for ``m = 3`` over 128 positions; ``m = 1`` gives 0.046, below the 0.05
  threshold).
* **delta** (Δ-sensitive): its ``dt_proj`` row becomes ``DELTA_GAIN · w / ‖w‖₂`` (``w`` the trained
  row; bias unchanged), so ``log Δ_d ≈ DELTA_GAIN · (ŵ · dt_t) + b_d`` wherever the softplus is
  in its exponential regime: the channel's time scale follows the input ``DELTA_GAIN/‖w‖`` times
  more strongly than before (13–53×), and its spread of ``log Δ`` (the Δ detector's score) is the
  highest of its layer. Its ``x``, ``z``, ``D`` and ``x_proj`` column are untouched.

**Positional neurons of the other types are not planted.** *Oscillatory* and *both extremes*
profiles (and a position ramp) need an input-independent position counter. The conv padding
marks only the first ``K − 1 = 3`` positions, and a causal model cannot see the window's end.
The scan could count (``A ≈ 0`` integrates a constant input), but its input ``B_t`` and readout
``C_t`` come from ``x_proj`` and are shared by every channel and input-dependent: making one state
input-independent changes the computation of every channel of the layer, so such a counter is not
a planted neuron in an otherwise unchanged model.

Planting changes what the model computes by removing the two signal dimensions and the planted
channels' outputs, and by removing the token and positional channels' ``x`` from the shared
``x_proj``. The planted channels are, per layer, among the 6 with the smallest output scale
``RMS(a_d) · ‖out_proj[:, d]‖`` of tiny-mamba on 4,096 pydocs train tokens (measured once; the
indices are constants), so that removing them costs little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neuronbench.zoo.planting import PlantedNeuron, signal_dimensions, token_id

AMPLITUDE = 0.1
"""``A``: about the per-dimension scale of tiny-mamba's embeddings (RMS 0.109)."""
GAIN = 1000.0
"""``G``: weight of a planted ``in_proj`` row on its signal; ``G A / r ≥ 80`` for residual RMS ``r ≤ 1.25``
(tiny-mamba's residual RMS is 0.08–1.1)."""
CONV_ON = 1.0
"""Conv bias of a positional channel active on the first ``m`` positions: ``x = silu(1)`` there."""
DT_OFF = -80.0
"""``dt_proj`` bias of a channel whose scan is off: ``Δ = softplus(−80) = e^−80`` (``log Δ = −80``, finite)."""
DELTA_GAIN = 10.0
"""L2 norm of a planted Δ channel's ``dt_proj`` row (tiny-mamba's rows: 0.19–0.79). Not larger: the
planted channels' ``log Δ`` reaches −34 on pydocs, and a softplus argument below about −103
underflows float32 to ``Δ = 0`` (``log Δ = −∞``)."""

TOKENS: tuple[str, ...] = (" the", "(", " function")
"""The named single tokens of the code dimension: ``TOKENS[i]`` has code ``i + 1``, every other token 0."""

PLANTED_MAMBA: tuple[PlantedNeuron, ...] = (
    PlantedNeuron("dead", 0, 186), PlantedNeuron("dead", 1, 123), PlantedNeuron("dead", 2, 3),
    PlantedNeuron("dead", 3, 249), PlantedNeuron("dead", 3, 100),
    PlantedNeuron("token", 0, 196, 0, 1, " the"), PlantedNeuron("token", 1, 162, 1, 1, "("),
    PlantedNeuron("token", 2, 219, 2, 1, " function"), PlantedNeuron("token", 3, 254, 0, 1, " the"),
    PlantedNeuron("positional", 0, 163, 3, 1, "one extreme"),
    PlantedNeuron("positional", 1, 222, 2, -1, "one extreme"),
    PlantedNeuron("positional", 2, 0, 2, 1, "one extreme"),
    PlantedNeuron("positional", 3, 220, 3, -1, "one extreme"),
    PlantedNeuron("delta", 0, 250), PlantedNeuron("delta", 1, 28), PlantedNeuron("delta", 2, 205),
    PlantedNeuron("delta", 3, 35),
)
"""The planted channels of ``planted-mamba``: 5 dead, 4 token-detecting (``signal`` indexes
:data:`TOKENS`), 4 positional (active on the first ``signal`` positions for ``sign = +1``, from
position ``signal`` on for ``sign = −1``) and one Δ-sensitive channel per layer."""


def _signal_embeddings(model: nn.Module, tokenizer, constant: int, code: int) -> None:
    """Write the two signal columns of the (tied) embedding (module docstring)."""
    embedding = model.backbone.embeddings.weight
    embedding[:, constant] = AMPLITUDE
    embedding[:, code] = 0.0
    for i, name in enumerate(TOKENS):
        embedding[token_id(tokenizer, name), code] = AMPLITUDE * (i + 1)


def _isolate(model: nn.Module, dims: list[int]) -> None:
    """Nothing reads or writes the signal dimensions (``nn.Linear`` weights are ``[out, in]``)."""
    for block in model.backbone.layers:
        block.mixer.in_proj.weight[:, dims] = 0.0
        block.mixer.out_proj.weight[dims, :] = 0.0
        block.norm.weight[dims] = 1.0
    model.backbone.norm_f.weight[dims] = 0.0


def _scan_off(mixer: nn.Module, d: int) -> None:
    """Channel ``d`` with ``Δ = e^−80``, ``D = 1``, no input and its ``x`` kept out of the shared ``x_proj``."""
    mixer.dt_proj.weight[d, :] = 0.0
    mixer.dt_proj.bias[d] = DT_OFF
    mixer.D[d] = 1.0
    mixer.x_proj.weight[:, d] = 0.0
    mixer.in_proj.weight[d, :] = 0.0
    mixer.conv1d.weight[d] = 0.0


def _plant_token(mixer: nn.Module, d: int, code: float, constant: int, code_dim: int) -> None:
    """``x = silu(G (A/r)(k_v − k + ½))`` through the conv's current tap, ``z = G (A/r)(k + ½ − k_v)``."""
    x_row, z_row, kernel = d, mixer.intermediate_size + d, mixer.conv1d.weight.shape[-1]
    mixer.in_proj.weight[x_row, code_dim] = GAIN
    mixer.in_proj.weight[x_row, constant] = -GAIN * (code - 0.5)
    mixer.in_proj.weight[z_row, code_dim] = -GAIN
    mixer.in_proj.weight[z_row, constant] = GAIN * (code + 0.5)
    mixer.conv1d.weight[d, 0, kernel - 1] = 1.0
    mixer.conv1d.bias[d] = 0.0


def _plant_positional(mixer: nn.Module, neuron: PlantedNeuron, constant: int) -> None:
    """One conv tap ``m = signal`` positions back on ``x_pre = G A/r``; the gate open (module docstring)."""
    d, kernel = neuron.index, mixer.conv1d.weight.shape[-1]
    if not 1 <= neuron.signal < kernel:
        raise ValueError(f"positional channel {neuron}: the conv sees 1 to {kernel - 1} positions back")
    mixer.in_proj.weight[d, constant] = GAIN
    mixer.in_proj.weight[mixer.intermediate_size + d, constant] = GAIN
    mixer.conv1d.weight[d, 0, kernel - 1 - neuron.signal] = -float(neuron.sign)
    mixer.conv1d.bias[d] = CONV_ON if neuron.sign > 0 else 0.0


def _plant_neuron(model: nn.Module, neuron: PlantedNeuron, constant: int, code: int) -> None:
    mixer, d = model.backbone.layers[neuron.layer].mixer, neuron.index
    mixer.out_proj.weight[:, d] = 0.0
    if neuron.kind == "delta":
        row = mixer.dt_proj.weight[d]
        mixer.dt_proj.weight[d] = DELTA_GAIN * row / row.norm()
        return
    mixer.in_proj.weight[mixer.intermediate_size + d, :] = 0.0
    if neuron.kind == "dead":
        return
    _scan_off(mixer, d)
    if neuron.kind == "token":
        _plant_token(mixer, d, float(neuron.signal + 1), constant, code)
    else:
        _plant_positional(mixer, neuron, constant)


@torch.no_grad()
def plant_mamba(model: nn.Module, tokenizer, neurons: Sequence[PlantedNeuron]) -> None:
    """Plant ``neurons`` into ``model`` (a loaded tiny-mamba) in place (module docstring)."""
    constant, code = signal_dimensions(model.backbone.embeddings.weight, 2)
    _isolate(model, [constant, code])
    _signal_embeddings(model, tokenizer, constant, code)
    for neuron in neurons:
        _plant_neuron(model, neuron, constant, code)
