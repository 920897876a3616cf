"""LFW-style verification .bin files (insightface): a pickle of (encoded_images, issame_list).

`encoded_images` holds 2 x pairs JPEG/PNG byte strings (bytes; str in files written by
Python 2, read back as bytes), `issame_list` holds one bool per pair (a list or a numpy array).
The file is untrusted: it is read with a restricted unpickler that builds only those types and
refuses every other global, so a crafted file cannot run code.
"""
import io
import os
import pickle
import pickletools

import numpy as np

from plsc.errors import DataError

# numpy dtypes a .bin may hold (issame flags, raw image bytes); never object, string or void dtypes
_DTYPES = {"b1", "?", "u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8", ">u2", ">i2", ">u4",
           ">i4", ">u8", ">i8", ">f4", ">f8", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"}
_MAX_NDIM = 4
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _Refused(Exception):
    """A value the format does not use (turned into a DataError naming the file)."""


def _latin1(x):
    if isinstance(x, str):
        return x.encode("latin-1")
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    raise _Refused(f"expected bytes, got {type(x).__name__}")


def _check_dtype(dtype):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.kind not in "biuf":
        raise _Refused(f"numpy dtype {dtype!r} is not a plain bool/int/float dtype")
    return dtype


def _check_array(shape, dtype, data):
    """Validate an array's parts before numpy sees them: the shape is checked against the data held."""
    dtype = _check_dtype(dtype)
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _Refused(f"numpy array shape {shape!r} is not a tuple of at most {_MAX_NDIM} sizes")
    data = _latin1(data)
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != len(data):
        raise _Refused(f"numpy array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
                       f"the file holds {len(data)}")
    return shape, dtype, data


class _CheckedArray(np.ndarray):
    """What the pickle's `_reconstruct` builds: an empty array whose state is validated before use."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]
        _check_array(shape, dtype, data)
        super().__setstate__(state)


class _NDArrayName:
    """Stands for `numpy.ndarray` in a pickle: only `_reconstruct` may use it (numpy.ndarray(shape) itself
    would allocate any shape the file names)."""

    def __init__(self, *args, **kwargs):
        raise _Refused("calling numpy.ndarray directly")


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDArrayName or tuple(shape) != (0,):
        raise _Refused(f"numpy _reconstruct({getattr(subtype, '__name__', subtype)!r}, {shape!r}) is not how "
                       f"numpy pickles an array")
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _frombuffer(buf, dtype, shape, order):  # numpy's pickle protocol 5 path
    shape, dtype, data = _check_array(shape, dtype, buf)
    if order not in ("C", "F"):
        raise _Refused(f"numpy array order {order!r}")
    return np.frombuffer(data, dtype).reshape(shape, order=order)


def _dtype(spec, align=False, copy=False):
    if isinstance(spec, bytes):  # Python 2 numpy pickles, read with encoding="bytes"
        spec = spec.decode("latin-1")
    if not isinstance(spec, str) or spec not in _DTYPES:
        raise _Refused(f"numpy dtype {spec!r} is not a plain bool/int/float dtype")
    return np.dtype(spec, False, True)  # always a private copy: BUILD must not touch numpy's singletons


def _scalar(dtype, data):
    dtype = _check_dtype(dtype)
    data = _latin1(data)
    if len(data) != dtype.itemsize:
        raise _Refused(f"numpy {dtype} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype)[0]


def _encode(text, encoding="utf-8"):  # protocol 2 spells bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _bytearray(*args):
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0].encode("latin-1"))
    if not args:
        return bytearray()
    raise _Refused("bytearray() of anything but bytes")  # bytearray(2**40) would allocate a terabyte


# Globals the format may legitimately reference, each bound to a checking stand-in.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NDArrayName,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path):
        super().__init__(f, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        key = (module.decode("latin-1") if isinstance(module, bytes) else module,
               name.decode("latin-1") if isinstance(name, bytes) else name)
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        raise DataError(
            f"{self._path}: refused to load global '{key[0]}.{key[1]}': a verification .bin may only "
            f"contain byte strings, bools and numpy arrays of them"
        )

    def persistent_load(self, pid):
        raise DataError(f"{self._path}: refused a persistent id: a verification .bin holds plain values only")


def _prescan(data, path):
    """Walk the opcodes once without building anything: every counted length must fit in the file
    (the C unpickler allocates a length before reading it) and memo indices must be dense."""
    ops = 0
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in _MEMO_OPS and not 0 <= arg <= ops:
                raise _Refused(f"memo index {arg} at opcode {ops}")
            ops += 1
    except _Refused:
        raise
    except Exception as e:  # short data, unknown opcode, bad argument
        raise _Refused(f"{type(e).__name__}: {e}") from None


def safe_load_pickle(path):
    """Unpickle `path` allowing only plain containers, bytes/str, numbers and numpy bool/int/float arrays."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        _prescan(data, path)
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except _Refused as e:
        raise DataError(f"{path}: not a valid verification .bin pickle: {e}") from None
    except Exception as e:  # truncated or garbage pickle stream
        raise DataError(f"{path}: not a readable verification .bin pickle ({type(e).__name__}: {e})") from None


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
            return flags.astype(bool)
    elif isinstance(issame, (list, tuple)):  # checked flat: numpy would walk nested (or shared) lists
        if all(isinstance(x, (bool, int, np.bool_, np.integer)) and x in (0, 1) for x in issame):
            return np.array([bool(x) for x in issame], dtype=bool)
    raise DataError(f"{path}: issame must be a flat list (or numpy array) of booleans, "
                    f"got a {type(issame).__name__} holding other values")


def load_bin(path):
    """Return (list of encoded image bytes [2*P], np.bool_ array issame [P]) from a .bin file."""
    obj = safe_load_pickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)):
        raise DataError(f"{path}: images must be a list, got {type(images).__name__}")
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
