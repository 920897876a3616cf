"""Face datasets: `ds[i] -> (float32 [3,112,112], np.int64 label)` after the configured transform_ops.

For training, `ds.defer_to_device()` splits the transforms (plsc.data.device_transform): items are
then `(uint8 image, label[, uint8 flip])` and `ds.device_transform` finishes them on the device.

- FaceRecordIODataset {root_dir}: insightface train.rec/train.idx (or plain im2rec .rec).
- FaceIdentificationDataset {image_root, cls_label_path, delimiter}: PLSC's `path<TAB>label` list.
- FaceVerificationDataset {image_root, cls_label_path, delimiter}: PLSC's pairs list; item 2p and
  2p+1 are the two images of pair p, the label is the pair's issame (0/1); `.issame` has one per pair.
- FaceBinDataset {bin_path}: insightface verification .bin, same item layout as FaceVerificationDataset.
Augmentation randomness is drawn from SampleRandom(seed, epoch, index) (plsc/data/transforms.py).
"""
import os

import numpy as np

from plsc.data.bin import load_bin
from plsc.data.label_files import read_pair_labels, read_train_labels
from plsc.data.recordio import IndexedRecordIO, label_of
from plsc.data.regular import read_regular
from plsc.data.device_transform import split_for_device
from plsc.data.transforms import DEFAULT_OPS, SampleRandom, build_transforms
from plsc.errors import DataError
from plsc.registry import DATASETS


class _FaceDataset:
    def __init__(self, transform_ops, seed):
        self.seed, self.epoch = int(seed), 0
        self.transform = build_transforms(DEFAULT_OPS if transform_ops is None else transform_ops, seed)
        self.device_transform, self._host = None, None

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def defer_to_device(self):
        """Training: uint8 items, the transform list's tail on the device. -> DeviceTransform, or None when
        the list does not end in [RandFlipImage,] NormalizeImage [, ToCHWImage] (items stay float32)."""
        self._host, self.device_transform = split_for_device(self.transform)
        return self.device_transform

    def _item(self, data, label, index, source):
        if self._host is not None:
            rng = SampleRandom(self.seed, self.epoch, index) if self._host.random else None
            img, flip = self._host(data, rng, source)
            return (img, label) if flip is None else (img, label, flip)
        rng = SampleRandom(self.seed, self.epoch, index) if self.transform.random else None
        img = self.transform(data, rng, source)
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.dtype != np.float32:
            raise DataError(f"{source}: transform_ops produced {getattr(img, 'dtype', type(img))} "
                            f"{getattr(img, 'shape', '')}; end them with NormalizeImage and ToCHWImage")
        return img, label


def _read_file(path):
    try:
        return read_regular(path, "image")
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror}") from None


@DATASETS.register()
class FaceRecordIODataset(_FaceDataset):
    def __init__(self, root_dir, transform_ops=None, seed=0, rec_name="train"):
        super().__init__(transform_ops, seed)
        self.root_dir = root_dir
        self.rec = IndexedRecordIO(os.path.join(root_dir, rec_name + ".idx"), os.path.join(root_dir, rec_name + ".rec"))
        self.layout, self.image_keys, self.num_classes = describe(self.rec)

    def __len__(self):
        return len(self.image_keys)

    def __getitem__(self, index):
        key = int(self.image_keys[index])
        _, label, _, _, payload = self.rec.read(key)
        label = label_of(label, f"{self.rec.rec_path}: key {key}")
        if not 0 <= label < self.num_classes:
            raise DataError(f"{self.rec.rec_path}: key {key}: label {label} outside [0, {self.num_classes})")
        return self._item(payload, np.int64(label), index, f"{self.rec.rec_path}: key {key}")


