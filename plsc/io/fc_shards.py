"""The FC shard file format, built and read in this one place.

One file per rank, `fc_rank<r>.npz` (numpy, no pickled objects), holding one contiguous class range:

    format_version    int: 1 for float32 rows, 2 for 16-bit rows (bfloat16 / float16)
    storage_dtype     str: float32 | bfloat16 | float16 -- how the per-row arrays are stored
    class_range       int64 [start, end, C]
    replicated        bool: every rank held all C rows (Model.pfc_config.model_parallel false)
    weight            [end - start, D] rows; float32, float16, or bfloat16 as its uint16 bit pattern
    <slot>            the optimizer's per-row slots (`momentum`, or `moment1` + `moment2`), same storage
    optimizer_steps   int (absent: no optimizer state, e.g. an imported classifier)
    extra.<name>      the head's scalars (sampling draws, AdaFace norm statistics)

16-bit rows are written as they are (no rounding on save). A reader that knows format versions up to
FORMAT_VERSION refuses a newer file with the reason (a plsc before 16-bit storage cannot read its rows).
Any set of shards covering the classes loads at any world size and any storage dtype: each rank takes
the rows overlapping its range (`overlap`), converted by `rows_as` (exact to float32; float32 to 16 bits
rounded to nearest: a one-time conversion, not a training update).

The file is an ordinary uncompressed .npz (np.load reads it). At millions of classes a shard's rows are
GBs, so neither side holds a second copy of them: `write` takes the per-row arrays as `Rows` (read a
block of rows at a time from the live tensors) and streams them into the zip member; `read` maps the
row arrays of the file (np.memmap over the stored member: rows are read when used).
"""
import os
import zipfile

import numpy as np

from plsc.errors import CheckpointError

FORMAT_VERSION = 2
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
_VERSION_OF = {"float32": 1, "bfloat16": 2, "float16": 2}


def shard_file(ckpt_dir, rank):
    return os.path.join(ckpt_dir, f"fc_rank{rank}.npz")


def build(weight, start, end, classes, storage_dtype="float32", replicated=False, slots=None, steps=None,
          extra=None):
    """The arrays of one shard file. weight / slots: numpy arrays (or `Rows`) in storage form (`to_file_array`)."""
    if storage_dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"FC storage dtype {storage_dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
    rows = lambda a: a if isinstance(a, Rows) else np.ascontiguousarray(a)  # noqa: E731
    out = {"format_version": np.array(_VERSION_OF[storage_dtype], np.int64),
           "storage_dtype": np.array(storage_dtype),
           "class_range": np.array([start, end, classes], np.int64), "replicated": np.array(bool(replicated)),
           "weight": rows(weight)}
    if steps is not None:
        out["optimizer_steps"] = np.array(int(steps), np.int64)
    for name, arr in (slots or {}).items():
        out[name] = rows(arr)
    for k, val in (extra or {}).items():
        out[f"extra.{k}"] = np.array(val)
    return out


BLOCK_ROWS = 1 << 15  # rows moved at a time between a tensor and a file (32 MiB of float32 rows at D = 512)
_MAP_BYTES = 1 << 20  # members larger than this are memory-mapped by `read`


class Rows:
    """A [rows, D] array read a block at a time: read(a, b) -> numpy rows [a, b) (e.g. from a tensor).

    Slicing reads those rows; np.asarray(rows) reads them all (tests, small shards)."""

    def __init__(self, shape, dtype, read):
        self.shape, self.dtype, self._read = tuple(shape), np.dtype(dtype), read
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("Rows supports contiguous row slices only")
        a, b, _ = key.indices(self.shape[0])
        return np.ascontiguousarray(self._read(a, max(a, b)))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def blocks(self, rows=None):
        rows = rows or BLOCK_ROWS
        for a in range(0, self.shape[0], rows):
            yield self[a:min(self.shape[0], a + rows)]


