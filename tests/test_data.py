"""RecordIO format, datasets through paddle.io.DataLoader, transforms, samplers, bad input."""
import os
import struct

import cv2
import numpy as np
import pytest

from plsc.data import recordio as R
from plsc.data.bin import save_bin
from plsc.data.transforms import build_transforms, parse_number
from plsc.errors import ConfigError, DataError
from plsc.registry import DATASETS, SAMPLERS

MAGIC = struct.pack("<I", 0xCED7230A)
TRAIN_OPS = [{"DecodeImage": {"to_rgb": True}}, {"RandFlipImage": {"flip_code": 1}},
             {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}},
             {"ToCHWImage": None}]


def image(i, size=112):
    rng = np.random.default_rng(i)
    img = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return img


def png(i):
    return cv2.imencode(".png", image(i))[1].tobytes()


def write_insightface(d, labels, payloads):
    """Hand-rolled insightface layout with the public writer."""
    os.makedirs(d, exist_ok=True)
    n, c = len(labels), max(labels) + 1
    with R.IndexedRecordIOWriter(os.path.join(d, "train.idx"), os.path.join(d, "train.rec")) as w:
        w.write(0, R.pack([n + 1, n + 1 + c], b""))
        for k, (lab, p) in enumerate(zip(labels, payloads), 1):
            w.write(k, R.pack([float(lab), 7.0], p, id=k, id2=3))
        for cls in range(c):
            keys = [k for k, lab in enumerate(labels, 1) if lab == cls]
            w.write(n + 1 + cls, R.pack([keys[0], keys[-1] + 1], b"", id=n + 1 + cls))


# ---------------------------------------------------------------- format

def test_header_and_framing_bytes_match_the_spec(tmp_path):
    payload = b"abc"
    rec = R.pack(5.0, payload, id=9, id2=2)
    assert rec[:24] == struct.pack("<I", 0) + struct.pack("<f", 5.0) + (9).to_bytes(8, "little") + (2).to_bytes(8, "little")
    framed = R.frame(rec)
    assert framed == MAGIC + (27).to_bytes(4, "little") + rec + b"\0"  # cflag 0, length 27, pad to 28
    arr = R.pack([1.0, 2.0], b"x")
    assert arr[:24] == (2).to_bytes(4, "little") + b"\0\0\0\0" + bytes(16)
    assert arr[24:32] == struct.pack("<2f", 1.0, 2.0) and arr[32:] == b"x"
    # multi-part: the magic at aligned offset 4 splits the record (flag 1 part, flag 3 part)
    data = b"abcd" + MAGIC + b"ef"
    expected = (MAGIC + ((1 << 29) | 4).to_bytes(4, "little") + b"abcd"
                + MAGIC + ((3 << 29) | 2).to_bytes(4, "little") + b"ef\0\0")
    assert R.frame(data) == expected
    assert R.parse_record(expected, "f", 1, 0) == (data, len(expected))
    # a middle part (cflag 2) when the magic appears twice
    data2 = MAGIC + b"1234" + MAGIC + b"zz"
    fr = R.frame(data2)
    assert [fr[i + 7] >> 5 for i in (0, 8, 20)] == [1, 2, 3]
    assert R.parse_record(fr, "f", 1, 0)[0] == data2


def test_round_trip_both_layouts_with_multipart(tmp_path):
    payloads = [png(i) for i in range(4)] + [MAGIC + b"x", b"head" + MAGIC + b"tail" + MAGIC * 3 + b"q"]
    labels = [0, 0, 1, 1, 2, 2]
    write_insightface(str(tmp_path / "a"), labels, payloads)
    rec = R.IndexedRecordIO(str(tmp_path / "a/train.idx"), str(tmp_path / "a/train.rec"))
    for k in range(1, 7):
        flag, lab, id_, id2, p = rec.read(k)
        assert flag == 2 and lab[0] == labels[k - 1] and lab[1] == 7.0 and (id_, id2) == (k, 3)
        assert p == payloads[k - 1]
        hdr = rec.read_header(k)  # header-only read
        assert hdr[0] == 2 and list(hdr[1]) == [labels[k - 1], 7.0] and hdr[2:] == (k, 3)
    assert list(rec.read(0)[1]) == [7, 10] and list(rec.read(7 + 1)[1]) == [3, 5]  # identity 1: keys [3, 5)
    # plain im2rec layout: flag 0, label = class, keys from 0
    os.makedirs(tmp_path / "b")
    with R.IndexedRecordIOWriter(str(tmp_path / "b/train.idx"), str(tmp_path / "b/train.rec")) as w:
        for k, (lab, p) in enumerate(zip(labels, payloads)):
            w.write(k, R.pack(lab, p, id=k))
    rec = R.IndexedRecordIO(str(tmp_path / "b/train.idx"), str(tmp_path / "b/train.rec"))
    for k in range(6):
        flag, lab, id_, _, p = rec.read(k)
        assert (flag, lab, id_, p) == (0, labels[k], k, payloads[k])
    ds = DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path / "b"), transform_ops=None, seed=0)
    assert ds.layout == "im2rec" and ds.num_classes == 3 and len(ds) == 6
    # the magic inside the label array: the record splits within its header; read_header falls back
    os.makedirs(tmp_path / "c")
    weird = np.frombuffer(MAGIC, "<f4")[0]
    with R.IndexedRecordIOWriter(str(tmp_path / "c/train.idx"), str(tmp_path / "c/train.rec")) as w:
        w.write(0, R.pack([1.0, weird], b"img"))
    rec = R.IndexedRecordIO(str(tmp_path / "c/train.idx"), str(tmp_path / "c/train.rec"))
    assert open(tmp_path / "c/train.rec", "rb").read()[4:8] == ((1 << 29) | 28).to_bytes(4, "little")
    flag, lab, _, _ = rec.read_header(0)
    assert flag == 2 and lab[0] == 1.0 and lab[1].tobytes() == MAGIC and rec.read(0)[4] == b"img"


