"""plsc-pack-rec's work: images (an identity folder tree or a PLSC label.txt) packed into an insightface-layout
RecordIO (train.rec, train.idx, train.lst), written under temporary names and renamed. The command line and the
layout's description: plsc/cli/data.py."""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from plsc.data.label_files import check_outputs, make_dirs, output_path, read_train_labels, safe_relpath
from plsc.data.recordio import IndexedRecordIOWriter, pack
from plsc.data.regular import read_regular
from plsc.errors import DataError
from plsc.progress import Progress

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")
MAX_EXACT_LABEL = 1 << 24


def list_folder(root):
    """-> (relative paths, labels) for root/<identity>/<image>."""
    if not os.path.isdir(root):
        raise DataError(f"input folder not found: {root}")
    ids = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not ids:
        raise DataError(f"{root}: no identity subfolders (expected one folder per identity)")
    paths, labels, ignored = [], [], []
    for label, d in enumerate(ids):
        names = sorted(os.listdir(os.path.join(root, d)))
        images = [n for n in names if n.lower().endswith(_IMAGE_EXT)]
        ignored += [f"{d}/{n}" for n in names if n not in images]
        if not images:
            raise DataError(f"{root}/{d}: identity folder without images ({', '.join(_IMAGE_EXT)}); remove it "
                            f"(every folder becomes a class, an empty class cannot be trained)")
        paths += [f"{d}/{n}" for n in images]
        labels += [label] * len(images)
    if ignored:
        print(f"plsc-pack-rec: ignored {len(ignored)} non-image entries (not {', '.join(_IMAGE_EXT)}), e.g. "
              f"{', '.join(ignored[:3])}", file=sys.stderr)
    if not paths:
        raise DataError(f"{root}: no images ({', '.join(_IMAGE_EXT)}) in the identity subfolders")
    return paths, labels


def _encode(job):
    path, encode, quality = job
    try:
        data = read_regular(path, "image")  # a FIFO / device / directory is refused, not read
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror}") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise DataError(f"cannot decode image {path}")
    if encode == "keep":
        return data, img.shape
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if encode == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + encode, img, params)
    if not ok:
        raise DataError(f"cannot encode image {path} as {encode}")
    return buf.tobytes(), img.shape


def _in_order(pool, jobs, window=256):
    """_encode over `jobs` on the pool, results in order, at most `window` images in flight (bounded memory)."""
    for a in range(0, len(jobs), window):
        yield from pool.map(_encode, jobs[a:a + window])


def pack_images(paths, labels, image_root, out_dir, encode="keep", quality=95, workers=1, name="train",
                force=False, log=print):
    """Write out_dir/{name}.rec/.idx/.lst; -> (number of images, number of classes)."""
    if encode not in ("keep", "jpg", "png"):
        raise DataError(f"--encode must be keep, jpg or png, got {encode!r}")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in [1, 100], got {quality}")
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise DataError(f"--name must be a file stem without a folder, got {name!r}")
    num_classes = max(labels) + 1
    if num_classes > MAX_EXACT_LABEL:  # IRHeader labels are float32: larger ids would be rounded
        raise DataError(f"label {num_classes - 1} is too large: RecordIO stores labels as float32, exact only "
                        f"below {MAX_EXACT_LABEL}")
    outs = [output_path(out_dir, name + ext) for ext in (".rec", ".idx", ".lst")]
    check_outputs(outs, force)
    make_dirs(out_dir)
    order = sorted(range(len(paths)), key=lambda i: (labels[i], i))
    jobs = [(os.path.join(image_root, safe_relpath(paths[i], image_root)), encode, quality) for i in order]
    tmp = [output_path(out_dir, os.path.basename(p) + ".part") for p in outs]
    # threads, not forked processes: reading, cv2's decode and encode release the GIL, and a fork of a process
    # that already runs threads (Paddle's, cv2's) can deadlock in the child
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        results = _in_order(pool, jobs) if pool else map(_encode, jobs)
        with IndexedRecordIOWriter(tmp[1], tmp[0]) as w, open(tmp[2], "w") as lst:
            w.write(0, pack([len(jobs) + 1, len(jobs) + 1 + num_classes], b""))
            starts = np.zeros(num_classes + 1, np.int64)
            progress = Progress(len(jobs), "images", "packed", log=log)
            for key, (i, (data, shape)) in enumerate(zip(order, results), 1):
                w.write(key, pack(float(labels[i]), data, id=key))
                lst.write(f"{key}\t{labels[i]}\t{paths[i]}\n")
                starts[labels[i] + 1] += 1
                progress(key)
            bounds = 1 + np.cumsum(starts)
            for c in range(num_classes):
                key = len(jobs) + 1 + c
                w.write(key, pack([bounds[c], bounds[c + 1]], b"", id=key))
    except BaseException:
        for t in tmp:
            if os.path.exists(t):
                os.remove(t)
        raise
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    for t, o in zip(tmp, outs):
        os.replace(t, o)
    return len(jobs), num_classes


def pack_input(input_path, out_dir, image_root=None, encode="keep", quality=95, workers=1, name="train",
               force=False, log=print):
    """pack_images of an identity folder tree or a PLSC label.txt (paths relative to image_root, default its
    folder); -> (number of images, number of classes)."""
    if os.path.isfile(input_path):
        root = image_root or os.path.dirname(os.path.abspath(input_path))
        paths, labels = read_train_labels(input_path)
    else:
        root = input_path
        paths, labels = list_folder(input_path)
    return pack_images(paths, labels, root, out_dir, encode, quality, workers, name, force, log=log)
