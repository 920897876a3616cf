"""plsc-inspect-rec: summarize a RecordIO dataset and find its first bad record.

    plsc-inspect-rec REC_DIR [--name train] [--limit N]

Prints the layout (insightface / im2rec), number of records, images and classes, the size of the
first image, and checks every image record (or the first --limit): framing, header, label range,
decodability. Exit code 0 when all checked records are fine, 1 at the first bad record, 2 when the
files cannot be opened at all.
"""
import argparse
import os
import sys

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


def main(argv=None):
    ap = argparse.ArgumentParser(prog="plsc-inspect-rec", description=__doc__.split("\n")[0])
    ap.add_argument("rec_dir")
    ap.add_argument("--name", default="train")
    ap.add_argument("--limit", type=int, default=None, help="check only the first N images")
    args = ap.parse_args(argv)
    try:
        rec = IndexedRecordIO(os.path.join(args.rec_dir, args.name + ".idx"),
                              os.path.join(args.rec_dir, args.name + ".rec"))
        layout, keys, num_classes = describe(rec)
    except PlscError as e:
        print(f"plsc-inspect-rec: error: {e}", file=sys.stderr)
        return 2
    print(f"layout:  {layout}\nrecords: {len(rec)}\nimages:  {len(keys)}\nclasses: {num_classes}")
    shape, n = None, 0
    for n, key in enumerate(keys[: args.limit] if args.limit else keys):
        try:
            s = check_record(rec, key, num_classes)
        except PlscError as e:
            print(f"first bad record: {e}")
            return 1
        shape = shape or s
    if shape:
        print(f"image size: {shape[1]}x{shape[0]} (first image)")
    print(f"checked {n + 1 if shape else 0} images: all fine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
