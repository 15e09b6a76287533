"""The collector: hooks hand each named activation to the statistics of its layer while the
forward pass runs; :func:`capture_statistics` runs one forward pass per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from neuronbench.adapters import ArchitectureAdapter
from neuronbench.activation import resolve_threshold
from neuronbench.adapters.base import parse_layers
from neuronbench.batching import batches, fit_batch_size, windows_per_batch
from neuronbench.capture.batch import BatchContext, Workspace
from neuronbench.capture.checks import FiniteCheck, model_label
from neuronbench.capture.config import CaptureConfig, NeuronLayout
from neuronbench.capture.layer import LayerStatistics
from neuronbench.capture.scale import in_first_batch, sample_scales, spread_windows
from neuronbench.capture.statistics import ActivationStatistics
from neuronbench.capture.tokens import Promotion, TokenRows, TokenStatistics, tier_parts
from neuronbench.capture.trigrams import TrigramCounts, TrigramRows, trigram_codes, trigram_positions
from neuronbench.data import TokenWindows
from neuronbench.errors import CaptureError, ConfigError, NeuronRangeError
from neuronbench.names import NEURONS, SSM_DELTA, parse_act_name


def _trigram_neurons(spec: Mapping[int, Sequence[int]] | str | None, layers: tuple[int, ...],
                     widths: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Resolve ``CaptureConfig.trigram_neurons`` to sorted neuron indices per captured layer."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(f"trigram_neurons must be None, 'all' or {{layer: indices}}, got {spec!r}")
        return {layer: np.arange(widths[layer]) for layer in layers}
    resolved = {}
    for layer, neurons in spec.items():
        if layer not in widths:
            raise ConfigError(f"trigram_neurons names layer {layer}, which is not captured (captured: {list(layers)})")
        indices = np.unique(np.asarray(neurons, dtype=np.int64))
        bad = indices[(indices < 0) | (indices >= widths[layer])]
        if bad.size:
            raise NeuronRangeError(f"trigram_neurons: neurons {bad.tolist()} out of range for layer {layer}: "
                                   f"valid neurons are 0..{widths[layer] - 1}")
        if indices.size:
            resolved[layer] = indices
    return resolved


@dataclass(frozen=True)
class PreparedBatch:
    """A batch's host-side share (:meth:`StatisticsCollector.prepare_batch`): its context on the
    host and the token rows it promotes to a wider count tier (``None`` without token counts)."""

    context: BatchContext
    promotion: Promotion | None


class StatisticsCollector:
    """Receives named activations from the hooks (or :meth:`feed`) and routes them to each
    layer's statistics. ``adapter`` may be a :class:`NeuronLayout` for model-free feeding."""

    def __init__(self, adapter: ArchitectureAdapter | NeuronLayout, config: CaptureConfig, window: int,
                 vocab_size: int, device: torch.device) -> None:
        self.adapter = adapter
        self.config = config
        self.vocab_size = vocab_size
        self.layers = parse_layers(config.layers, adapter.num_layers)
        self.rule = adapter.activation(config.activation)
        self.threshold = resolve_threshold(self.rule, config.threshold)
        scales = dict(config.scales or {})
        self.delta = adapter.has_ssm if config.delta is None else config.delta
        self.rows = TokenRows(vocab_size) if config.token_counts else None
        if config.trigram_neurons is not None and not config.trigrams:
            raise ConfigError("trigram_neurons needs trigrams=True (the trigram index)")
        self.trigram_rows = TrigramRows(vocab_size) if config.trigrams else None
        self.device = device
        self.exclude = torch.tensor(sorted(config.exclude_token_ids), dtype=torch.long)
        widths = {layer: adapter.neuron_width(layer) for layer in self.layers}
        chosen = _trigram_neurons(config.trigram_neurons, self.layers, widths)
        self.workspace = Workspace()
        self.stats = {
            layer: LayerStatistics(
                layer, widths[layer], self.threshold, tuple(config.sweep), window, device,
                positions=config.positional,
                tokens=(TokenStatistics(widths[layer], self.rows, device, config.trigrams)
                        if self.rows is not None else None),
                trigram_counts=TrigramCounts(chosen[layer], device) if layer in chosen else None,
                top_k=config.top_activations,
                rule=self.rule, scale=scales.get(layer), workspace=self.workspace, compiled=config.compile,
            )
            for layer in self.layers
        }
        self._batch: BatchContext | None = None
        self._seen: set[str] = set()
        self._scanning: set[str] | None = None
        self._largest: dict[str, float] = {}
        self.finite = FiniteCheck(model_label(adapter))

    @property
    def unscaled_layers(self) -> tuple[int, ...]:
        """The layers whose relative rule has no layer scale yet (none for an absolute τ)."""
        return tuple(layer for layer, stats in self.stats.items() if self.rule.relative and stats.scale is None)

    def set_scales(self, scales: Mapping[int, float]) -> None:
        """Fix the layer scales ``s_l`` before the first batch (:func:`.scale.sample_scales`)."""
        for layer, scale in scales.items():
            self.stats[layer].scale = scale

    def set_scale_windows(self, windows: torch.Tensor) -> None:
        """Measure the layer scales on these windows of the first batch only (:mod:`.scale`)."""
        for stats in self.stats.values():
            stats.scale_windows = windows

    @property
    def kinds(self) -> tuple[str, ...]:
        return (NEURONS, SSM_DELTA) if self.delta else (NEURONS,)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handles = [h for layer in self.layers for h in self.adapter.register_capture(layer, self.kinds, self.receive)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def start_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Prepare the batch ``input_ids``, ``attention_mask [B, T]`` and make it the current one
        (:meth:`prepare_batch`, then :meth:`begin_batch`)."""
        self.begin_batch(self.prepare_batch(input_ids, attention_mask))

    def prepare_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PreparedBatch:
        """The host's share of a batch ``input_ids``, ``attention_mask [B, T]``: its
        :class:`BatchContext` on the host (tensors on a device are read back first) and the token
        rows it promotes. It touches no device tensor, so :func:`capture_statistics` runs it while
        the device still computes the previous batch; batches must be prepared in the order they
        begin (the token and trigram rows are numbered as they come)."""
        input_ids, real = input_ids.cpu(), attention_mask.cpu().bool()
        kept = real & ~torch.isin(input_ids, self.exclude)
        batch = BatchContext.of(real)
        promotion = None
        if self.rows is not None:
            tokens = input_ids[kept]
            promotion = self.rows.update(tokens)
            tier, slot = self.rows.locate(tokens)
            keep = None if bool(kept[real].all()) else kept[real]
            batch.parts = tier_parts(keep, tier, slot)
        if self.trigram_rows is not None:
            positions = trigram_positions(real, kept)
            batch.trigram = positions[real].nonzero().flatten()
            batch.outside = (~positions)[real].nonzero().flatten()
            codes = trigram_codes(input_ids, self.vocab_size)[positions]
            batch.trigram_ids = self.trigram_rows.ids(codes.numpy())
        return PreparedBatch(batch, promotion)

    def begin_batch(self, prepared: PreparedBatch) -> None:
        """Make a prepared batch the current one: its context moved to the capture's device, the
        count tables grown and promoted for its tokens. Call after the previous batch's
        :meth:`end_batch`."""
        if prepared.promotion is not None:
            for stats in self.stats.values():
                stats.tokens.prepare(prepared.promotion)
        self._batch = prepared.context.to(self.device)
        self._seen = set()
        self.finite.next_batch()

    def receive(self, name: str, tensor: torch.Tensor) -> None:
        """Fold one named activation into its layer's statistics and keep their checksum for the
        batch's non-finite check (:mod:`.checks`); while :meth:`end_batch` locates a non-finite
        value, only scan the tensors whose checksum failed."""
        if self._scanning is not None:
            if name in self._scanning:
                self._largest[name] = self.finite.scan(name, tensor, self._batch.real)
                self._scanning.discard(name)
            return
        layer, kind = parse_act_name(name)
        if kind == NEURONS:
            checksum = self.stats[layer].update_neurons(tensor, self._batch)
        else:
            checksum = self.stats[layer].update_delta(tensor, self._batch)
        self.finite.add(name, checksum)
        self._seen.add(name)

    def end_batch(self, replay: Callable[[], object]) -> None:
        """Fail loudly if a received tensor holds a non-finite value, or if any hook did not fire
        during the forward pass. The non-finite check reads the batch's checksums once; when one is
        not finite, ``replay()`` hands the batch's tensors over again (the forward pass once more,
        or the fed tensors) and the failed ones are scanned, naming the first offending value."""
        failed = self.finite.failed()
        if failed:
            self._locate(failed, replay)
        expected = {f"blocks.{layer}.{kind}" for layer in self.layers for kind in self.kinds}
        missing = expected - self._seen
        if missing:
            raise CaptureError(
                f"hooks did not fire for {sorted(missing)}: the model's forward pass did not call "
                "the hooked modules (is the adapter right for this model?)"
            )
        self._end_statistics()

    def _end_statistics(self) -> None:
        """Let each layer's statistics read back what they kept on the device during the batch."""
        for stats in self.stats.values():
            stats.end_batch()

    def _locate(self, failed: list[str], replay: Callable[[], object]) -> None:
        """Scan the tensors ``failed`` as ``replay()`` hands them over: a non-finite value raises
        :class:`NonFiniteActivationError`; tensors that held none overflowed their float32 sums
        (:meth:`.checks.FiniteCheck.overflow_error`)."""
        self._scanning, self._largest = set(failed), {}
        try:
            replay()
            unscanned = sorted(self._scanning)
        finally:
            self._scanning = None
        if unscanned:
            raise CaptureError(f"{unscanned} had a non-finite checksum in batch {self.finite.batch}, but the replay "
                               "did not hand them over again to be located")
        raise self.finite.overflow_error(self._largest)

    def feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             activations: Mapping[str, torch.Tensor]) -> None:
        """Fold one batch of activations given directly (``{act name: tensor}``), without a model."""
        def receive_all() -> None:
            for name, tensor in activations.items():
                self.receive(name, tensor)

        self.start_batch(input_ids, attention_mask)
        receive_all()
        self.end_batch(replay=receive_all)

    def feed_ngrams(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    active: Mapping[int, torch.Tensor]) -> None:
        """Fold one batch of already thresholded activations ``{layer: [B, T, W] bool}`` into the
        per-token and trigram statistics only (the other statistics are left untouched); used to
        measure their memory without a model."""
        self.start_batch(input_ids, attention_mask)
        for layer, mask in active.items():
            self.stats[layer].update_ngrams(self._batch.flat(mask), self._batch)
        self._end_statistics()

    def result(self) -> ActivationStatistics:
        """The statistics as numpy arrays. Call once: it hands over (and frees) the count tables."""
        first = self.stats[self.layers[0]]
        layers = {layer: stats.result() for layer, stats in self.stats.items()}
        rows, trigrams = self.rows, self.trigram_rows
        return ActivationStatistics(
            layers=layers,
            n_tokens=first.n_tokens,
            n_windows=first.n_windows,
            window=first.window,
            threshold=self.threshold,
            activation=self.rule.name,
            sweep=tuple(self.config.sweep),
            token_ids=None if rows is None else rows.token_ids,
            token_occurrences=None if rows is None else rows.occurrences,
            excluded_token_ids=tuple(sorted(self.config.exclude_token_ids)),
            token_tier=None if rows is None else rows.tier,
            token_slot=None if rows is None else rows.slot,
            trigram_tokens=None if trigrams is None else trigrams.tokens(),
            trigram_occurrences=None if trigrams is None else trigrams.occurrences.copy(),
        )