def describe(rec):
    """-> (layout 'insightface'|'im2rec', image keys int64 array, number of classes)."""
    if 0 in rec:
        flag, label, _, _, payload = rec.read(0)
        if flag >= 2 and not payload:
            first_id, end_id = (label_of(label[i:], f"{rec.rec_path}: key 0: identity key range") for i in (0, 1))
            if not 1 <= first_id <= end_id <= len(rec):  # keys 0 .. end_id - 1 must all be in the index
                raise DataError(f"{rec.rec_path}: key 0: identity key range [{first_id}, {end_id}) is invalid "
                                f"for an index of {len(rec)} records")
            missing = [k for k in (1, first_id - 1, first_id, end_id - 1) if 0 < k < end_id and k not in rec]
            if missing:
                raise DataError(f"{rec.idx_path}: key {missing[0]} is missing: record 0 says images are keys "
                                f"1..{first_id - 1} and identities {first_id}..{end_id - 1}")
            return "insightface", np.arange(1, first_id, dtype=np.int64), end_id - first_id
    keys = np.sort(rec.keys)
    max_label = -1
    for k in keys:  # plain im2rec: the class count is the largest label + 1 (headers only)
        _, label, _, _ = rec.read_header(k)
        max_label = max(max_label, label_of(label, f"{rec.rec_path}: key {k}"))
    return "im2rec", keys, max_label + 1


@DATASETS.register()
class FaceIdentificationDataset(_FaceDataset):
    def __init__(self, image_root, cls_label_path, transform_ops=None, seed=0, delimiter="\t"):
        super().__init__(transform_ops, seed)
        if not os.path.isdir(image_root):
            raise DataError(f"image_root not found: {image_root}")
        self.image_root = image_root
        rel, labels = read_train_labels(cls_label_path, delimiter)
        self.images = [os.path.join(image_root, r) for r in rel]
        self.labels = np.asarray(labels, np.int64)
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        path = self.images[index]
        return self._item(_read_file(path), self.labels[index], index, path)


@DATASETS.register()
class FaceVerificationDataset(_FaceDataset):
    """PLSC's pairs folder. One made with PLSC's `lfw_style_bin_dataset_converter --flip_test` lists the N
    pairs, then the same N pairs of mirrored images (`<stem>_hflip.<ext>`): that second half is not scored
    as more pairs; `ds.mirror(i)` reads image i's stored mirror (evaluation fuses with it when
    flip_test is on, as PLSC does) and `ds.mirrors` lists them (None for an ordinary folder)."""

    def __init__(self, image_root, cls_label_path, transform_ops=None, seed=0, delimiter="\t", set_name=None):
        super().__init__(transform_ops, seed)
        if not os.path.isdir(image_root):
            raise DataError(f"image_root not found: {image_root}")
        pairs, issame = read_pair_labels(cls_label_path, delimiter)
        self.name = set_name or os.path.basename(os.path.normpath(image_root))
        self.mirrors = None
        half = len(pairs) // 2
        if len(pairs) % 2 == 0 and half and all(
                tuple(map(_stem, pairs[half + p])) == tuple(_stem(x) + "_hflip" for x in pairs[p])
                and issame[half + p] == issame[p] for p in range(half)):
            self.mirrors = [os.path.join(image_root, x) for pair in pairs[half:] for x in pair]
            pairs, issame = pairs[:half], issame[:half]
        self.images = [os.path.join(image_root, p) for pair in pairs for p in pair]
        self.issame = np.asarray(issame, bool)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        path = self.images[index]
        return self._item(_read_file(path), np.int64(self.issame[index // 2]), index, path)

    def mirror(self, index):
        """The stored mirrored image of image `index` (a --flip_test folder), transformed like the others."""
        path = self.mirrors[index]
        return self._item(_read_file(path), np.int64(self.issame[index // 2]), index, path)[0]


def _stem(path):
    return os.path.splitext(path)[0]


@DATASETS.register()
class FaceBinDataset(_FaceDataset):
    def __init__(self, bin_path, transform_ops=None, seed=0, set_name=None):
        super().__init__(transform_ops, seed)
        self.bin_path = bin_path
        self.name = set_name or os.path.splitext(os.path.basename(bin_path))[0]
        self.images, self.issame = load_bin(bin_path)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self._item(self.images[index], np.int64(self.issame[index // 2]), index,
                          f"{self.bin_path}: image {index}")
