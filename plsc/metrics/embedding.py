"""Embed a list of images with any backend, split across ranks without duplicated work.

    raw, flipped = embed_images(embed_fn, load, n, batch_size=64, flip_test=True, rank=0, world_size=1)

`load(i)` returns image i as float32 [3, H, W] (RGB in [-1, 1]); `embed_fn(np.float32 [N,3,H,W])`
returns [N, D]. Rank r embeds the contiguous slice `plsc.distributed.shard_range(n, r, W)` of the images (and their
horizontal flips) and the slices are all-gathered, so every rank returns the same full arrays.
A failure on one rank is sent to every rank, which all raise it (no rank is left waiting).
Ranks may call embed_fn a different number of times (uneven slices): embed_fn must not run
collectives (a backbone in eval mode does not; SyncBatchNorm only syncs in training).
"""
import numpy as np

import plsc.errors as plsc_errors
from plsc.distributed import shard_range
from plsc.errors import DataError, PlscError
from plsc.data.loader import build_loader


def _load_batch(load, indices, name):
    images = [np.asarray(load(i), np.float32) for i in indices]
    for i, img in zip(indices, images):
        if img.ndim != 3 or img.shape != images[0].shape:
            raise DataError(f"{name}: image {i} has shape {img.shape} after its transforms, image {indices[0]} has "
                            f"{images[0].shape}; every image must be [3, H, W] of one size (e.g. 112x112)")
    return np.stack(images)


def _run_embed(embed_fn, batch, what):
    out = embed_fn(np.ascontiguousarray(batch, np.float32))
    out = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
    if out.ndim != 2 or out.shape[0] != batch.shape[0]:
        raise DataError(f"{what}: the model returned an array of shape {out.shape} for a batch of "
                        f"{batch.shape[0]} images; expected [{batch.shape[0]}, D]")
    return out.astype(np.float32, copy=False)


class _Batches:
    """Batch k of the range [start, end) as one item (decoded and checked by _load_batch), for plsc's loader."""

    def __init__(self, load, starts, end, batch_size, name):
        self.load, self.starts, self.end, self.batch_size, self.name = load, starts, end, batch_size, name

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, k):
        s = self.starts[k]
        return (_load_batch(self.load, range(s, min(s + self.batch_size, self.end)), self.name),)


def _embed_range(embed_fn, load, start, end, batch_size, flip_test, name, fuse=False, progress=None, num_workers=0,
                 use_shared_memory=True):
    raw, flipped = [], []
    starts = list(range(start, end, batch_size))
    if not starts:
        return None, None
    # decoded one batch per task, in order, by plsc's loader: its reading thread (0 workers) or worker processes
    batches = iter(build_loader(_Batches(load, starts, end, batch_size, name), [[k] for k in range(len(starts))],
                                num_workers, use_shared_memory, as_numpy=True, key="Eval"))
    try:
        for s, (stacked,) in zip(starts, batches):
            batch = stacked[0]
            what = f"{name}: images {s}..{s + len(batch) - 1}"
            raw.append(_run_embed(embed_fn, batch, what))
            if flip_test:
                flipped.append(_run_embed(embed_fn, batch[:, :, :, ::-1], what + " (flipped)"))
                if fuse:
                    raw[-1] = raw[-1] + flipped.pop()
            if progress is not None:
                progress(s + len(batch) - start, end - start)
    finally:
        batches.close()  # a failed batch stops the reading thread / the workers now
    return np.concatenate(raw), (np.concatenate(flipped) if flip_test and not fuse else None)


def _gather(obj, world_size):
    import paddle.distributed as dist

    out = []
    dist.all_gather_object(out, obj)
    if len(out) != world_size:
        raise PlscError(f"all_gather_object returned {len(out)} parts for {world_size} ranks")
    return out


def _raise_first(errors, rank, local_exc, what):
    for err in errors:
        if err is not None:
            if err[3] == rank:
                raise local_exc
            is_user, tname, msg, r = err
            if is_user:
                raise getattr(plsc_errors, tname, PlscError)(msg)
            raise RuntimeError(f"rank {r} failed while {what}: {tname}: {msg}")


def on_all_ranks(fn, rank=0, world_size=1, what="evaluating"):
    """Run fn() on every rank; if it fails on any rank, every rank raises that error (none is left waiting)."""
    if world_size == 1:
        return fn()
    result, error, local_exc = None, None, None
    try:
        result = fn()
    except Exception as e:
        error, local_exc = (isinstance(e, PlscError), type(e).__name__, str(e), rank), e
    _raise_first(_gather(error, world_size), rank, local_exc, what)
    return result


def embed_images(embed_fn, load, n, batch_size=64, flip_test=True, rank=0, world_size=1, name="images",
                 fuse=False, progress=None, num_workers=0, use_shared_memory=True):
    """-> (raw [n, D] float32, flipped [n, D] float32 or None), identical on every rank.

    fuse: return (raw + flipped, None) -- summed on each rank before the gather (half the memory).
    progress: called as progress(done, total) with this rank's counts after every batch.
    num_workers: 0 decodes in one background thread; N > 0 in N worker processes (`load` must not use
    paddle: it runs in forked processes), batch by batch in order (plsc.data.loader either way).
    """
    if batch_size < 1:
        raise DataError(f"{name}: batch size must be >= 1, got {batch_size}")
    start, end = shard_range(n, rank, world_size)
    if world_size == 1:
        return _embed_range(embed_fn, load, start, end, batch_size, flip_test, name, fuse, progress, num_workers,
                            use_shared_memory)
    part, error, local_exc = (None, None), None, None
    try:
        part = _embed_range(embed_fn, load, start, end, batch_size, flip_test, name, fuse, progress, num_workers,
                            use_shared_memory)
    except Exception as e:  # every rank must reach the gather, then all raise the same error
        error, local_exc = (isinstance(e, PlscError), type(e).__name__, str(e), rank), e
    parts = _gather((part, error), world_size)
    _raise_first([err for _, err in parts], rank, local_exc, f"embedding {name}")
    raws = [p[0] for p, _ in parts if p[0] is not None]
    flips = [p[1] for p, _ in parts if p[1] is not None]
    return np.concatenate(raws), (np.concatenate(flips) if flips else None)
