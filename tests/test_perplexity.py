"""Perplexity equals straightforward references: the Hugging Face sliding-window recipe, and a
hand computation of lm-evaluation-harness rolling log-likelihoods."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from neuronbench.data import load_corpus, make_corpus, token_stream
from neuronbench.errors import ConfigError, CorpusError, NonFiniteLossError
from neuronbench.models import load_model
from neuronbench.perplexity import (IGNORE_INDEX, document_perplexity,
                                    prepare_document_evaluation, prepare_token_evaluation,
                                    prefix_token_of, resolve_stride, resolve_window,
                                    rolling_token_windows, sliding_windows,
                                    token_evaluation_for_corpus, token_nll, token_perplexity)

WINDOW = 64


@pytest.fixture(scope="module")
def gpt2(toy_model_dir):
    return load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def mamba(toy_model_dir):
    return load_model(str(toy_model_dir("mamba")), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def stream(gpt2):
    """9 full windows plus one token: with stride = window the last window has nothing to score."""
    return token_stream(load_corpus("pydocs", "test"), gpt2.tokenizer, max_tokens=9 * WINDOW + 1)


def hf_reference(model, stream: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """The Hugging Face "perplexity of fixed-length models" loop, unbatched, with the model's own
    loss; each window's mean loss is weighted by the labels it really scored (after the shift)."""
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, stream.numel(), stride):
        end = min(begin + window, stream.numel())
        trg_len = end - prev_end
        input_ids = stream[begin:end].unsqueeze(0)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        counted = int((target_ids[:, 1:] != -100).sum())
        if counted:
            with torch.no_grad():
                loss = model(input_ids, labels=target_ids).loss
            nll_sum += loss.item() * counted
            n_scored += counted
        prev_end = end
        if end == stream.numel():
            break
    return math.exp(nll_sum / n_scored), n_scored


@pytest.mark.parametrize("family,stride", [("gpt2", 16), ("gpt2", 50), ("gpt2", WINDOW),
                                           ("mamba", 50), ("mamba", WINDOW)])
def test_token_perplexity_equals_hf_sliding_window_loop(request, stream, family, stride):
    loaded = request.getfixturevalue(family)
    result = token_perplexity(loaded.model, stream, max_length=WINDOW, stride=stride, batch_size=4)
    ppl, n_scored = hf_reference(loaded.model, stream, WINDOW, stride)
    assert result.n_tokens == n_scored
    assert result.ppl == pytest.approx(ppl, rel=1e-6)
    assert (result.window, result.stride) == (WINDOW, stride)


def test_stride_equal_to_window_scores_all_but_first_token_of_each_window(stream, gpt2):
    result = token_perplexity(gpt2.model, stream, max_length=WINDOW, stride=WINDOW)
    assert result.n_tokens == 9 * (WINDOW - 1)
    assert result.n_windows == 9  # the one-token tail window has nothing to score


