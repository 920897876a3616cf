"""plsc-bin-convert's work: a verification .bin <-> image pairs + PLSC's pairs label.txt (command line:
plsc/cli/data.py)."""
import os

import cv2
import numpy as np

from plsc.data.bin import load_bin, save_bin
from plsc.data.label_files import check_outputs, make_dirs, output_path, read_pair_labels, sniff_ext
from plsc.data.regular import read_regular
from plsc.errors import DataError


def bin_to_pairs(bin_path, out_dir, flip=False, force=False):
    images, issame = load_bin(bin_path)
    label_path, image_dir = output_path(out_dir, "label.txt"), output_path(out_dir, "images")
    check_outputs([label_path, image_dir], force)
    make_dirs(image_dir)
    lines, flipped = [], []
    for p, same in enumerate(issame):
        names = []
        for j in range(2):
            data = images[2 * p + j]
            name = f"images/{p:08d}_{j}{sniff_ext(data)}"
            with open(output_path(out_dir, name), "wb") as f:
                f.write(data)
            names.append(name)
            if flip:
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                if img is None:
                    raise DataError(f"{bin_path}: image {2 * p + j} cannot be decoded")
                fname = f"images/{p:08d}_{j}_hflip.png"
                cv2.imwrite(output_path(out_dir, fname), cv2.flip(img, 1))
                flipped.append(fname)
        lines.append(f"{names[0]}\t{names[1]}\t{int(same)}\n")
    if flip:
        lines += [f"{flipped[2 * p]}\t{flipped[2 * p + 1]}\t{int(s)}\n" for p, s in enumerate(issame)]
    with open(label_path, "w") as f:
        f.writelines(lines)
    return len(issame)


def pairs_to_bin(pairs_dir, out_bin, label_file=None, drop_hflip=False, force=False):
    label_file = label_file or os.path.join(pairs_dir, "label.txt")
    check_outputs([out_bin], force)
    pairs, issame = read_pair_labels(label_file)
    images, kept = [], []
    for (a, b), same in zip(pairs, issame):
        if drop_hflip and all(os.path.splitext(x)[0].endswith("_hflip") for x in (a, b)):
            continue
        for rel in (a, b):
            path = os.path.join(pairs_dir, rel)
            try:
                data = read_regular(path, "image")  # a FIFO / device / directory is refused, not read
            except OSError as e:
                raise DataError(f"cannot read image {path}: {e.strerror}") from None
            if not data or cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
                raise DataError(f"cannot decode image {path}")
            images.append(data)
        kept.append(same)
    save_bin(output_path(os.path.dirname(out_bin) or ".", os.path.basename(out_bin) + ".part"), images, kept)
    os.replace(out_bin + ".part", out_bin)
    return len(kept)
