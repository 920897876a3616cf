"""Reading the IJB-B / IJB-C meta files (the layout insightface's IJB evaluation uses).

    <root>/meta/ijbc_face_tid_mid.txt         image_name template_id media_id        (one line per image)
    <root>/meta/ijbc_template_pair_label.txt  template_id_1 template_id_2 label      (1 = same subject)
    <root>/meta/ijbc_name_5pts_score.txt      image_name x1 y1 ... x5 y5 detector_score
    <root>/meta/ijbc_1N_gallery_G1.csv, ijbc_1N_gallery_G2.csv, ijbc_1N_probe_mixed.csv   (optional, 1:N;
                                              IJB-B: ijbb_1N_gallery_S1.csv, ijbb_1N_gallery_S2.csv, ...)
                                              TEMPLATE_ID,SUBJECT_ID,...  (header line, one row per image)
    <root>/loose_crop/<image_name>            the loose face crops

IJB-B uses the same names with the prefix `ijbb_`. Every malformed line is a DataError naming the
file and line; a missing file is a DataError naming the path it was expected at.
"""
import csv
import os
from dataclasses import dataclass, field

import numpy as np

from plsc.errors import DataError

TARGETS = ("IJBB", "IJBC")
GALLERIES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}  # the two 1:N galleries of each benchmark


def meta_path(root, target, suffix):
    return os.path.join(root, "meta", f"{target.lower()}_{suffix}")


def _require(path, what):
    if not os.path.isfile(path):
        raise DataError(f"missing IJB meta file {path} ({what})")
    return path


def _rows(path, ncols, what):
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != ncols:
                raise DataError(f"{path}: line {lineno}: expected {ncols} fields ({what}), got {len(fields)}: "
                                f"{line.strip()[:120]!r}")
            yield lineno, fields


def _int(value, path, lineno, what):
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}: line {lineno}: {what} must be an integer, got {value!r}") from None


def _float(value, path, lineno, what):
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{path}: line {lineno}: {what} must be a number, got {value!r}") from None
    if not np.isfinite(x):
        raise DataError(f"{path}: line {lineno}: {what} is not finite ({value!r})")
    return x


def read_face_tid_mid(path):
    """-> (image names, template ids int64, media ids int64)."""
    names, tids, mids = [], [], []
    for lineno, (name, t, m) in _rows(path, 3, "image_name template_id media_id"):
        names.append(name)
        tids.append(_int(t, path, lineno, "template_id"))
        mids.append(_int(m, path, lineno, "media_id"))
    if not names:
        raise DataError(f"{path}: no images listed")
    return names, np.asarray(tids, np.int64), np.asarray(mids, np.int64)


def read_template_pairs(path):
    """-> (template ids 1, template ids 2, labels int8)."""
    t1, t2, labels = [], [], []
    for lineno, (a, b, lab) in _rows(path, 3, "template_id_1 template_id_2 label"):
        t1.append(_int(a, path, lineno, "template_id_1"))
        t2.append(_int(b, path, lineno, "template_id_2"))
        y = _int(lab, path, lineno, "label")
        if y not in (0, 1):
            raise DataError(f"{path}: line {lineno}: label must be 0 or 1, got {y}")
        labels.append(y)
    if not labels:
        raise DataError(f"{path}: no template pairs listed")
    return np.asarray(t1, np.int64), np.asarray(t2, np.int64), np.asarray(labels, np.int8)


def read_landmarks(path):
    """-> {image name: (landmarks float32 [5, 2], detector score, line number)}."""
    out = {}
    for lineno, fields in _rows(path, 12, "image_name, 10 landmark coordinates, detector score"):
        name = fields[0]
        if name in out:
            raise DataError(f"{path}: line {lineno}: image {name} is listed twice (first at line {out[name][2]})")
        lmk = np.array([_float(v, path, lineno, "landmark") for v in fields[1:11]], np.float32).reshape(5, 2)
        out[name] = (lmk, _float(fields[11], path, lineno, "detector score"), lineno)
    return out