def backbone_forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     device: torch.device) -> Callable[[], object]:
    """The backbone's forward pass (``model.base_model``: no logits) over one batch, on ``device``,
    as a call that :meth:`StatisticsCollector.end_batch` can repeat."""
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return lambda: model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def capture_batch_size(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                       config: CaptureConfig) -> int:
    """The capture's windows per batch: ``config.batch_size`` (or the token budget,
    :func:`neuronbench.batching.windows_per_batch`), at most the corpus, and on a GPU halved until
    one capture step on the first windows fits (:func:`neuronbench.batching.fit_batch_size`).

    The probed step is a capture of its own: a throwaway :class:`StatisticsCollector` of the same
    configuration on the backbone's forward, so the statistics' buffers (``[batch tokens, W]``
    float32 scratch, the top-k candidates) are probed with the forward. A relative rule's layer
    scale, unless given, is measured on all rows of the probed batch (the first-batch path of
    :mod:`.scale`). Nothing of the probe is kept."""
    n_windows, window = windows.input_ids.shape
    device = next(model.parameters()).device

    def attempt(size: int) -> None:
        probe = StatisticsCollector(adapter, config, window, model.config.vocab_size, device)
        with probe.hooked():
            probe.start_batch(windows.input_ids[:size], windows.attention_mask[:size])
            forward = backbone_forward(model, windows.input_ids[:size], windows.attention_mask[:size], device)
            forward()
            probe.end_batch(replay=forward)

    return fit_batch_size(attempt, min(windows_per_batch(config.batch_size, window), n_windows), device)


