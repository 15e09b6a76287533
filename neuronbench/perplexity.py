"""Perplexity: token perplexity by the sliding-window method, and word perplexity / bits per byte
in the lm-evaluation-harness convention.

Both metrics share one representation, :class:`ScoringWindows`: each window is a token sequence
``s`` of length ``m + 1``; the model reads ``s[:-1]`` (``m`` tokens) and the logits at position
``t`` predict ``s[t + 1]``; only the last ``n_scored`` predictions of each window count. A metric
is a way of cutting text into such windows; :func:`score_windows` runs them batched and sums the
negative log-likelihood (natural log) of every scored token.

Token perplexity (sliding window)
---------------------------------
The Hugging Face "perplexity of fixed-length models" recipe over one token stream ``x_0..x_{N-1}``
(:func:`neuronbench.data.token_stream`): windows ``[b, e)`` with ``b = 0, S, 2S, …`` and
``e = min(b + W, N)``, stopping after the first window that reaches ``N``. A window scores the
tokens ``x_i`` with ``max(e_prev, b + 1) <= i < e`` (``e_prev`` = end of the previous window, 0 for
the first), each predicted from ``x_b..x_{i-1}``. So the first window scores all its tokens but the
first; with ``S < W`` the first ``W - S`` tokens of a later window are context only; with
``S = W`` the first token of every window is unscored (it has no context), and a last window of a
single token, which has nothing to score, is not run. The model reads ``x_b..x_{e-2}`` (the
logits of a window's last token predict nothing, so it is not fed; causal models give the same
predictions). Every token is scored at most once, and::

    ppl = exp( Σ_scored −log p(x_i | x_b..x_{i−1}) / n_scored )

The Hugging Face recipe weights each window's mean loss by ``n_valid_labels − 1``; that equals
the number of scored tokens only when a window's first token is a label (the first window, or
``S = W``). Here the exact count is used, so the result is the exact per-token mean.

Word perplexity and bits per byte (lm-evaluation-harness ``loglikelihood_rolling``)
-------------------------------------------------------------------------------------
Each document is tokenized on its own without special tokens
(:func:`neuronbench.data.tokenize_documents`), ``t_0..t_{n-1}``, and cut into disjoint windows of
``L = max_length`` predictions, as lm-eval's ``get_rolling_token_windows(token_list, prefix_token,
max_seq_len=L, context_len=1)`` followed by ``make_disjoint_window``:

* the first window is ``[prefix] + t_0..t_{L'-2}`` predicting ``t_0..t_{L'-1}`` (``L' = min(L,
  n)``): the first token is predicted from the *prefix token* alone. The prefix token is
  ``tokenizer.bos_token_id``, else ``tokenizer.eos_token_id`` (lm-eval's ``prefix_token_id``), or
  the ``prefix_token_id`` argument;
* every later window predicts the next ``min(L, remaining)`` tokens ``t_s..t_{e-1}``; the model
  reads ``t_{e-L-1}..t_{e-2}`` (exactly ``L`` tokens), so the scored tokens are conditioned on the
  tokens before them within the window (at least one; a short last window gets a longer context).

Every token of every document is scored exactly once. With ``NLL`` the total over all documents::

    word_perplexity = exp(NLL / words),   words = Σ_docs len(re.split(r"\\s+", doc))
    byte_perplexity = exp(NLL / bytes),   bytes = Σ_docs len(doc.encode("utf-8"))
    bits_per_byte   = NLL / (bytes · ln 2)

(lm-eval's ``count_words``/``count_bytes`` on the original document text, ``Corpus.counted``: for
WikiText in the ``lm-eval`` format the page before detokenization, as lm-eval's ``wikitext`` task
counts; a document that starts or ends with whitespace counts one empty "word" there, exactly as
lm-eval does.)

A NaN or infinite NLL on a scored token raises :class:`NonFiniteLossError` naming the window;
nothing is skipped.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from neuronbench.data import Corpus, token_stream, tokenize_documents
from neuronbench.batching import fit_batch_size, windows_per_batch
from neuronbench.errors import ConfigError, CorpusError, NonFiniteLossError

DEFAULT_MAX_LENGTH = 1024
"""Window used when the model has no context limit, and the cap of the default window."""

CONTEXT_ATTRIBUTES = ("n_positions", "max_position_embeddings")
IGNORE_INDEX = -100
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------------------------
# Window and stride


def model_context_length(config: Any) -> int | None:
    """The model's context limit: ``config.n_positions`` or ``max_position_embeddings``;
    ``None`` for models without one (Mamba)."""
    for attribute in CONTEXT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if value is not None:
            return int(value)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_window(config: Any, max_length: int | None = None) -> int:
    """The window ``W``: ``max_length``, or by default ``min(context, 1024)`` (1024 without a
    context limit). Raises ``ConfigError`` naming the valid range ``2..context``."""
    context = model_context_length(config)
    if max_length is None:
        return min(context or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
    upper = "its context" if context is None else str(context)
    if not _is_int(max_length) or max_length < 2 or (context is not None and max_length > context):
        raise ConfigError(
            f"max_length (window) {max_length!r} is out of range: valid windows are 2..{upper} "
            "tokens for this model (a window needs one token of context and one to score)"
        )
    return max_length


def resolve_stride(window: int, stride: int | None = None) -> int:
    """The stride ``S``: ``stride``, or by default ``W // 2``. Valid strides are ``1..W``."""
    if stride is None:
        return max(window // 2, 1)
    if not _is_int(stride) or not 1 <= stride <= window:
        raise ConfigError(
            f"stride {stride!r} is out of range for a window of {window} tokens: valid strides "
            f"are 1..{window}"
        )
    return stride


# --------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True, eq=False)
class ScoringWindows:
    """Windows ready to score.

    ``inputs`` ``[n, T]`` are the tokens the model reads (right-padded, ``attention_mask`` 0 on
    padding); ``targets`` ``[n, T]`` the token predicted at each position, :data:`IGNORE_INDEX`
    where nothing is scored; ``lengths`` the real length of each window; ``starts`` the offset
    of each window's first input token in its stream or document; ``documents`` the document
    index of each window (0 for a single stream).
    """

    inputs: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    starts: tuple[int, ...]
    documents: tuple[int, ...]

    @property
    def n_windows(self) -> int:
        return self.inputs.shape[0]

    @property
    def n_scored(self) -> int:
        """Number of scored tokens over all windows."""
        return int((self.targets != IGNORE_INDEX).sum())

    def describe(self, index: int) -> str:
        """Human name of window ``index`` for error messages."""
        return (f"window {index} (document {self.documents[index]}, starting at token offset "
                f"{self.starts[index]})")


def _pack(sequences: Sequence[torch.Tensor], n_scored: Sequence[int], starts: Sequence[int],
          documents: Sequence[int], pad_id: int) -> ScoringWindows:
    """Pack windows given as full sequences ``s`` (model reads ``s[:-1]``, predicts ``s[1:]``,
    the last ``n_scored`` predictions count) into padded tensors."""
    width = max(s.numel() for s in sequences) - 1
    n = len(sequences)
    inputs = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    lengths = torch.tensor([s.numel() - 1 for s in sequences], dtype=torch.long)
    for row, (seq, k) in enumerate(zip(sequences, n_scored)):
        m = seq.numel() - 1
        inputs[row, :m] = seq[:-1]
        mask[row, :m] = 1
        targets[row, m - k : m] = seq[m + 1 - k :]
    return ScoringWindows(inputs, mask, targets, lengths, tuple(starts), tuple(documents))


def sliding_windows(stream: torch.Tensor, window: int, stride: int, pad_id: int = 0) -> ScoringWindows:
    """The sliding windows of the module docstring over one 1-D token ``stream``.

    Raises ``CorpusError`` when the stream is shorter than one window.
    """
    n = stream.numel()
    if n < window:
        raise CorpusError(
            f"the token stream ({n} tokens) is too small to hold one window of {window} tokens: "
            "use a larger split or more --max-tokens, or a smaller --max-length"
        )
    sequences, scored, starts = [], [], []
    previous_end = 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        n_scored = end - max(previous_end, begin + 1)
        if n_scored > 0:
            sequences.append(stream[begin:end])
            scored.append(n_scored)
            starts.append(begin)
        previous_end = end
        if end == n:
            break
    return _pack(sequences, scored, starts, [0] * len(starts), pad_id)


def rolling_token_windows(tokens: Sequence[int], prefix_token: int, max_length: int
                          ) -> list[tuple[list[int], int]]:
    """lm-eval's disjoint rolling windows of one document, as ``(sequence, n_scored)``.

    ``sequence`` is context + continuation (the model reads ``sequence[:-1]``); the continuation
    is its last ``n_scored`` tokens. Equivalent to ``make_disjoint_window`` applied to
    ``get_rolling_token_windows(tokens, prefix_token, max_length, context_len=1)``.
    """
    tokens = list(tokens)
    first = min(max_length, len(tokens))
    windows = [([prefix_token, *tokens[:first]], first)] if tokens else []
    predicted = first
    while predicted < len(tokens):
        end = predicted + min(len(tokens) - predicted, max_length)
        windows.append((tokens[end - max_length - 1 : end], end - predicted))
        predicted = end
    return windows


def rolling_windows(documents: Sequence[Sequence[int]], prefix_token: int, max_length: int,
                    pad_id: int = 0) -> ScoringWindows:
    """:func:`rolling_token_windows` of every document, packed. ``starts`` is the offset in the
    document of each window's first scored token. Raises ``CorpusError`` for an empty document
    (it would have words but no tokens)."""
    sequences, scored, starts, owners = [], [], [], []
    for index, tokens in enumerate(documents):
        if not tokens:
            raise CorpusError(f"document {index} tokenizes to no tokens: it cannot be scored")
        offset = 0
        for sequence, k in rolling_token_windows(tokens, prefix_token, max_length):
            sequences.append(torch.tensor(sequence, dtype=torch.long))
            scored.append(k)
            starts.append(offset)
            owners.append(index)
            offset += k
    return _pack(sequences, scored, starts, owners, pad_id)


# --------------------------------------------------------------------------------------------
# Scoring


def _batch_order(windows: ScoringWindows) -> list[int]:
    """Window indices, longest first (stable), so that a batch pads little."""
    return sorted(range(windows.n_windows), key=lambda i: -int(windows.lengths[i]))


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position NLL ``−log softmax(logits_t)[targets_t]`` in at least float32, shaped like
    ``targets``; a target of :data:`IGNORE_INDEX` gives 0. Every next-token loss of the project
    (perplexity, knockout scores, attention-unit gradients, the built-in models' evaluation) is this."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none").view(targets.shape)


def _window_nll(model: nn.Module, windows: ScoringWindows, rows: list[int],
                device: torch.device) -> torch.Tensor:
    """Summed NLL (float64) of the scored tokens of the windows ``rows``; raises
    :class:`NonFiniteLossError` naming the first window with a NaN/inf NLL."""
    width = int(windows.lengths[rows].max())
    index = torch.tensor(rows)
    inputs = windows.inputs[index, :width].to(device)
    mask = windows.attention_mask[index, :width].to(device)
    targets = windows.targets[index, :width].to(device)
    nll = token_nll(model(input_ids=inputs, attention_mask=mask, use_cache=False).logits, targets)
    scored = targets != IGNORE_INDEX
    bad = (~torch.isfinite(nll) & scored).any(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0])
        value = nll[row][scored[row] & ~torch.isfinite(nll[row])][0].item()
        raise NonFiniteLossError(
            f"non-finite negative log-likelihood ({value}) in {windows.describe(rows[row])}: "
            "the model produced NaN/inf logits there (check the dtype, e.g. --dtype float32, "
            "and any ablation applied)"
        )
    return torch.where(scored, nll, 0.0).double().sum(dim=1).cpu()


FittedSizes = MutableMapping[nn.Module, dict]
"""The batch sizes that the probe of :func:`score_windows` found, ``{model: {requested: fitted}}``:
an evaluation keeps them, so that its repeated scorings (ablation conditions and controls, whose
hooks add no memory of note) probe once per model."""


def fitted_sizes() -> FittedSizes:
    """An empty :data:`FittedSizes` that does not keep its models alive."""
    return weakref.WeakKeyDictionary()


def score_windows(model: nn.Module, windows: ScoringWindows, batch_size: int | None = None,
                  progress: bool = False, fitted: FittedSizes | None = None) -> torch.Tensor:
    """Summed NLL (nats, float64) of each window's scored tokens, ``[n_windows]``.

    Windows are run in batches of ``batch_size`` (``None``:
    :func:`neuronbench.batching.windows_per_batch` of the longest window; longest first, padded on
    the right to the batch's longest window) under ``torch.inference_mode`` with
    ``use_cache=False``. On a GPU the batch size is first probed by scoring the longest windows
    (forward, float32 logits and loss; the result discarded) and halved on out-of-memory
    (:func:`neuronbench.batching.fit_batch_size`), once per model and requested size when
    ``fitted`` keeps what was found.
    """
    device = next(model.parameters()).device
    order = _batch_order(windows)
    requested = min(windows_per_batch(batch_size, windows.inputs.shape[1]), len(order))
    sizes = {} if fitted is None else fitted.setdefault(model, {})
    if requested not in sizes:
        sizes[requested] = fit_batch_size(lambda size: _window_nll(model, windows, order[:size], device),
                                          requested, device)
    batch_size = sizes[requested]
    totals = torch.zeros(windows.n_windows, dtype=torch.float64)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for rows in tqdm(chunks, desc="perplexity", unit="batch", disable=not progress):
            totals[torch.tensor(rows)] = _window_nll(model, windows, rows, device)
    return totals


# --------------------------------------------------------------------------------------------
# Token perplexity


@dataclass(frozen=True)
class TokenPerplexity:
    """Sliding-window token perplexity: ``ppl = exp(nll_sum / n_tokens)``."""

    nll_sum: float
    n_tokens: int
    window: int
    stride: int
    n_windows: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)

    def to_record(self) -> dict:
        return {"metric": "token_perplexity", "method": "sliding_window", "ppl": self.ppl,
                "nll_sum": self.nll_sum, "mean_nll": self.mean_nll, "tokens_scored": self.n_tokens,
                "window": self.window, "stride": self.stride, "n_windows": self.n_windows}


