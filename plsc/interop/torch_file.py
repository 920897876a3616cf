"""Read a file written by `torch.save` (zip format, torch >= 1.6; Lightning `.ckpt` files are the
same) without importing torch: tensors come back as numpy arrays.

    obj = read_torch_file("model.pt")      # dicts / lists / numbers / strings / np.ndarray

Layout: `<root>/data.pkl` pickles the object; every tensor is `_rebuild_tensor_v2(storage, offset,
size, stride, ...)` whose storage is a persistent id `('storage', torch.FloatStorage, key, location,
numel)` naming the raw little-endian bytes in `<root>/data/<key>`; `<root>/byteorder` is 'little'.
data.pkl goes through plsc's restricted unpickler (plsc.io.safe_pickle): the only torch names
allowed are the storage types and the tensor / parameter rebuild functions, bound to numpy
stand-ins written here; the legacy (pre-1.6, non-zip) format is read by plsc.interop.torch_legacy.

The zip is checked before anything is read: entries must be uncompressed (torch stores every entry),
unencrypted, with distinct names and byte ranges that do not overlap (one block of bytes cannot
stand for many storages) inside the file; every storage's bytes and every tensor copy are charged
to one `Budget` of the file, so no file can make the reader hold much more than its own size.
"""
import collections
import os
import struct
import zipfile

import numpy as np

from plsc.errors import CheckpointError
from plsc.io.safe_pickle import (Budget, FileArray, Marker, Refused, StandIn, brief, check_shape, clip,
                                      container_globals, safe_loads)

# torch storage class -> numpy dtype of its bytes ("bfloat16": uint16 widened to float32)
_STORAGES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
             "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
             "ByteStorage": "u1", "BoolStorage": "?"}
_TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
_LEGACY_MAGIC = (0x1950a86a20f9469cfc6c).to_bytes(10, "little")
_MAX_NDIM = 8
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
_WHAT = "torch checkpoint pickle"
_HINT = ("a checkpoint may only hold tensors, numbers, strings and plain containers (a file with code in it, "
         "or with objects of classes plsc does not know, is refused without running anything)")


class _StorageType(Marker):
    """torch.FloatStorage & co.: a name in a persistent id, never called, never modified."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        super().__init__(f"torch.{name}")
        self.name, self.dtype = name, _STORAGES[name]


class TorchDtype(str):
    """torch.float32 etc. named in a pickle (e.g. in hyper-parameters): kept as its name."""

    __slots__ = ()

    def __setstate__(self, state):
        raise Refused(f"pickled state (BUILD) applied to {self}")


def _rebuild_tensor_v2(budget, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise Refused("_rebuild_tensor_v2 without a storage")
    count = check_shape(tuple(size) if isinstance(size, (tuple, list)) else size, _MAX_NDIM)
    size = tuple(size)
    if not isinstance(stride, (tuple, list)) or len(stride) != len(size) or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in stride):
        raise Refused(f"tensor stride {brief(stride)} for size {size}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise Refused(f"tensor storage offset {brief(offset)}")
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise Refused(f"tensor of size {size}, stride {tuple(stride)}, offset {offset} reads element {last} of "
                          f"a storage of {storage.size}")
    elif offset > storage.size:
        raise Refused(f"tensor storage offset {offset} past a storage of {storage.size}")
    item = storage.itemsize
    budget.take(count * item)  # views of one storage are copied: bounded in all
    view = np.lib.stride_tricks.as_strided(storage[offset:] if count else storage[:0], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view).view(FileArray)  # a compact copy owning its data; BUILD on it is refused


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise Refused("_rebuild_parameter of something that is not a tensor")
    return data


def _allowed(budget):
    out = dict(container_globals())
    out[("torch._utils", "_rebuild_tensor_v2")] = StandIn(
        "torch._utils._rebuild_tensor_v2", lambda *args, **kwargs: _rebuild_tensor_v2(budget, *args, **kwargs))
    for name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        out[("torch._utils", name)] = StandIn(f"torch._utils.{name}", _rebuild_parameter)
    for name in _STORAGES:
        out[("torch", name)] = _StorageType(name)
    for name in _TORCH_DTYPES:
        out[("torch", name)] = TorchDtype(f"torch.{name}")
    return out


def is_legacy_torch(head):
    """The pre-1.6 torch format: a pickle whose first value is torch's magic number."""
    return head[:2] == b"\x80\x02" and head[2:4] == b"\x8a\x0a" and head[4:14] == _LEGACY_MAGIC


