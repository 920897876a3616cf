"""Data parallelism for the backbone through paddle.DataParallel; BatchNorm statistics across ranks (averaged
running statistics; DistributedStrategy.sync_bn).

`paddle.DataParallel` broadcasts rank 0's parameters and buffers at construction and, during
backward, all-reduces (and averages) the gradients in fused buckets as they become ready, so the
communication overlaps the rest of the backward pass. The sharded FC stays outside it (its rows
differ per rank; plsc.nn.partial_fc communicates for itself).

BatchNorm running statistics stay per rank (as in paddle.DataParallel); `average_running_stats`
makes every rank hold the same model before evaluation and saving.
"""
import contextlib

import paddle
import paddle.distributed as dist

from plsc.distributed import world_size
from plsc.errors import ConfigError
from plsc.nn.sync_bn import convert_sync_bn


def data_parallel(backbone, enabled, world):
    """The module the train step calls: paddle.DataParallel(backbone) on several ranks."""
    if world < 2:
        return backbone
    if not enabled:
        raise ConfigError(f"DistributedStrategy.data_parallel=false with {world} ranks would train {world} "
                          f"different backbones against one classifier; set it to true (or run one rank)")
    return paddle.DataParallel(backbone)


def no_sync(model, skip):
    """Context: no gradient all-reduce for this backward (accumulation micro-batches but the last)."""
    if skip and isinstance(model, paddle.DataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def average_running_stats(layer):
    """Average BatchNorm running statistics (non-trainable tensors) across ranks, in place.

    Each rank's BN sees only its own batches; averaging before evaluation and saving makes every
    rank hold the same model, so evaluation split across ranks embeds with one set of weights."""
    n = world_size()
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


def sync_batch_norms(model, device, log):
    """DistributedStrategy.sync_bn: Paddle's SyncBatchNorm on GPUs, plsc's collective version elsewhere."""
    if device == "gpu":
        model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log.info("sync_bn: BatchNorm layers converted to paddle.nn.SyncBatchNorm")
        return model
    log.info(f"sync_bn: {convert_sync_bn(model)} BatchNorm layers normalize with global-batch statistics")
    return model