@dataclass(frozen=True, eq=False)
class TokenEvaluation:
    """Sliding windows of one token stream, built once and scored under any ablation.

    ``source`` describes where the stream came from (corpus, split, hash), for results.
    """

    windows: ScoringWindows
    window: int
    stride: int
    n_stream_tokens: int
    source: dict = field(default_factory=dict)
    fitted: FittedSizes = field(default_factory=fitted_sizes, init=False, repr=False, compare=False)

    def evaluate(self, model: nn.Module, batch_size: int | None = None,
                 progress: bool = False) -> TokenPerplexity:
        nll = score_windows(model, self.windows, batch_size, progress, self.fitted)
        return TokenPerplexity(float(nll.sum()), self.windows.n_scored, self.window, self.stride,
                               self.windows.n_windows)


def prepare_token_evaluation(config: Any, stream: torch.Tensor, max_length: int | None = None,
                             stride: int | None = None, pad_id: int = 0,
                             source: dict | None = None) -> TokenEvaluation:
    """Validate window and stride against the model ``config`` and cut ``stream`` into
    sliding windows (see the module docstring)."""
    window = resolve_window(config, max_length)
    step = resolve_stride(window, stride)
    windows = sliding_windows(stream, window, step, pad_id)
    return TokenEvaluation(windows, window, step, stream.numel(), dict(source or {}))


