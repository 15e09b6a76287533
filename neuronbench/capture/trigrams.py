"""Trigram statistics: the trigram index shared by every layer and exact ``(trigram, neuron)``
tables for chosen neurons.

A neuron active at position ``k`` is triggered by the trigram ``(x_{k−2}, x_{k−1}, x_k)`` ending
there. A position is a *trigram position* when ``k ≥ 2`` within its window (the first two
positions of every window have no full trigram in the model's context; they are left out of every
trigram statistic), all three tokens are real (not padding), and ``x_k`` is not an excluded token
(BOS). ``trigram_occurrences`` counts each trigram over trigram positions.

A full ``(trigram, neuron)`` table for every neuron is neither needed nor affordable for large
models (it holds up to one entry per activation). ``CaptureConfig.trigram_neurons`` names the
neurons that get one; their tables are exact sparse counts, ``12–16`` bytes per distinct active
``(trigram, neuron)`` pair. :mod:`neuronbench.detectors.trigram` derives, from a first pass, the
only neurons that can possibly have ≤ N covering trigrams and runs this as a second, explicit pass
for just those.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronbench.capture.batch import LayerBatch, reads_freely
from neuronbench.errors import CaptureError


class TrigramRows:
    """Ids and occurrence counts of the trigrams at trigram positions, shared by every layer.

    A trigram ``(a, b, c)`` is coded ``(a·V + b)·V + c`` (int64; needs ``V³ < 2⁶³``); ids are
    assigned in order of first appearance.
    """

    def __init__(self, vocab_size: int) -> None:
        if vocab_size**3 >= 2**63:
            raise CaptureError(f"vocabulary of {vocab_size} tokens is too large to code trigrams in int64")
        self.vocab_size = vocab_size
        self.sorted_codes = np.empty(0, dtype=np.int64)
        self.sorted_ids = np.empty(0, dtype=np.int64)
        self.code_of = np.empty(0, dtype=np.int64)
        self.occurrences = np.empty(0, dtype=np.int64)

    def ids(self, codes: np.ndarray) -> np.ndarray:
        """Id of each trigram code, assigning ids to new ones; counts the occurrences."""
        unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        at = np.searchsorted(self.sorted_codes, unique)
        known = at < self.sorted_codes.size
        known[known] = self.sorted_codes[at[known]] == unique[known]
        ids = np.empty(unique.size, dtype=np.int64)
        ids[known] = self.sorted_ids[at[known]]
        new = ~known
        ids[new] = np.arange(self.code_of.size, self.code_of.size + int(new.sum()))
        self.sorted_codes = np.insert(self.sorted_codes, at[new], unique[new])
        self.sorted_ids = np.insert(self.sorted_ids, at[new], ids[new])
        self.code_of = np.concatenate([self.code_of, unique[new]])
        self.occurrences = np.concatenate([self.occurrences, np.zeros(int(new.sum()), dtype=np.int64)])
        self.occurrences[ids] += counts
        return ids[inverse]

    def tokens(self) -> np.ndarray:
        """``[G, 3]`` token ids ``(x_{k−2}, x_{k−1}, x_k)`` of each trigram, by id."""
        v = self.vocab_size
        return np.stack([self.code_of // (v * v), (self.code_of // v) % v, self.code_of % v], axis=1)


def trigram_codes(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, T]`` code of the trigram ending at each position (0 at positions 0 and 1)."""
    codes = torch.zeros_like(input_ids)
    codes[:, 2:] = (input_ids[:, :-2] * vocab_size + input_ids[:, 1:-1]) * vocab_size + input_ids[:, 2:]
    return codes


def trigram_positions(real: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` trigram positions: ``k ≥ 2``, ``x_{k−2..k}`` real, ``x_k`` kept."""
    positions = torch.zeros_like(real)
    positions[:, 2:] = real[:, 2:] & real[:, 1:-1] & real[:, :-2]
    return positions & kept


class TrigramCounts:
    """Exact ``#{occurrences of trigram g : a_j > τ}`` for chosen neurons of one layer, as a
    sparse table of distinct ``(trigram, neuron)`` pairs (pending pairs are merged in bulk).

    A batch's active ``(trigram position, chosen neuron)`` pairs are found with ``nonzero``, whose
    size is data-dependent: on a CPU at once; elsewhere the chosen columns at the trigram
    positions (bool ``[positions, chosen]``) stay on the device until the batch's forward pass is
    done (:meth:`read_batch`), so the hooks do not wait for a GPU."""

    MERGE_AT = 1 << 22
    """Pending pairs that trigger a merge into the table (bounds the transient memory)."""

    def __init__(self, neurons: np.ndarray, device: torch.device) -> None:
        self.neurons = neurons
        self.columns = torch.as_tensor(neurons, device=device)
        self.keys = np.empty(0, dtype=np.int64)
        self.counts = np.empty(0, dtype=np.int64)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.unread: list[tuple[np.ndarray, torch.Tensor]] = []

    def update(self, view: LayerBatch) -> None:
        if view.reductions is not None:
            self.add(view.batch.trigram_ids, view.reductions.active, view.batch.trigram)

    def add(self, trigram_ids: np.ndarray, active: torch.Tensor, positions: torch.Tensor) -> None:
        """``active [n, W]`` of a batch's real positions; ``positions`` indexes its trigram
        positions, whose trigrams are ``trigram_ids``."""
        chosen = active.index_select(0, positions).index_select(1, self.columns)  # a copy: active is reused
        self.unread.append((trigram_ids, chosen))
        if reads_freely(chosen.device):
            self.read_batch()

    def read_batch(self) -> None:
        """Fold the pairs kept on the device (:meth:`add`) into the pending keys."""
        unread, self.unread = self.unread, []
        for trigram_ids, chosen in unread:
            self._add_pairs(trigram_ids, *chosen.nonzero(as_tuple=True))

    def _add_pairs(self, trigram_ids: np.ndarray, position: torch.Tensor, column: torch.Tensor) -> None:
        keys = trigram_ids[position.cpu().numpy()] * self.neurons.size + column.cpu().numpy()
        self.pending.append(keys)
        self.n_pending += keys.size
        if self.n_pending >= max(self.MERGE_AT, self.keys.size):
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate([self.keys, *self.pending])
        counts = np.concatenate([self.counts, np.ones(self.n_pending, dtype=np.int64)])
        self.pending, self.n_pending = [], 0
        if keys.size == 0:
            return
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        self.keys, self.counts = keys[starts], np.add.reduceat(counts, starts)

    def arrays(self) -> dict[str, np.ndarray]:
        """``trigram_neurons`` and the pairs sorted by (neuron, trigram)."""
        self.read_batch()
        self._merge()
        neuron = self.neurons[self.keys % self.neurons.size]
        trigram = self.keys // self.neurons.size
        order = np.lexsort((trigram, neuron))
        return {"trigram_neurons": self.neurons.copy(), "trigram_pair_neuron": neuron[order],
                "trigram_pair_trigram": trigram[order], "trigram_pair_count": self.counts[order]}


