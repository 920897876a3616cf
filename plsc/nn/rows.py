"""Row selection, gathers and scatters on the FC shard: Paddle ops everywhere, numpy on CPU where it pays.

Every function has one meaning and two routes. The Paddle route is what GPUs run. On CPU some of
Paddle's kernels are slow on large row sets (gathering 100k rows of 512 floats from a 1M-row
shard ~0.4 s, scattering them back ~2 s, top-k of 1M values ~40 ms; numpy on the same memory:
~0.05 s, ~0.02 s, ~6 ms: `python tools/bench_partial_fc.py --routes`), so for CPU tensors the
rows are moved by numpy through zero-copy DLPack views (public APIs on both sides). Both routes
give identical results (tests run the PartialFC / engine / checkpoint subset both ways).

PLSC_NUMPY_ROUTE=0 turns the numpy route off (CPU then runs exactly what a GPU runs); it is never
taken for tensors that are not in CPU memory.
"""
import os

import numpy as np
import paddle


def numpy_route_enabled():
    return os.environ.get("PLSC_NUMPY_ROUTE", "1") != "0"


def host_view(t):
    """A numpy array sharing memory with the CPU tensor t, or None (GPU tensor, or the route is off)."""
    if not numpy_route_enabled() or not t.place.is_cpu_place() or not t.is_contiguous():
        return None
    return np.from_dlpack(t.detach())


def top_k_sorted(scores, k):
    """Indices (int64, ascending) of the k largest values of the 1-D tensor `scores`."""
    s = host_view(scores)
    if s is None:
        return paddle.sort(paddle.topk(scores, k)[1])
    n = s.shape[0]
    picked = np.argpartition(s, n - k)[n - k:] if k < n else np.arange(n)
    picked.sort()
    return paddle.to_tensor(picked.astype(np.int64))


def take_rows(w, index):
    """Copy of the rows `index` (int64 tensor, sorted, no repeats) of the 2-D tensor w."""
    src, idx = host_view(w), host_view(index)
    if src is None or idx is None:
        return paddle.gather(w, index)
    out = paddle.empty([idx.shape[0], w.shape[1]], dtype=w.dtype)
    np.take(src, idx, axis=0, out=host_view(out))
    return out


def put_rows(w, index, rows):
    """w[index] = rows, in place (index: int64 tensor without repeats)."""
    dst, src, idx = host_view(w), host_view(rows), host_view(index)
    if dst is None or src is None or idx is None:
        paddle.scatter_(w, index, rows, overwrite=True)
    else:
        dst[idx] = src


def row_sq_norms(w, chunk=1 << 12):
    """|w_j|^2 per row, without a [K, D] temporary."""
    src = host_view(w)
    if src is not None:
        return paddle.to_tensor(np.einsum("ij,ij->i", src, src))
    parts = [paddle.square(w[a:a + chunk]).sum(axis=1) for a in range(0, w.shape[0], chunk)]
    return parts[0] if len(parts) == 1 else paddle.concat(parts)


def remove_radial_(m, w, inv):
    """m_j -= inv_j^2 (m_j . w_j) w_j for every row, in place (m, w: [K, D] chunks, inv: [K])."""
    dst, rows, i = host_view(m), host_view(w), host_view(inv)
    if dst is None or rows is None or i is None:
        m.subtract_(w * ((m * w).sum(axis=1) * inv * inv).unsqueeze(1))
        return
    coef = np.einsum("ij,ij->i", dst, rows)
    coef *= i * i
    dst -= rows * coef[:, None]


def set_rows_(dst, start, src):
    """dst[start:start + len(src)] = src, in place."""
    d, s = host_view(dst), host_view(src)
    if d is None or s is None:
        dst[start:start + src.shape[0]] = src
    else:
        d[start:start + s.shape[0]] = s


def scale_(z, cols=None, rows=None):
    """z *= cols[None, :] * rows[:, None] in place (either may be None); z is [N, K]."""
    zn = host_view(z)
    cn = None if cols is None else host_view(cols)
    rn = None if rows is None else host_view(rows)
    if zn is None or (cols is not None and cn is None) or (rows is not None and rn is None):
        if cols is not None:
            z.multiply_(cols.unsqueeze(0))
        if rows is not None:
            z.multiply_(rows.unsqueeze(1))
        return
    block = max(1, (1 << 19) // max(1, zn.shape[1]))  # row blocks of ~2 MB: both factors in one visit
    for a in range(0, zn.shape[0], block):
        part = zn[a:a + block]
        if cn is not None:
            part *= cn
        if rn is not None:
            part *= rn[a:a + block, None]
