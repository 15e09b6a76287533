"""Corpora (a registry of named corpora and local paths) and their tokenization into windows.

Corpora
-------
:func:`load_corpus` returns a :class:`Corpus`: the documents of one split, in order, with the
SHA-256 of their text. Three kinds of source exist:

``pydocs``
    The English text of CPython's ``pydoc_data.topics.topics`` (topic -> text). Each topic is
    one whole document. The topics are split into train / validation / test by
    :func:`split_documents` with the topic name as key.
``wikitext-2``
    ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=...)`` (``validation`` is the
    upstream ``validation`` split). The hub is tried only when it is reachable; otherwise only the
    local ``datasets`` cache is used, and a corpus that is not cached fails at once with a
    :class:`~neuronbench.errors.CorpusError` that says how to fix it. By default
    (``--wikitext-format lm-eval``) the lines are grouped into lm-evaluation-harness's
    document-level pages (:func:`wikitext_pages`) and detokenized by its rules
    (:func:`wikitext_detokenize`), words and bytes being counted on the pages before that, as
    lm-eval's ``wikitext`` task does; ``--wikitext-format raw`` groups them into articles by
    :func:`wikitext_articles` with no detokenization.
a local path
    * a directory holding WikiText raw files (``*.train.raw``, ``*.valid.raw``, ``*.test.raw``,
      e.g. ``wiki.train.raw``): the file of the requested split, made into documents exactly as
      ``wikitext-2`` is;
    * otherwise a directory of ``*.txt`` files (not recursive): each file is one document, the key
      is the file name;
    * a single text file: each paragraph (text between runs of blank lines) is one document, the
      key is the paragraph's 0-based index written as 8 digits.
    The documents of the last two kinds are split by :func:`split_documents`.

In every corpus, whitespace-only documents are dropped (they hold no text to analyse); in the
corpora split by :func:`split_documents`, so is a document whose text repeats an earlier one (no
text may sit in two splits). A split that is left with no document raises a ``CorpusError``.
Characters are Unicode code points (``len(str)``). Files are read as UTF-8 with universal
newlines.

Tokenization
------------
:func:`token_stream` tokenizes every document separately and concatenates them with the
tokenizer's EOS id between consecutive documents; :func:`tokenize_windows` cuts that stream into
consecutive, non-overlapping windows.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from neuronbench.config import SPLIT_NAMES
from neuronbench.errors import ConfigError, CorpusError
from neuronbench.hub import datasets_offline, hub_offline

SPLITS: tuple[str, ...] = SPLIT_NAMES
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
DOCUMENT_SEPARATOR = "\n\n"
WIKITEXT_RAW_SUFFIXES: dict[str, str] = {
    "train": ".train.raw",
    "validation": ".valid.raw",
    "test": ".test.raw",
}

_LEVEL1_HEADING = re.compile(r"^ = [^=](?:.*[^=])? = $")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[^\S\n]*\n)+")
_TOKENIZE_BATCH = 64


# --------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class Corpus:
    """One split of one corpus.

    ``name`` is the registry name (``"pydocs"``, ``"wikitext-2"``) or the path as given;
    ``documents`` is the text of each document as analysed and scored, in order; ``sha256`` is the
    hex SHA-256 of ``text`` encoded as UTF-8; ``source`` says where the text came from;
    ``preprocessing`` what was done to it (``"none"``, ``"wikitext:lm-eval"``, ``"wikitext:raw"``)
    and ``originals`` each document's text before that, when it differs.
    """

    name: str
    split: str
    documents: tuple[str, ...]
    sha256: str
    source: str
    originals: tuple[str, ...] | None = None
    preprocessing: str = "none"

    @property
    def counted(self) -> tuple[str, ...]:
        """The texts words and bytes are counted on: ``originals`` (the text before
        preprocessing) where preprocessing changed it, else ``documents``."""
        return self.documents if self.originals is None else self.originals

    @property
    def text(self) -> str:
        """The documents joined by ``"\\n\\n"``."""
        return DOCUMENT_SEPARATOR.join(self.documents)

    @property
    def n_chars(self) -> int:
        """Characters (code points) in the documents, separators not counted."""
        return sum(len(d) for d in self.documents)


def make_corpus(name: str, split: str, documents: Iterable[str], source: str,
                originals: Sequence[str] | None = None, preprocessing: str = "none") -> Corpus:
    """Build a :class:`Corpus`, dropping whitespace-only documents (with their ``originals``) and
    hashing the text.

    Raises ``CorpusError`` naming the corpus and split when no document is left.
    """
    documents = list(documents)
    kept = [i for i, d in enumerate(documents) if d.strip()]
    docs = tuple(documents[i] for i in kept)
    if not docs:
        raise CorpusError(
            f"corpus {name!r}, split {split!r} is empty: it holds no text (source: {source})"
        )
    digest = hashlib.sha256(DOCUMENT_SEPARATOR.join(docs).encode("utf-8")).hexdigest()
    return Corpus(name=name, split=split, documents=docs, sha256=digest, source=source,
                  originals=None if originals is None else tuple(originals[i] for i in kept),
                  preprocessing=preprocessing)


def _check_split(split: str) -> None:
    """Raise ``CorpusError`` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------
