"""Fuzzed readers: RecordIO (.rec/.idx), verification .bin, label.txt, config files and -o overrides.

Property for every input: it either parses (and the result satisfies the format's invariants) or
raises a plsc error (PlscError subclass) with a non-empty message. Any other exception type fails
the test, so does an example that runs longer than a few seconds or allocates far more memory
than the file holds (a length field claiming gigabytes must not be believed).
"""
import contextlib
import os
import pickle
import signal
import struct
import tempfile
import tracemalloc

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plsc.config import load_config
from plsc.data import recordio as R
from plsc.data.bin import load_bin, safe_load_pickle, save_bin
from plsc.data.datasets import describe
from plsc.data.label_files import read_pair_labels, read_train_labels
from plsc.errors import ConfigError, DataError, PlscError
from plsc.registry import DATASETS

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")


class Hang(Exception):
    pass


@contextlib.contextmanager
def bounded(max_bytes=32 * MB, seconds=10):
    """Fail on a hang (SIGALRM) or a traced peak allocation above max_bytes (numpy and bytes are traced)."""
    def on_alarm(*_):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert peak <= max_bytes, f"peak allocation {peak / MB:.1f} MiB > {max_bytes / MB:.1f} MiB"


def outcome(fn, *args, error=PlscError, max_bytes=32 * MB):
    """-> fn's result, or the plsc error it raised. Any other exception propagates and fails the test."""
    with bounded(max_bytes):
        try:
            return fn(*args)
        except PlscError as e:
            assert isinstance(e, error), f"{type(e).__name__} raised, expected {error.__name__}: {e}"
            assert str(e).strip(), f"{type(e).__name__} with an empty message"
            return e


# ---------------------------------------------------------------- RecordIO

def _png(i, size=16):
    rng = np.random.default_rng(i)
    return cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))[1].tobytes()


LABELS = [0, 1, 1, 2]
def _png_with_magic(i):
    data = _png(i)
    return data + b"\0" * (-len(data) % 4) + R._MAGIC_BYTES + b"\x01\x02\x03"  # bytes after IEND are ignored


# image 2 holds the magic word at an aligned position, so its record is written in two parts
PAYLOADS = [_png(0), _png(1), _png_with_magic(2), _png(3)]


def _write_rec(d):
    n, c = len(LABELS), max(LABELS) + 1
    with R.IndexedRecordIOWriter(os.path.join(d, "train.idx"), os.path.join(d, "train.rec")) as w:
        w.write(0, R.pack([n + 1, n + 1 + c], b""))
        for k, (lab, p) in enumerate(zip(LABELS, PAYLOADS), 1):
            w.write(k, R.pack(float(lab), p, id=k))
        for cls in range(c):
            keys = [k for k, lab in enumerate(LABELS, 1) if lab == cls]
            w.write(n + 1 + cls, R.pack([keys[0], keys[-1] + 1], b"", id=n + 1 + cls))


_VALID = tempfile.mkdtemp(prefix="plsc_fuzz_rec_")
_write_rec(_VALID)
REC = open(os.path.join(_VALID, "train.rec"), "rb").read()
IDX = open(os.path.join(_VALID, "train.idx"), "rb").read()
OFFSETS = [int(line.split(b"\t")[1]) for line in IDX.splitlines()]


def _read_everything(d):
    """Open, describe and read every record (framing, headers, payloads) as the dataset would."""
    rec = R.IndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"))
    try:
        layout, keys, num_classes = describe(rec)
        assert len(keys) <= len(rec) and num_classes >= 0
        out = {}
        for k in rec.keys:
            flag, label, id_, id2 = rec.read_header(k)
            full = rec.read(k)
            assert full[0] == flag and np.array_equal(full[1], label, equal_nan=True)
            out[int(k)] = full
        ds = DATASETS.build("FaceRecordIODataset", root_dir=d, transform_ops=[{"DecodeImage": {"to_rgb": True}}, {
            "NormalizeImage": {"scale": 1.0, "mean": [0] * 3, "std": [1] * 3}}, {"ToCHWImage": None}], seed=0)
        for i in range(len(ds)):
            img, lab = ds[i]
            assert img.dtype == np.float32 and 0 <= lab < ds.num_classes
        return layout, out
    finally:
        rec.close()


def _run_rec(rec_bytes, idx_bytes, max_bytes=32 * MB):
    with tempfile.TemporaryDirectory(prefix="plsc_fuzz_") as d:
        with open(os.path.join(d, "train.rec"), "wb") as f:
            f.write(rec_bytes)
        with open(os.path.join(d, "train.idx"), "wb") as f:
            f.write(idx_bytes)
        return outcome(_read_everything, d, error=DataError, max_bytes=max_bytes)