def _loader_items(ds, workers=2):
    import paddle

    loader = paddle.io.DataLoader(ds, batch_sampler=SAMPLERS.build("BatchSampler", dataset=ds, batch_size=3),
                                  num_workers=workers)
    imgs, labels = [], []
    for x, y in loader:
        imgs.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(imgs), np.concatenate(labels)


def _expected(i, flip=False):
    img = cv2.cvtColor(image(i), cv2.COLOR_BGR2RGB).astype(np.float32)
    img = img[:, ::-1] if flip else img
    return ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def test_every_dataset_through_a_dataloader_with_two_workers(tmp_path):
    labels = [0, 1, 1, 2, 0, 2, 1]
    write_insightface(str(tmp_path / "rec"), labels, [png(i) for i in range(7)])
    ds = DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path / "rec"), transform_ops=None, seed=0)
    assert ds.layout == "insightface" and ds.num_classes == 3
    x, y = _loader_items(ds)
    assert x.shape == (7, 3, 112, 112) and x.dtype == np.float32 and list(y) == labels
    np.testing.assert_allclose(x[4], _expected(4), atol=1e-5)
    import paddle

    seen = []
    for rank in range(2):  # the distributed sampler as a DataLoader batch_sampler, each rank's shard
        s = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=2, shuffle=True, drop_last=False,
                           seed=1, rank=rank, world_size=2)
        s.set_epoch(3)
        loader = paddle.io.DataLoader(ds, batch_sampler=s, num_workers=2)
        got = [lab for _, y in loader for lab in y.numpy().tolist()]
        assert len(got) == 4
        seen += [i for b in s for i in b]
        assert got == [labels[i] for b in s for i in b]
    assert sorted(set(seen)) == list(range(7)) and len(seen) == 8  # 7 samples padded to 8 by wrapping

    root = tmp_path / "folder"
    (root / "img").mkdir(parents=True)
    for i in range(5):
        cv2.imwrite(str(root / f"img/{i}.png"), image(i))
    (root / "label.txt").write_text("".join(f"img/{i}.png\t{i % 2}\n" for i in range(5)))
    ds = DATASETS.build("FaceIdentificationDataset", image_root=str(root), cls_label_path=str(root / "label.txt"),
                        transform_ops=TRAIN_OPS, seed=3)
    x, y = _loader_items(ds)
    assert ds.num_classes == 2 and list(y) == [0, 1, 0, 1, 0]
    for i in range(5):  # either flipped or not, exactly
        assert any(np.allclose(x[i], _expected(i, f), atol=1e-5) for f in (False, True))

    (root / "pairs.txt").write_text("img/0.png\timg/1.png\t0\nimg/2.png\timg/2.png\t1\n")
    ds = DATASETS.build("FaceVerificationDataset", image_root=str(root), cls_label_path=str(root / "pairs.txt"),
                        transform_ops=None, seed=0)
    x, y = _loader_items(ds)
    assert list(y) == [0, 0, 1, 1] and list(ds.issame) == [False, True]
    np.testing.assert_allclose(x[1], _expected(1), atol=1e-5)

    save_bin(str(tmp_path / "v.bin"), [png(i) for i in range(4)], [True, False])
    ds = DATASETS.build("FaceBinDataset", bin_path=str(tmp_path / "v.bin"), transform_ops=None, seed=0)
    x, y = _loader_items(ds)
    assert list(y) == [1, 1, 0, 0] and ds.name == "v"
    np.testing.assert_allclose(x[3], _expected(3), atol=1e-5)


