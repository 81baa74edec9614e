"""The IMDB sentiment data set with Keras's `imdb.load_data` conventions.

Reviews are tokenized (`text.tokenize`) and each word is replaced by its frequency rank
in the training split (1 = most frequent; words seen only in the test split rank after
every training word). The tokenized corpus is cached beside the download cache, keyed by
the source's checksum, so later loads skip the tokenizing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..progress import Progress
from . import archive
from .text import tokenize

CACHE_VERSION = 1

log = logging.getLogger(__name__)


def _source_key(source: Path) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    if source.is_dir():
        for f in sorted(source.rglob("*.txt")):
            st = f.stat()
            h.update(f"{f.relative_to(source)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def _build_corpus(source: Path) -> dict:
    reviews = archive.read_reviews(source)
    progress = Progress("tokenizing", sum(len(texts) for texts, _ in reviews.values()),
                        unit="reviews", log=log.info)
    tokens = {}
    for split, (texts, _) in reviews.items():
        tokens[split] = []
        for text in texts:
            tokens[split].append(tokenize(text))
            progress.update()
    progress.close(console=True)
    train_counts = Counter(w for doc in tokens["train"] for w in doc)
    test_only = Counter(w for doc in tokens["test"] for w in doc if w not in train_counts)
    ranked = [w for w, _ in sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    ranked += [w for w, _ in sorted(test_only.items(), key=lambda kv: (-kv[1], kv[0]))]
    rank = {w: i + 1 for i, w in enumerate(ranked)}
    corpus = {"vocab": ranked}
    for split in archive.SPLITS:
        ids = [np.fromiter((rank[w] for w in doc), dtype=np.int32, count=len(doc))
               for doc in tokens[split]]
        corpus[split] = (ids, np.asarray(reviews[split][1], dtype=np.int64))
    return corpus


def _save(corpus: dict, path: Path) -> None:
    arrays = {"vocab": np.frombuffer(json.dumps(corpus["vocab"]).encode(), dtype=np.uint8)}
    for split in archive.SPLITS:
        ids, labels = corpus[split]
        arrays[f"{split}_ids"] = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        arrays[f"{split}_lengths"] = np.asarray([len(x) for x in ids], dtype=np.int64)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache


def _load(path: Path) -> dict:
    with np.load(path) as f:
        corpus = {"vocab": json.loads(f["vocab"].tobytes().decode())}
        for split in archive.SPLITS:
            offsets = np.cumsum(f[f"{split}_lengths"])[:-1]
            corpus[split] = (np.split(f[f"{split}_ids"], offsets), f[f"{split}_labels"])
    return corpus


_last: tuple[Path, dict] | None = None  # the corpus last loaded (load_data, then get_word_index)


def load_corpus(path=None, download: bool = True) -> dict:
    """{"vocab": words by rank, "train"/"test": (list of int32 rank arrays, labels)}."""
    global _last
    source, how = archive.find_source(path, download=download)
    cached = archive.cache_dir() / f"imdb-tokens-{_source_key(source)}.npz"
    if _last is not None and _last[0] == cached and cached.is_file():
        return _last[1]
    log.info("IMDB data: %s (%s)", source, how)
    _last = None
    if cached.is_file():
        try:
            corpus = _load(cached)
            log.info("read the tokenized reviews from the cache %s", cached)
            _last = (cached, corpus)
            return corpus
        except (OSError, ValueError, KeyError):
            log.info("the cache %s is unreadable; tokenizing again", cached)
    log.info("reading and tokenizing the reviews (once; later runs read the cache %s)", cached)
    corpus = _build_corpus(source)
    _save(corpus, cached)
    _last = (cached, corpus)
    return corpus


def get_word_index(path=None) -> dict[str, int]:
    """{word: rank}, as Keras's imdb.get_word_index (before index_from is added)."""
    return {w: i + 1 for i, w in enumerate(load_corpus(path)["vocab"])}


def load_data(path=None, num_words: int | None = None, skip_top: int = 0,
              maxlen: int | None = None, seed: int = 113, start_char: int | None = 1,
              oov_char: int | None = 2, index_from: int = 3):
    """((x_train, y_train), (x_test, y_test)) as Keras's imdb.load_data returns them:
    object arrays of int lists and int64 label arrays.

    Both splits are shuffled by one np.random.RandomState(seed) stream; ids are word ranks
    plus index_from, each review prefixed with start_char; ids outside
    [skip_top, num_words) become oov_char (or are dropped when oov_char is None); maxlen
    keeps the reviews shorter than maxlen.
    """
    corpus = load_corpus(path)
    rng = np.random.RandomState(seed)
    splits = []
    for split in archive.SPLITS:
        ids, labels = corpus[split]
        order = np.arange(len(ids))
        rng.shuffle(order)
        splits.append(([ids[i] for i in order], labels[order]))
    (x_train, y_train), (x_test, y_test) = splits

    def mark(x):
        x = x.astype(np.int64) + index_from
        return np.concatenate(([start_char], x)) if start_char is not None else x

    x_train, x_test = [mark(x) for x in x_train], [mark(x) for x in x_test]
    if maxlen:
        keep_train = [i for i, x in enumerate(x_train) if len(x) < maxlen]
        keep_test = [i for i, x in enumerate(x_test) if len(x) < maxlen]
        if not keep_train or not keep_test:
            raise ValueError(f"maxlen={maxlen} leaves no review in a split; raise it")
        x_train, y_train = [x_train[i] for i in keep_train], y_train[keep_train]
        x_test, y_test = [x_test[i] for i in keep_test], y_test[keep_test]
    xs = x_train + x_test
    if not num_words:
        num_words = max(int(x.max()) for x in xs if len(x))

    def limit(x):
        inside = (x >= skip_top) & (x < num_words)
        return np.where(inside, x, oov_char) if oov_char is not None else x[inside]

    xs = [limit(x).tolist() for x in xs]
    n = len(x_train)

    def as_objects(rows):
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return out

    return (as_objects(xs[:n]), y_train), (as_objects(xs[n:]), y_test)