def test_valid_rec_reads_back_exactly():
    layout, records = _run_rec(REC, IDX)
    assert layout == "insightface" and len(records) == 1 + len(LABELS) + 3
    for k, (lab, p) in enumerate(zip(LABELS, PAYLOADS), 1):
        assert records[k][1] == lab and records[k][4] == p


@FUZZ
@given(cut=st.integers(0, len(REC) - 1))
def test_truncated_rec_is_always_refused(cut):
    assert isinstance(_run_rec(REC[:cut], IDX), DataError)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(REC) - 1), st.integers(1, 255)), min_size=1, max_size=6))
def test_flipped_rec_bytes(flips):
    data = bytearray(REC)
    for pos, x in flips:
        data[pos] ^= x
    _run_rec(bytes(data), IDX)


@FUZZ
@given(which=st.sampled_from(OFFSETS), magic=st.integers(0, 2**32 - 1).filter(lambda m: m != R.MAGIC))
def test_wrong_magic_is_refused(which, magic):
    data = bytearray(REC)
    data[which:which + 4] = struct.pack("<I", magic)
    assert isinstance(_run_rec(bytes(data), IDX), DataError)


@FUZZ
@given(which=st.sampled_from(OFFSETS), cflag=st.integers(0, 7), length=st.integers(0, R.MAX_PART))
def test_length_fields_are_bounded_by_the_file(which, cflag, length):
    """A length word claiming up to 512 MiB is checked against the file, never allocated."""
    data = bytearray(REC)
    old = struct.unpack_from("<I", data, which + 4)[0]
    new = (cflag << 29) | length
    struct.pack_into("<I", data, which + 4, new)
    result = _run_rec(bytes(data), IDX, max_bytes=8 * MB)
    if (old >> 29) == 0 and ((new >> 29) != 0 or R._pad4(new & R.MAX_PART) != R._pad4(old & R.MAX_PART)):
        assert isinstance(result, DataError)  # a single-part record whose framing changed is refused


@FUZZ
@given(which=st.sampled_from(OFFSETS), flag=st.integers(0, 2**32 - 1))
def test_header_label_count_is_bounded_by_the_record(which, flag):
    data = bytearray(REC)
    struct.pack_into("<I", data, which + 8, flag)
    _run_rec(bytes(data), IDX, max_bytes=8 * MB)


@FUZZ
@given(which=st.integers(0, len(OFFSETS) - 1),
       label=st.one_of(st.floats(width=32), st.sampled_from([float("nan"), float("inf"), -1.0, 2.0**31, 1e9])))
def test_header_labels_any_float32(which, label):
    """NaN, inf, negative and huge labels (also record 0's key range) are refused or in range."""
    data = bytearray(REC)
    struct.pack_into("<f", data, OFFSETS[which] + 8 + 4 + (0 if which in range(1, 5) else 20), label)
    _run_rec(bytes(data), IDX, max_bytes=8 * MB)


@FUZZ
@given(which=st.integers(0, len(OFFSETS) - 1),
       offset=st.one_of(st.integers(-2**70, 2**70), st.integers(len(REC) - 8, len(REC) + 64)))
def test_idx_offsets_anywhere(which, offset):
    lines = IDX.decode().splitlines()
    key = lines[which].split("\t")[0]
    lines[which] = f"{key}\t{offset}"
    result = _run_rec(REC, ("\n".join(lines) + "\n").encode())
    if offset >= len(REC) or offset < 0:
        assert isinstance(result, DataError)


@FUZZ
@given(lines=st.lists(st.one_of(
    st.text(max_size=30),
    st.tuples(st.integers(-2**70, 2**70), st.integers(-2**70, 2**70)).map(lambda t: f"{t[0]}\t{t[1]}"),
    st.sampled_from(IDX.decode().splitlines())), max_size=12))
def test_garbage_idx_lines(lines):
    _run_rec(REC, "\n".join(lines).encode("utf-8", "surrogatepass"))


@FUZZ
@given(idx=st.binary(max_size=200), rec=st.binary(max_size=200))
def test_random_bytes(idx, rec):
    _run_rec(rec, idx)
    _run_rec(REC, idx)
    _run_rec(rec, IDX)


@FUZZ
@given(buf=st.binary(max_size=120))
def test_parse_record_and_unpack_on_raw_bytes(buf):
    result = outcome(R.parse_record, buf, "x.rec", 7, 0, error=DataError, max_bytes=MB)
    if not isinstance(result, DataError):
        payload, used = result
        assert used <= len(buf) and len(payload) <= len(buf)
    result = outcome(R.unpack, buf, "x.rec: key 7", error=DataError, max_bytes=MB)
    if not isinstance(result, DataError):
        assert len(result[4]) <= len(buf)