# The deterministic split rule


def _split_order_key(key: str) -> tuple[str, str]:
    """Sort key of a document for the split rule: (SHA-256 hex of the key in UTF-8, the key)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest(), key


def assign_splits(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Assign each ``(key, text)`` item to a split; return ``key -> split``.

    The rule (deterministic across runs, machines and Python versions, no random state):

    1. Visit the items in ascending order of ``(sha256(key).hexdigest(), key)``.
    2. Keep ``A`` = characters of the items visited so far, including the current one, and
       ``c[s]`` = characters already assigned to split ``s``.
    3. Give the current item to the split with the largest deficit
       ``SPLIT_FRACTIONS[s] * A - c[s]`` (fractions 0.8 / 0.1 / 0.1); ties go to the earlier split
       in ``train, validation, test``.

    Items are kept whole, so a split's share can differ from its target by up to about one item.
    Keys must be unique.
    """
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise CorpusError("document keys must be unique to split a corpus deterministically")
    assigned: dict[str, str] = {}
    chars = {s: 0 for s in SPLITS}
    seen = 0
    for key, text in sorted(items, key=lambda item: _split_order_key(item[0])):
        seen += len(text)
        best = max(SPLITS, key=lambda s: (SPLIT_FRACTIONS[s] * seen - chars[s], -SPLITS.index(s)))
        assigned[key] = best
        chars[best] += len(text)
    return assigned


def split_documents(items: Sequence[tuple[str, str]], split: str) -> list[str]:
    """The texts of the items that :func:`assign_splits` gives to ``split``, in input order.

    Before assigning, whitespace-only items are left out (they hold no text) and so is every
    item whose text equals that of an earlier item (e.g. pydocs topics ``else`` and ``if``), so
    that no text can appear in two splits.
    """
    _check_split(split)
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for key, text in items:
        if text.strip() and text not in seen:
            seen.add(text)
            kept.append((key, text))
    assigned = assign_splits(kept)
    return [t for k, t in kept if assigned[k] == split]


# --------------------------------------------------------------------------------------------
# pydocs