# ---------------------------------------------------------------- transforms

AUGS = ["AdaFaceCrop", "AdaFaceLowRes", "AdaFacePhotometric", "RandFlipImage"]


@pytest.mark.parametrize("name", AUGS)
def test_augmentations_probability_one_and_zero(name):
    for i in range(6):
        img = cv2.cvtColor(image(i), cv2.COLOR_BGR2RGB)
        always = build_transforms([{name: {"prob": 1.0}}]).ops[0]
        never = build_transforms([{name: {"prob": 0.0}}]).ops[0]
        out = always(img.copy(), np.random.default_rng([0, 0, i]))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img)
        assert np.array_equal(never(img.copy(), np.random.default_rng([0, 0, i])), img)


def test_crop_keeps_a_box_and_zeros_the_rest():
    img = np.full((112, 112, 3), 200, np.uint8)
    out = build_transforms([{"AdaFaceCrop": {"prob": 1.0}}]).ops[0](img, np.random.default_rng(5))
    ys, xs = np.nonzero(out[..., 0])
    box = out[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert (box == 200).all() and (out == 0).any()
    assert 0.2 * 112 * 112 * 0.9 <= box.shape[0] * box.shape[1] <= 112 * 112


def test_photometric_brightness_matches_its_factor():
    from plsc.data.transforms import SampleRandom

    img = cv2.cvtColor(image(3), cv2.COLOR_BGR2RGB)
    op = build_transforms([{"AdaFacePhotometric": {"prob": 1.0, "contrast": 0.0, "saturation": 0.0}}]).ops[0]
    replay = SampleRandom(7, 1, 2)
    replay.random()
    f = replay.uniform(0.5, 1.5)
    expected = np.clip(np.rint(img.astype(np.float64) * f), 0, 255)
    assert np.abs(op(img, SampleRandom(7, 1, 2)).astype(np.float64) - expected).max() <= 1


def test_transforms_deterministic_under_seed_and_vary_with_epoch(tmp_path):
    ops = [{"DecodeImage": {"to_rgb": True}}, {"AdaFaceCrop": {"prob": 0.5}}, {"AdaFaceLowRes": {"prob": 0.5}},
           {"AdaFacePhotometric": {"prob": 0.5}}] + TRAIN_OPS[1:]
    write_insightface(str(tmp_path), [0, 1] * 4, [png(i) for i in range(8)])

    def run(seed, epoch):
        ds = DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path), transform_ops=ops, seed=seed)
        ds.set_epoch(epoch)
        return np.stack([ds[i][0] for i in range(8)])

    a = run(1, 0)
    assert np.array_equal(a, run(1, 0))
    assert not np.array_equal(a, run(1, 1)) and not np.array_equal(a, run(2, 0))


def test_channel_first_pipeline_matches_default():
    data = png(2)
    chw = build_transforms([{"DecodeImage": {"to_rgb": True, "channel_first": True}},
                            {"RandFlipImage": {"flip_code": 1, "prob": 1.0}},
                            {"NormalizeImage": {"order": "chw"}}])(data, np.random.default_rng(0), "x")
    np.testing.assert_allclose(chw, _expected(2, flip=True), atol=1e-5)


@pytest.mark.parametrize("direct", [True, False])
def test_decode_to_rgb_gives_opencvs_bgr_pixels_reversed(monkeypatch, direct):
    """DecodeImage(to_rgb) decodes straight to RGB where OpenCV can (>= 4.10) and converts otherwise;
    both give exactly the BGR decode with its channels reversed (JPEG, PNG, grayscale JPEG)."""
    import plsc.data.transforms as T
    if direct and T._IMREAD_RGB is None:
        pytest.fail("this OpenCV has no IMREAD_COLOR_RGB; the direct route is untested")
    if not direct:
        monkeypatch.setattr(T, "_IMREAD_RGB", None)
    rng = np.random.default_rng(3)
    noisy = np.clip(image(5).astype(np.int16) + rng.integers(-90, 90, (112, 112, 3)), 0, 255).astype(np.uint8)
    files = [cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), png(4),
             cv2.imencode(".jpg", noisy[:, :, 0])[1].tobytes()]
    decode = T.DecodeImage(to_rgb=True)
    for data in files:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decode(data, None), bgr[:, :, ::-1])


def test_normalize_scale_parsing():
    assert parse_number("1.0/255.0", "s") == pytest.approx(1 / 255)
    assert parse_number("0.5", "s") == 0.5 and parse_number(2, "s") == 2.0
    for bad in ("__import__('os')", "1/0", "1.0/255.0/2", "abc", None):
        with pytest.raises(ConfigError):
            parse_number(bad, "NormalizeImage.scale")
    with pytest.raises(ConfigError, match="Did you mean 'RandFlipImage'"):
        build_transforms([{"RandFlipImag": {}}])


