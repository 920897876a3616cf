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
"""
import os

import numpy as np

from plsc.errors import CheckpointError

FORMAT_VERSION = 2
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
_VERSION_OF = {"float32": 1, "bfloat16": 2, "float16": 2}


def shard_file(ckpt_dir, rank):
    return os.path.join(ckpt_dir, f"fc_rank{rank}.npz")


def build(weight, start, end, classes, storage_dtype="float32", replicated=False, slots=None, steps=None,
          extra=None):
    """The arrays of one shard file. weight / slots: numpy arrays in storage form (`to_storage_array`)."""
    if storage_dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"FC storage dtype {storage_dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
    out = {"format_version": np.array(_VERSION_OF[storage_dtype], np.int64),
           "storage_dtype": np.array(storage_dtype),
           "class_range": np.array([start, end, classes], np.int64), "replicated": np.array(bool(replicated)),
           "weight": np.ascontiguousarray(weight)}
    if steps is not None:
        out["optimizer_steps"] = np.array(int(steps), np.int64)
    for name, arr in (slots or {}).items():
        out[name] = np.ascontiguousarray(arr)
    for k, val in (extra or {}).items():
        out[f"extra.{k}"] = np.array(val)
    return out


def write(path, shard):
    with open(path, "wb") as f:
        np.savez(f, **shard)


def read(path):
    """One shard file, checked: readable, a format this reader knows."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    check(shard, path)
    return shard


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
    from plsc.distributed import shard_range

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
    from plsc.distributed import shard_range

    classes = fc.shape[0]
    if not 1 <= world_size <= classes:
        raise CheckpointError(f"{where}: --world-size must be in [1, {classes}] (the class count of its "
                              f"classifier), got {world_size}")
    for r in range(world_size):
        start, end = shard_range(classes, r, world_size)
        yield build(np.asarray(fc[start:end], np.float32), start, end, classes, steps=0)
