"""LFW-style verification .bin files (insightface): a pickle of (encoded_images, issame_list).

`encoded_images` holds 2 x pairs JPEG/PNG byte strings (bytes; str in files written by
Python 2, read back as bytes), `issame_list` holds one bool per pair (a list or a numpy array).
The file is untrusted: it is read with plsc's restricted unpickler (plsc.io.safe_pickle), which
builds only those types and refuses every other global, so a crafted file cannot run code; the bytes
its numpy arrays hold are charged to a budget of the file's size (8 x + 64 MiB).
"""
import os
import pickle

import numpy as np

from plsc.data.regular import read_regular
from plsc.errors import DataError
from plsc.io.numpy_pickle import PLAIN_DTYPES, numpy_globals
from plsc.io.safe_pickle import BYTES_GLOBALS, Budget, safe_loads

_WHAT = "verification .bin pickle"
_HINT = "a verification .bin may only contain byte strings, bools and numpy arrays of them"


def safe_load_pickle(path):
    """Unpickle `path` allowing only plain containers, bytes/str, numbers and numpy bool/int/float arrays."""
    data = read_regular(path, "verification .bin file")
    # the budget: numpy arrays sharing one pickled bytes object cannot make the images far larger than the file
    allowed = {**numpy_globals(PLAIN_DTYPES, max_ndim=4, budget=Budget(len(data))), **BYTES_GLOBALS}
    return safe_loads(data, path, allowed, DataError, _WHAT, _HINT)


def _as_bytes(x, path, i):
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, str):  # py2 str pickled, loaded with a text encoding
        try:
            return x.encode("latin-1")
        except UnicodeEncodeError:
            raise DataError(f"{path}: image {i} is text with non-latin-1 characters, not encoded image bytes") from None
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x.tobytes()
    raise DataError(f"{path}: image {i} is a {type(x).__name__}, expected encoded image bytes")


def _as_flags(issame, path):
    """A flat list/tuple of bools (or 0/1) or a numpy bool/int array -> bool array [P]."""
    if isinstance(issame, np.ndarray) and issame.dtype.kind in "biu":
        flags = issame.reshape(-1)
        if np.isin(flags, (0, 1)).all():
            return np.asarray(flags, dtype=bool)
    elif isinstance(issame, (list, tuple)):  # checked flat: numpy would walk nested (or shared) lists
        if all(isinstance(x, (bool, int, np.bool_, np.integer)) and x in (0, 1) for x in issame):
            return np.array([bool(x) for x in issame], dtype=bool)
    raise DataError(f"{path}: issame must be a flat list (or numpy array) of booleans, "
                    f"got a {type(issame).__name__} holding other values")


REUSE_FACTOR = 256  # referenced image bytes may be at most this many times the file's size


def _check_reuse(images, path):
    """Pairs may share an image object (the pickle memo: LFW's pairs reuse photos), so the budget is the
    distinct images: their bytes are in the file. What the references add (each one decoded and embedded) is
    bounded too: at most REUSE_FACTOR x the file's size, so 2 bytes of memo reference cannot stand for
    an image decoded 100000 times."""
    size = os.path.getsize(path)
    distinct, counts = {}, {}
    for x in images:
        n = len(x) if isinstance(x, (bytes, bytearray, str)) else getattr(x, "nbytes", 0)
        distinct[id(x)] = n
        counts[id(x)] = counts.get(id(x), 0) + 1
    total = sum(distinct[id(x)] for x in images)
    if total > REUSE_FACTOR * max(size, 1):
        raise DataError(f"{path}: its {len(images)} images hold {total} bytes in all, more than {REUSE_FACTOR} x the "
                        f"file's {size} bytes: {len(distinct)} distinct images, one listed {max(counts.values())} "
                        f"times (pairs may reuse an image, as LFW's do, but not without bound)")


def load_bin(path):
    """Return (list of encoded image bytes [2*P], np.bool_ array issame [P]) from a .bin file."""
    obj = safe_load_pickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)):
        raise DataError(f"{path}: images must be a list, got {type(images).__name__}")
    _check_reuse(images, path)
    images = [_as_bytes(x, path, i) for i, x in enumerate(images)]
    issame = _as_flags(issame, path)
    if len(images) != 2 * len(issame):
        raise DataError(
            f"{path}: {len(images)} images but {len(issame)} pairs; a .bin must hold exactly 2 x pairs images"
        )
    return images, issame


def save_bin(path, images, issame):
    """Write a .bin in insightface's layout: pickle((list of bytes, list of bool))."""
    if len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images but {len(issame)} pairs")
    with open(path, "wb") as f:
        pickle.dump(([bytes(b) for b in images], [bool(s) for s in issame]), f, protocol=pickle.HIGHEST_PROTOCOL)