def test_sliding_windows_score_every_token_once_after_the_first():
    windows = sliding_windows(torch.arange(10), window=4, stride=2)
    assert windows.starts == (0, 2, 4, 6)
    scored = [windows.targets[i][windows.targets[i] != -100].tolist() for i in range(4)]
    assert scored == [[1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert windows.inputs[0].tolist() == [0, 1, 2]
    assert windows.n_scored == 9


def test_defaults_follow_the_model_context(gpt2, mamba):
    assert resolve_window(gpt2.model.config) == 256  # toy context
    assert resolve_window(mamba.model.config) == 1024  # no context limit
    assert resolve_window(SimpleNamespace(n_positions=2048)) == 1024  # capped
    assert resolve_window(SimpleNamespace(max_position_embeddings=512)) == 512
    assert resolve_stride(256) == 128
    assert resolve_window(mamba.model.config, 5000) == 5000


@pytest.mark.parametrize("stride", [0, -3, WINDOW + 1, 2.5])
def test_bad_stride_is_a_config_error_with_the_range(stride):
    with pytest.raises(ConfigError, match=f"1..{WINDOW}"):
        resolve_stride(WINDOW, stride)


@pytest.mark.parametrize("window", [257, 1, 0])
def test_window_outside_the_model_context_is_a_config_error(gpt2, window):
    with pytest.raises(ConfigError, match="2..256"):
        resolve_window(gpt2.model.config, window)


def test_split_too_small_for_one_window_says_so(gpt2):
    tiny = make_corpus("tiny", "test", ["just a few words"], "test")
    with pytest.raises(CorpusError, match="too small to hold one window of 64 tokens") as info:
        token_evaluation_for_corpus(gpt2.model.config, tiny, gpt2.tokenizer, max_length=64)
    assert "'tiny'" in str(info.value)


def test_non_finite_loss_names_the_window(toy_model_dir):
    loaded = load_model(str(toy_model_dir("gpt2")), device="cpu", dtype="float32")
    poison = 300
    stream = torch.arange(4 * WINDOW) % 200
    stream[2 * WINDOW + 10] = poison
    wte = loaded.model.transformer.wte  # tied to the LM head: poison its output, not its weight
    wte.register_forward_hook(lambda _m, inputs, out: torch.where(
        (inputs[0] == poison).unsqueeze(-1), float("nan"), out))
    evaluation = prepare_token_evaluation(loaded.model.config, stream, WINDOW, WINDOW)
    with pytest.raises(NonFiniteLossError, match=f"starting at token offset {2 * WINDOW}\\b"):
        evaluation.evaluate(loaded.model, batch_size=2)


# --------------------------------------------------------------------------------------------
# lm-eval rolling windows, word perplexity, bits per byte


def lm_eval_rolling(token_list, prefix_token, max_seq_len):
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window, transcribed."""
    pred_len, predicted = max_seq_len, 0
    first = min(max_seq_len, len(token_list))
    pairs = [([prefix_token] + token_list[: first - 1], token_list[:first])]
    predicted += first
    while predicted < len(token_list):
        n = min(len(token_list) - predicted, pred_len)
        end = predicted + n
        pairs.append((token_list[end - max_seq_len - 1 : end - 1], token_list[end - n : end]))
        predicted += n
    return [(a[: len(a) - (len(b) - 1)], b) for a, b in pairs]


def test_rolling_windows_reproduce_lm_eval_gold():
    # lm-eval's own test_get_rolling_token_windows_v1 (max_seq_len=10, context_len=1), disjoint
    expected = [([-100, *range(0, 10)], 10), (list(range(9, 20)), 10),
                (list(range(19, 30)), 10), (list(range(23, 34)), 4)]
    assert rolling_token_windows(list(range(34)), -100, 10) == expected
    assert rolling_token_windows([5, 6, 7], -1, 10) == [([-1, 5, 6, 7], 3)]
    for tokens, length in [(list(range(34)), 10), (list(range(7)), 3), (list(range(20)), 5)]:
        ours = rolling_token_windows(tokens, -1, length)
        theirs = lm_eval_rolling(tokens, -1, length)
        assert [seq for seq, _ in ours] == [a + b for a, b in theirs]
        assert [k for _, k in ours] == [len(b) for _, b in theirs]


DOCS = ["The quick brown fox jumps over the lazy dog.\nCafé au lait", " x = 1  # leading space"]
WORDS = 12 + 7  # lm-eval re.split(r"\s+"): the leading space of document 2 adds an empty word
BYTES = 58 + 23  # "é" is 2 UTF-8 bytes


def hand_loglikelihood(model, tokenizer, text: str, max_length: int) -> tuple[float, int]:
    """Σ log p over lm-eval's rolling windows, one unpadded forward pass per window."""
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = 0.0
    for context, continuation in lm_eval_rolling(tokens, tokenizer.bos_token_id, max_length):
        inputs = torch.tensor([(context + continuation)[:-1]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(inputs).logits[0].double(), dim=-1)
        positions = range(inputs.shape[1] - len(continuation), inputs.shape[1])
        total += sum(logprobs[p, t].item() for p, t in zip(positions, continuation))
    return total, len(tokens)


def test_word_perplexity_and_bits_per_byte_equal_hand_computation(gpt2):
    corpus = make_corpus("two-docs", "test", DOCS, "in-test")
    result = document_perplexity(gpt2.model, corpus, gpt2.tokenizer, max_length=8, batch_size=3)
    loglik, n_tokens = 0.0, 0
    for doc in DOCS:
        ll, n = hand_loglikelihood(gpt2.model, gpt2.tokenizer, doc, 8)
        loglik, n_tokens = loglik + ll, n_tokens + n
    assert (result.n_words, result.n_bytes, result.n_tokens) == (WORDS, BYTES, n_tokens)
    assert n_tokens > 2 * 8  # every document spans several windows
    assert result.word_perplexity == pytest.approx(math.exp(-loglik / WORDS), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(-loglik / (BYTES * math.log(2)), rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(-loglik / n_tokens), rel=1e-6)
    assert result.prefix_token_id == gpt2.tokenizer.bos_token_id
    assert re.split(r"\s+", DOCS[1])[0] == ""


def test_document_windows_record_counts(gpt2):
    corpus = make_corpus("two-docs", "test", DOCS, "in-test")
    evaluation = prepare_document_evaluation(gpt2.model.config, corpus, gpt2.tokenizer, 8)
    record = evaluation.evaluate(gpt2.model).to_record()
    assert record["words"] == WORDS and record["bytes"] == BYTES and record["documents"] == 2
    assert isinstance(record["bits_per_byte"], float) and record["tokens_scored"] > 0


def test_missing_prefix_token_is_a_config_error():
    with pytest.raises(ConfigError, match="prefix_token_id"):
        prefix_token_of(SimpleNamespace(bos_token_id=None, eos_token_id=None))
    assert prefix_token_of(SimpleNamespace(bos_token_id=None, eos_token_id=7)) == 7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_token_nll_is_the_log_softmax_of_the_target_in_at_least_float32(dtype):
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    targets = torch.tensor([[1, 6, 0, 3, IGNORE_INDEX], [2, 2, 5, IGNORE_INDEX, IGNORE_INDEX]])
    nll = token_nll(logits, targets)
    assert nll.dtype == torch.promote_types(dtype, torch.float32) and nll.shape == targets.shape
    reference = -torch.log_softmax(logits.double(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    scored = targets != IGNORE_INDEX
    torch.testing.assert_close(nll.double()[scored], reference[scored], rtol=1e-6, atol=1e-6)
    assert (nll[~scored] == 0).all()