def capture_statistics(model: torch.nn.Module, adapter: ArchitectureAdapter, windows: TokenWindows,
                       config: CaptureConfig, progress: bool = True) -> ActivationStatistics:
    """Run one forward pass per batch of ``windows`` and return the streamed statistics.

    The passes run the model's backbone (``model.base_model``): no statistic reads the logits, so
    the LM head (0.36 of a GPT-2-small forward of 4096 tokens on a CPU, paired ratio; on a GPU the
    largest tensor of a batch, ``[tokens, vocabulary]``) never runs. On a GPU the batch size is
    first probed with one capture step and halved on out-of-memory (:func:`capture_batch_size`),
    before any statistic is updated. A relative
    rule's layer scales, unless given, are first measured on windows spread over the corpus
    (:mod:`.scale`).

    Each batch's host-side preparation (:meth:`StatisticsCollector.prepare_batch`: token rows,
    trigram ids, segment tables; about 5 ms for 8 × 1024 tokens with a 50,257 vocabulary on one
    CPU core) runs after the previous batch's forward pass is queued and before its
    :meth:`~StatisticsCollector.end_batch` waits for it: on a GPU the host prepares while the device
    computes, instead of the device idling while the host prepares. On a CPU the order changes
    nothing."""
    if windows.n_tokens == 0:
        raise CaptureError("no tokens to capture: the token windows are empty")
    device = next(model.parameters()).device
    batch_size = capture_batch_size(model, adapter, windows, config)
    collector = StatisticsCollector(adapter, config, windows.input_ids.shape[1],
                                    model.config.vocab_size, device)
    sample = spread_windows(*windows.input_ids.shape)
    if collector.unscaled_layers and in_first_batch(sample, batch_size):
        collector.set_scale_windows(sample)
    elif collector.unscaled_layers:
        collector.set_scales(sample_scales(model, adapter, windows, sample, collector.unscaled_layers, collector.rule,
                                           batch_size))
    total = -(-windows.input_ids.shape[0] // batch_size)
    queue = iter(tqdm(batches(windows, batch_size), total=total, desc="capture", unit="batch",
                      disable=not progress))
    with torch.inference_mode(), collector.hooked():
        current = next(queue)
        prepared = collector.prepare_batch(*current)
        while current is not None:
            collector.begin_batch(prepared)
            forward = backbone_forward(model, *current, device)
            forward()
            current = next(queue, None)
            if current is not None:
                prepared = collector.prepare_batch(*current)  # on the host, while the device runs `forward`
            collector.end_batch(replay=forward)
    return collector.result()
