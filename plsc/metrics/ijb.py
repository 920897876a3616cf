"""IJB-B / IJB-C: 1:1 template verification (TAR at FAR) and 1:N identification (rank-k, TPIR at FPIR).

    results, roc = evaluate_ijb(embed_fn, "/data/IJB_release/IJBC", "IJBC", batch_size=128)
    print(format_ijb(results)); plot_roc({"model": (roc["fpr"], roc["tpr"])}, "roc.png")

Protocol (as insightface's IJB evaluation):
- each loose crop is aligned to the 112x112 ArcFace template with a similarity transform from its
  5 landmarks (plsc.metrics.align), converted to RGB and normalized to [-1, 1];
- image feature = raw embedding + raw embedding of the mirrored image (flip_test); without
  norm_weight it is L2-normalized (the norm is a quality weight otherwise); with det_weight it is
  multiplied by the detector score;
- template = L2-normalize(sum over its media of the mean feature of the media's images);
- 1:1: score = cosine of the two templates; TAR at FAR x = the highest TAR among the ROC points whose
  FAR is nearest to x;
- 1:N (when the 1:N csv files exist): plsc.metrics.ijb_ident (open-set per gallery, and insightface's
  closed-set numbers on the union of both galleries).
"""
import cv2
import numpy as np

from plsc.errors import DataError
from plsc.metrics.align import align_face
from plsc.metrics.embedding import embed_images, on_all_ranks
from plsc.metrics.ijb_ident import identify, rows_of
from plsc.metrics.ijb_meta import read_ijb
from plsc.data.regular import read_regular

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def load_aligned(meta, i):
    """Image i of the meta: read, align with its landmarks, RGB, float32 [3, 112, 112] in [-1, 1]."""
    path = meta.image_paths[i]

    data = read_regular(path, f"IJB image {i} of the {meta.target} list")  # a FIFO / device is refused, not read
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise DataError(f"{path}: cannot read or decode the image (image {i} of the {meta.target} list)")
    face = cv2.cvtColor(align_face(img, meta.landmarks[i]), cv2.COLOR_BGR2RGB)
    return ((face.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def image_features(raw, flipped=None, scores=None, norm_weight=True, det_weight=True):
    """Per-image float32 features from raw (+ mirrored) embeddings with the optional norm / detector weights."""
    f = np.asarray(raw, np.float32)
    if flipped is not None:
        f = f + np.asarray(flipped, np.float32)
    if not norm_weight:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    if det_weight:
        f = f * np.asarray(scores, np.float32)[:, None]
    return f


def _group_sum(values, keys, block=32):
    """Sum rows of `values` per distinct key (float64) -> (sorted distinct keys, sums, counts)."""
    uniq, inv = np.unique(keys, return_inverse=True)
    inv = inv.reshape(-1)
    sums = np.empty((uniq.size, values.shape[1]))
    for j in range(0, values.shape[1], block):  # a weighted bincount per column: faster than reduceat
        for c, col in enumerate(np.ascontiguousarray(values[:, j:j + block].T)):
            sums[:, j + c] = np.bincount(inv, weights=col, minlength=uniq.size)
    return uniq, sums, np.bincount(inv, minlength=uniq.size)


def template_features(feats, templates, medias):
    """-> (sorted template ids, L2-normalized template features): mean per media, summed per template."""
    t_ids, t_idx = np.unique(templates, return_inverse=True)
    _, m_idx = np.unique(medias, return_inverse=True)
    key = t_idx.reshape(-1).astype(np.int64) * (int(m_idx.max()) + 1) + m_idx.reshape(-1)
    media_keys, media_sum, media_count = _group_sum(np.asarray(feats), key)
    media_mean = media_sum / media_count[:, None]
    media_template = media_keys // (int(m_idx.max()) + 1)
    _, tmpl, _ = _group_sum(media_mean, media_template)
    tmpl = tmpl / np.maximum(np.linalg.norm(tmpl, axis=1, keepdims=True), 1e-12)
    return t_ids, tmpl


def pair_scores(t_ids, t_feats, t1, t2):
    """Cosine score of each template pair (t1[i], t2[i]); pairs sharing t1 are one matrix-vector product."""
    i1, i2 = rows_of(t_ids, t1), rows_of(t_ids, t2)
    order = np.argsort(i1, kind="stable")
    s1, s2 = i1[order], i2[order]
    starts = np.flatnonzero(np.r_[True, s1[1:] != s1[:-1]])
    ends = np.r_[starts[1:], s1.size]
    out = np.empty(len(i1))
    for a, b in zip(starts, ends):
        out[order[a:b]] = t_feats[s2[a:b]] @ t_feats[s1[a]]
    return out


def roc_curve(labels, scores, drop_intermediate=True):
    """ROC over every distinct score (accept when score >= threshold) -> (fpr, tpr, thresholds).

    As sklearn.metrics.roc_curve (which insightface's numbers come from): with drop_intermediate,
    points inside a straight, evenly stepped run of the curve are dropped (zero second difference
    of both counts); the curve then starts at (0, 0) with threshold +inf.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    if labels.all() or not labels.any():
        raise DataError(f"ROC needs both genuine and impostor pairs; got {int(labels.sum())} genuine "
                        f"of {labels.size}")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    thr = s[last]
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        tps, fps, thr = tps[keep], fps[keep], thr[keep]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thr]


def tar_at_far(fpr, tpr, fars=FARS):
    """{"1e-04": TAR at FAR 1e-4, ...}: among the ROC points whose FAR is nearest to the target, the one
    with the highest TAR (insightface's ijb_11.py: flipped sklearn ROC, first minimum)."""
    out = {}
    for x in fars:
        d = np.abs(fpr - x)
        out[f"{x:.0e}"] = float(tpr[d.size - 1 - int(np.argmin(d[::-1]))])
    return out


def evaluate_ijb_verification(embed_fn, root, target="IJBC", batch_size=128, flip_test=True, norm_weight=True,
                              det_weight=True, rank=0, world_size=1, meta=None, progress=None):
    """The 1:1 protocol -> (results dict, roc {fpr, tpr, scores, labels}, templates (ids, features)).

    Same on every rank. meta: an already read IJBMeta of (root, target) (read here when None).
    progress: progress(done, total) after every batch of this rank's images."""
    if meta is None:
        meta = on_all_ranks(lambda: read_ijb(root, target), rank, world_size, f"reading {target} meta")
    n = len(meta.image_paths)
    fused, _ = embed_images(embed_fn, lambda i: load_aligned(meta, i), n, batch_size=batch_size,
                            flip_test=flip_test, rank=rank, world_size=world_size, name=f"{meta.target} images",
                            fuse=True, progress=progress)
    bad = np.flatnonzero(~np.isfinite(fused).all(axis=1))
    if len(bad):
        raise DataError(f"{meta.target}: the embedding of image {int(bad[0])} ({meta.image_paths[bad[0]]}) "
                        f"{'or its mirror ' if flip_test else ''}is not finite (NaN/Inf); {len(bad)} such images")
    feats = image_features(fused, None, meta.scores, norm_weight, det_weight)
    del fused
    t_ids, t_feats = template_features(feats, meta.templates, meta.medias)
    scores = pair_scores(t_ids, t_feats, meta.pair_t1, meta.pair_t2)
    fpr, tpr, _ = roc_curve(meta.pair_labels, scores)
    results = {
        "target": meta.target, "num_images": n, "num_templates": int(t_ids.size),
        "num_pairs": int(scores.size), "num_genuine": int(meta.pair_labels.sum()),
        "flip_test": bool(flip_test), "norm_weight": bool(norm_weight), "det_weight": bool(det_weight),
        "tar_at_far": tar_at_far(fpr, tpr), "identification": None,
    }
    return results, {"fpr": fpr, "tpr": tpr, "scores": scores, "labels": meta.pair_labels}, (t_ids, t_feats)


def evaluate_ijb(embed_fn, root, target="IJBC", batch_size=128, flip_test=True, norm_weight=True,
                 det_weight=True, rank=0, world_size=1, meta=None, progress=None):
    """1:1 and, when the meta has gallery / probe lists, 1:N -> (results, roc). Same on every rank."""
    if meta is None:
        meta = on_all_ranks(lambda: read_ijb(root, target), rank, world_size, f"reading {target} meta")
    results, roc, (t_ids, t_feats) = evaluate_ijb_verification(
        embed_fn, root, target, batch_size, flip_test, norm_weight, det_weight, rank, world_size, meta, progress)
    if meta.one_to_n:
        results["identification"] = identify(t_ids, t_feats, meta.one_to_n)
    return results, roc


def format_ijb(results):
    """Text tables of the 1:1 TAR@FAR row and the 1:N rows."""
    tar = results["tar_at_far"]
    lines = [f"{results['target']} 1:1 verification ({results['num_templates']} templates, {results['num_pairs']} "
             f"pairs, flip={results['flip_test']}, norm_weight={results['norm_weight']}, "
             f"det_weight={results['det_weight']})",
             "  ".join(f"{'FAR=' + k:>10}" for k in tar), "  ".join(f"{100 * v:>10.2f}" for v in tar.values())]
    ident = results.get("identification")
    if ident is None:
        lines.append(f"1:N identification: not run (no {results['target'].lower()}_1N_*.csv files in meta/)")
    else:
        keys = list(ident["mean"])
        lines.append("1:N identification (%): open-set per gallery and their mean; closed-set on both galleries "
                     "(insightface ijb_1n)")
        lines.append(f"{'gallery':<8}" + "".join(f"{k:>16}" for k in keys))
        for g, row in ident.items():
            lines.append(f"{g:<8}" + "".join(f"{'n/a' if row.get(k) is None else f'{100 * row[k]:.2f}':>16}"
                                             for k in keys))
    return "\n".join(lines)


def plot_roc(curves, path, title="ROC"):
    """Write a ROC plot (TAR against log FAR) of {label: (fpr, tpr)} to a PNG file."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for label, (fpr, tpr) in curves.items():
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], lw=1.5, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
