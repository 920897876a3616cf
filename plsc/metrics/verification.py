"""LFW-style 1:1 verification: the 10-fold protocol of insightface's verification.py.

    r = verify(embeddings, issame, flipped=None)   # embeddings [2P, D]: pair p = rows 2p, 2p+1

1. flip fusion: fused = embeddings + flipped (raw, before any normalization);
   XNorm = mean L2 norm of every raw embedding (originals and flips, as insightface reports it);
   feat_norm = mean L2 norm of the fused embedding.
2. L2-normalize the fused embeddings; dist = squared Euclidean distance of each pair (0..4);
   a pair is predicted "same" when dist < threshold.
3. Accuracy: thresholds 0, 0.01, ..., 3.99; 10 contiguous folds (KFold without shuffle: the first
   P % 10 folds hold one pair more); for each fold the threshold with the best accuracy on the other
   9 folds (ties -> the smallest threshold) is applied to the held-out fold.
   acc = mean, std = population std of the 10 fold accuracies; threshold = mean chosen threshold.
4. val (TAR at FAR 1e-3): thresholds 0, 0.001, ..., 3.999; per fold, the threshold where the
   train folds' FAR reaches the target by linear interpolation of threshold over FAR (0 when the
   train FAR never reaches it); val/far = TAR/FAR of the held-out fold; mean (and std of val).
"""
import numpy as np

from plsc.errors import ConfigError, DataError
from plsc.registry import METRICS

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
NUM_FOLDS = 10
FAR_TARGET = 1e-3