def corpus_source(corpus: Corpus) -> dict:
    """Provenance of a corpus split for results."""
    return {"dataset": corpus.name, "split": corpus.split, "dataset_sha256": corpus.sha256,
            "preprocessing": corpus.preprocessing}


def token_evaluation_for_corpus(config: Any, corpus: Corpus, tokenizer: Any,
                                max_length: int | None = None, stride: int | None = None,
                                max_tokens: int | None = None) -> TokenEvaluation:
    """:func:`prepare_token_evaluation` over :func:`neuronbench.data.token_stream` of ``corpus``."""
    stream = token_stream(corpus, tokenizer, max_tokens)
    try:
        return prepare_token_evaluation(config, stream, max_length, stride,
                                        source=corpus_source(corpus))
    except CorpusError as error:
        raise CorpusError(f"corpus {corpus.name!r}, split {corpus.split!r}: {error}") from error


def token_perplexity(model: nn.Module, stream: torch.Tensor, max_length: int | None = None,
                     stride: int | None = None, batch_size: int | None = None,
                     progress: bool = False) -> TokenPerplexity:
    """Sliding-window token perplexity of ``model`` over ``stream`` (module docstring)."""
    evaluation = prepare_token_evaluation(model.config, stream, max_length, stride)
    return evaluation.evaluate(model, batch_size, progress)