def read_template_subjects(path):
    """A 1:N csv (header TEMPLATE_ID,SUBJECT_ID,...) -> (template ids, subject ids), one entry per template."""
    subject_of = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and not row[0].strip().lstrip("-").isdigit():
                continue  # header line
            if len(row) < 2:
                raise DataError(f"{path}: line {lineno}: expected TEMPLATE_ID,SUBJECT_ID,..., "
                                f"got {','.join(row)[:120]!r}")
            t = _int(row[0].strip(), path, lineno, "TEMPLATE_ID")
            s = _int(row[1].strip(), path, lineno, "SUBJECT_ID")
            if subject_of.setdefault(t, s) != s:
                raise DataError(f"{path}: line {lineno}: template {t} has two subjects ({subject_of[t]} and {s})")
    if not subject_of:
        raise DataError(f"{path}: no templates listed")
    t = np.fromiter(subject_of.keys(), np.int64)
    return t, np.fromiter(subject_of.values(), np.int64)


@dataclass
class IJBMeta:
    target: str
    root: str
    image_paths: list        # full path of each image
    templates: np.ndarray    # template id per image
    medias: np.ndarray       # media id per image
    landmarks: np.ndarray    # [N, 5, 2] float32
    scores: np.ndarray       # detector score per image
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_labels: np.ndarray
    one_to_n: dict = field(default_factory=dict)   # {gallery name (G1, G2 / S1, S2)|"probe": (templates, subjects)}


def read_ijb(root, target):
    """All meta of an IJB-B / IJB-C folder; the 1:N files are read when all three are present."""
    target = target.upper()
    if target not in TARGETS:
        raise DataError(f"unknown IJB target {target!r}; expected one of {', '.join(TARGETS)}")
    if not os.path.isdir(root):
        raise DataError(f"IJB root folder not found: {root}")
    tid_path = _require(meta_path(root, target, "face_tid_mid.txt"), "image_name template_id media_id")
    pair_path = _require(meta_path(root, target, "template_pair_label.txt"), "template pairs with labels")
    lmk_path = _require(meta_path(root, target, "name_5pts_score.txt"), "5 landmarks and detector score per image")
    crops = os.path.join(root, "loose_crop")
    if not os.path.isdir(crops):
        raise DataError(f"missing IJB image folder {crops} (the loose face crops)")
    names, tids, mids = read_face_tid_mid(tid_path)
    lmks = read_landmarks(lmk_path)
    missing = [n for n in names if n not in lmks]
    if missing:
        raise DataError(f"{lmk_path}: no landmarks for image {missing[0]} (listed in {tid_path}); "
                        f"{len(missing)} images without landmarks")
    t1, t2, labels = read_template_pairs(pair_path)
    known = np.unique(tids)
    for t, col in ((t1, 1), (t2, 2)):
        unknown = t[~np.isin(t, known)]
        if unknown.size:
            raise DataError(f"{pair_path}: template {int(unknown[0])} (column {col}) has no images in {tid_path}")
    one_to_n = {}
    keys = GALLERIES[target] + ("probe",)
    paths = [meta_path(root, target, f"1N_gallery_{g}.csv") for g in GALLERIES[target]] + \
        [meta_path(root, target, "1N_probe_mixed.csv")]
    present = [os.path.isfile(p) for p in paths]
    if any(present):
        for p in paths:
            _require(p, "1:N identification list; the three 1:N files come together")
        for key, p in zip(keys, paths):
            t, s = read_template_subjects(p)
            unknown = t[~np.isin(t, known)]
            if unknown.size:
                raise DataError(f"{p}: template {int(unknown[0])} has no images in {tid_path}")
            one_to_n[key] = (t, s)
    return IJBMeta(
        target=target, root=root, image_paths=[os.path.join(crops, n) for n in names], templates=tids, medias=mids,
        landmarks=np.stack([lmks[n][0] for n in names]), scores=np.asarray([lmks[n][1] for n in names], np.float64),
        pair_t1=t1, pair_t2=t2, pair_labels=labels, one_to_n=one_to_n)
