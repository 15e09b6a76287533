"""Tests of neuronbench.data: corpora, deterministic splits, tokenization into windows."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib
import time

import pytest
import torch

from neuronbench import data, hub
from neuronbench.data import (
    CORPORA,
    SPLITS,
    Corpus,
    load_corpus,
    token_stream,
    tokenize_documents,
    tokenize_windows,
    wikitext_articles,
)
from neuronbench.errors import ConfigError, CorpusError


# ------------------------------------------------------------------------------------------
# fixtures


def _tiny_tokenizer(eos: bool = True, pad: bool = False):
    """A byte-level BPE trained here on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<eos>", "<pad>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=alphabet
    )
    sentences = ["the cat sat on the mat", "def function return value", "import module class"]
    tok.train_from_iterator(sentences * 4, trainer)
    kwargs = {}
    if eos:
        kwargs["eos_token"] = "<eos>"
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=16, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    return _tiny_tokenizer()


@pytest.fixture(scope="module")
def pydocs():
    return {s: load_corpus("pydocs", s) for s in SPLITS}


def _corpus(docs, name="mem", split="test"):
    return data.make_corpus(name, split, docs, "memory")


# ------------------------------------------------------------------------------------------
# pydocs


def test_registry_and_splits_names():
    assert set(CORPORA) == {"pydocs", "wikitext-2"}
    assert SPLITS == ("train", "validation", "test")


def test_pydocs_is_deterministic(pydocs):
    for split in SPLITS:
        again = load_corpus("pydocs", split)
        assert again.documents == pydocs[split].documents
        assert again.sha256 == pydocs[split].sha256
        assert again.split == split and again.name == "pydocs"
        assert again.source.startswith("pydoc_data.topics (CPython ")


def test_pydocs_splits_disjoint_and_cover_all_topics(pydocs):
    from pydoc_data.topics import topics

    seen = [d for s in SPLITS for d in pydocs[s].documents]
    assert len(seen) == len(set(seen))  # no text in two splits (nor twice in one)
    assert set(seen) == {t for t in topics.values() if t.strip()}  # together: every topic's text
    assert topics["if"] == topics["else"]  # the one duplicate in 3.11: kept once, as "else"
    assert len(seen) == len(set(topics.values()))
    for split in SPLITS:  # each split keeps sorted-topic order
        order = {text: key for key, text in sorted(topics.items(), reverse=True)}  # first key
        keys = [order[d] for d in pydocs[split].documents]
        assert keys == sorted(keys)


def test_pydocs_sha256_matches_recomputation(pydocs):
    for split in SPLITS:
        corpus = pydocs[split]
        expected = hashlib.sha256("\n\n".join(corpus.documents).encode("utf-8")).hexdigest()
        assert corpus.sha256 == expected
        assert corpus.text == "\n\n".join(corpus.documents)
    assert len({pydocs[s].sha256 for s in SPLITS}) == 3


def test_pydocs_split_sizes(pydocs):
    chars = {s: sum(len(d) for d in pydocs[s].documents) for s in SPLITS}
    total = sum(chars.values())
    assert 0.74 <= chars["train"] / total <= 0.86
    for split in ("validation", "test"):
        assert 0.07 <= chars[split] / total <= 0.13, (split, chars)
        assert len(pydocs[split].documents) >= 3


def test_assign_splits_rule_is_order_independent_and_balanced():
    items = [(f"doc{i:03d}", "x" * (50 + (i * 37) % 200)) for i in range(200)]
    a = data.assign_splits(items)
    b = data.assign_splits(list(reversed(items)))
    assert a == b
    total = sum(len(t) for _, t in items)
    for split, frac in data.SPLIT_FRACTIONS.items():
        got = sum(len(t) for k, t in items if a[k] == split)
        assert abs(got / total - frac) < 0.02


def test_unknown_split_is_rejected():
    with pytest.raises(CorpusError, match="validation"):
        load_corpus("pydocs", "valid")


