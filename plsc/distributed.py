"""Collectives with autograd, and the class-sharding arithmetic of the model-parallel FC.

`dist.all_gather` carries no gradient in dygraph, so the classifier gathers features through
`GatherWithGrad`: forward concatenates every rank's rows (ranks may hold different row counts:
sizes are gathered first, then padded rows are exchanged and dropped), backward returns this
rank's slice of the incoming gradient, summed over ranks when every rank computed a different
part of the loss (the sharded FC) and scaled by the world size (see `gather_rows`).
With one rank nothing is communicated.
"""
import numpy as np
import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def shard_range(num_classes, rank, world_size):
    """[start, end) of the class rows owned by `rank`: C // W rows each, the first C % W ranks one more."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_gather_sizes(n):
    """Row counts of every rank (a list of ints), gathered once per call."""
    if world_size() == 1:
        return [n]
    out = []
    dist.all_gather(out, paddle.to_tensor([n], dtype="int64"))
    return [t.item() for t in out]


def _gather_padded(x, sizes):
    """Concatenate every rank's rows of `x` (rank r holds sizes[r] rows) without autograd."""
    longest = max(sizes)
    pad = longest - x.shape[0]
    if pad:
        filler = paddle.zeros([pad] + list(x.shape[1:]), dtype=x.dtype)
        x = paddle.concat([x, filler]) if x.shape[0] else filler
    parts = []
    dist.all_gather(parts, x)
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


def gather_rows(x, sizes=None, sum_grads=True):
    """All ranks' rows of `x` concatenated in rank order, differentiable.

    sum_grads=True: each rank's loss covers a different part of the computation (class shards),
    so the gradients of the gathered rows are summed over ranks. The returned local gradient is
    multiplied by the world size: the backbone's data-parallel average over W ranks then equals
    the gradient of the global-batch loss (each rank holds the gradient of its local share x W).
    """
    w = world_size()
    if w == 1:
        return x
    sizes = sizes if sizes is not None else all_gather_sizes(x.shape[0])
    if x.stop_gradient:
        return _gather_padded(x, sizes)
    return GatherWithGrad.apply(x, sizes, sum_grads, float(w))


def gather_labels(labels, sizes=None):
    """Every rank's int64 labels, concatenated in rank order (no gradient)."""
    if world_size() == 1:
        return labels
    sizes = sizes if sizes is not None else all_gather_sizes(labels.shape[0])
    return _gather_padded(labels, sizes)


def all_reduce_max_(t):
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_sum_(t):
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_flag(flag):
    """True on every rank when `flag` is true on any rank."""
    t = paddle.to_tensor([1 if flag else 0], dtype="int32")
    all_reduce_max_(t)
    return bool(t.item())


def seeded_rng(*keys):
    """A numpy Generator that depends only on `keys` (never on global RNG state)."""
    return np.random.default_rng([int(k) % (2 ** 32) for k in keys])
