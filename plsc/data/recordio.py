"""MXNet indexed RecordIO (.rec + .idx) in pure Python/numpy; no mxnet needed.

Format (dmlc-core recordio, as written by mxnet/insightface):
- a record part is `magic (uint32 0xced7230a) | lrec (uint32) | payload | zero padding to 4 bytes`;
  lrec = cflag << 29 | length, cflag 0 = whole record, 1 = first, 2 = middle, 3 = last part.
- the writer splits a payload wherever the magic word appears at a 4-byte aligned position:
  the magic is dropped from the data and the reader puts it back between the parts.
- a payload starts with an IRHeader `<IfQQ` (flag, label, id, id2); flag > 0 means `flag`
  float32 labels follow the header (then the header's label field is 0).
- the .idx holds one `key<TAB>byte offset` line per record.

Two layouts exist in the wild (both read by IndexedRecordIO users in plsc/data/datasets.py):
insightface's (record 0: flag 2, label = [first identity key, end identity key); images are keys
1 .. first identity key - 1; identity records carry label = [start, end) of their image keys)
and plain im2rec's (every record an image, flag 0, label = class).
"""
import math
import os
import re
import struct

import numpy as np

from plsc.data.regular import check_regular, open_fd, open_regular
from plsc.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC = struct.Struct("<II")
HEADER = struct.Struct("<IfQQ")
MAX_PART = (1 << 29) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_INT = re.compile(rb"[-+]?[0-9]{1,19}")
_DIRECT_READ = 1 << 20  # records spanning more than this are sized from their headers before reading


def pack_header(label, id=0, id2=0):
    """IRHeader bytes (+ float32 label array when `label` is a sequence), like mx.recordio.pack."""
    if np.ndim(label) == 0:
        return HEADER.pack(0, float(label), int(id), int(id2))
    arr = np.asarray(label, dtype="<f4").reshape(-1)
    return HEADER.pack(arr.size, 0.0, int(id), int(id2)) + arr.tobytes()


def pack(label, payload, id=0, id2=0):
    return pack_header(label, id, id2) + bytes(payload)


def unpack(record, where=""):
    """-> (flag, label (float or float32 array), id, id2, payload bytes)."""
    if len(record) < HEADER.size:
        raise DataError(f"{where}: record has {len(record)} bytes, fewer than the 24-byte IRHeader")
    flag, label, id_, id2 = HEADER.unpack_from(record, 0)
    pos = HEADER.size
    if flag > 0:
        end = pos + 4 * flag
        if end > len(record):
            raise DataError(f"{where}: IRHeader says {flag} float labels follow but the record has "
                            f"only {len(record) - pos} bytes after the header")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=pos).astype(np.float32)
        pos = end
    return flag, label, id_, id2, bytes(record[pos:])


def frame(payload):
    """The bytes dmlc-core's RecordIOWriter::WriteRecord writes for one record."""
    payload = bytes(payload)
    n = len(payload)
    if n > MAX_PART:
        raise DataError(f"record of {n} bytes exceeds the RecordIO limit of {MAX_PART} bytes")
    out = []
    start = 0
    for i in range(0, n - n % 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out.append(_LREC.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (i - start)))
            out.append(payload[start:i])
            start = i + 4
    out.append(_LREC.pack(MAGIC, ((3 if start else 0) << 29) | (n - start)))
    out.append(payload[start:])
    out.append(b"\0" * (-n % 4))
    return b"".join(out)


def _pad4(n):
    return (n + 3) & ~3


def parse_record(buf, path, key, offset):
    """Reassemble the record starting at buf[0] (file byte `offset`) -> (payload, bytes consumed)."""
    pos, parts = 0, []

    def where():  # formatted only for an error: the part being parsed starts at `start`
        return f"{path}: key {key}: byte offset {offset + start}"

    while True:
        start = pos
        if pos + 8 > len(buf):
            raise DataError(f"{where()}: truncated record (needs 8 header bytes, {len(buf) - pos} left)")
        magic, lrec = _LREC.unpack_from(buf, pos)
        if magic != MAGIC:
            raise DataError(f"{where()}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}); "
                            f"the .rec is corrupt or the .idx does not belong to it")
        cflag, length = lrec >> 29, lrec & MAX_PART
        if (cflag in (0, 1)) != (not parts):
            raise DataError(f"{where()}: unexpected continuation flag {cflag}")
        end = pos + 8 + length
        if end > len(buf):
            raise DataError(f"{where()}: truncated record: {length} payload bytes announced, "
                            f"{len(buf) - pos - 8} present")
        parts.append(buf[pos + 8:end])
        pos = pos + 8 + _pad4(length)
        if cflag in (0, 3):
            return (_MAGIC_BYTES.join(parts) if len(parts) > 1 else bytes(parts[0])), min(pos, len(buf))
        if cflag not in (1, 2):
            raise DataError(f"{where()}: invalid continuation flag {cflag}")


def read_idx(path):
    """-> (keys int64 [N], offsets int64 [N]) in file order; DataError for a missing or bad .idx."""
    keys, offs = [], []
    with open_regular(path, "index file") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            fields = line.split(b"\t")
            try:
                if len(fields) != 2 or not all(_INT.fullmatch(x.strip()) for x in fields):
                    raise ValueError
                key, off = int(fields[0]), int(fields[1])
                if not (_I64_MIN <= key <= _I64_MAX and _I64_MIN <= off <= _I64_MAX):
                    raise ValueError
            except ValueError:
                raise DataError(f"{path}: line {lineno}: expected 'key<TAB>offset' (64-bit integers), "
                                f"got {line[:80].decode('latin-1')!r}") from None
            keys.append(key)
            offs.append(off)
    if not keys:
        raise DataError(f"{path}: the index is empty")
    keys, offs = np.asarray(keys, np.int64), np.asarray(offs, np.int64)
    if len(np.unique(keys)) != len(keys):
        raise DataError(f"{path}: duplicate keys in the index")
    return keys, offs


