"""IJB 1:N identification on template features: two readings of the protocol, both reported.

    ident = identify(t_ids, t_feats, {"G1": (templates, subjects), "G2": (...), "probe": (...)})

- Open-set, per gallery (the IJB-B/C benchmark definition; rows G1, G2 / S1, S2 and their mean):
  a probe whose subject is in the gallery is *mated*, the others are non-mated searches.
  rank-k = share of mated probes whose best mate score is beaten by fewer than k non-mate gallery
  templates; TPIR at FPIR f = share of mated probes found at rank 1 with a score above the
  (floor(f * non-mated) + 1)-th highest non-mated top-1 score (at most a share f of non-mated
  searches raise an alarm).
- Closed-set on the union of both galleries (insightface's ijb_1n.py, row "G1+G2"): every probe has
  exactly one gallery template of its subject. rank-k as above over all probes; "TPIR at FPIR f" =
  share of probes whose mate score exceeds the ceil(f * probes)-th highest non-mate score.
Scores are cosines of L2-normalized template features.
"""
import math

import numpy as np

from plsc.errors import DataError

FPIRS = (1e-2, 1e-1)
RANKS = (1, 5)


def rows_of(t_ids, wanted):
    """Row of each wanted template id in the sorted `t_ids`; DataError for an unknown id."""
    wanted = np.asarray(wanted)
    idx = np.minimum(np.searchsorted(t_ids, wanted), t_ids.size - 1)
    bad = t_ids[idx] != wanted
    if bad.any():
        raise DataError(f"template {int(wanted[bad][0])} has no features (no images in face_tid_mid)")
    return idx


def open_set(t_ids, t_feats, gallery, probes, ranks=RANKS, fpirs=FPIRS, chunk=4096):
    """Open-set 1:N of probes (template ids, subject ids) against a gallery (template ids, subject ids)."""
    g_t, g_s = gallery
    p_t, p_s = probes
    g = t_feats[rows_of(t_ids, g_t)]
    p = t_feats[rows_of(t_ids, p_t)]
    mate = np.full(len(p_t), -np.inf)
    top1 = np.empty(len(p_t))
    beaten = np.zeros(len(p_t), np.int64)  # non-mate gallery templates scoring above the best mate
    for s in range(0, len(p_t), chunk):
        sim = p[s:s + chunk] @ g.T
        is_mate = p_s[s:s + chunk, None] == g_s[None, :]
        m = np.where(is_mate, sim, -np.inf).max(axis=1)
        mate[s:s + chunk] = m
        top1[s:s + chunk] = sim.max(axis=1)
        beaten[s:s + chunk] = np.sum((sim > m[:, None]) & ~is_mate, axis=1)
    mated = np.isin(p_s, g_s)
    out = {"mated": int(mated.sum()), "non_mated": int((~mated).sum())}
    for k in ranks:
        out[f"rank{k}"] = float(np.mean(beaten[mated] < k)) if mated.any() else None
    nm = np.sort(top1[~mated])[::-1]
    for f in fpirs:
        key = f"tpir@fpir{f:.0e}"
        if not mated.any() or nm.size == 0:
            out[key] = None
            continue
        k = int(np.floor(f * nm.size + 1e-9))
        thr = nm[k] if k < nm.size else -np.inf
        out[key] = float(np.mean((beaten[mated] == 0) & (mate[mated] > thr)))
    return out


def closed_set(t_ids, t_feats, gallery, probes, ranks=RANKS, fpirs=FPIRS, chunk=4096):
    """insightface's closed-set 1:N: each probe subject has exactly one gallery template."""
    g_t, first = np.unique(gallery[0], return_index=True)
    g_s = np.asarray(gallery[1])[first]
    p_t, p_s = probes
    order = np.argsort(g_s, kind="stable")
    lo = np.searchsorted(g_s[order], p_s, "left")
    hi = np.searchsorted(g_s[order], p_s, "right")
    bad = np.flatnonzero(hi - lo != 1)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"1:N: the subject {int(p_s[i])} of probe template {int(p_t[i])} has {int(hi[i] - lo[i])} "
                        f"templates in the two galleries together; the closed-set numbers need exactly one")
    mate_col = order[lo]
    g = t_feats[rows_of(t_ids, g_t)]
    p = t_feats[rows_of(t_ids, p_t)]
    n_p, n_g = len(p_t), len(g_t)
    need = [min(max(math.ceil(n_p * f), 1), n_p * (n_g - 1)) for f in fpirs]
    kmax = max(need + [0])
    pos = np.empty(n_p)
    beaten = np.empty(n_p, np.int64)
    top_neg = np.empty(0)
    for s in range(0, n_p, chunk):
        sim = p[s:s + chunk] @ g.T
        r = np.arange(sim.shape[0])
        m = sim[r, mate_col[s:s + chunk]].copy()
        pos[s:s + chunk] = m
        sim[r, mate_col[s:s + chunk]] = -np.inf
        beaten[s:s + chunk] = np.sum(sim > m[:, None], axis=1)
        if kmax:
            flat = np.concatenate([top_neg, sim.ravel()])
            top_neg = np.partition(flat, flat.size - kmax)[-kmax:] if flat.size > kmax else flat
    top_neg = np.sort(top_neg)[::-1]
    out = {"probes": n_p, "gallery": n_g}
    for k in ranks:
        out[f"rank{k}"] = float(np.mean(beaten < k))
    for f, k in zip(fpirs, need):
        out[f"tpir@fpir{f:.0e}"] = float(np.mean(pos > top_neg[k - 1])) if k >= 1 and top_neg.size >= k else None
    return out


def identify(t_ids, t_feats, one_to_n):
    """{gallery: open-set row for each gallery, "mean": their mean, "<g1>+<g2>": insightface's closed set}."""
    galleries = [k for k in one_to_n if k != "probe"]
    probes = one_to_n["probe"]
    ident = {g: open_set(t_ids, t_feats, one_to_n[g], probes) for g in galleries}
    keys = [k for k in ident[galleries[0]] if k not in ("mated", "non_mated")]
    ident["mean"] = {k: (None if any(ident[g][k] is None for g in galleries)
                         else sum(ident[g][k] for g in galleries) / len(galleries)) for k in keys}
    union = (np.concatenate([one_to_n[g][0] for g in galleries]), np.concatenate([one_to_n[g][1] for g in galleries]))
    ident["+".join(galleries)] = closed_set(t_ids, t_feats, union, probes)
    return ident
