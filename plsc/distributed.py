"""The one source of rank and world size, the class-sharding rule, and collectives with autograd.

`rank()` / `world_size()` read the launcher's environment (`python -m paddle.distributed.launch`
sets PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID) and initialize the process group on first use, so
anything built before the Trainer (a head, a sampler, an evaluator) sees the real world size.

`dist.all_gather` carries no gradient in dygraph, so the classifier gathers features through
`GatherWithGrad`: forward concatenates every rank's rows (ranks may hold different row counts:
padded rows are exchanged and dropped), backward returns this rank's slice of the incoming
gradient, summed over ranks when every rank computed a different part of the loss (the sharded
FC) and scaled by the world size (see `gather_rows`). With one rank nothing is communicated.
"""
import os

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer


def _launched_world():
    value = os.environ.get("PADDLE_TRAINERS_NUM", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def init():
    """Initialize the process group when launched with several ranks (idempotent); -> (rank, world_size)."""
    if _launched_world() > 1 and not dist.is_initialized():
        dist.init_parallel_env()
    return rank(), world_size()


def world_size():
    if dist.is_initialized():
        return dist.get_world_size()
    if _launched_world() > 1:
        return init()[1]
    return 1


def rank():
    if dist.is_initialized():
        return dist.get_rank()
    if _launched_world() > 1:
        return init()[0]
    return 0


def barrier():
    if world_size() > 1:
        dist.barrier()


def shard_range(n, rank, world_size):
    """[start, end) of the items owned by `rank` of `world_size`: n // W each, the first n % W one more.

    The one split rule of plsc: classes of the FC across ranks, images of an eval set across ranks."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_gather_sizes(n):
    """Row counts of every rank (a list of ints): one all_gather and one host read."""
    if world_size() == 1:
        return [n]
    out = []
    dist.all_gather(out, paddle.to_tensor([n], dtype="int64"))
    return paddle.concat(out).numpy().tolist()


def _gather_padded(x, sizes):
    """Concatenate every rank's rows of `x` (rank r holds sizes[r] rows) without autograd."""
    longest = max(sizes)
    pad = longest - x.shape[0]
    if pad:
        filler = paddle.zeros([pad] + list(x.shape[1:]), dtype=x.dtype)
        x = paddle.concat([x, filler]) if x.shape[0] else filler
    parts = []
    dist.all_gather(parts, x)
    if all(n == longest for n in sizes):
        return paddle.concat(parts)
    return paddle.concat([p[:n] for p, n in zip(parts, sizes) if n > 0])


class GatherWithGrad(PyLayer):
    @staticmethod
    def forward(ctx, x, sizes, sum_grads, grad_scale):
        ctx.sizes, ctx.sum_grads, ctx.grad_scale = sizes, sum_grads, grad_scale
        ctx.offset = sum(sizes[:rank()])
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        if ctx.sum_grads:
            grad = grad.clone()
            dist.all_reduce(grad)
        n = ctx.sizes[rank()]
        local = grad[ctx.offset: ctx.offset + n]
        return local * ctx.grad_scale if ctx.grad_scale != 1 else local


def gather_rows(x, sizes, sum_grads=True):
    """All ranks' rows of `x` concatenated in rank order, differentiable.

    sum_grads=True: each rank's loss covers a different part of the computation (class shards),
    so the gradients of the gathered rows are summed over ranks. The returned local gradient is
    multiplied by the world size: the backbone's data-parallel average over W ranks then equals
    the gradient of the global-batch loss (each rank holds the gradient of its local share x W).
    """
    w = world_size()
    if w == 1:
        return x
    if x.stop_gradient:
        return _gather_padded(x, sizes)
    return GatherWithGrad.apply(x, sizes, sum_grads, float(w))


def gather_labels(labels, sizes):
    """Every rank's labels, concatenated in rank order (no gradient)."""
    if world_size() == 1:
        return labels
    return _gather_padded(labels, sizes)


def all_reduce_max_(t):
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_sum_(t):
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def seeded_rng(*keys):
    """A numpy Generator that depends only on `keys` (never on global RNG state)."""
    return np.random.default_rng([int(k) % (2 ** 32) for k in keys])


def derived_seed(*keys):
    """A positive 31-bit seed that depends only on `keys` (for ops taking `seed=`, e.g. paddle.uniform)."""
    return int(seeded_rng(*keys).integers(1, 2 ** 31 - 1))
