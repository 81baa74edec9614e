"""Finding and reading the IMDB archive (Maas et al. 2011) in its official layout.

Sources, in order: an explicit path (or $GRU_TORCH_DATA): the official .tar.gz or an
extracted aclImdb/ folder; a cached copy; a download of the official archive, verified
by its md5 and written atomically. Reviews are read straight from the tar.gz.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

OFFICIAL_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
OFFICIAL_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
ARCHIVE_NAME = "aclImdb_v1.tar.gz"
# 100 real reviews shipped with the package, for offline smoke runs (`--data sample`)
SAMPLE = Path(__file__).resolve().parent / "sample" / "aclImdb-sample.tar.gz"
SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}


class DataError(RuntimeError):
    """Base of every data-source error."""


class DataNotFoundError(DataError, FileNotFoundError):
    pass


class CorruptArchiveError(DataError):
    pass


class LayoutError(DataError):
    pass


class UnsafeArchiveError(DataError):
    pass


class DownloadError(DataError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("GRU_TORCH_CACHE", Path.home() / ".cache" / "gru_torch"))


def resolve_source(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The archive or folder to read: `path`, else $GRU_TORCH_DATA, else the cache, else
    a download (when `download`). "sample" names the small sample shipped with gru_torch."""
    given = path if path is not None else os.environ.get("GRU_TORCH_DATA") or None
    if given == "sample":
        return SAMPLE
    if given is not None:
        p = Path(given).expanduser()
        if not p.exists():
            origin = "path" if path is not None else "$GRU_TORCH_DATA"
            raise DataNotFoundError(f"IMDB data not found: {origin} {str(p)!r} does not exist")
        return p
    cached = cache_dir() / ARCHIVE_NAME
    if cached.is_file():
        return cached
    if not download:
        raise DataNotFoundError(f"no IMDB data: pass a path (--data PATH or $GRU_TORCH_DATA) "
                                f"or allow a download to {cached}")
    return fetch(cached)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dest: Path, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Downloads `url` to `dest` with a progress bar, checks its md5, then renames it into
    place, so a partial download never looks like a complete one."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except OSError as e:
                raise DownloadError(
                    f"no local IMDB data and the download of {url} failed ({e}); offline? "
                    "pass the archive or an extracted aclImdb/ folder with --data PATH or "
                    "$GRU_TORCH_DATA") from e
            total = int(response.headers.get("Content-Length") or 0) or None
            with response, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        got = md5sum(Path(tmp))
        if got != md5:
            raise DownloadError(f"download of {url} is corrupt: md5 {got}, expected {md5}")
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _review_key(rel: PurePosixPath):
    """(split, label, numeric id) for aclImdb/<split>/<label>/<id>_<rating>.txt, or None."""
    parts = rel.parts
    if len(parts) != 4 or parts[0] != "aclImdb" or parts[1] not in SPLITS:
        return None
    if parts[2] not in LABELS or not parts[3].endswith(".txt"):
        return None
    stem = parts[3][:-4].split("_")[0]
    return parts[1], parts[2], int(stem) if stem.isdigit() else stem


def _check_member(name: str, archive: Path) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise UnsafeArchiveError(f"{archive} holds an unsafe member path {name!r} "
                                 "(absolute or escaping with '..'); refusing to read it")
    return rel


def _read_tar(archive: Path):
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                rel = _check_member(member.name, archive)
                if member.issym() or member.islnk():
                    _check_member(member.linkname, archive)
                    continue
                key = _review_key(rel)
                if key is None or not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                yield key, data.decode("utf-8")
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptArchiveError(f"{archive} is corrupt or truncated "
                                  f"({type(e).__name__}: {e})") from e


def _read_folder(folder: Path):
    root = folder if folder.name == "aclImdb" else folder / "aclImdb"
    for split in SPLITS:
        for label in LABELS:
            d = root / split / label
            if not d.is_dir():
                continue
            for f in d.glob("*.txt"):
                key = _review_key(PurePosixPath("aclImdb", split, label, f.name))
                if key is not None:
                    yield key, f.read_text(encoding="utf-8")


def read_reviews(source: Path) -> dict[str, tuple[list[str], list[int]]]:
    """{split: (texts, labels)} in a fixed order (neg then pos, by review id)."""
    source = Path(source)
    if source.is_dir():
        items = list(_read_folder(source))
    else:
        items = list(_read_tar(source))
    found = {(s, lab): 0 for s in SPLITS for lab in LABELS}
    for (split, label, _), _ in items:
        found[(split, label)] += 1
    missing = [f"aclImdb/{s}/{lab}/" for (s, lab), n in found.items() if n == 0]
    if missing:
        raise LayoutError(f"{source} is not in the official IMDB layout: no reviews in "
                          f"{', '.join(missing)} (expected aclImdb/{{train,test}}/{{pos,neg}}/"
                          "<id>_<rating>.txt)")
    items.sort(key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]).zfill(12)))
    out = {}
    for split in SPLITS:
        rows = [(text, LABELS[label]) for (s, label, _), text in items if s == split]
        out[split] = ([t for t, _ in rows], [y for _, y in rows])
    return out
