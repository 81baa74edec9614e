"""IMDB data: pad_sequences, the tokenizer, load_data on the real archive, bad archives."""
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gru_torch.data import archive, imdb, pad_sequences, tokenize
from gru_torch.data.archive import (CorruptArchiveError, DataNotFoundError, DownloadError,
                                    LayoutError, UnsafeArchiveError)

REAL = Path(os.environ.get("GRU_TORCH_TEST_DATA", Path(__file__).resolve().parents[1].parent
                           / "shared" / "data" / "aclImdb_v1-text.tar.gz"))
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=f"IMDB archive not at {REAL}")


# ---- pad_sequences: Keras's semantics
SEQS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], []]


@pytest.mark.parametrize("padding,truncating,maxlen,expected", [
    ("pre", "pre", None, [[0, 0, 1, 2, 3], [0, 0, 0, 4, 5], [6, 7, 8, 9, 10], [0] * 5]),
    ("post", "pre", None, [[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 10], [0] * 5]),
    ("pre", "pre", 3, [[1, 2, 3], [0, 4, 5], [8, 9, 10], [0, 0, 0]]),
    ("pre", "post", 3, [[1, 2, 3], [0, 4, 5], [6, 7, 8], [0, 0, 0]]),
    ("post", "post", 3, [[1, 2, 3], [4, 5, 0], [6, 7, 8], [0, 0, 0]]),
    ("post", "pre", 2, [[2, 3], [4, 5], [9, 10], [0, 0]]),
])
def test_pad_sequences_modes(padding, truncating, maxlen, expected):
    out = pad_sequences(SEQS, maxlen=maxlen, padding=padding, truncating=truncating)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.array(expected))


def test_pad_sequences_value_dtype_and_items():
    out = pad_sequences([[1.5], [2.5, 3.5]], dtype="float32", value=-1.0)
    np.testing.assert_array_equal(out, np.array([[-1.0, 1.5], [2.5, 3.5]], dtype=np.float32))
    out = pad_sequences([np.ones((2, 3)), np.ones((1, 3))], maxlen=3)
    assert out.shape == (2, 3, 3) and out[1, :2].sum() == 0 and out[1, 2].sum() == 3
    assert pad_sequences([], maxlen=None).shape == (0, 0)
    assert pad_sequences([[1, 2]], maxlen=0).shape == (1, 0)


@pytest.mark.parametrize("kwargs,match", [
    ({"padding": "middle"}, "padding"), ({"truncating": "mid"}, "truncating"),
    ({"maxlen": -1}, "maxlen"), ({"value": "x"}, "string"),
])
def test_pad_sequences_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pad_sequences([[1, 2]], **kwargs)
    with pytest.raises(ValueError, match="iterables"):
        pad_sequences([[1], 5])


def test_tokenize_like_basic_english():
    assert tokenize('Hello, World!<br />It\'s "GOOD" (really): yes; no?') == [
        "hello", ",", "world", "!", "it", "'", "s", "good", "(", "really", ")", "yes", "no", "?"]


# ---- bad sources, each with its own error
def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _layout(n=1):
    return {f"aclImdb/{s}/{lab}/{i}_{7 if lab == 'pos' else 2}.txt": f"review {s} {lab} {i}".encode()
            for s in ("train", "test") for lab in ("pos", "neg") for i in range(n)}


def test_small_archive_reads(tmp_path):
    reviews = archive.read_reviews(_tar(tmp_path / "a.tar.gz", _layout(3)))
    texts, labels = reviews["train"]
    assert len(texts) == 6 and labels == [0, 0, 0, 1, 1, 1]
    assert texts[0] == "review train neg 0"


def test_missing_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        archive.resolve_source(tmp_path / "nope.tar.gz")


def test_truncated_archive(tmp_path):
    good = _tar(tmp_path / "good.tar.gz", _layout(50))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptArchiveError, match="corrupt or truncated"):
        archive.read_reviews(bad)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(CorruptArchiveError, match="corrupt or truncated"):
        archive.read_reviews(tmp_path / "junk.tar.gz")


def test_wrong_layout(tmp_path):
    members = {k: v for k, v in _layout().items() if "/test/neg/" not in k}
    with pytest.raises(LayoutError, match="aclImdb/test/neg/"):
        archive.read_reviews(_tar(tmp_path / "a.tar.gz", members))


def test_path_traversal_member(tmp_path):
    members = {**_layout(), "aclImdb/../../evil.txt": b"gotcha"}
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        archive.read_reviews(_tar(tmp_path / "a.tar.gz", members))
    assert not (tmp_path.parent / "evil.txt").exists()


