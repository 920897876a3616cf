"""numpy's pickles, read by plsc's restricted unpickler (plsc.io.safe_pickle): stand-ins for
the names numpy uses to pickle arrays, dtypes and scalars (protocols 2-5, numpy 1.x and 2.x paths).

    allowed = {**numpy_globals(PLAIN_DTYPES, max_ndim=4, budget=Budget(len(data))), **BYTES_GLOBALS}

Each array's dtype, shape and byte count are checked before numpy sees them (plain bool/int/float
dtypes only: object arrays would unpickle their items); a dtype the file names stays a `DTypeSpec`
that only accepts numpy's exact canonical state, and arrays are built with a fresh `numpy.dtype`;
with a `Budget`, the bytes all arrays of one file copy are bounded.
"""
import numpy as np

from plsc.io.safe_pickle import FileArray, Marker, Refused, StandIn, brief, check_shape, latin1_bytes

PLAIN_DTYPES = frozenset({"b1", "?", "u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8", ">u2",
                          ">i2", ">u4", ">i4", ">u8", ">i8", ">f4", ">f8", "u2", "i2", "u4", "i4", "u8", "i8", "f4",
                          "f8"})
HALF_DTYPES = frozenset({"<f2", ">f2", "f2"})


class DTypeSpec:
    """What `numpy.dtype(spec, False, True)` gives the pickle: a plain dtype held out of numpy's reach.
    BUILD may only apply the exact state numpy writes for that dtype (version 3, a byte order); the
    arrays are then built with a fresh canonical `numpy.dtype`, never with an object the file touched."""

    __slots__ = ("dtype", "_built")

    def __init__(self, dtype):
        self.dtype, self._built = dtype, False

    def __setstate__(self, state):
        if self._built or not isinstance(state, tuple) or len(state) != 8 or type(state[1]) not in (str, bytes):
            raise Refused(f"numpy dtype state {brief(state)}")
        endian = state[1].decode("latin-1") if type(state[1]) is bytes else state[1]  # Python 2: bytes
        canon = self.dtype.newbyteorder(endian) if endian in ("<", ">") else self.dtype
        if (state[0], endian) + state[2:] != canon.__reduce__()[2]:
            raise Refused(f"numpy dtype state {brief(state)} is not that of a plain {self.dtype.str} dtype")
        self.dtype, self._built = np.dtype(canon.str), True


def check_dtype(dtype):
    if not isinstance(dtype, DTypeSpec):
        raise Refused(f"numpy dtype {brief(dtype)} is not a plain bool/int/float dtype")
    return dtype.dtype


def numpy_globals(dtypes=PLAIN_DTYPES, max_ndim=4, budget=None):
    """Stand-ins for the names numpy's pickles use (protocols 2-5, numpy 1.x and 2.x module paths)."""

    def check_array(shape, dtype, data):
        dtype = check_dtype(dtype)
        count = check_shape(shape, max_ndim)
        data = latin1_bytes(data)
        if count * dtype.itemsize != len(data):
            raise Refused(f"numpy array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
                          f"the file holds {len(data)}")
        if budget is not None:
            budget.take(len(data))
        return shape, dtype, data

    class CheckedArray(np.ndarray):
        """What `_reconstruct` builds: an empty array whose state is validated before numpy uses it."""

        def __setstate__(self, state):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise Refused("malformed numpy array state")
            shape, dtype, fortran, data = state[-4:]
            if type(fortran) not in (bool, int):
                raise Refused(f"numpy array order flag {brief(fortran)}")
            shape, dtype, data = check_array(shape, dtype, data)
            super().__setstate__(state[:-4] + (shape, dtype, bool(fortran), data))

    ndarray = Marker("numpy.ndarray", " directly")  # numpy.ndarray(shape) would allocate any shape

    def reconstruct(subtype, shape, dtype_code):
        if subtype is not ndarray or type(shape) is not tuple or shape != (0,):
            raise Refused(f"numpy _reconstruct({brief(subtype)}, {brief(shape)}) is not how numpy pickles an array")
        return np.ndarray.__new__(CheckedArray, (0,), np.uint8)

    def frombuffer(buf, dtype, shape, order):  # protocol 5
        shape, dtype, data = check_array(shape, dtype, buf)
        if order not in ("C", "F"):
            raise Refused(f"numpy array order {brief(order)}")
        return np.frombuffer(data, dtype).reshape(shape, order=order).view(FileArray)

    def make_dtype(spec, align=False, copy=False):
        if isinstance(spec, bytes):  # Python 2 numpy pickles, read with encoding="bytes"
            spec = spec.decode("latin-1")
        if type(spec) is not str or spec not in dtypes:
            raise Refused(f"numpy dtype {brief(spec)} is not a plain bool/int/float dtype")
        return DTypeSpec(np.dtype(spec))

    def scalar(dtype, data):
        dtype = check_dtype(dtype)
        data = latin1_bytes(data)
        if len(data) != dtype.itemsize:
            raise Refused(f"numpy {dtype} scalar of {len(data)} bytes")
        return np.frombuffer(data, dtype)[0].item()  # a Python number: nothing for BUILD to change

    out = {("numpy", "ndarray"): ndarray, ("numpy", "dtype"): StandIn("numpy.dtype", make_dtype)}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = StandIn("numpy _reconstruct", reconstruct)
        out[(f"{core}.numeric", "_frombuffer")] = StandIn("numpy _frombuffer", frombuffer)
        out[(f"{core}.multiarray", "scalar")] = StandIn("numpy scalar", scalar)
    return out