# ------------------------------------------------------------------------------------------
# tokenization


def test_tokenize_documents_matches_tokenizer(tokenizer, pydocs):
    corpus = pydocs["validation"]
    docs = tokenize_documents(corpus, tokenizer)
    assert len(docs) == len(corpus.documents)
    for text, ids in zip(corpus.documents[:3], docs[:3]):
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_token_stream_puts_eos_between_documents(tokenizer):
    corpus = _corpus(["the cat", "sat on", "the mat"])
    docs = tokenize_documents(corpus, tokenizer)
    eos = tokenizer.eos_token_id
    expected = docs[0] + [eos] + docs[1] + [eos] + docs[2]
    assert token_stream(corpus, tokenizer).tolist() == expected
    assert token_stream(corpus, tokenizer).dtype == torch.long


def test_token_stream_without_eos_concatenates(tokenizer):
    no_eos = _tiny_tokenizer(eos=False)
    assert no_eos.eos_token_id is None
    corpus = _corpus(["the cat", "sat on"])
    docs = tokenize_documents(corpus, no_eos)
    assert token_stream(corpus, no_eos).tolist() == docs[0] + docs[1]


def test_max_tokens_is_exact(tokenizer, pydocs):
    corpus = pydocs["test"]
    full = token_stream(corpus, tokenizer)
    capped = token_stream(corpus, tokenizer, max_tokens=1001)
    assert capped.tolist() == full[:1001].tolist()
    win = tokenize_windows(corpus, tokenizer, window=64, max_tokens=1001, pad_token_id=7)
    assert win.n_tokens == 1001
    assert win.input_ids.shape == (16, 64) == win.attention_mask.shape
    assert win.input_ids.dtype == torch.long and win.attention_mask.dtype == torch.long
    assert int(win.attention_mask.sum()) == 1001
    assert win.attention_mask[:15].all() and int(win.attention_mask[15].sum()) == 1001 - 15 * 64
    assert win.attention_mask[15, : 1001 - 960].all() and not win.attention_mask[15, 41:].any()
    assert (win.input_ids[15, 41:] == 7).all()
    assert win.input_ids.flatten()[:1001].tolist() == full[:1001].tolist()


def test_max_tokens_larger_than_corpus_uses_all(tokenizer):
    corpus = _corpus(["the cat sat", "on the mat"])
    n = token_stream(corpus, tokenizer).numel()
    win = tokenize_windows(corpus, tokenizer, window=4, max_tokens=n + 100)
    assert win.n_tokens == n
    assert int(win.attention_mask.sum()) == n


def test_default_pad_id_chain(tokenizer):
    corpus = _corpus(["the cat sat on the mat!"])
    n = token_stream(corpus, tokenizer).numel()
    window = n + 3
    with_pad = _tiny_tokenizer(pad=True)
    assert tokenize_windows(corpus, with_pad, window).input_ids[0, -1] == with_pad.pad_token_id
    eos_only = tokenize_windows(corpus, tokenizer, window)
    assert tokenizer.pad_token_id is None
    assert (eos_only.input_ids[0, n:] == tokenizer.eos_token_id).all()
    bare = tokenize_windows(corpus, _tiny_tokenizer(eos=False), window)
    assert (bare.input_ids[0, n:] == 0).all() and not bare.attention_mask[0, n:].any()


def test_drop_last(tokenizer, pydocs):
    corpus = pydocs["validation"]
    win = tokenize_windows(corpus, tokenizer, window=100, max_tokens=950, drop_last=True)
    assert win.input_ids.shape == (9, 100)
    assert win.n_tokens == 900 == int(win.attention_mask.sum())
    assert bool(win.attention_mask.all())
    exact = tokenize_windows(corpus, tokenizer, window=100, max_tokens=900, drop_last=True)
    assert torch.equal(exact.input_ids, win.input_ids)


