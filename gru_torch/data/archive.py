"""Finding and reading the IMDB archive (Maas et al. 2011) in its official layout.

Sources, in order: an explicit path (--data), else $GRU_TORCH_DATA (each the official
.tar.gz or an extracted aclImdb/ folder); else a copy in ../shared/data/ beside a source
checkout; else the cache; else a download of the official archive, verified by its md5
and written atomically. Reviews are read straight from the tar.gz.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from ..progress import Progress

OFFICIAL_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
OFFICIAL_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
ARCHIVE_NAME = "aclImdb_v1.tar.gz"
# 100 real reviews shipped with the package, for offline smoke runs (`--data sample`)
SAMPLE = Path(__file__).resolve().parent / "sample" / "aclImdb-sample.tar.gz"
# what ../shared/data/ beside a checkout may hold: the official archive, the text-only
# repack of it, or the extracted folder
SHARED_NAMES = ("aclImdb_v1.tar.gz", "aclImdb_v1-text.tar.gz", "aclImdb")
DOWNLOAD_TIMEOUT_S = 15  # per connect or read: an offline machine fails within seconds
SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}

log = logging.getLogger(__name__)


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


def ways_to_supply() -> str:
    """The four ways to give gru_torch the data, for error messages."""
    return (f"--data PATH or $GRU_TORCH_DATA (the official {ARCHIVE_NAME} or an extracted "
            f"aclImdb/ folder), a copy at {cache_dir() / ARCHIVE_NAME} or in ../shared/data/ "
            "beside the checkout, or --data sample (100 reviews shipped with gru_torch, for "
            "a smoke run)")


def checkout_shared_dirs() -> list[Path]:
    """../shared/data/ beside the source checkout that holds this package, and beside the
    current folder when that is a checkout too."""
    roots = [Path(__file__).resolve().parents[2], Path.cwd().resolve()]
    dirs = []
    for root in dict.fromkeys(roots):
        if (root / "pyproject.toml").is_file() and (root / "gru_torch").is_dir():
            dirs.append(root.parent / "shared" / "data")
    return dirs


def find_source(path: str | os.PathLike | None = None,
                download: bool = True) -> tuple[Path, str]:
    """(the archive or folder to read, how it was found). See the module docstring for the
    order; "sample" names the small sample shipped with gru_torch."""
    if path is not None:
        given, origin = path, "--data"
    else:
        given, origin = os.environ.get("GRU_TORCH_DATA") or None, "$GRU_TORCH_DATA"
    if given is not None and str(given) == "sample":
        return SAMPLE, "the 100-review sample shipped with gru_torch"
    if given is not None:
        p = Path(given).expanduser()
        if not p.exists():
            shown = "path" if origin == "--data" else origin
            raise DataNotFoundError(f"IMDB data not found: {shown} {str(p)!r} does not exist")
        return p, origin
    for d in checkout_shared_dirs():
        for name in SHARED_NAMES:
            if (d / name).exists():
                return d / name, "../shared/data beside the checkout"
    cached = cache_dir() / ARCHIVE_NAME
    if cached.is_file():
        return cached, "the cache"
    if not download:
        raise DataNotFoundError(f"no IMDB data here; supply it by {ways_to_supply()}")
    return fetch(cached), f"downloaded from {OFFICIAL_URL}"


def resolve_source(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The archive or folder to read (`find_source` without the how)."""
    return find_source(path, download)[0]


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dest: Path, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Downloads `url` to `dest` with a progress bar, checks its md5, then renames it into
    place, so a partial download never looks like a complete one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
            except OSError as e:
                raise DownloadError(
                    f"no IMDB data here and the download of {url} failed ({e}); supply it "
                    f"by {ways_to_supply()}") from e
            log.info("downloading %s to %s", url, dest)
            total = int(response.headers.get("Content-Length") or 0) or None
            progress = Progress(f"downloading {dest.name}", total, unit="bytes", log=log.info)
            try:
                with response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        progress.update(len(chunk))
            finally:
                progress.stop()
            progress.close(console=True)
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
