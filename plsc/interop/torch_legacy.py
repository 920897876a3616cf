"""Read a file in torch's legacy (pre-1.6, non-zip) `torch.save` format without importing torch.

    obj = read_legacy_torch("pnet.pt")     # e.g. facenet-pytorch's MTCNN state dicts

Layout, one stream of consecutive pickles followed by raw bytes:

    pickle(magic number 0x1950a86a20f9469cfc6c)  pickle(protocol version 1001)
    pickle(sys_info {'protocol_version', 'little_endian', 'type_sizes'})
    pickle(the object)         tensors are `_rebuild_tensor_v2(storage, ...)`, each storage a persistent
                               id ('storage', torch.FloatStorage, key, location, numel, view_metadata)
    pickle([key, ...])         the storage keys in the order their bytes follow
    per key: int64 numel (little-endian), then numel x element size raw bytes

Every pickle goes through plsc's restricted unpickler with the same allowed names as the zip reader
(plsc.interop.torch_file): tensor / parameter rebuilders bound to numpy stand-ins, storage types as
inert markers, plain containers. The object pickle is read twice: once with a recording stand-in
that only collects which storage (type, element count) each key is, so the raw section can be
checked and cut before any tensor is built; then for real. Storage views (view_metadata not None,
torch < 0.4) are refused. Everything is charged to one Budget of the file, as in the zip reader.
"""
import io
import os
import pickletools

import numpy as np

from plsc.errors import CheckpointError
from plsc.io.safe_pickle import Budget, FileArray, Refused, StandIn, brief, clip, safe_loads

_WHAT = "legacy (torch < 1.6, non-zip) torch file"
_PROTOCOL = 1001


def _split_pickle(data, start):
    """End offset of the pickle that starts at `start` (its STOP opcode), without running it."""
    stream = io.BytesIO(data)
    stream.seek(start)
    try:
        for op, _, _ in pickletools.genops(stream):
            if op.name == "STOP":
                return stream.tell()
    except Exception as e:  # short data, unknown opcode
        raise Refused(f"pickle at byte {start} is truncated or corrupt ({type(e).__name__}: {clip(str(e))})") from None
    raise Refused(f"pickle at byte {start} has no end (truncated)")


def _check_pid(pid, storage_type):
    if not isinstance(pid, tuple) or len(pid) != 6 or type(pid[0]) is not str or pid[0] != "storage" or \
            not isinstance(pid[1], storage_type) or type(pid[2]) is not str or \
            type(pid[4]) is not int or pid[4] < 0:
        raise Refused(f"persistent id {brief(pid)} is not a torch storage")
    if pid[5] is not None:
        raise Refused(f"storage {clip(pid[2], 120)} is a view of another storage (torch < 0.4 layout)")
    return pid[1], pid[2], pid[4]


def read_legacy_torch(path):
    """The object a legacy torch file holds, tensors as numpy arrays. Any failure: one CheckpointError."""
    from plsc.interop import torch_file as tf  # the zip reader's allowed names and storage types

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    budget = Budget(size)
    names = dict(tf._allowed(budget))

    def small(start, what):
        end = _split_pickle(data, start)
        return safe_loads(data[start:end], path, names, CheckpointError, f"{_WHAT} ({what})", tf._HINT,
                          encoding="utf-8"), end

    try:
        magic, pos = small(0, "magic number")
        if magic != int.from_bytes(tf._LEGACY_MAGIC, "little"):
            raise Refused(f"magic number {brief(magic)} is not torch's")
        protocol, pos = small(pos, "protocol version")
        if protocol != _PROTOCOL:
            raise Refused(f"protocol version {brief(protocol)}, expected {_PROTOCOL}")
        info, pos = small(pos, "sys_info")
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise Refused(f"sys_info {brief(info)} (plsc reads little-endian files)")
        obj_start, obj_end = pos, _split_pickle(data, pos)
        keys, pos = small(obj_end, "storage keys")
        if not isinstance(keys, list) or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
            raise Refused(f"storage key list {brief(keys)} is not a list of distinct names")

        # pass 1: which storage each key is, no tensor built
        kinds = {}

        def record(pid):
            kind, key, numel = _check_pid(pid, tf._StorageType)
            if kinds.setdefault(key, (kind, numel)) != (kind, numel):
                raise Refused(f"storage {clip(key, 120)} named with two types or sizes")
            return np.zeros(0, np.uint8)

        scan = dict(names)
        scan[("torch._utils", "_rebuild_tensor_v2")] = StandIn("torch._utils._rebuild_tensor_v2", lambda *a, **k: None)
        for name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            scan[("torch._utils", name)] = StandIn(f"torch._utils.{name}", lambda *a, **k: None)
        safe_loads(data[obj_start:obj_end], path, scan, CheckpointError, _WHAT, tf._HINT,
                   persistent_load=record, encoding="utf-8")
        missing = sorted(set(kinds) - set(keys))
        if missing:
            raise Refused(f"storage {clip(missing[0], 120)} is used but not in the storage key list")

        # the raw section: per key, int64 numel then the bytes
        storages = {}
        for key in keys:
            if pos + 8 > size:
                raise Refused(f"storage {clip(key, 120)}: the file ends at byte {size} before its header (truncated)")
            numel = int.from_bytes(data[pos:pos + 8], "little", signed=True)
            pos += 8
            if key not in kinds:
                raise Refused(f"storage {clip(key, 120)} is listed but no tensor uses it")
            kind, want = kinds[key]
            if numel != want:
                raise Refused(f"storage {clip(key, 120)} holds {numel} elements, its tensors say {want}")
            dtype = np.dtype("<u2" if kind.dtype == "bfloat16" else kind.dtype)
            nbytes = numel * dtype.itemsize
            if pos + nbytes > size:
                raise Refused(f"storage {clip(key, 120)} needs {nbytes} bytes at byte {pos}, past the end of the "
                              f"file ({size} bytes): truncated")
            budget.take(nbytes)
            arr = np.frombuffer(data, dtype, count=numel, offset=pos)
            pos += nbytes
            if kind.dtype == "bfloat16":
                budget.take(4 * arr.size)
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            storages[key] = arr.view(FileArray)
        if pos != size:
            raise Refused(f"{size - pos} bytes after the last storage (not a torch file, or corrupt)")
    except Refused as e:
        raise CheckpointError(f"{path}: not a valid {_WHAT}: {e}") from None
    except CheckpointError as e:  # a refused pickle: keep its text, name the format
        text = str(e)
        raise CheckpointError(text if _WHAT in text else f"{text} ({_WHAT})") from None

    def load(pid):
        return storages[_check_pid(pid, tf._StorageType)[1]]

    return safe_loads(data[obj_start:obj_end], path, names, CheckpointError, _WHAT, tf._HINT,
                      persistent_load=load, encoding="utf-8")
