"""LFW-style verification .bin files (insightface): a pickle of (encoded_images, issame_list).

`encoded_images` holds 2 x pairs JPEG/PNG byte strings (bytes; str in files written by
Python 2, read back as bytes), `issame_list` holds one bool per pair (a list or a numpy array).
The file is untrusted: it is read with a restricted unpickler that builds only those types and
refuses every other global, so a crafted file cannot run code.
"""
import io
import os
import pickle

import numpy as np

from plsc.errors import DataError

# Globals the format may legitimately reference (numpy arrays/scalars of bool or uint8).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes objects
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path):
        super().__init__(f, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self._path}: refused to load global '{module}.{name}': a verification .bin may only "
            f"contain byte strings, bools and numpy arrays of them"
        )


def safe_load_pickle(path):
    """Unpickle `path` allowing only plain containers, bytes/str, numbers and numpy arrays."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as e:  # truncated or garbage pickle stream
        raise DataError(f"{path}: not a readable verification .bin pickle ({type(e).__name__}: {e})") from None


def _as_bytes(x, path, i):
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, str):  # py2 str pickled, loaded with a text encoding
        return x.encode("latin-1")
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x.tobytes()
    raise DataError(f"{path}: image {i} is a {type(x).__name__}, expected encoded image bytes")


def load_bin(path):
    """Return (list of encoded image bytes [2*P], np.bool_ array issame [P]) from a .bin file."""
    obj = safe_load_pickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)):
        raise DataError(f"{path}: images must be a list, got {type(images).__name__}")
    images = [_as_bytes(x, path, i) for i, x in enumerate(images)]
    try:
        issame = np.asarray(issame, dtype=bool).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: issame list is not a list of booleans ({e})") from None
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