# --------------------------------------------------------------------------------------------
# Word perplexity and bits per byte


def count_words(text: str) -> int:
    """lm-eval's word count: ``len(re.split(r"\\s+", text))``."""
    return len(_WHITESPACE.split(text))


def count_bytes(text: str) -> int:
    """UTF-8 bytes of ``text``."""
    return len(text.encode("utf-8"))


def prefix_token_of(tokenizer: Any, prefix_token_id: int | None = None) -> int:
    """lm-eval's prefix token: the argument, else BOS, else EOS; ``ConfigError`` if none."""
    for candidate in (prefix_token_id, getattr(tokenizer, "bos_token_id", None),
                      getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise ConfigError("the tokenizer has neither a BOS nor an EOS token: pass prefix_token_id, "
                      "the token the first token of each document is predicted from")


@dataclass(frozen=True)
class DocumentPerplexity:
    """Document-level rolling log-likelihood (lm-eval convention) and its normalisations."""

    nll_sum: float
    n_tokens: int
    n_words: int
    n_bytes: int
    n_documents: int
    max_length: int
    prefix_token_id: int
    n_windows: int

    @property
    def ppl(self) -> float:
        """Token perplexity of the documents: ``exp(nll_sum / n_tokens)``."""
        return math.exp(self.nll_sum / self.n_tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll_sum / self.n_words)

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll_sum / self.n_bytes)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / (self.n_bytes * math.log(2))

    def to_record(self) -> dict:
        return {"metric": "document_perplexity", "method": "lm_eval_loglikelihood_rolling",
                "ppl": self.ppl, "word_perplexity": self.word_perplexity,
                "byte_perplexity": self.byte_perplexity, "bits_per_byte": self.bits_per_byte,
                "nll_sum": self.nll_sum, "tokens_scored": self.n_tokens, "words": self.n_words,
                "bytes": self.n_bytes, "documents": self.n_documents, "max_length": self.max_length,
                "prefix_token_id": self.prefix_token_id, "n_windows": self.n_windows}


