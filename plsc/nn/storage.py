"""Class storage of the FC shard (Model.pfc_config.storage_dtype): float32, bfloat16 or float16.

The weight rows and the optimizer's per-row slots are stored in the storage dtype; every step reads
the rows it uses as float32 (exact), computes in float32 and writes them back rounded:

    store = RowStorage("bfloat16", first_class=start, seed=seed)
    rows = store.get(w, index)                          # float32 copy of w[index] (index None: all rows)
    store.put(w, index, new_rows, salt=s)               # w[index] = round(new_rows); s: int per step and array

Rounding is stochastic: a value x between its two neighbours lo < x < hi in the storage format is
stored as hi with probability (x - lo) / (hi - lo), so the stored value is x on average and an update
smaller than half a step -- which round-to-nearest drops every time -- moves the row by the right
amount in expectation (tests/test_storage.py). It is done on the float32 bit pattern: add a uniform
random integer below 2^drop to the bits (drop = 16 for bfloat16, 13 for float16: the mantissa bits the
format lacks) and clear those bits; the carry is the round-up. For bfloat16 the upper half of the sum
is the result: it is taken as the odd int16 of each pair (a strided copy, ~8x faster on CPU than
clearing the bits and casting). Below float16's normal range (|x| <
6.1e-5) the final cast rounds the remaining bits to nearest (absolute error <= 3e-8).

The random bits are a function of (the row's class, the column, the salt: seed, step, array), not a
generator's stream, so the stored values do not depend on the sharding or on the chunking (2 ranks
== 1 rank, bit for bit, given equal float32 inputs): row hash(class, salt) of a fixed table of
4096 x D uniform integers, XORed with a per-(salt, column) key. Every value's draw is uniform at every
step and changes from step to step; the cost is one row gather and a few int32 passes over the
rows (a per-element integer hash cost ~10x more on CPU).

Chosen over a compensated (Kahan) scheme, which keeps a second 16-bit array per stored array (the
rounding error) and so costs as many bytes as float32 storage: stochastic rounding keeps the 2-byte
promise and loses nothing on average.

float16 (range +-65504): a value that would leave the range is not written (its row element keeps the
value it had) and `take_overflow()` reports it; the head all-reduces that verdict after the step and
raises FCStorageOverflow on every rank (the engine then saves a checkpoint and stops).
"""
import sys

import numpy as np
import paddle

from plsc.errors import FCStorageOverflow
from plsc.nn.rows import put_rows, set_rows_, take_rows

STORAGE_DTYPES = ("float32", "bfloat16", "float16")
FLOAT16_MAX = 65504.0
_DROP = {"bfloat16": 16, "float16": 13}
_M32 = 0xFFFFFFFF
_LITTLE_ENDIAN = sys.byteorder == "little"


def _hash32(x):
    """lowbias32 (C. Wellons) on an int64 tensor of values in [0, 2^32): a well-mixed 32-bit integer."""
    mask = paddle.to_tensor(_M32, dtype="int64")
    x = paddle.bitwise_xor(x, paddle.bitwise_right_shift(x, paddle.to_tensor(16, dtype="int64")))
    x = paddle.bitwise_and(x * paddle.to_tensor(0x7FEB352D, dtype="int64"), mask)
    x = paddle.bitwise_xor(x, paddle.bitwise_right_shift(x, paddle.to_tensor(15, dtype="int64")))
    x = paddle.bitwise_and(x * paddle.to_tensor(0x846CA68B, dtype="int64"), mask)
    return paddle.bitwise_xor(x, paddle.bitwise_right_shift(x, paddle.to_tensor(16, dtype="int64")))


def _host_hash32(x):
    """lowbias32 on a Python int or a numpy uint64 array."""
    x = x & _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _column_keys(dim, salt):
    """[1, D] int64: a 32-bit random key per column for this salt."""
    cols = np.arange(dim, dtype=np.uint64)
    keys = _host_hash32(cols * np.uint64(0x9E3779B1) + np.uint64(_host_hash32(salt)))
    return paddle.to_tensor(keys.astype(np.int64).reshape(1, dim))


_TABLE_ROWS = 4096
_TABLES = {}


def _noise_table(drop, dim):
    """[4096, D] int32 uniform in [0, 2^drop): fixed (seeded), one per (drop, D), made on first use."""
    key = (drop, dim, str(paddle.get_device()))
    if key not in _TABLES:
        rng = np.random.default_rng(0x5EED + drop)
        _TABLES[key] = paddle.to_tensor(rng.integers(0, 1 << drop, (_TABLE_ROWS, dim), dtype=np.int32))
    return _TABLES[key]


