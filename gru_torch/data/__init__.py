"""IMDB data: finding and reading the archive, tokenizing, Keras-style loading and padding."""
from . import archive, imdb
from .archive import (CorruptArchiveError, DataError, DataNotFoundError, DownloadError,
                      LayoutError, UnsafeArchiveError)
from .sequence import pad_sequences
from .text import tokenize

__all__ = ["archive", "imdb", "pad_sequences", "tokenize", "DataError", "DataNotFoundError",
           "CorruptArchiveError", "LayoutError", "UnsafeArchiveError", "DownloadError"]