@dataclass(frozen=True, eq=False)
class DocumentEvaluation:
    """Rolling windows of a corpus's documents with their word and byte counts."""

    windows: ScoringWindows
    max_length: int
    prefix_token_id: int
    n_words: int
    n_bytes: int
    n_documents: int
    source: dict = field(default_factory=dict)
    fitted: FittedSizes = field(default_factory=fitted_sizes, init=False, repr=False, compare=False)

    def evaluate(self, model: nn.Module, batch_size: int | None = None,
                 progress: bool = False) -> DocumentPerplexity:
        nll = score_windows(model, self.windows, batch_size, progress, self.fitted)
        return DocumentPerplexity(float(nll.sum()), self.windows.n_scored, self.n_words,
                                  self.n_bytes, self.n_documents, self.max_length,
                                  self.prefix_token_id, self.windows.n_windows)


def prepare_document_evaluation(config: Any, corpus: Corpus, tokenizer: Any,
                                max_length: int | None = None,
                                prefix_token_id: int | None = None) -> DocumentEvaluation:
    """Tokenize each document of ``corpus`` and cut it into lm-eval rolling windows."""
    length = resolve_window(config, max_length)
    prefix = prefix_token_of(tokenizer, prefix_token_id)
    windows = rolling_windows(tokenize_documents(corpus, tokenizer), prefix, length, prefix)
    return DocumentEvaluation(
        windows, length, prefix,
        n_words=sum(count_words(d) for d in corpus.counted),
        n_bytes=sum(count_bytes(d) for d in corpus.counted),
        n_documents=len(corpus.documents), source=corpus_source(corpus))


def document_perplexity(model: nn.Module, corpus: Corpus, tokenizer: Any,
                        max_length: int | None = None, prefix_token_id: int | None = None,
                        batch_size: int | None = None, progress: bool = False
                        ) -> DocumentPerplexity:
    """Word perplexity, byte perplexity and bits per byte of ``corpus`` (module docstring)."""
    evaluation = prepare_document_evaluation(model.config, corpus, tokenizer, max_length,
                                             prefix_token_id)
    return evaluation.evaluate(model, batch_size, progress)