def test_offline_with_nothing_local(tmp_path, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CACHE", str(tmp_path))
    monkeypatch.delenv("GRU_TORCH_DATA", raising=False)
    monkeypatch.setattr(archive, "checkout_shared_dirs", lambda: [])

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(archive.urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as caught:
        archive.resolve_source(None)
    message = str(caught.value)
    for way in ("--data PATH", "$GRU_TORCH_DATA", str(tmp_path / archive.ARCHIVE_NAME),
                "../shared/data/", "--data sample", "network is unreachable"):
        assert way in message, way
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == [], "a failed download must leave nothing behind"


def test_sources_in_order(tmp_path, monkeypatch):
    """--data, then $GRU_TORCH_DATA, then ../shared/data/ beside the checkout, then the
    cache; each says how it was found."""
    shared, cache, env = tmp_path / "shared", tmp_path / "cache", tmp_path / "env.tar.gz"
    for folder in (shared, cache):
        folder.mkdir()
    _tar(shared / "aclImdb_v1-text.tar.gz", _layout())
    _tar(cache / archive.ARCHIVE_NAME, _layout())
    _tar(env, _layout())
    monkeypatch.setenv("GRU_TORCH_CACHE", str(cache))
    monkeypatch.setenv("GRU_TORCH_DATA", str(env))
    monkeypatch.setattr(archive, "checkout_shared_dirs", lambda: [tmp_path / "none", shared])
    monkeypatch.setattr(archive, "fetch", lambda *a, **k: pytest.fail("must not download"))
    given = tmp_path / "given.tar.gz"
    _tar(given, _layout())
    assert archive.find_source(given) == (given, "--data")
    assert archive.find_source(None) == (env, "$GRU_TORCH_DATA")
    monkeypatch.delenv("GRU_TORCH_DATA")
    assert archive.find_source(None) == (shared / "aclImdb_v1-text.tar.gz",
                                         "../shared/data beside the checkout")
    (shared / "aclImdb_v1-text.tar.gz").unlink()
    assert archive.find_source(None) == (cache / archive.ARCHIVE_NAME, "the cache")
    with pytest.raises(DataNotFoundError, match=r"\$GRU_TORCH_DATA 'x/missing' does not exist"):
        monkeypatch.setenv("GRU_TORCH_DATA", "x/missing")
        archive.find_source(None)


def test_checkout_shared_dir_is_beside_the_repository():
    root = Path(__file__).resolve().parents[1]
    assert root.parent / "shared" / "data" in archive.checkout_shared_dirs()


# ---- the real archive
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    old = os.environ.get("GRU_TORCH_CACHE")
    os.environ["GRU_TORCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("GRU_TORCH_CACHE")
    else:
        os.environ["GRU_TORCH_CACHE"] = old


@needs_real
def test_load_data_keras_conventions(real_cache, monkeypatch):
    (x_train, y_train), (x_test, y_test) = imdb.load_data(REAL, num_words=10000)
    assert len(x_train) == len(y_train) == 25000 and len(x_test) == len(y_test) == 25000
    assert y_train.sum() == 12500 and y_test.sum() == 12500
    assert all(x[0] == 1 for x in x_train) and all(x[0] == 1 for x in x_test)
    assert max(max(x) for x in x_train) < 10000 and max(max(x) for x in x_test) < 10000
    assert any(2 in x for x in x_train), "rare words must become the oov mark"
    # shuffled (labels are stored neg then pos) and reproducible
    assert 0 < y_train[:100].sum() < 100
    (x2, y2), _ = imdb.load_data(REAL, num_words=10000)
    assert list(x2[0]) == list(x_train[0]) and (y2 == y_train).all()
    # the second load reads the cache, not the archive
    monkeypatch.setattr(imdb, "_build_corpus", lambda s: pytest.fail("cache not used"))
    monkeypatch.setattr(imdb, "_last", None)  # not the corpus held in memory either
    (x_short, y_short), (xt_short, _) = imdb.load_data(REAL, num_words=1000, maxlen=200)
    assert 0 < len(x_short) < 25000 and len(x_short) == len(y_short)
    assert all(len(x) < 200 for x in x_short) and all(len(x) < 200 for x in xt_short)
    assert max(max(x) for x in x_short) < 1000
    word_index = imdb.get_word_index(REAL)
    assert word_index["the"] <= 3 and word_index["."] <= 5 and word_index["movie"] < 50


def test_shipped_sample_reads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CACHE", str(tmp_path))
    reviews = archive.read_reviews(archive.resolve_source("sample"))
    for split in ("train", "test"):
        texts, labels = reviews[split]
        assert len(texts) == 50 and sum(labels) == 25 and all(len(t) > 20 for t in texts)
    (x, y), (xt, yt) = imdb.load_data("sample", num_words=500)
    assert len(x) == len(xt) == 50 and all(w < 500 for row in x for w in row)