def _pydoc_topics() -> dict[str, str]:
    """CPython's ``pydoc_data.topics.topics``, or ``CorpusError`` if this Python lacks it."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data
        raise CorpusError(
            "corpus 'pydocs' needs the standard-library module pydoc_data.topics, which this "
            "Python installation lacks; install the full Python standard library, or pass "
            "--dataset with a local text file or directory"
        ) from exc
    return dict(topics)


def load_pydocs(split: str) -> Corpus:
    """The ``pydocs`` corpus: one document per topic of ``pydoc_data.topics.topics``.

    Topics are visited in sorted-name order and split by :func:`split_documents` with the topic
    name as key (a topic whose text equals an earlier topic's is dropped: ``if`` = ``else`` in
    CPython 3.11); each split keeps its topics in sorted-name order.
    """
    _check_split(split)
    topics = _pydoc_topics()
    items = [(key, topics[key]) for key in sorted(topics)]
    source = f"pydoc_data.topics (CPython {platform.python_version()})"
    return make_corpus("pydocs", split, split_documents(items, split), source)


# --------------------------------------------------------------------------------------------
# WikiText


def _wikitext_line(row: str) -> str:
    """One WikiText line as ``datasets`` yields it, normalized: one trailing newline removed,
    whitespace-only lines made empty (the ``wikitext`` builder yields ``""`` for them)."""
    line = row[:-1] if row.endswith("\n") else row
    return line if line.strip() else ""


def is_wikitext_article_heading(line: str) -> bool:
    """True for a level-1 heading line, `` = Title = `` (one ``=`` on each side, nothing else)."""
    return bool(_LEVEL1_HEADING.match(_wikitext_line(line)))


def wikitext_articles(rows: Iterable[str]) -> list[str]:
    """Group WikiText raw lines into articles (the ``raw`` format).

    Each row is normalized by :func:`_wikitext_line`. An article starts at every level-1 heading
    (`` = Title = ``; `` = = Sub = = `` and deeper do not start one) and runs to the line before
    the next one; lines before the first heading form a document of their own. An article's text
    is its lines joined by ``"\\n"``, with leading and trailing empty lines removed; blank-only
    articles are dropped. Nothing else is changed (no detokenization).
    """
    articles: list[list[str]] = [[]]
    for row in rows:
        line = _wikitext_line(row)
        if _LEVEL1_HEADING.match(line):
            articles.append([])
        articles[-1].append(line)
    texts = ["\n".join(lines).strip("\n") for lines in articles]
    return [t for t in texts if t.strip()]


def _starts_page(line: str) -> bool:
    """lm-eval's page boundary: the line, with ``= = =`` and ``= =`` folded to ``===``/``==`` and
    stripped, starts with ``"= "`` and ends with ``" ="`` (a level-1 heading)."""
    folded = line.replace("= = =", "===").replace("= =", "==").strip()
    return folded.startswith("= ") and folded.endswith(" =")


def wikitext_pages(lines: Sequence[str]) -> list[str]:
    """Group the lines of a WikiText raw file (``text.split("\\n")``, nothing stripped) into the
    pages of lm-evaluation-harness's ``EleutherAI/wikitext_document_level`` dataset.

    A page starts at every line that :func:`_starts_page`; a page is its lines joined by ``"\\n"``
    exactly as they are. A page ending before the next one is kept when it holds non-blank text;
    the last page is always kept (an empty one is then dropped by :func:`make_corpus`).
    """
    pages: list[str] = []
    current: list[str] = []
    for line in lines:
        if _starts_page(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


_DETOKENIZE_RULES: tuple[tuple[str, str, str], ...] = (
    # (kind, pattern, replacement) in order; kind "text" replaces a literal, "regex" substitutes.
    ("text", "s '", "s'"),
    ("regex", r"/' [0-9]/", r"/'[0-9]/"),
    ("text", " @-@ ", "-"),
    ("text", " @,@ ", ","),
    ("text", " @.@ ", "."),
    ("text", " : ", ": "),
    ("text", " ; ", "; "),
    ("text", " . ", ". "),
    ("text", " ! ", "! "),
    ("text", " ? ", "? "),
    ("text", " , ", ", "),
    ("regex", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("regex", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("regex", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("regex", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("regex", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("text", "= = = =", "===="),
    ("text", "= = =", "==="),
    ("text", "= =", "=="),
    ("text", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    ("text", " \n", "\n"),
    ("text", "\n ", "\n"),
    ("text", " N ", " 1 "),
    ("text", " 's", "'s"),
)
"""lm-evaluation-harness's ``wikitext_detokenizer`` (``lm_eval/tasks/wikitext/preprocess_wikitext.py``),
rule by rule in its order: contractions, number separators (`` @-@ `` …), punctuation, brackets
and quotes, heading markers, the degree sign, spaces around line breaks, ``N``, ``'s``. The rules
are kept as they are there (the ``/' [0-9]/`` pattern included) so that the text scored is the
text lm-eval scores."""


def wikitext_detokenize(text: str) -> str:
    """Apply :data:`_DETOKENIZE_RULES` to ``text``, in order."""
    for kind, pattern, replacement in _DETOKENIZE_RULES:
        text = text.replace(pattern, replacement) if kind == "text" else re.sub(pattern, replacement, text)
    return text


def _raw_lines_of_rows(rows: Iterable[str]) -> list[str]:
    """The raw file's lines from ``datasets`` rows: each row is one line with its ``"\\n"``, and
    ``""`` for a blank line, which the raw files write as a single space; a final ``""`` stands
    for the text after the file's last newline (``text.split("\\n")`` gives it)."""
    return [row[:-1] if row.endswith("\n") else (row if row.strip() else " ") for row in rows] + [""]


def _lm_eval_format(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """lm-eval's ``wikitext`` task: the document-level pages (:func:`wikitext_pages`), scored after
    :func:`wikitext_detokenize`; words and bytes are counted on the pages before it."""
    pages = [page for page in wikitext_pages(lines) if page.strip()]
    return [wikitext_detokenize(page) for page in pages], pages


def _raw_format(lines: Sequence[str]) -> tuple[list[str], None]:
    """The raw articles of :func:`wikitext_articles`, scored and counted as they are."""
    return wikitext_articles(lines), None


WIKITEXT_FORMATS: dict[str, Callable[[Sequence[str]], tuple[list[str], list[str] | None]]] = {
    "lm-eval": _lm_eval_format,
    "raw": _raw_format,
}
"""How WikiText lines become documents (``--wikitext-format``): ``lm-eval`` (default) is
lm-evaluation-harness's ``wikitext`` task (document-level pages, its detokenizer), so word
perplexity and bits per byte compare with published lm-eval figures; ``raw`` keeps the raw
articles."""


def wikitext_corpus(name: str, split: str, lines: Sequence[str], source: str, wikitext_format: str) -> Corpus:
    """One WikiText split from its raw lines in the chosen format (:data:`WIKITEXT_FORMATS`)."""
    if wikitext_format not in WIKITEXT_FORMATS:
        raise ConfigError(f"--wikitext-format {wikitext_format!r} is not valid: choose one of "
                          f"{', '.join(WIKITEXT_FORMATS)}")
    documents, originals = WIKITEXT_FORMATS[wikitext_format](lines)
    return make_corpus(name, split, documents, source, originals=originals, preprocessing=f"wikitext:{wikitext_format}")


def _wikitext_not_available(split: str, offline: bool, exc: Exception) -> CorpusError:
    """The error for a WikiText-2 that could not be loaded through ``datasets``."""
    cause = f"{type(exc).__name__}: {exc}"
    why = (
        "it is not cached in the local datasets cache and the Hugging Face hub is "
        f"offline/unreachable ({cause})"
        if offline
        else f"datasets could not load it ({cause})"
    )
    return CorpusError(
        f"corpus 'wikitext-2' (datasets: wikitext/wikitext-2-raw-v1, split {split!r}) is not "
        f"available: {why}. Fix: pre-download it on a machine with network access "
        "(python -c \"import datasets; datasets.load_dataset('wikitext', 'wikitext-2-raw-v1')\"), "
        "or pass a local path to a directory holding wiki.train.raw / wiki.valid.raw / "
        "wiki.test.raw, or use the built-in corpus 'pydocs'."
    )


def load_wikitext2(split: str, wikitext_format: str = "lm-eval") -> Corpus:
    """``wikitext-2`` through ``datasets`` (hub when reachable, else the local cache only).

    The hub is considered offline when :func:`neuronbench.hub.hub_offline` says so; then ``datasets`` runs in offline mode, so a corpus that is not
    cached fails within seconds, without retries. The rows are turned back into the raw file's
    lines (:func:`_raw_lines_of_rows`) and documents are made in ``wikitext_format``
    (:data:`WIKITEXT_FORMATS`).
    """
    _check_split(split)
    offline = hub_offline()
    try:
        import datasets

        with datasets_offline(offline):
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError..)
        raise _wikitext_not_available(split, offline, exc) from exc
    source = "datasets:wikitext/wikitext-2-raw-v1"
    return wikitext_corpus("wikitext-2", split, _raw_lines_of_rows(rows), source, wikitext_format)


# --------------------------------------------------------------------------------------------
# Local paths


def _read_text(path: Path) -> str:
    """A file's text, UTF-8 with universal newlines; ``CorpusError`` if unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc}") from exc


def _wikitext_raw_files(directory: Path) -> dict[str, list[Path]]:
    """split -> the ``*.train.raw`` / ``*.valid.raw`` / ``*.test.raw`` files in ``directory``."""
    return {
        split: sorted(p for p in directory.glob(f"*{suffix}") if p.is_file())
        for split, suffix in WIKITEXT_RAW_SUFFIXES.items()
    }


def _load_wikitext_raw_dir(name: str, directory: Path, split: str, files: list[Path],
                           wikitext_format: str) -> Corpus:
    """One split of a local WikiText raw directory, in ``wikitext_format`` (:data:`WIKITEXT_FORMATS`)."""
    suffix = WIKITEXT_RAW_SUFFIXES[split]
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise CorpusError(
            f"corpus {name!r}: split {split!r} needs exactly one '*{suffix}' file in "
            f"{str(directory)!r} (found: {found})"
        )
    return wikitext_corpus(name, split, _read_text(files[0]).split("\n"), str(files[0]), wikitext_format)


def _load_txt_dir(name: str, directory: Path, split: str) -> Corpus:
    """One split of a directory of ``*.txt`` files: one document per file, keyed by file name."""
    files = sorted(p for p in directory.glob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(
            f"corpus {name!r} is empty: directory {str(directory)!r} holds no *.txt files and "
            "no WikiText raw files (*.train.raw, *.valid.raw, *.test.raw)"
        )
    items = [(p.name, _read_text(p)) for p in files]
    if not any(t.strip() for _, t in items):
        raise CorpusError(
            f"corpus {name!r} is empty: every *.txt file in {str(directory)!r} is blank"
        )
    return make_corpus(name, split, split_documents(items, split), str(directory))


def paragraphs(text: str) -> list[str]:
    """Split text at runs of one or more blank (whitespace-only) lines.

    Each paragraph keeps its text exactly, except that line breaks at its start and end are
    removed; whitespace-only paragraphs are dropped.
    """
    return [p.strip("\n") for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def _load_text_file(name: str, path: Path, split: str) -> Corpus:
    """One split of a single text file: one document per paragraph, keyed by its index."""
    paras = paragraphs(_read_text(path))
    if not paras:
        raise CorpusError(f"corpus {name!r} is empty: file {str(path)!r} holds no text")
    items = [(f"{i:08d}", p) for i, p in enumerate(paras)]
    return make_corpus(name, split, split_documents(items, split), str(path))


def load_local(path: str, split: str, wikitext_format: str = "lm-eval") -> Corpus:
    """A corpus from a local file or directory (see the module docstring for the rules);
    ``wikitext_format`` applies to a directory of WikiText raw files."""
    _check_split(split)
    target = Path(path).expanduser()
    if not target.exists():
        raise CorpusError(f"corpus path does not exist: {path!r}")
    if target.is_file():
        return _load_text_file(path, target, split)
    raw = _wikitext_raw_files(target)
    if any(raw.values()):
        return _load_wikitext_raw_dir(path, target, split, raw[split], wikitext_format)
    return _load_txt_dir(path, target, split)


# --------------------------------------------------------------------------------------------
# Registry


CORPORA: dict[str, Callable[..., Corpus]] = {
    "pydocs": lambda split, wikitext_format: load_pydocs(split),
    "wikitext-2": load_wikitext2,
}
"""Registered corpora: ``loader(split, wikitext_format)`` (pydocs has no WikiText format)."""


def _looks_like_path(name: str) -> bool:
    """True for a name with a path separator, a leading ``.``/``~``, or a file suffix."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in name for s in seps) or name.startswith((".", "~")) or bool(Path(name).suffix)


def load_corpus(name_or_path: str, split: str, wikitext_format: str = "lm-eval") -> Corpus:
    """Load ``split`` of a registered corpus (:data:`CORPORA`) or of a local file or directory;
    ``wikitext_format`` (:data:`WIKITEXT_FORMATS`) says how WikiText becomes documents.

    A registered name wins over a path of the same name. Raises ``CorpusError`` for an unknown
    split, a missing path (naming it), an unknown name (listing the registered corpora) and an
    empty corpus or split.
    """
    _check_split(split)
    if name_or_path in CORPORA:
        return CORPORA[name_or_path](split, wikitext_format)
    if Path(name_or_path).expanduser().exists():
        return load_local(name_or_path, split, wikitext_format)
    known = ", ".join(sorted(CORPORA))
    if _looks_like_path(name_or_path):
        raise CorpusError(
            f"corpus path does not exist: {name_or_path!r} (or use a built-in corpus: {known})"
        )
    raise CorpusError(
        f"unknown corpus {name_or_path!r}: it is neither a registered corpus ({known}) "
        "nor an existing file or directory"
    )


# --------------------------------------------------------------------------------------------
# Tokenization


@dataclass(frozen=True, eq=False)
class TokenWindows:
    """Consecutive windows of a token stream.

    ``input_ids`` and ``attention_mask`` are ``[n_windows, window]`` int64; the mask is 1 on real
    tokens and 0 on padding; ``n_tokens`` is the number of real tokens (``attention_mask.sum()``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_tokens: int


def _encode(tokenizer: Any, documents: Sequence[str]) -> list[list[int]]:
    """Token ids of each document: no special tokens, no truncation, no length warning."""
    if not documents:
        return []
    encoded = tokenizer(list(documents), add_special_tokens=False, verbose=False)
    return [list(ids) for ids in encoded["input_ids"]]


def tokenize_documents(corpus: Corpus, tokenizer: Any) -> list[list[int]]:
    """Token ids of each document of ``corpus``, tokenized separately.

    Each document is ``tokenizer(doc, add_special_tokens=False)["input_ids"]`` (no truncation), so
    no token spans two documents.
    """
    return _encode(tokenizer, corpus.documents)


def _check_max_tokens(max_tokens: int | None) -> None:
    """Raise ``ConfigError`` unless ``max_tokens`` is None or a positive int."""
    if max_tokens is None:
        return
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ConfigError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")


def token_stream(corpus: Corpus, tokenizer: Any, max_tokens: int | None = None) -> torch.Tensor:
    """The corpus as one 1-D int64 token stream.

    The stream is each document's tokens (:func:`tokenize_documents`) in order, with
    ``tokenizer.eos_token_id`` between consecutive documents (nothing if the tokenizer has no EOS
    token; none after the last document). With ``max_tokens`` it is cut to exactly its first
    ``max_tokens`` tokens, or left whole if shorter (documents past the cut are not tokenized).
    Raises ``ConfigError`` if ``max_tokens <= 0`` and ``CorpusError`` if the stream is empty.
    """
    _check_max_tokens(max_tokens)
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    docs = corpus.documents
    for start in range(0, len(docs), _TOKENIZE_BATCH):
        for i, ids in enumerate(_encode(tokenizer, docs[start : start + _TOKENIZE_BATCH])):
            if eos is not None and (start + i) > 0:
                stream.append(eos)
            stream.extend(ids)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        stream = stream[:max_tokens]
    if not stream:
        raise CorpusError(
            f"corpus {corpus.name!r}, split {corpus.split!r} gives an empty token stream"
        )
    return torch.tensor(stream, dtype=torch.long)


def _default_pad_id(tokenizer: Any) -> int:
    """``tokenizer.pad_token_id``, else ``tokenizer.eos_token_id``, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def tokenize_windows(
    corpus: Corpus,
    tokenizer: Any,
    window: int,
    max_tokens: int | None = None,
    pad_token_id: int | None = None,
    drop_last: bool = False,
) -> TokenWindows:
    """Cut :func:`token_stream` into consecutive non-overlapping windows of ``window`` tokens.

    The last, partial window is right-padded with ``pad_token_id`` (default
    :func:`_default_pad_id`) under mask 0; with ``drop_last=True`` it is dropped instead, and
    ``n_tokens`` counts only the tokens kept. Raises ``ConfigError`` if ``window <= 0`` or
    ``max_tokens <= 0``, and ``CorpusError`` if the stream is empty or, with ``drop_last``,
    shorter than one window.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    stream = token_stream(corpus, tokenizer, max_tokens)
    n = stream.numel()
    if drop_last:
        return _full_windows(corpus, stream, window)
    n_windows = -(-n // window)
    pad = _default_pad_id(tokenizer) if pad_token_id is None else int(pad_token_id)
    ids = torch.full((n_windows * window,), pad, dtype=torch.long)
    mask = torch.zeros(n_windows * window, dtype=torch.long)
    ids[:n] = stream
    mask[:n] = 1
    return TokenWindows(ids.view(n_windows, window), mask.view(n_windows, window), n)


def require_tokens(windows: TokenWindows, corpus: Corpus, minimum: int) -> TokenWindows:
    """``windows`` if they hold at least ``minimum`` real tokens, else ``CorpusError`` naming the
    minimum (``--min-tokens``). The default minimum, 1000, is chosen so that sampling alone rarely
    makes a live neuron look dead: a neuron active on a fraction ``p`` of tokens is never active in
    ``n`` tokens with probability ``(1 − p)^n``, 0.7 % for ``p`` = 0.5 % and ``n`` = 1000."""
    if windows.n_tokens < minimum:
        raise CorpusError(
            f"corpus {corpus.name!r}, split {corpus.split!r} gives {windows.n_tokens} analysis tokens, fewer than "
            f"the minimum of {minimum} (--min-tokens) an analysis needs. Fix: a larger corpus or --max-tokens, or "
            "a lower --min-tokens if you accept the sampling error"
        )
    return windows


def _full_windows(corpus: Corpus, stream: torch.Tensor, window: int) -> TokenWindows:
    """Only the full windows of ``stream``; ``CorpusError`` when there is none."""
    n_windows = stream.numel() // window
    if n_windows == 0:
        raise CorpusError(
            f"corpus {corpus.name!r}, split {corpus.split!r} is too small to hold one window of "
            f"{window} tokens: it has {stream.numel()} tokens"
        )
    ids = stream[: n_windows * window].clone().view(n_windows, window)
    return TokenWindows(ids, torch.ones_like(ids), n_windows * window)