def fold_slices(n, num_folds=NUM_FOLDS):
    """Contiguous folds as sklearn's KFold(n_splits, shuffle=False): sizes n//k + 1 first, then n//k."""
    if n < num_folds:
        raise DataError(f"verification needs at least {num_folds} pairs for {num_folds}-fold evaluation, got {n}")
    sizes = np.full(num_folds, n // num_folds)
    sizes[: n % num_folds] += 1
    ends = np.cumsum(sizes)
    return [slice(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def _counts_below(sorted_values, thresholds):
    """For each threshold t, how many values are < t (values sorted ascending)."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def _rates(dist, same, thresholds):
    """Accept = dist < t. Returns (true accepts, false accepts, n_same, n_diff) per threshold."""
    d_same, d_diff = np.sort(dist[same]), np.sort(dist[~same])
    return _counts_below(d_same, thresholds), _counts_below(d_diff, thresholds), d_same.size, d_diff.size


def accuracy_curve(dist, same, thresholds=ACC_THRESHOLDS):
    """Accuracy of `dist < t` against `same` for every threshold t."""
    ta, fa, _, n_diff = _rates(dist, same, thresholds)
    return (ta + (n_diff - fa)) / float(dist.size)


def tar_far_curve(dist, same, thresholds):
    """(TAR, FAR) per threshold; a rate whose denominator is empty is 0 (no pairs of that kind)."""
    ta, fa, n_same, n_diff = _rates(dist, same, thresholds)
    tar = ta / float(n_same) if n_same else np.zeros(len(thresholds))
    far = fa / float(n_diff) if n_diff else np.zeros(len(thresholds))
    return tar, far


def threshold_at_far(far, thresholds, target):
    """Threshold where FAR (non-decreasing in the threshold) reaches `target`, linear in between.

    Interpolates between the last threshold whose FAR is <= target and the first whose FAR exceeds it
    (as insightface's scipy.interpolate.interp1d(far, thresholds, kind='slinear') did with scipy <= 1.8;
    newer scipy refuses the repeated FAR values).
    0.0 when the FAR never reaches the target.
    """
    if far.size == 0 or far[-1] < target:
        return 0.0
    n = far.size
    hi = min(int(np.searchsorted(far, target, side="right")), n - 1)
    lo = hi - 1
    if lo < 0:
        return float(thresholds[0])
    if far[hi] == far[lo]:  # target == max FAR repeated at the top: degenerate segment
        return 0.0
    w = (target - far[lo]) / (far[hi] - far[lo])
    return float(thresholds[lo] + w * (thresholds[hi] - thresholds[lo]))


def pair_distances(fused):
    """L2-normalize fused embeddings [2P, D]; squared Euclidean distance of rows 2p and 2p+1 -> [P]."""
    x = np.asarray(fused, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    diff = x[0::2] - x[1::2]
    return np.sum(diff * diff, axis=1)


def verification_from_distances(dist, issame, num_folds=NUM_FOLDS, far_target=FAR_TARGET):
    """The 10-fold accuracy and TAR@FAR protocol on pair distances -> dict of plain floats."""
    dist = np.asarray(dist, np.float64)
    same = np.asarray(issame, bool)
    folds = fold_slices(dist.size, num_folds)
    accs, thrs, vals, fars = [], [], [], []
    for test in folds:
        train = np.ones(dist.size, bool)
        train[test] = False
        acc_train = accuracy_curve(dist[train], same[train])
        best = int(np.argmax(acc_train))  # first maximum: the smallest threshold among ties
        thr = float(ACC_THRESHOLDS[best])
        thrs.append(thr)
        accs.append(float(accuracy_curve(dist[test], same[test], np.array([thr]))[0]))
        _, far_train = tar_far_curve(dist[train], same[train], VAL_THRESHOLDS)
        vthr = threshold_at_far(far_train, VAL_THRESHOLDS, far_target)
        tar, far = tar_far_curve(dist[test], same[test], np.array([vthr]))
        vals.append(float(tar[0]))
        fars.append(float(far[0]))
    return {
        "acc": float(np.mean(accs)), "std": float(np.std(accs)), "threshold": float(np.mean(thrs)),
        "val": float(np.mean(vals)), "val_std": float(np.std(vals)), "far": float(np.mean(fars)),
        "num_pairs": int(dist.size), "fold_acc": [float(a) for a in accs],
    }


def verify(embeddings, issame, flipped=None, name="embeddings", num_folds=NUM_FOLDS):
    """Full protocol on raw embeddings [2P, D] (+ raw embeddings of the flipped images) -> dict.

    A non-finite embedding raises DataError naming `name` and the image index (it is never averaged away).
    """
    emb = np.asarray(embeddings)
    issame = np.asarray(issame, bool).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] != 2 * issame.size:
        raise DataError(f"{name}: {emb.shape[0] if emb.ndim else 0} embeddings for {issame.size} pairs; "
                        f"need 2 x pairs rows of shape [2P, D], got {emb.shape}")
    raw = [emb] if flipped is None else [emb, np.asarray(flipped)]
    if flipped is not None and raw[1].shape != emb.shape:
        raise DataError(f"{name}: flipped embeddings {raw[1].shape} differ from the originals {emb.shape}")
    for kind, r in zip(("image", "flipped image"), raw):
        bad = np.flatnonzero(~np.isfinite(r).all(axis=1))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{name}: the embedding of {kind} {i} (pair {i // 2}) is not finite (NaN/Inf); "
                            f"{bad.size} such embeddings in total")
    raw64 = [np.asarray(r, np.float64) for r in raw]
    xnorm = float(np.mean(np.concatenate([np.linalg.norm(r, axis=1) for r in raw64])))
    fused = raw64[0] if flipped is None else raw64[0] + raw64[1]
    out = verification_from_distances(pair_distances(fused), issame, num_folds)
    out["xnorm"] = xnorm
    out["feat_norm"] = float(np.mean(np.linalg.norm(fused, axis=1)))
    return out


@METRICS.register()
class LFWAcc:
    """Metric.Eval: [- LFWAcc {flip_test: true, nrof_folds: 10}] -- verification accuracy, XNorm, TAR@FAR=1e-3.

    flip_test: fuse each image's embedding with its mirror's (summed raw, then normalized): the mirror is
    embedded by plsc, or, for a PLSC pairs folder made with --flip_test (its second half the mirrored
    copies of the first), read from the folder as PLSC does. nrof_folds: the k of k-fold. PLSC's pca
    (PCA-reduced embeddings) is not implemented: only 0 is accepted.
    """

    def __init__(self, flip_test=True, nrof_folds=NUM_FOLDS, pca=0):
        if not isinstance(nrof_folds, int) or isinstance(nrof_folds, bool) or nrof_folds < 2:
            raise ConfigError(f"Metric.Eval.LFWAcc.nrof_folds must be an integer >= 2, got {nrof_folds!r}")
        if pca != 0:
            raise ConfigError(f"Metric.Eval.LFWAcc.pca={pca!r}: PCA-reduced verification is not implemented in plsc "
                              f"(PLSC's default 0 is)")
        self.flip_test, self.nrof_folds = bool(flip_test), nrof_folds

    def __call__(self, embeddings, issame, flipped=None, name="embeddings"):
        return verify(embeddings, issame, flipped if self.flip_test else None, name=name, num_folds=self.nrof_folds)
