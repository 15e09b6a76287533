"""One-pass capture: a single forward pass per batch feeds streaming statistics for every
requested layer at once.

Hooks registered through the adapter hand each named activation (``blocks.{l}.neurons``,
``blocks.{l}.ssm.delta``) to the statistics that consume it *while the forward pass runs*; the
tensor is reduced at once and dropped, so nothing of size tokens × neurons is ever kept. Padded
positions (``attention_mask == 0``) never count. The same statistics can be fed without a model
(:class:`NeuronLayout`, :meth:`StatisticsCollector.feed`), which is how synthetic streams are
tested and benchmarked.

One module per kind of statistic, each documenting its arrays and their definitions:

=====================  ==========================================================================
module                 arrays (per layer unless said)
=====================  ==========================================================================
:mod:`.moments`        ``active_count``, ``sweep_count``, ``sum``, ``sum_sq``, ``max``, ``min``
:mod:`.positions`      ``pos_tokens``, ``pos_active``, ``pos_sum``, ``pearson_sum``
                       (``CaptureConfig.positional``)
:mod:`.tokens`         ``token_active_tier{i}`` (exact per-token counts in count tiers, read with
                       :meth:`ActivationStatistics.token_active`), ``trigram_active_count``;
                       once for all layers ``token_ids``, ``token_occurrences``
                       (``CaptureConfig.token_counts``)
:mod:`.trigrams`       ``trigram_pair_*`` for chosen neurons; once for all layers the trigram
                       index ``trigram_tokens [G, 3]``, ``trigram_occurrences [G]``
                       (``CaptureConfig.trigrams``, ``trigram_neurons``)
:mod:`.ssm`            ``log_delta_sum``, ``log_delta_sum_sq``, ``log_delta_max``,
                       ``log_delta_min`` (Mamba)
=====================  ==========================================================================

:mod:`.scale` measures a relative rule's layer scales on windows spread over the corpus, before
the capture; :mod:`.batch` holds what a batch and a layer's batch share; :mod:`.native` computes every
per-batch reduction of a layer in one read of its activations by a small C loop (the CPU
default, compiled on first use; the same library adds the per-token count rows); :mod:`.blocks` computes the same with tensor operations over
cache-sized blocks (a GPU, or a CPU without a C compiler; the activity mask ``a > τ`` once per
block, for every statistic); :mod:`.compiled` the same with ``torch.compile``; :mod:`.layer` routes a layer's tensors to its statistics, :mod:`.collector`
registers the hooks and runs the pass, :mod:`.statistics` is the result. A new statistic is one
module with an ``update(view)`` / ``arrays()`` pair (:class:`~neuronbench.capture.batch.NeuronStatistic`)
that reads the view's :class:`~neuronbench.capture.blocks.Reductions` (a new reduction is a
field there, a few lines of the block loop and of the C loop), enabled by a field of :class:`CaptureConfig`
and added in :class:`~neuronbench.capture.layer.LayerStatistics`.

``n_tokens`` counts real tokens; ``n_windows`` the full-length windows. Derived quantities
(frequency, mean, spread) are methods of :class:`ActivationStatistics` or the detectors.
"""

from neuronbench.capture.collector import StatisticsCollector, batches, capture_batch_size, capture_statistics
from neuronbench.capture.config import DEFAULT_SWEEP, CaptureConfig, NeuronLayout
from neuronbench.capture.positions import pearson_with_position
from neuronbench.capture.statistics import ActivationStatistics
from neuronbench.capture.tokens import COUNT_TIERS

__all__ = [
    "COUNT_TIERS",
    "DEFAULT_SWEEP",
    "ActivationStatistics",
    "CaptureConfig",
    "NeuronLayout",
    "StatisticsCollector",
    "batches",
    "capture_batch_size",
    "capture_statistics",
    "pearson_with_position",
]