@FUZZ
@given(payload=st.binary(max_size=64).map(lambda b: b.replace(R._MAGIC_BYTES, b"")),
       cut=st.sampled_from([0, 4]), pieces=st.integers(0, 3))
def test_frame_parse_round_trip(payload, cut, pieces):
    data = (R._MAGIC_BYTES + payload[:cut]) * pieces + payload
    framed = R.frame(data)
    assert R.parse_record(framed, "x.rec", 0, 0) == (data, len(framed))


# ---------------------------------------------------------------- verification .bin

BIN_IMAGES = [b"\xff\xd8\xff" + bytes([i]) * 5 for i in range(6)]
BIN_SAME = [True, False, True]


def _pickles():
    out = []
    for proto in (2, 3, 4, 5):
        out.append(pickle.dumps((BIN_IMAGES, BIN_SAME), protocol=proto))
        out.append(pickle.dumps((BIN_IMAGES, np.array(BIN_SAME)), protocol=proto))  # numpy issame
        out.append(pickle.dumps(([bytearray(b) for b in BIN_IMAGES], tuple(BIN_SAME)), protocol=proto))
    return out


VALID_BINS = _pickles()


def _run_bin(data, max_bytes=None):
    with tempfile.TemporaryDirectory(prefix="plsc_fuzz_") as d:
        path = os.path.join(d, "x.bin")
        with open(path, "wb") as f:
            f.write(data)
        result = outcome(load_bin, path, error=DataError, max_bytes=max_bytes or 4 * len(data) + 4 * MB)
        if not isinstance(result, DataError):
            images, issame = result
            assert all(isinstance(b, bytes) for b in images)
            assert issame.dtype == bool and issame.ndim == 1 and len(images) == 2 * len(issame)
        return result


def test_valid_bins_load():
    for data in VALID_BINS:
        images, issame = _run_bin(data)
        assert images == BIN_IMAGES and issame.tolist() == BIN_SAME


@FUZZ
@given(data=st.binary(max_size=300))
def test_bin_random_bytes(data):
    _run_bin(data)
    _run_bin(b"\x80\x04" + data)


@FUZZ
@given(which=st.integers(0, len(VALID_BINS) - 1), cut=st.integers(0, 10**6),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
       insert=st.binary(max_size=12))
def test_bin_mutated(which, cut, flips, insert):
    data = bytearray(VALID_BINS[which])
    for pos, x in flips:
        data[pos % len(data)] ^= x
    pos = cut % (len(data) + 1)
    _run_bin(bytes(data[:pos] + insert + data[pos:]))
    _run_bin(bytes(data[:pos]))


@FUZZ
@given(opcode=st.sampled_from([b"\x8e", b"B", b"T", b"X", b"\x8d", b"\x96", b"\x8a", b"\x8b", b"\x95"]),
       size=st.integers(2**20, 2**62))
def test_bin_length_fields_are_not_believed(opcode, size):
    """BINBYTES8 / BINBYTES / BINSTRING / BINUNICODE / BINUNICODE8 / BYTEARRAY8 / LONG1 / LONG4 / FRAME
    claiming a huge size in a tiny file: refused without allocating that size."""
    wide = opcode in (b"\x8e", b"\x8d", b"\x96", b"\x95")
    if opcode == b"\x8a":
        field = struct.pack("<B", size & 0xFF)
    else:
        field = struct.pack("<Q" if wide else "<I", size & (2**64 - 1 if wide else 2**32 - 1))
    assert isinstance(_run_bin(b"\x80\x05" + opcode + field + b"abc", max_bytes=8 * MB), DataError)


@FUZZ
@given(shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=3),
       dtype=st.sampled_from(["b1", "u1", "V8", "f8", "U4"]))
def test_bin_numpy_reconstruct_does_not_allocate_the_claimed_shape(shape, dtype):
    class Forged:
        def __reduce__(self):
            return (np.ndarray.__reduce__(np.zeros(0))[0], (np.ndarray, tuple(shape), dtype.encode()))

    _run_bin(pickle.dumps(([b"a", b"b"], Forged()), protocol=2), max_bytes=8 * MB)