def test_drop_last_too_small_raises(tokenizer):
    corpus = _corpus(["the cat"])
    n = token_stream(corpus, tokenizer).numel()
    with pytest.raises(CorpusError, match=rf"too small.*{n} tokens"):
        tokenize_windows(corpus, tokenizer, window=n + 1, drop_last=True)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_window_and_max_tokens(tokenizer, bad):
    corpus = _corpus(["the cat"])
    with pytest.raises(ConfigError, match="window"):
        tokenize_windows(corpus, tokenizer, window=bad)
    with pytest.raises(ConfigError, match="max_tokens"):
        tokenize_windows(corpus, tokenizer, window=4, max_tokens=bad)


def test_empty_token_stream_raises():
    corpus = _corpus(["something"], name="c", split="validation")
    null_tokenizer = lambda docs, **kw: {"input_ids": [[] for _ in docs]}  # noqa: E731
    with pytest.raises(CorpusError, match=r"'c'.*'validation'.*empty"):
        token_stream(corpus, null_tokenizer)


def test_long_document_no_length_warning(tokenizer, caplog):
    corpus = _corpus(["the cat sat on the mat " * 20])
    with caplog.at_level("WARNING"):
        token_stream(corpus, tokenizer)
    assert "longer than the specified maximum" not in caplog.text


# ------------------------------------------------------------------------------------------
# local WikiText raw files

RAW_TRAIN = (
    " \n"
    " = Alpha = \n"
    " \n"
    " Alpha is a letter @-@ like thing . \n"
    " \n"
    " = = History = = \n"
    " \n"
    " It was used early . \n"
    " = = = Details = = = \n"
    " More text . \n"
    " \n"
    " = Beta = \n"
    " \n"
    " Beta follows alpha . \n"
    " \n"
)


def _write_raw_dir(root, prefix="wiki"):
    root.mkdir(exist_ok=True)
    (root / f"{prefix}.train.raw").write_text(RAW_TRAIN, encoding="utf-8")
    (root / f"{prefix}.valid.raw").write_text(" = Gamma = \n \n Gamma text . \n", encoding="utf-8")
    (root / f"{prefix}.test.raw").write_text(" = Delta = \n Delta text . \n \n", encoding="utf-8")
    return root


def test_wikitext_raw_dir_groups_articles(tmp_path):
    root = _write_raw_dir(tmp_path / "wt")
    train = load_corpus(str(root), "train", wikitext_format="raw")
    assert train.documents == (
        " = Alpha = \n\n Alpha is a letter @-@ like thing . \n\n = = History = = \n\n"
        " It was used early . \n = = = Details = = = \n More text . ",
        " = Beta = \n\n Beta follows alpha . ",
    )
    assert train.name == str(root) and train.source.endswith("wiki.train.raw")
    assert load_corpus(str(root), "validation", "raw").documents == (" = Gamma = \n\n Gamma text . ",)
    assert load_corpus(str(root), "test", "raw").documents == (" = Delta = \n Delta text . ",)


def test_wikitext_grouping_same_for_datasets_rows_and_raw_file(tmp_path):
    root = _write_raw_dir(tmp_path / "wt")
    # datasets' wikitext builder yields each line with its "\n", and "" for blank lines
    rows = [line if line.strip() else "" for line in RAW_TRAIN.splitlines(keepends=True)]
    assert tuple(wikitext_articles(rows)) == load_corpus(str(root), "train", "raw").documents


def test_wikitext_heading_rule():
    assert data.is_wikitext_article_heading(" = A = \n")
    assert data.is_wikitext_article_heading(" = Title with words = ")
    assert not data.is_wikitext_article_heading(" = = Sub = = \n")
    assert not data.is_wikitext_article_heading(" = = = Subsub = = = ")
    assert not data.is_wikitext_article_heading(" A = B = C ")


def test_wikitext_raw_dir_other_prefix_and_missing_split(tmp_path):
    root = _write_raw_dir(tmp_path / "wt", prefix="wikitext2")
    assert len(load_corpus(str(root), "train").documents) == 2
    (root / "wikitext2.test.raw").unlink()
    with pytest.raises(CorpusError, match=r"test.*\.test\.raw"):
        load_corpus(str(root), "test")


