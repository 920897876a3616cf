"""plsc-inspect-rec's work: a RecordIO dataset's layout and sizes, and its first bad record (command line:
plsc/cli/data.py)."""
import os

import cv2
import numpy as np

from plsc.data.datasets import describe
from plsc.data.recordio import IndexedRecordIO, label_of
from plsc.errors import DataError, PlscError


def check_record(rec, key, num_classes):
    _, label, _, _, payload = rec.read(key)
    label = label_of(label, f"{rec.rec_path}: key {key}")
    if not 0 <= label < num_classes:
        raise DataError(f"{rec.rec_path}: key {key}: label {label} outside [0, {num_classes})")
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) if payload else None
    if img is None:
        raise DataError(f"{rec.rec_path}: key {key}: the image cannot be decoded")
    return img.shape


def inspect(rec_dir, name="train", limit=None, log=print):
    """Print the dataset's layout and sizes, then check every image record (or the first `limit`);
    -> True when all checked records are fine, False at the first bad record (printed). Raises PlscError when
    the files cannot be opened at all."""
    rec = IndexedRecordIO(os.path.join(rec_dir, name + ".idx"), os.path.join(rec_dir, name + ".rec"))
    layout, keys, num_classes = describe(rec)
    log(f"layout:  {layout}\nrecords: {len(rec)}\nimages:  {len(keys)}\nclasses: {num_classes}")
    shape, n = None, 0
    for n, key in enumerate(keys[:limit] if limit else keys):
        try:
            s = check_record(rec, key, num_classes)
        except PlscError as e:
            log(f"first bad record: {e}")
            return False
        shape = shape or s
    if shape:
        log(f"image size: {shape[1]}x{shape[0]} (first image)")
    log(f"checked {n + 1 if shape else 0} images: all fine")
    return True