def test_bin_python2_numpy_pickle():
    """Python 2 writes numpy's dtype spec and byte order as byte strings (SHORT_BINSTRING)."""
    data = pickle.dumps((BIN_IMAGES, np.array(BIN_SAME)), protocol=2)
    py2 = data.replace(b"X\x02\x00\x00\x00b1", b"U\x02b1").replace(b"X\x01\x00\x00\x00|", b"U\x01|")
    assert py2 != data
    images, issame = _run_bin(py2)
    assert images == BIN_IMAGES and issame.tolist() == BIN_SAME


def test_bin_memo_index_and_shared_nesting_are_bounded():
    # EMPTY_LIST, LONG_BINPUT 2**31 (the C unpickler would size its memo table to that index), STOP
    assert isinstance(_run_bin(b"\x80\x02]r\x00\x00\x00\x80.", max_bytes=8 * MB), DataError)
    # issame: 30 levels of a list holding one shared list 10 times (10**30 leaves if walked)
    nested = [True] * 10
    for _ in range(30):
        nested = [nested] * 10
    assert isinstance(_run_bin(pickle.dumps(([b"a", b"b"], nested), protocol=4)), DataError)
    # non-latin-1 text where image bytes belong
    assert "image 1" in str(_run_bin(pickle.dumps(([b"a", "\u20ac"], [True]), protocol=4)))


def test_bin_numpy_image_arrays_and_flags(tmp_path):
    imgs = [np.frombuffer(b, np.uint8) for b in BIN_IMAGES]
    for proto in (2, 5):
        images, issame = _run_bin(pickle.dumps((imgs, np.array([1, 0, 1], np.int64)), protocol=proto))
        assert images == BIN_IMAGES and issame.tolist() == BIN_SAME
    assert isinstance(_run_bin(pickle.dumps((BIN_IMAGES, [1, 2, 0]), protocol=4)), DataError)
    assert isinstance(_run_bin(pickle.dumps((BIN_IMAGES, np.array([1.0, 0, 1])), protocol=4)), DataError)
    assert isinstance(_run_bin(pickle.dumps((BIN_IMAGES, np.array([b"x"] * 3, object)), protocol=2)), DataError)


def test_safe_load_pickle_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        safe_load_pickle(str(tmp_path / "none.bin"))


def test_save_bin_load_bin_round_trip(tmp_path):
    save_bin(str(tmp_path / "a.bin"), BIN_IMAGES, BIN_SAME)
    images, issame = load_bin(str(tmp_path / "a.bin"))
    assert images == BIN_IMAGES and issame.tolist() == BIN_SAME


# ---------------------------------------------------------------- label.txt

LABEL_TEXT = st.text(alphabet=st.sampled_from(list("ab/.\\\t\n\r -0123456789_:") + ["\x00", "é", "\u2028", "١"]),
                     max_size=80)


def _run_labels(data):
    with tempfile.TemporaryDirectory(prefix="plsc_fuzz_") as d:
        path = os.path.join(d, "label.txt")
        with open(path, "wb") as f:
            f.write(data)
        for reader in (read_train_labels, read_pair_labels):
            result = outcome(reader, path, error=DataError)
            if isinstance(result, DataError):
                continue
            paths, labels = result
            assert len(paths) == len(labels) > 0
            flat = [p for item in paths for p in (item if isinstance(item, tuple) else (item,))]
            for p in flat:
                parts = p.replace("\\", "/").split("/")
                assert p and not os.path.isabs(p) and ".." not in parts, p
            if reader is read_train_labels:
                assert all(isinstance(x, int) and 0 <= x < 2**31 for x in labels)
            else:
                assert all(isinstance(x, bool) for x in labels)


@FUZZ
@given(text=LABEL_TEXT)
def test_label_files_random_text(text):
    _run_labels(text.encode("utf-8"))


@FUZZ
@given(data=st.binary(max_size=120))
def test_label_files_random_bytes(data):
    _run_labels(data)


@FUZZ
@given(rows=st.lists(st.tuples(st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_.]{1,8}){0,2}", fullmatch=True),
                               st.integers(0, 2**31 - 1)), min_size=1, max_size=8))
def test_label_files_valid_rows_round_trip(rows):
    with tempfile.TemporaryDirectory(prefix="plsc_fuzz_") as d:
        path = os.path.join(d, "label.txt")
        with open(path, "w") as f:
            f.write("".join(f"{p}\t{lab}\n" for p, lab in rows))
        result = outcome(read_train_labels, path, error=DataError)
        if any(".." in p.split("/") for p, _ in rows):
            assert isinstance(result, DataError)
        else:
            assert result == ([p for p, _ in rows], [lab for _, lab in rows])


# ---------------------------------------------------------------- config files and -o

