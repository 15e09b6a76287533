"""WikiText as lm-evaluation-harness's ``wikitext`` task sees it (document-level pages, its
detokenizer, words and bytes counted before detokenization), and the raw convention, on
hand-made documents whose expected text is written out by hand."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from neuronbench import data
from neuronbench.data import load_corpus, wikitext_detokenize, wikitext_pages
from neuronbench.perplexity import corpus_source, prepare_document_evaluation
from neuronbench.tokenizer import train_bpe_tokenizer

RAW = (
    " \n"
    " = Alpha = \n"
    " \n"
    " Alpha is a letter @-@ like thing , used in 1 @,@ 000 places . \n"
    " \n"
    " = = History = = \n"
    " \n"
    ' It was " early " ( circa 1990 ) ; maybe . \n'
    " \n"
    " = Beta = \n"
    " \n"
    " Beta 's sister is 5 @.@ 5 \N{DEGREE SIGN} warm . \n"
    " \n"
)
PAGES = (
    " = Alpha = \n \n Alpha is a letter @-@ like thing , used in 1 @,@ 000 places . \n \n = = History = = \n \n"
    ' It was " early " ( circa 1990 ) ; maybe . \n ',
    " = Beta = \n \n Beta 's sister is 5 @.@ 5 \N{DEGREE SIGN} warm . \n \n",
)
DETOKENIZED = (
    ' = Alpha =\n\nAlpha is a letter-like thing, used in 1,000 places.\n\n== History ==\n\nIt was "early" (circa 1990);'
    " maybe.\n",
    " = Beta =\n\nBeta's sister is 5.5\N{DEGREE SIGN}warm.\n\n",
)
RAW_ARTICLES = (
    " = Alpha = \n\n Alpha is a letter @-@ like thing , used in 1 @,@ 000 places . \n\n = = History = = \n\n"
    ' It was " early " ( circa 1990 ) ; maybe . ',
    " = Beta = \n\n Beta 's sister is 5 @.@ 5 \N{DEGREE SIGN} warm . ",
)


@pytest.fixture
def raw_dir(tmp_path):
    for suffix in ("train", "valid", "test"):
        (tmp_path / f"wiki.{suffix}.raw").write_text(RAW, encoding="utf-8")
    return tmp_path


def test_document_level_pages_start_at_level_one_headings():
    assert tuple(wikitext_pages(RAW.split("\n"))) == PAGES  # the blank text before the first heading is no page


@pytest.mark.parametrize(("raw", "expected"), [
    ("the boys ' toys", "the boys' toys"),
    ("a ( b ) [ c ] { d } ' e '", "a (b) [c] {d} 'e'"),
    ("= = = = Deep = = = =", "==== Deep ===="),
    ("N is N and it 's", "N is 1 and it's"),
    ("x : y ! z ? w", "x: y! z? w"),
])
def test_detokenizer_rules(raw, expected):
    assert wikitext_detokenize(raw) == expected


def test_lm_eval_format_is_the_default_and_counts_on_the_pages(raw_dir):
    corpus = load_corpus(str(raw_dir), "test")
    assert corpus.documents == DETOKENIZED and corpus.originals == PAGES and corpus.counted == PAGES
    assert corpus.preprocessing == "wikitext:lm-eval" and corpus_source(corpus)["preprocessing"] == "wikitext:lm-eval"
    tokenizer = train_bpe_tokenizer([RAW], 300)
    evaluation = prepare_document_evaluation(SimpleNamespace(n_positions=64), corpus, tokenizer, 32)
    # by hand: Alpha 37 = "" + 3 + 15 + 5 + 12 + "", Beta 15 = "" + 3 + 10 + "" (edges count an empty word)
    assert evaluation.n_words == sum(len(re.split(r"\s+", page)) for page in PAGES) == 52
    assert evaluation.n_bytes == sum(len(page.encode("utf-8")) for page in PAGES)
    scored = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DETOKENIZED)
    assert evaluation.windows.n_scored == scored


def test_raw_format_keeps_the_articles(raw_dir):
    corpus = load_corpus(str(raw_dir), "test", wikitext_format="raw")
    assert corpus.documents == RAW_ARTICLES and corpus.originals is None and corpus.counted == RAW_ARTICLES
    assert corpus.preprocessing == "wikitext:raw"
    assert corpus.sha256 != load_corpus(str(raw_dir), "test").sha256


def test_datasets_rows_give_the_same_documents_as_the_raw_file(raw_dir, monkeypatch):
    """``datasets`` yields each line with its newline and "" for a blank line."""
    datasets = pytest.importorskip("datasets")
    rows = [line if line.strip() else "" for line in RAW.splitlines(keepends=True)]
    monkeypatch.setattr(data, "hub_offline", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, split, **kwargs: {"text": rows})
    for wikitext_format in ("lm-eval", "raw"):
        from_rows = load_corpus("wikitext-2", "test", wikitext_format)
        from_file = load_corpus(str(raw_dir), "test", wikitext_format)
        assert (from_rows.documents, from_rows.counted) == (from_file.documents, from_file.counted)


def test_unknown_format_names_the_choices(raw_dir):
    with pytest.raises(data.ConfigError, match="--wikitext-format 'plain' is not valid: choose one of lm-eval, raw"):
        load_corpus(str(raw_dir), "test", "plain")