# ---------------------------------------------------------------- samplers

class _Len:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.parametrize("n,bs,world,drop", [(103, 8, 3, False), (103, 8, 3, True), (5, 4, 4, False), (64, 8, 2, False)])
def test_distributed_sampler_equal_batches_and_coverage(n, bs, world, drop):
    samplers = [SAMPLERS.build("DistributedBatchSampler", dataset=_Len(n), batch_size=bs, shuffle=True,
                               drop_last=drop, seed=4, rank=r, world_size=world) for r in range(world)]
    lens = {len(s) for s in samplers}
    batches = [list(s) for s in samplers]
    assert len(lens) == 1 and all(len(b) == lens.pop() for b in batches[:1]) and len({len(b) for b in batches}) == 1
    seen = [i for b in batches for batch in b for i in batch]
    if drop:
        assert len(seen) == len(set(seen)) and all(len(x) == bs for b in batches for x in b)
    else:
        assert set(seen) == set(range(n))  # every sample, padding by wrap-around
        assert len(seen) == -(-n // world) * world


def test_sampler_epochs_differ_and_start_batch_resumes():
    s = SAMPLERS.build("DistributedBatchSampler", dataset=_Len(100), batch_size=10, shuffle=True,
                       drop_last=False, seed=0, rank=1, world_size=2)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0, start_batch=3)
    assert list(s) == e0[3:] and len(s) == 5
    ev = SAMPLERS.build("BatchSampler", dataset=_Len(7), batch_size=3, rank=1, world_size=2)
    assert list(ev) == [[0, 1, 2], [3, 4, 5], [6]]


# ---------------------------------------------------------------- bad input

def test_corrupt_records_name_file_key_and_offset(tmp_path):
    write_insightface(str(tmp_path), [0, 1, 0], [png(i) for i in range(3)])
    rec_path, idx_path = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    offs = dict(line.split("\t") for line in open(idx_path).read().split("\n") if line)
    data = bytearray(open(rec_path, "rb").read())
    bad = bytearray(data)
    o2 = int(offs["2"])
    bad[o2:o2 + 4] = b"\0\0\0\0"
    open(rec_path, "wb").write(bad)
    ds = DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path), transform_ops=None, seed=0)
    with pytest.raises(DataError, match=rf"train.rec: key 2: byte offset {o2}: bad magic"):
        ds[1]
    # truncated .rec: the last indexed offset lies past the end
    open(rec_path, "wb").write(data[:o2 + 30])
    with pytest.raises(DataError, match=r"key \d+ points at byte offset \d+, beyond the end"):
        DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path), seed=0)
    open(rec_path, "wb").write(data[:int(offs["5"]) + 12])
    with pytest.raises(DataError, match=r"train.rec: key 5: byte offset \d+: truncated"):
        DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path), seed=0)
    # short / missing / malformed .idx
    open(rec_path, "wb").write(data)
    idx = open(idx_path).read().splitlines()
    open(idx_path, "w").write("\n".join(idx[:-1]) + "\n")
    with pytest.raises(DataError, match="short index"):
        R.IndexedRecordIO(idx_path, rec_path)
    open(idx_path, "w").write("0\t0\n1 oops\n")
    with pytest.raises(DataError, match="train.idx: line 2"):
        R.IndexedRecordIO(idx_path, rec_path)
    os.remove(idx_path)
    with pytest.raises(DataError, match="index file not found"):
        DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path), seed=0)


def test_bad_label_files_and_undecodable_images(tmp_path):
    (tmp_path / "a.png").write_bytes(png(0))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    cases = {"a.png 0\n": "line 1: expected 'path'", "a.png\t0\na.png\tx\n": "line 2: label 'x' is not an integer",
             "../a.png\t0\n": "must not contain '..'", "/etc/passwd\t0\n": "must be relative"}
    for text, msg in cases.items():
        (tmp_path / "label.txt").write_text(text)
        with pytest.raises(DataError, match=msg):
            DATASETS.build("FaceIdentificationDataset", image_root=str(tmp_path),
                           cls_label_path=str(tmp_path / "label.txt"), seed=0)
    (tmp_path / "label.txt").write_text("a.png\t0\nb.jpg\t1\n")
    ds = DATASETS.build("FaceIdentificationDataset", image_root=str(tmp_path),
                        cls_label_path=str(tmp_path / "label.txt"), seed=0)
    with pytest.raises(DataError, match=r"b.jpg: cannot decode"):
        ds[1]
    write_insightface(str(tmp_path / "r"), [0, 1], [png(0), b"garbage"])
    ds = DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path / "r"), seed=0)
    with pytest.raises(DataError, match=r"train.rec: key 2: cannot decode"):
        ds[1]