SECTIONS = ["Global", "FP16", "Model", "Loss", "Optimizer", "DataLoader", "Metric", "Export", "LRScheduler"]
KEYS = ["epochs", "seed", "name", "level", "class_num", "Train", "Eval", "m2", "0", "dataset", "lr",
        "output_dir", "_base_", "batch_size", "transform_ops", "init_loss_scaling", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)


def _run_config(text, overrides=(), raw=False):
    with tempfile.TemporaryDirectory(prefix="plsc_fuzz_") as d:
        path = os.path.join(d, "c.yaml")
        with open(path, "wb") as f:
            f.write(text if raw else text.encode("utf-8", "surrogatepass"))
        result = outcome(load_config, path, list(overrides), error=ConfigError)
        if not isinstance(result, ConfigError):
            assert isinstance(result, dict) and set(SECTIONS) <= set(result)
        return result


@FUZZ
@given(text=st.text(max_size=200))
def test_config_random_text(text):
    _run_config(text)


@FUZZ
@given(data=st.binary(max_size=200))
def test_config_random_bytes(data):
    _run_config(data, raw=True)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(SECTIONS + ["Bogus"]),
                           st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5)),
                           max_size=4))
def test_config_random_structure(doc):
    _run_config(yaml.safe_dump(doc, allow_unicode=True))


SMOKE_TEXT = open(SMOKE).read()
load_config(SMOKE)  # import every registered builder before memory is traced
PATHS = ["Global.epochs", "Global.seed", "Model.name", "Model.class_num", "FP16.level", "Loss.Train.0.MarginLoss.m2",
         "Loss.Train.5", "Optimizer.lr", "DataLoader.Train.dataset.name", "DataLoader.Train.sampler.batch_size",
         "Metric.Eval.0", "Global", "Model", "Nope.x", "Global.epochs.x", "DataLoader.Train.dataset.transform_ops.0"]


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(PATHS), VALUES).map(
        lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1], default_flow_style=True, width=10**6).strip()}"),
    st.tuples(st.sampled_from(PATHS), st.text(max_size=20)).map(lambda kv: f"{kv[0]}={kv[1]}")), max_size=3))
def test_config_random_overrides(overrides):
    _run_config(SMOKE_TEXT, overrides)


def _alias_bomb(levels):
    items = ["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("where", ["file", "override"])
def test_config_yaml_alias_bomb_and_deep_nesting(where):
    """A 1 KB YAML whose aliases expand to 10^9 values, a self-referencing alias and 5000-deep nesting
    are refused quickly, without expanding them (in an error message either)."""
    for value in (_alias_bomb(9), "&r [*r]", "[" * 5000 + "]" * 5000, "9" * 5000):
        if where == "file":
            result = _run_config(f"Global:\n  epochs: {value}\n")
        else:
            result = _run_config(SMOKE_TEXT, [f"Global.epochs={value}"])
        assert isinstance(result, ConfigError) and len(str(result)) < 2000


@pytest.mark.parametrize("gap", ["after the last record", "between two records"])
def test_a_gigabyte_gap_is_not_read_into_memory(tmp_path, gap):
    """A .rec followed by 1 GiB (sparse) past the last indexed record, or an .idx that skips to a record
    1 GiB further: refused (short index / bytes between records) after reading only the record itself."""
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    if gap == "after the last record":
        rec.write_bytes(REC)
        idx.write_bytes(IDX)
        with open(rec, "r+b") as f:
            f.truncate(len(REC) + (1 << 30))
        expect = "short index"
    else:
        lines = IDX.decode().splitlines()
        with open(rec, "wb") as f:
            f.write(REC)
            f.seek((1 << 30) + OFFSETS[-1])
            f.write(REC[OFFSETS[-1]:])
        lines[-1] = f"{lines[-1].split(chr(9))[0]}\t{(1 << 30) + OFFSETS[-1]}"
        idx.write_text("\n".join(lines) + "\n")
        expect = "next indexed record starts at"
    result = outcome(_read_everything, str(tmp_path), error=DataError, max_bytes=8 * MB)
    assert isinstance(result, DataError) and expect in str(result), result


@FUZZ
@given(epochs=st.integers(1, 10**9), seed=st.integers(0, 2**31 - 1), m2=st.floats(0, 1, allow_nan=False))
def test_config_valid_overrides_parse_exactly(epochs, seed, m2):
    cfg = outcome(load_config, SMOKE, [f"Global.epochs={epochs}", f"Global.seed={seed}",
                                       f"Loss.Train.0.MarginLoss.m2={m2!r}"], error=ConfigError)
    assert cfg["Global"]["epochs"] == epochs and cfg["Global"]["seed"] == seed
    assert cfg["Loss"]["Train"][0]["MarginLoss"]["m2"] == m2