def round_stochastic(x32, dtype, classes, salt):
    """float32 [K, D] -> dtype [K, D], stochastically rounded; classes: int64 [K] global class of each row."""
    drop, dim = _DROP[dtype], x32.shape[1]
    mask = paddle.to_tensor(_M32, dtype="int64")
    pick = _hash32(paddle.bitwise_and(classes.astype("int64") + (salt & _M32), mask))
    pick = paddle.bitwise_and(pick, paddle.to_tensor(_TABLE_ROWS - 1, dtype="int64"))
    keys = _column_keys(dim, salt)
    keys = paddle.bitwise_and(keys, paddle.to_tensor((1 << drop) - 1, dtype="int64")).astype("int32")
    noise = paddle.bitwise_xor(paddle.index_select(_noise_table(drop, dim), pick), keys)
    bits = paddle.view(x32.contiguous(), "int32") + noise
    if dtype == "bfloat16" and _LITTLE_ENDIAN:
        # the upper 16 bits of each value are its bfloat16 truncation: read them as int16 pairs' odd halves
        return paddle.view(paddle.view(bits, "int16")[:, 1::2].contiguous(), "bfloat16")
    bits = paddle.bitwise_and(bits, paddle.to_tensor(-(1 << drop), dtype="int32"))
    return paddle.view(bits, "float32").astype(dtype)


class RowStorage:
    def __init__(self, dtype="float32", first_class=0, seed=0):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(dtype)
        self.dtype, self.first_class, self.seed = dtype, int(first_class), int(seed)
        self._overflow = None  # float16: device scalar > 0 once a value was out of range

    @property
    def sixteen_bit(self):
        return self.dtype != "float32"

    def get(self, t, index=None, start=0, end=None):
        """float32 rows: t[index] (index: int64 tensor of shard rows), or t[start:end] when index is None.
        float32 storage with index None returns the slice itself (in-place updates reach t)."""
        rows = t[start:end] if index is None else take_rows(t, index)
        return rows.astype("float32") if self.sixteen_bit else rows

    def put(self, t, index, rows32, start=0, salt=0):
        """Write float32 rows back: t[index] = rows32, or t[start:start + len] when index is None."""
        if not self.sixteen_bit:
            if index is not None:
                put_rows(t, index, rows32)
            elif not _same_memory(t, start, rows32):
                set_rows_(t, start, rows32)
            return
        if self.dtype == "float16":
            rows32 = self._keep_in_range(t, index, rows32, start)
        if index is None:
            classes = paddle.arange(start, start + rows32.shape[0], dtype="int64") + self.first_class
        else:
            classes = index + self.first_class
        key = _host_hash32(self.seed * 0x632BE5AB + _host_hash32(int(salt) & _M32))
        stored = round_stochastic(rows32, self.dtype, classes, key)
        if index is None:
            set_rows_(t, start, stored)
        else:
            put_rows(t, index, stored)

    def _keep_in_range(self, t, index, rows32, start):
        """float16: values beyond its range keep their stored value; the event is remembered (no host read)."""
        over = paddle.abs(rows32) > FLOAT16_MAX
        old = self.get(t, index, start, start + rows32.shape[0])
        flag = over.astype("float32").max()
        self._overflow = flag if self._overflow is None else paddle.maximum(self._overflow, flag)
        return paddle.where(over, old, rows32)

    def take_overflow(self):
        """Device scalar (> 0: some float16 value was out of range since the last call), or None."""
        flag, self._overflow = self._overflow, None
        return flag

    @staticmethod
    def overflow_error(rows_where):
        return FCStorageOverflow(
            f"Model.pfc_config.storage_dtype=float16: an FC weight or optimizer value left float16's range "
            f"(|x| > {FLOAT16_MAX:g}) {rows_where}; those values were not written. Use storage_dtype bfloat16 "
            f"(float32's range) or float32, or a smaller learning rate")


def tensor_from_file(arr, dtype):
    """A Paddle tensor of storage `dtype` from a file array (plsc.io.fc_shards.file_dtype), bits unchanged."""
    arr = np.ascontiguousarray(arr)
    if dtype == "bfloat16":
        return paddle.view(paddle.to_tensor(arr.view(np.int16)), "bfloat16")
    return paddle.to_tensor(arr)


def _same_memory(t, start, rows):
    try:
        return rows.data_ptr() == t[start:start + rows.shape[0]].data_ptr()
    except Exception:
        return False