def write(path, shard):
    """Write a shard as an uncompressed .npz; `Rows` values are streamed block by block."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in shard.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                if isinstance(value, Rows):
                    np.lib.format.write_array_header_2_0(f, {"shape": value.shape, "fortran_order": False,
                                                             "descr": np.lib.format.dtype_to_descr(value.dtype)})
                    for block in value.blocks():
                        f.write(np.ascontiguousarray(block, value.dtype).data)
                else:
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def read(path):
    """One shard file, checked: readable, a format this reader knows. Row arrays are memory-mapped."""
    try:
        shard = _read_npz(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    check(shard, path)
    return shard


def _read_npz(path):
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED and info.file_size > _MAP_BYTES:
                out[key] = _map_member(path, raw, info)
            else:
                with zf.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    return out


def _map_member(path, raw, info):
    """np.memmap of a stored (uncompressed) .npy member of a zip file."""
    raw.seek(info.header_offset)
    local = raw.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad zip local header for {info.filename}")
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    raw.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(raw)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(raw)
    if fortran or dtype.hasobject:
        raise ValueError(f"{info.filename}: not a C-ordered plain array")
    offset = raw.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > os.path.getsize(path):
        raise ValueError(f"{info.filename}: the file ends inside its data")
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def check(shard, where, reader_version=None):
    """Raise CheckpointError unless `shard` is a shard this reader (format <= reader_version) can use."""
    known = FORMAT_VERSION if reader_version is None else reader_version
    version = int(shard["format_version"]) if "format_version" in shard else 1
    dtype = storage_dtype(shard)
    if version > known:
        raise CheckpointError(f"{where}: FC shard format {version} (rows stored as {dtype}); this plsc reads "
                              f"formats up to {known} -- it was written by a newer plsc (16-bit class storage, "
                              f"Model.pfc_config.storage_dtype): upgrade plsc to read it")
    if dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"{where}: unknown FC storage dtype {dtype!r}")
    for key in ("class_range", "weight"):
        if key not in shard:
            raise CheckpointError(f"{where}: not an FC shard (no '{key}')")
    return shard


def read_all(ckpt_dir, world_size):
    """The shards of a checkpoint directory one at a time, in rank order (never all in memory)."""
    for r in range(world_size):
        yield read(shard_file(ckpt_dir, r))


def storage_dtype(shard):
    return str(shard["storage_dtype"]) if "storage_dtype" in shard else "float32"


def class_range(shard):
    return tuple(int(x) for x in shard["class_range"])


def row_slots(shard):
    """Names of the per-row optimizer arrays (momentum; or moment1, moment2)."""
    return sorted(k for k, v in shard.items() if k != "weight" and getattr(v, "ndim", 0) == 2)


def extra_state(shard):
    return {k[len("extra."):]: shard[k].item() for k in shard if k.startswith("extra.")}


def optimizer_steps(shard):
    return int(shard["optimizer_steps"]) if "optimizer_steps" in shard else 0


# ---------------------------------------------------------------- storage conversions (numpy)
def to_float32(arr, dtype):
    """float32 values of rows stored as `dtype` (bfloat16: uint16 bit patterns). Exact."""
    if dtype == "bfloat16":
        return (np.asarray(arr, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr).astype(np.float32)


def to_storage_array(values32, dtype):
    """float32 values -> storage form of `dtype`, rounded to nearest even (bfloat16: uint16 bits)."""
    v = np.ascontiguousarray(values32, np.float32)
    if dtype == "float32":
        return v
    if dtype == "float16":
        with np.errstate(over="ignore"):
            out = v.astype(np.float16)
        if not np.isfinite(out[np.isfinite(v)]).all():
            raise CheckpointError("FC rows exceed float16's range (|w| > 65504): they cannot be stored as float16; "
                                  "use Model.pfc_config.storage_dtype bfloat16 or float32")
        return out
    bits = v.view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(v)
    out[nan] = np.uint16(0x7FC0)
    return out


def file_dtype(dtype):
    """The numpy dtype of rows stored as `dtype` in a file (bfloat16: its uint16 bit pattern)."""
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]


def to_file_array(arr, dtype):
    """A tensor's `.numpy()` (bfloat16 comes out as uint16 bits) in file form, bits unchanged."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype != file_dtype(dtype):
        raise CheckpointError(f"FC rows of dtype {arr.dtype} do not match storage {dtype}")
    return arr


def rows_as(shard, key, lo, hi, dtype):
    """Rows [lo, hi) (shard-local) of array `key`, in storage form of `dtype` (bits kept when dtypes agree)."""
    have = storage_dtype(shard)
    part = shard[key][lo:hi]
    if have == dtype:
        return part
    return to_storage_array(to_float32(part, have), dtype)


# ---------------------------------------------------------------- merge / split (plsc-fc-shards, re-sharding)
def merge(shards):
    """One shard covering all classes (rows in class order) from a list of shards (same storage dtype)."""
    first = shards[0]
    classes = class_range(first)[2]
    if bool(first["replicated"]):
        return dict(first)
    dim = first["weight"].shape[1]
    rows = ["weight"] + row_slots(first)
    dtype = storage_dtype(first)
    full = {k: np.empty((classes, dim), first[k].dtype) for k in rows}
    covered = np.zeros(classes, bool)
    for i, s in enumerate(shards):
        start, end, c = class_range(s)
        if c != classes or s["weight"].shape != (end - start, dim) or row_slots(s) != rows[1:] or \
                storage_dtype(s) != dtype:
            raise CheckpointError(f"FC shard {i} does not fit the others ({c} classes, rows [{start}, {end}), "
                                  f"weight {s['weight'].shape}, state {row_slots(s)}, {storage_dtype(s)})")
        for k in rows:
            full[k][start:end] = s[k]
        covered[start:end] = True
    if not covered.all():
        raise CheckpointError(f"the FC shards do not cover class {np.flatnonzero(~covered)[0]}")
    out = {k: v for k, v in first.items() if k not in rows and k != "class_range"}
    out.update(full, class_range=np.array([0, classes, classes], np.int64), replicated=np.array(False))
    return out


def split(full, world_size):
    """Shards for `world_size` ranks (plsc's shard rule) from a merged one; rows keep their bits."""
    from plsc.distributed import shard_range  # optional: plsc.distributed loads Paddle; reading shards does not

    classes = class_range(full)[2]
    if world_size < 1 or world_size > classes:
        raise CheckpointError(f"world size must be in [1, {classes}] (the class count), got {world_size}")
    rows = ["weight"] + row_slots(full)
    keep = {k: v for k, v in full.items() if k not in rows and k != "class_range"}
    shards = []
    for r in range(world_size):
        start, end = shard_range(classes, r, world_size)
        shards.append(dict(keep, **{k: full[k][start:end] for k in rows},
                           class_range=np.array([start, end, classes], np.int64), replicated=np.array(False)))
    return shards


def split_weight(fc, world_size, where="the classifier"):
    """Shards (weights only, optimizer_steps 0) of a float32 [C, D] classifier: plsc-import's FC."""
    from plsc.distributed import shard_range  # optional: plsc.distributed loads Paddle; reading shards does not

    classes = fc.shape[0]
    if not 1 <= world_size <= classes:
        raise CheckpointError(f"{where}: --world-size must be in [1, {classes}] (the class count of its "
                              f"classifier), got {world_size}")
    for r in range(world_size):
        start, end = shard_range(classes, r, world_size)
        yield build(np.asarray(fc[start:end], np.float32), start, end, classes, steps=0)
