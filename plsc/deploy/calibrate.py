"""The similarity threshold at a target false-accept rate, from labelled pairs.

    cal = calibrate(embeddings_a, embeddings_b, same, far=1e-4)
    # {"threshold": cosine, "distance_threshold": squared L2, "far", "tar", "target_far", "impostor_pairs", ...}

The computation is plsc-eval's TAR@FAR (plsc.metrics.verification) on all pairs at once, no folds: the
squared distance between L2-normalised embeddings, thresholds 0, 0.001, ..., 3.999, the threshold where
the impostor pairs' FAR reaches the target by linear interpolation (threshold_at_far), and the TAR / FAR
measured at it (accept = distance < threshold). On unit vectors distance = 2 - 2 cos, so the cosine
threshold is 1 - distance / 2 and a pair is "same" when cos > threshold. plsc-eval reports the mean over
its 10 folds of the same quantity, each computed on 9/10 of the pairs.

PAIRS: a verification .bin (insightface's aligned 112x112 crops, rows 2p / 2p+1 form pair p), or a text
file of lines `path1 path2 same` (same: 1/0, true/false, same/diff; relative paths relative to the file).
"""
import os

import numpy as np

from plsc.errors import DataError
from plsc.metrics.verification import VAL_THRESHOLDS, tar_far_curve, threshold_at_far

_TRUE, _FALSE = ("1", "true", "same", "yes"), ("0", "false", "diff", "different", "no")


def calibrate(emb_a, emb_b, same, far):
    a = np.asarray(emb_a, np.float64)
    b = np.asarray(emb_b, np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    same = np.asarray(same, bool)
    dist = np.sum((a - b) ** 2, axis=1)
    return calibrate_distances(dist, same, far)


def calibrate_distances(dist, same, far):
    n_genuine, n_impostor = int(same.sum()), int((~same).sum())
    if not 0 < far < 1:
        raise DataError(f"--far {far}: must be between 0 and 1")
    if n_impostor == 0 or n_genuine == 0:
        raise DataError(f"the pairs hold {n_genuine} genuine and {n_impostor} impostor pairs; calibration needs both")
    if far * n_impostor < 1:
        raise DataError(f"--far {far:g} needs at least {int(np.ceil(1 / far))} impostor (different-person) pairs to "
                        f"be measured (one false accept is already a FAR of 1/{n_impostor} = {1 / n_impostor:.2g}); "
                        f"these pairs have {n_impostor}: use a larger pair set or --far >= {1 / n_impostor:.2g}")
    _, far_curve = tar_far_curve(dist, same, VAL_THRESHOLDS)
    d_thr = threshold_at_far(far_curve, VAL_THRESHOLDS, far)
    tar, far_at = tar_far_curve(dist, same, np.array([d_thr]))
    return {"threshold": float(1.0 - d_thr / 2.0), "distance_threshold": float(d_thr), "target_far": float(far),
            "far": float(far_at[0]), "tar": float(tar[0]), "impostor_pairs": n_impostor,
            "genuine_pairs": n_genuine, "rule": "same when cosine similarity > threshold "
                                                "(squared L2 distance of unit vectors < distance_threshold)"}


def read_pairs_text(path):
    """[(path_a, path_b, same)] from a `path1 path2 same` file; DataError naming the line on a bad one."""
    base = os.path.dirname(os.path.abspath(path))
    pairs = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the pairs file ({e})") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3 or parts[2].lower() not in _TRUE + _FALSE:
            raise DataError(f"{path}:{n}: expected 'path1 path2 same' (same: 1/0), got {line.strip()[:200]!r}")
        a, b = (p if os.path.isabs(p) else os.path.join(base, p) for p in parts[:2])
        pairs.append((a, b, parts[2].lower() in _TRUE))
    if not pairs:
        raise DataError(f"{path}: no pairs in the file")
    return pairs