def label_of(label, where):
    """The integer class of a record's label (float or float32 array, first value) -> int.

    NaN, inf and non-integer values are corrupt labels, not classes (int() would crash or round)."""
    if isinstance(label, float):  # the common case, without numpy's per-call overhead
        value = label
    else:
        value = float(label if np.ndim(label) == 0 else (label[0] if len(label) else np.nan))
    if not math.isfinite(value) or value != int(value):
        raise DataError(f"{where}: label {value} is not an integer class")
    return int(value)


def _extent(fd, off, end):
    """Bytes from `off` that the record's part headers announce (8-byte reads, capped at `end`), so a
    record followed by a gap of gigabytes (a stale or forged .idx) is not read with the gap."""
    pos = off
    while pos + 8 <= end and pos - off <= 2 * MAX_PART:
        head = os.pread(fd, 8, pos)
        if len(head) < 8:
            break
        magic, lrec = _LREC.unpack(head)
        pos += 8 if magic != MAGIC else 8 + _pad4(lrec & MAX_PART)
        if magic != MAGIC or (lrec >> 29) not in (1, 2):
            break  # parse_record reports a bad magic or flag from the bytes read so far
    return min(pos, end) - off


class IndexedRecordIO:
    """Random access reader. Opens its file lazily per process, so DataLoader workers never share
    a handle (each forked worker reopens on first use)."""

    def __init__(self, idx_path, rec_path):
        self.idx_path, self.rec_path = idx_path, rec_path
        check_regular(rec_path, "record file")
        keys, offs = read_idx(idx_path)
        self.size = os.path.getsize(rec_path)
        bad = np.nonzero((offs < 0) | (offs >= self.size))[0]
        if bad.size:
            i = bad[0]
            raise DataError(f"{idx_path}: key {keys[i]} points at byte offset {offs[i]}, beyond the end "
                            f"of {rec_path} ({self.size} bytes): the .rec is truncated or the .idx is stale")
        order = np.argsort(offs, kind="stable")
        ends = np.empty_like(offs)
        ends[order[:-1]] = offs[order[1:]]
        ends[order[-1]] = self.size
        self.keys = keys
        self._span = {int(k): (int(o), int(e)) for k, o, e in zip(keys, offs, ends)}
        self._fd, self._pid = None, None
        last = int(keys[order[-1]])
        _, used = self.read_at(last, with_size=True)
        tail_off = int(offs[order[-1]]) + used
        if tail_off < self.size:
            raise DataError(f"{idx_path}: short index: {rec_path} continues after the last indexed record "
                            f"(key {last}) at byte offset {tail_off} of {self.size}")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, None
        return state

    def _handle(self):
        if self._pid != os.getpid():
            self._fd = open_fd(self.rec_path, "record file")
            self._pid = os.getpid()
        return self._fd

    def __contains__(self, key):
        return int(key) in self._span

    def __len__(self):
        return len(self._span)

    def read_at(self, key, with_size=False):
        key = int(key)
        if key not in self._span:
            raise DataError(f"{self.idx_path}: key {key} is not in the index")
        off, end = self._span[key]
        fd = self._handle()
        size = end - off if end - off <= _DIRECT_READ else _extent(fd, off, end)
        buf = os.pread(fd, size, off)
        payload, used = parse_record(buf, self.rec_path, key, off)
        if used != end - off and end != self.size:  # records are contiguous: nothing may lie between two
            raise DataError(f"{self.rec_path}: key {key}: byte offset {off}: the record ends at byte {off + used} "
                            f"but the next indexed record starts at {end}: a corrupt length field, or an .idx "
                            f"that does not belong to this .rec")
        return (payload, used) if with_size else payload

    def read_header(self, key):
        """-> (flag, label, id, id2) of record `key`, reading only its first bytes when possible."""
        key = int(key)
        if key not in self._span:
            raise DataError(f"{self.idx_path}: key {key} is not in the index")
        off, end = self._span[key]
        buf = os.pread(self._handle(), min(end - off, 512), off)
        if len(buf) >= 8 + HEADER.size:
            magic, lrec = _LREC.unpack_from(buf, 0)
            flag = struct.unpack_from("<I", buf, 8)[0]
            need = HEADER.size + 4 * flag
            if magic == MAGIC and (lrec & MAX_PART) >= need and 8 + need <= len(buf):
                return unpack(buf[8:8 + need], f"{self.rec_path}: key {key}")[:4]
        return self.read(key)[:4]

    def read(self, key):
        """-> (flag, label, id, id2, payload) of record `key`."""
        return unpack(self.read_at(key), f"{self.rec_path}: key {key}")

    def close(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None


class IndexedRecordIOWriter:
    """Appends records to a .rec and their offsets to a .idx (like mx.recordio.MXIndexedRecordIO 'w')."""

    def __init__(self, idx_path, rec_path):
        self.idx_path, self.rec_path = idx_path, rec_path
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w")
        self._pos = 0

    def write(self, key, record):
        data = frame(record)
        self._idx.write(f"{int(key)}\t{self._pos}\n")
        self._rec.write(data)
        self._pos += len(data)

    def close(self):
        self._rec.close()
        self._idx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
