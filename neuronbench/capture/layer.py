"""One layer's streamed statistics: every per-batch reduction computed from one read of the
activations (:mod:`.blocks`, or :mod:`.compiled`), then handed to every statistic kind that the
capture asked for (:class:`~neuronbench.capture.batch.NeuronStatistic`)."""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.activation import ActivationRule, scale_rows
from neuronbench.capture import blocks, native
from neuronbench.capture.batch import BatchContext, LayerBatch, NeuronStatistic, Workspace
from neuronbench.capture.blocks import Plan
from neuronbench.capture.moments import Moments
from neuronbench.capture.positions import Positions
from neuronbench.capture.scale import column_square_sums
from neuronbench.capture.ssm import DeltaMoments
from neuronbench.capture.topk import TopActivations
from neuronbench.capture.tokens import TokenStatistics
from neuronbench.capture.trigrams import TrigramCounts
from neuronbench.errors import CaptureError


class LayerStatistics:
    """Streaming statistics of one layer's neurons (and Δ channels, for an SSM).

    ``moments`` always; ``positions``, ``tokens`` (per-token table), ``trigram_counts`` and the
    top-k activations (``top_k`` > 0) when given. ``n_tokens`` counts real tokens, ``n_windows`` full-length windows (0 without
    positional statistics). ``rule`` decides "active"; its layer scale is ``scale`` when given,
    else fixed by the first batch's windows ``scale_windows`` (all of them when ``None``;
    :mod:`.scale`). Buffers come from ``workspace`` (shared by the layers of a capture);
    ``compiled``: the reductions come from the compiled functions (:mod:`.compiled`) instead of
    :func:`.native.reduce_layer` (the C loop on a CPU; :func:`.blocks.reduce_layer` on a GPU or
    without a C compiler). What they compute is the :class:`~neuronbench.capture.blocks.Plan`
    of the statistics asked for: the τ sweep only with ``sweep``, window statistics only with
    ``positions``, the bool mask only with per-token or trigram counts.
    """

    def __init__(self, layer: int, width: int, threshold: float, sweep: tuple[float, ...], window: int,
                 device: torch.device, positions: bool = True, tokens: TokenStatistics | None = None,
                 trigram_counts: TrigramCounts | None = None, top_k: int = 0, rule: ActivationRule | None = None,
                 scale: float | None = None, workspace: Workspace | None = None, compiled: bool = False) -> None:
        self.layer, self.width, self.threshold, self.window = layer, width, threshold, window
        self.workspace = Workspace() if workspace is None else workspace
        self.rule, self.scale = rule, scale
        self.scale_windows: torch.Tensor | None = None
        self.moments = Moments(width, sweep, device)
        self.compiled = compiled
        self.plan = Plan(threshold, sweep, windowed=positions, active=tokens is not None or trigram_counts is not None)
        self.positions = Positions(width, window, device) if positions else None
        self.tokens = tokens
        self.trigram_counts = trigram_counts
        self.delta = DeltaMoments(width, device)
        self.top = TopActivations(width, top_k, device) if top_k else None
        self.statistics: list[NeuronStatistic] = [
            s for s in (self.moments, self.positions, self.tokens, self.trigram_counts, self.top) if s is not None]

    @property
    def n_tokens(self) -> int:
        return self.moments.n_tokens

    @property
    def n_windows(self) -> int:
        return 0 if self.positions is None else self.positions.n_windows

    def update_neurons(self, acts: torch.Tensor, batch: BatchContext) -> torch.Tensor | None:
        """Fold one batch ``acts [B, T, W]`` (real positions where ``batch.real``) into the totals;
        return the batch's checksum, its float64 ``Σ a + Σ a²`` per neuron (:mod:`.moments`;
        ``None`` without real tokens). Nothing of the batch outlives the non-finite check: a
        tensor kept until the next batch would be carved out of the heap space that the model's
        freed temporaries left, and split it (:class:`~neuronbench.capture.positions.Positions`)."""
        if acts.shape[-1] != self.width or acts.shape[:2] != batch.real.shape:
            raise CaptureError(
                f"layer {self.layer}: neuron tensor of shape {tuple(acts.shape)} does not match "
                f"the batch {tuple(batch.real.shape)} and width {self.width}"
            )
        space = self.workspace
        if acts.dtype != torch.float32 or not acts.is_contiguous():  # e.g. Mamba's transposed scan output
            acts = native.copy_rows(acts, space.buffer("acts", acts.shape, acts.device))
        flat = batch.flat(acts)
        if self.scale is None:
            self.scale = self._first_scale(self._scale_rows(flat, batch))
        reductions = None
        if flat.shape[0]:
            reduce = self._compiled_reduce if self.compiled else native.reduce_layer
            reductions = reduce(flat, batch, self.rule.bind(self.scale), self.plan, space)
        view = LayerBatch(flat=flat, batch=batch, reductions=reductions)
        for statistic in self.statistics:
            statistic.update(view)
        return None if reductions is None else reductions.total + reductions.total_sq

    def _scale_rows(self, flat: torch.Tensor, batch: BatchContext) -> list[torch.Tensor]:
        """The first batch's real rows that the layer scale is measured on, as views of ``flat``:
        each window of ``scale_windows`` (increasing indices into the batch; ``None``: all rows)."""
        if self.scale_windows is None:
            return [flat]
        starts = np.cumsum([0, *batch.lengths[:-1]]).tolist()
        return [flat[starts[w]:starts[w] + batch.lengths[w]] for w in self.scale_windows.tolist()]

    def _first_scale(self, parts: list[torch.Tensor]) -> float:
        """The rule's layer scale from the first batch's sample rows ``parts``
        (:func:`.scale.column_square_sums` of each); 1.0 for an absolute τ, 0.0 without real tokens."""
        n = sum(part.shape[0] for part in parts)
        if not self.rule.relative:
            return 1.0
        if not n:
            return 0.0
        block = self.workspace.buffer("scale", (scale_rows(self.width), self.width), parts[0].device, torch.float64)
        return self.rule.scale_from_squares(sum(column_square_sums(part, block) for part in parts), n)

    @staticmethod
    def _compiled_reduce(*args) -> blocks.Reductions:
        from neuronbench.capture import compiled

        return compiled.reduce_layer(*args)

    def update_ngrams(self, active: torch.Tensor, batch: BatchContext) -> None:
        """Fold ``active [n_real, W]`` (``a > τ`` at the real positions, row-major) into the per-token
        and trigram statistics only."""
        if self.tokens is not None:
            self.tokens.add(active, batch)
        if self.trigram_counts is not None:
            self.trigram_counts.add(batch.trigram_ids, active, batch.trigram)

    def end_batch(self) -> None:
        """Read back what the statistics kept on the device during the batch (the exact trigram
        tables' entering pairs, off the CPU), once the forward pass is done."""
        if self.trigram_counts is not None:
            self.trigram_counts.read_batch()

    def update_delta(self, delta: torch.Tensor, batch: BatchContext) -> torch.Tensor | None:
        """Fold one batch of Δ; return its checksum (:meth:`DeltaMoments.update`)."""
        return self.delta.update(delta, batch, self.workspace)

    def result(self) -> dict[str, np.ndarray]:
        """Every array as numpy (consumes the count tables)."""
        arrays: dict[str, np.ndarray] = {"active_scale": np.float64(np.nan if self.scale is None else self.scale)}
        for statistic in [*self.statistics, self.delta]:
            arrays.update(statistic.arrays())
        return arrays
