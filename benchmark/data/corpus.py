"""The offline text corpus and its packing into model-sized token windows.

The default corpus is real English available on every Python install: the reference manual's
topics (``pydoc_data.topics``) followed by the long docstrings of the standard library's modules,
read in sorted file order with :mod:`ast` (never imported). Paragraphs are whitespace-normalised,
code-like paragraphs dropped and duplicates removed; the corpus hash covers the exact text, so a
different Python version yields a different hash (and a different activation cache key), never a
silently mixed cache.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
DEFAULT_CORPUS = "python-docs"
#: Stop collecting standard-library docstrings after this many characters (≈ 200K tokens with it).
DOCSTRING_CHAR_BUDGET = 900_000
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "turtledemo", "ensurepip"}


@dataclass(frozen=True)
class Corpus:
    """Deduplicated documents and the sha256 of their exact text."""

    name: str
    documents: tuple[str, ...]
    sha256: str

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def text_corpus(name: str, documents: list[str]) -> Corpus:
    """A corpus from given documents: paragraphs normalised, filtered and deduplicated, hashed."""
    kept: list[str] = []
    seen: set[str] = set()
    for document in documents:
        for paragraph in re.split(r"\n\s*\n", document):
            text = " ".join(paragraph.split())
            if len(text) < 40 or not _is_prose(text):
                continue
            key = hashlib.sha256(text.lower().encode()).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            kept.append(text)
    digest = hashlib.sha256(f"canonbench-corpus-v{CORPUS_VERSION}\0{name}\0".encode())
    for text in kept:
        digest.update(text.encode() + b"\0")
    return Corpus(name, tuple(kept), digest.hexdigest())


def _is_prose(text: str) -> bool:
    """Mostly letters and spaces: drops code listings, tables and grammar productions."""
    letters = sum(c.isalpha() or c == " " for c in text)
    return letters / len(text) >= 0.8


def offline_corpus(name: str = DEFAULT_CORPUS, *, cache_dir: Path | str | None = None) -> Corpus:
    """The default offline English corpus (see the module docstring).

    Building it parses standard-library files, so the result is memoised in
    ``cache_dir/corpus/`` keyed by the Python version and the stdlib path.
    """
    if name != DEFAULT_CORPUS:
        raise ValueError(f"unknown corpus {name!r} (known: {DEFAULT_CORPUS})")
    memo = None
    if cache_dir is not None:
        tag = hashlib.sha256(f"{sys.version}\0{sysconfig.get_paths()['stdlib']}\0v{CORPUS_VERSION}".encode()).hexdigest()[:16]
        memo = Path(cache_dir) / "corpus" / f"{name}-{tag}.json"
        if memo.exists():
            data = json.loads(memo.read_text(encoding="utf-8"))
            return Corpus(data["name"], tuple(data["documents"]), data["sha256"])
    corpus = text_corpus(name, _python_docs())
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo.parent, prefix=f".{memo.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"name": corpus.name, "sha256": corpus.sha256, "documents": list(corpus.documents)}, fh)
        os.replace(tmp, memo)
    log.info("corpus %s: %d paragraphs, %d chars, sha256 %s", name, len(corpus.documents), corpus.n_chars, corpus.sha256[:12])
    return corpus


def _python_docs() -> list[str]:
    import pydoc_data.topics as topics

    documents = [topics.topics[key] for key in sorted(topics.topics)]
    budget = DOCSTRING_CHAR_BUDGET
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for file in sorted(files):
            if not file.endswith(".py") or budget <= 0:
                continue
            try:
                tree = ast.parse(Path(root, file).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= 200:
                        documents.append(doc)
                        budget -= len(doc)
        if budget <= 0:
            break
    return documents


@dataclass(frozen=True)
class PackedTokens:
    """Token windows ``ids [n_windows, context_size]``, ``keep`` (True where the position is a text
    token whose activation is stored; special tokens are False) and ``attention`` (the mask)."""

    ids: np.ndarray
    keep: np.ndarray
    attention: np.ndarray  # False on right padding of the last window

    @property
    def n_tokens(self) -> int:
        return int(self.keep.sum())


def special_token_layout(tokenizer, kind: str) -> tuple[list[int], list[int]]:
    """Token ids put before and after each window's text: ``[CLS] … [SEP]`` for encoders, the
    BOS token (when the tokenizer defines one) for causal models."""
    if kind == "encoder":
        head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        return head, tail
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []), []


def pack_tokens(tokenizer, corpus: Corpus, *, kind: str, context_size: int, n_tokens: int | None) -> PackedTokens:
    """Tokenise the corpus (no special tokens), concatenate it and cut it into windows of
    ``context_size`` with the model's special tokens at the edges; stop once ``n_tokens`` text
    positions are covered (all of the corpus when None or when it is shorter)."""
    head, tail = special_token_layout(tokenizer, kind)
    body = context_size - len(head) - len(tail)
    if body < 1:
        raise ValueError(f"context_size {context_size} leaves no room for text between special tokens")
    stream: list[int] = []
    want = None if n_tokens is None else int(n_tokens)
    step = 256
    for start in range(0, len(corpus.documents), step):
        encoded = tokenizer(list(corpus.documents[start:start + step]), add_special_tokens=False)["input_ids"]
        for ids in encoded:
            stream.extend(ids)
        if want is not None and len(stream) >= want:
            break
    if want is not None:
        if len(stream) < want:
            log.warning("corpus %s has only %d tokens; %d were asked for", corpus.name, len(stream), want)
        stream = stream[:want]
    n_windows = -(-len(stream) // body)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((n_windows, context_size), pad, dtype=np.int64)
    keep = np.zeros((n_windows, context_size), dtype=bool)
    attention = np.zeros((n_windows, context_size), dtype=bool)
    for w in range(n_windows):
        chunk = stream[w * body:(w + 1) * body]
        row = head + chunk + tail
        ids[w, : len(row)] = row
        keep[w, len(head): len(head) + len(chunk)] = True
        attention[w, : len(row)] = True
    return PackedTokens(ids, keep, attention)