class _Zip:
    """The checked entries of a torch zip: read whole, uncompressed, charged to the budget."""

    def __init__(self, zf, path, size, budget):
        self.zf, self.size, self.budget = zf, size, budget
        infos = zf.infolist()
        self.infos = {i.filename: i for i in infos}
        if len(self.infos) != len(infos):
            dup = collections.Counter(i.filename for i in infos).most_common(1)[0][0]
            raise Refused(f"the zip holds two entries named {clip(dup, 120)}")
        pkls = [n for n in self.infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise Refused("a zip file but not a torch checkpoint (no <name>/data.pkl entry)")
        self.root = pkls[0][: -len("data.pkl")]
        self._check_layout(path, infos)

    def _check_layout(self, path, infos):
        """Every entry's local header and data inside the file, no two byte ranges overlapping."""
        spans = []
        with open(path, "rb") as f:
            for info in infos:
                f.seek(info.header_offset)
                head = f.read(_LOCAL_HEADER.size)
                if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                    raise Refused(f"zip entry {clip(info.filename, 120)} has no local header at offset "
                                  f"{info.header_offset}")
                name_len, extra_len = _LOCAL_HEADER.unpack(head)[1:]
                end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
                if end > self.size:
                    raise Refused(f"zip entry {clip(info.filename, 120)} ends at byte {end}, past the end of the file "
                                  f"({self.size} bytes): truncated or corrupt")
                spans.append((info.header_offset, end, info.filename))
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise Refused(f"zip entries {clip(a, 120)} and {clip(b, 120)} overlap (one block of bytes standing for "
                              f"several entries: a zip bomb, or a corrupt file)")

    def read(self, name, what="zip entry", max_size=None):
        info = self.infos.get(name)
        if info is None:
            raise Refused(f"{what} {clip(name, 120)} is missing from the zip")
        if info.flag_bits & 0x1:
            raise Refused(f"{what} {name} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(f"{what} {name} is compressed (method {info.compress_type}); torch stores every entry "
                          f"uncompressed")
        limit = self.size if max_size is None else max_size
        if info.file_size != info.compress_size or info.file_size > limit:
            raise Refused(f"{what} {name} claims {info.file_size} bytes (stored {info.compress_size}), more than "
                          f"{limit}")
        if self.budget is not None:
            self.budget.take(info.file_size)
        try:
            return self.zf.read(info)
        except Exception as e:  # zipfile: bad CRC, short data, a local header that does not match
            raise Refused(f"{what} {name} is truncated or corrupt ({type(e).__name__}: {clip(str(e))})") from None


def _persistent_load(archive, budget):
    storages = {}

    def load(pid):
        if not isinstance(pid, tuple) or len(pid) != 5 or type(pid[0]) is not str or pid[0] != "storage" or \
                not isinstance(pid[1], _StorageType) or type(pid[2]) is not str or \
                type(pid[4]) is not int or pid[4] < 0:
            raise Refused(f"persistent id {brief(pid)} is not a torch storage")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in storages:
            name = f"{archive.root}data/{key}"
            dtype = np.dtype("<u2" if kind.dtype == "bfloat16" else kind.dtype)
            info = archive.infos.get(name)
            if info is not None and info.file_size != numel * dtype.itemsize:
                raise Refused(f"storage {clip(key, 120)} holds {info.file_size} bytes, {numel} x {kind.name} need "
                              f"{numel * dtype.itemsize}")
            arr = np.frombuffer(archive.read(name, "storage entry"), dtype)
            if kind.dtype == "bfloat16":
                budget.take(4 * arr.size)
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            storages[key] = arr.view(FileArray)  # handed to the pickle: BUILD on it is refused
        if storages[key].dtype != np.dtype("<f4" if kind.dtype == "bfloat16" else kind.dtype):
            raise Refused(f"storage {clip(key, 120)} named as {kind.name} and as another type")
        return storages[key]

    return load


def read_torch_file(path):
    """The object a torch zip checkpoint holds, tensors as numpy arrays (float16 kept, bfloat16 ->
    float32). Every failure is one CheckpointError naming the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if is_legacy_torch(head):  # same restricted unpickler, the pre-zip layout (plsc.interop.torch_legacy)
        from plsc.interop.torch_legacy import read_legacy_torch

        return read_legacy_torch(path)
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # BadZipFile, OSError, ValueError, struct.error, ... on a cut or mangled directory
        raise CheckpointError(f"{path}: truncated or corrupt zip file ({type(e).__name__}: {clip(str(e))})") from None
    budget = Budget(size)
    with zf:
        try:
            archive = _Zip(zf, path, size, budget)
            if archive.root + "byteorder" in archive.infos:
                order = archive.read(archive.root + "byteorder", max_size=16)
                if order != b"little":
                    raise Refused(f"byteorder {brief(order)[1:]} (plsc reads little-endian torch files, whose "
                                  f"byteorder entry is exactly 'little')")
            data = archive.read(archive.root + "data.pkl")
        except Refused as e:
            raise CheckpointError(f"{path}: {e}") from None
        return safe_loads(data, path, _allowed(budget), CheckpointError, _WHAT, _HINT,
                          persistent_load=_persistent_load(archive, budget), encoding="utf-8")
