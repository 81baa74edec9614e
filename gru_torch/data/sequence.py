"""pad_sequences, with exactly the semantics of Keras's keras.utils.pad_sequences."""
from __future__ import annotations

import numpy as np


def pad_sequences(sequences, maxlen: int | None = None, dtype="int32", padding: str = "pre",
                  truncating: str = "pre", value=0):
    """Pads (or truncates) a list of sequences to one length: a [len(sequences), maxlen]
    numpy array (more dimensions if the items are themselves arrays).

    maxlen: None pads to the longest sequence. padding / truncating: "pre" or "post", where
    padding goes and which end of a long sequence is cut. value: the padding value.
    """
    if padding not in ("pre", "post"):
        raise ValueError(f'padding must be "pre" or "post", got {padding!r}')
    if truncating not in ("pre", "post"):
        raise ValueError(f'truncating must be "pre" or "post", got {truncating!r}')
    if maxlen is not None and (isinstance(maxlen, bool) or int(maxlen) != maxlen or maxlen < 0):
        raise ValueError(f"maxlen must be None or a non-negative integer, got {maxlen!r}")
    if not hasattr(sequences, "__len__"):
        raise ValueError("sequences must be a list of iterables")
    lengths, sample_shape, found = [], (), False
    for i, s in enumerate(sequences):
        try:
            lengths.append(len(s))
        except TypeError:
            raise ValueError(f"sequences must be a list of iterables; item {i} is "
                             f"{type(s).__name__}") from None
        if not found and len(s):
            sample_shape, found = np.asarray(s).shape[1:], True
    if maxlen is None:
        maxlen = max(lengths, default=0)
    maxlen = int(maxlen)
    is_str = np.issubdtype(np.dtype(dtype), np.str_)
    if isinstance(value, str) and np.dtype(dtype) != object and not is_str:
        raise ValueError(f"dtype {dtype} cannot hold the string padding value {value!r}; "
                         "use dtype=object")
    x = np.full((len(lengths), maxlen) + tuple(sample_shape), value, dtype=dtype)
    if maxlen == 0:
        return x
    for i, s in enumerate(sequences):
        if not len(s):
            continue
        trunc = np.asarray(s[-maxlen:] if truncating == "pre" else s[:maxlen], dtype=dtype)
        if trunc.shape[1:] != sample_shape:
            raise ValueError(f"item {i} has shape {trunc.shape[1:]} past its length, unlike the "
                             f"first non-empty item's {sample_shape}")
        if padding == "post":
            x[i, :len(trunc)] = trunc
        else:
            x[i, -len(trunc):] = trunc
    return x