# ------------------------------------------------------------------------------------------
# local text file and directory of .txt files


def _paragraph(i):
    return f"Paragraph number {i} says something about topic {i % 7}.\nIt has two lines."


def test_single_text_file_splits_paragraphs(tmp_path):
    paras = [_paragraph(i) for i in range(60)]
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(paras[:30]) + "\n \n\n" + "\n\n".join(paras[30:]) + "\n", "utf-8")
    splits = {s: load_corpus(str(path), s) for s in SPLITS}
    got = [d for s in SPLITS for d in splits[s].documents]
    assert sorted(got) == sorted(paras) and len(got) == len(set(got))
    for split in SPLITS:
        docs = splits[split].documents
        assert len(docs) >= 3
        assert [paras.index(d) for d in docs] == sorted(paras.index(d) for d in docs)
        assert splits[split].source == str(path)
    assert load_corpus(str(path), "test").documents == splits["test"].documents


def test_directory_of_txt_files(tmp_path):
    root = tmp_path / "texts"
    root.mkdir()
    texts = {f"f{i:02d}.txt": _paragraph(i) + "\n\n" + _paragraph(i + 100) for i in range(30)}
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "ignored.md").write_text("not a txt file", encoding="utf-8")
    splits = {s: load_corpus(str(root), s) for s in SPLITS}
    got = [d for s in SPLITS for d in splits[s].documents]
    assert sorted(got) == sorted(texts.values())
    assert all(len(splits[s].documents) >= 2 for s in SPLITS)
    total = sum(len(t) for t in texts.values())
    assert sum(len(d) for d in splits["train"].documents) / total > 0.7


# ------------------------------------------------------------------------------------------
# errors


def test_unknown_name_lists_known_corpora():
    with pytest.raises(CorpusError) as info:
        load_corpus("wikitext-103-nonexistent", "test")
    assert "pydocs" in str(info.value) and "wikitext-2" in str(info.value)


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "corpus.txt"
    with pytest.raises(CorpusError, match="does not exist") as info:
        load_corpus(str(missing), "train")
    assert str(missing) in str(info.value)


def test_empty_file_and_dir(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty") as info:
        load_corpus(str(empty), "train")
    assert str(empty) in str(info.value)
    folder = tmp_path / "emptydir"
    folder.mkdir()
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(str(folder), "train")


def test_split_without_text_names_corpus_and_split(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("one paragraph\n\nanother paragraph\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"two\.txt.*'test'.*empty"):
        load_corpus(str(path), "test")


def _assert_fails_fast_not_cached(split):
    start = time.monotonic()
    with pytest.raises(CorpusError) as info:
        load_corpus("wikitext-2", split)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "not" in message and "cache" in message and "offline" in message
    assert "pydocs" in message and "wiki.train.raw" in message


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Point the datasets and hub caches at empty folders, so nothing is cached."""
    pytest.importorskip("datasets")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_wikitext2_offline_env_fails_fast(empty_hf_cache):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    _assert_fails_fast_not_cached("test")


def test_wikitext2_unreachable_hub_fails_fast(empty_hf_cache, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: False)
    _assert_fails_fast_not_cached("validation")


def test_duplicate_texts_kept_once_so_splits_stay_disjoint():
    items = [(f"k{i:03d}", f"text {i % 40}") for i in range(120)]
    got = [d for s in SPLITS for d in data.split_documents(items, s)]
    assert sorted(got) == sorted({t for _, t in items})


def test_hub_probe_fails_quickly_on_closed_port(monkeypatch):
    import socket

    with socket.socket() as sock:  # find a local port, then close it: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    start = time.monotonic()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.monotonic() - start < 2.0


def test_corpus_is_frozen(pydocs):
    with pytest.raises(Exception):
        pydocs["test"].split = "train"  # type: ignore[misc]
    assert isinstance(pydocs["test"], Corpus)
