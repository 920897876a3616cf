"""Data parallelism for the backbone: identical start, gradients averaged across ranks.

BatchNorm running statistics stay per rank (as in paddle.DataParallel); rank 0's are saved.
"""
import paddle
import paddle.distributed as dist


def world():
    """(rank, world_size); initializes the process group when launched with several ranks."""
    n = int(paddle.distributed.ParallelEnv().world_size)
    if n > 1 and not dist.is_initialized():
        dist.init_parallel_env()
    return (dist.get_rank() if n > 1 else 0), n


def broadcast_from_rank0(layer):
    """Make every rank start from rank 0's parameters and buffers."""
    if dist.get_world_size() < 2:
        return
    with paddle.no_grad():
        for t in list(layer.parameters()) + list(layer.buffers()):
            dist.broadcast(t, src=0)


def average_grads(params):
    """All-reduce the grads of `params` in one flat buffer per dtype and divide by the world size."""
    n = dist.get_world_size()
    if n < 2:
        return
    by_dtype = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
    with paddle.no_grad():
        for group in by_dtype.values():
            flat = paddle.concat([p.grad.reshape([-1]) for p in group])
            dist.all_reduce(flat)
            flat = flat / n
            offset = 0
            for p in group:
                size = p.grad.size
                paddle.assign(flat[offset: offset + size].reshape(p.grad.shape), output=p.grad)
                offset += size


def average_running_stats(layer):
    """Average BatchNorm running statistics (non-trainable tensors) across ranks, in place.

    Each rank's BN sees only its own batches; averaging before evaluation and saving makes every
    rank hold the same model, so evaluation split across ranks embeds with one set of weights."""
    n = dist.get_world_size()
    if n < 2:
        return
    stats = [p for p in layer.parameters() if p.stop_gradient] + [b for b in layer.buffers()
                                                                   if b.dtype in (paddle.float32, paddle.float16)]
    if not stats:
        return
    with paddle.no_grad():
        flat = paddle.concat([t.astype("float32").reshape([-1]) for t in stats])
        dist.all_reduce(flat)
        flat = flat / n
        offset = 0
        for t in stats:
            size = t.size
            paddle.assign(flat[offset: offset + size].reshape(t.shape).astype(t.dtype), output=t)
            offset += size


def barrier():
    if dist.get_world_size() > 1:
        dist.barrier()
