"""Synchronized BatchNorm from public collectives, for devices where paddle.nn.SyncBatchNorm has
no kernel (CPU). With `DistributedStrategy.sync_bn: true` every BatchNorm of the backbone
normalizes with the statistics of the *global* batch, so a run on W ranks x b images computes
exactly what one process computes on W x b images (BN included), and running statistics are the
same on every rank.

Conversion keeps each layer's parameters, names and attributes (state dicts do not change): the
instance's class becomes a subclass whose training forward all-reduces (sum x, count), then sum (x - mean)^2,
through gradient-carrying all-reduces (the mean, then the variance). Evaluation uses the original forward. Converted layers
use this formula at any world size (1 included), so runs on different world sizes compute the same
thing, not merely mathematically equal things (Paddle's kernel rounds differently).
On GPUs the engine uses paddle.nn.SyncBatchNorm.convert_sync_batchnorm instead.
"""
import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer

from plsc.distributed import world_size

_BN_TYPES = (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D)
_SYNC_CLASSES = {}


def _summed(t):
    out = t.clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out


class _AllReduceSum(PyLayer):
    """Sum over ranks; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x):
        return _summed(x)

    @staticmethod
    def backward(ctx, grad):
        return _summed(grad)


def _sync_forward(self, x):
    if not self.training:
        return self._plsc_base_forward(x)
    channel_last = x.ndim > 2 and self._data_format in ("NHWC", "NLC", "NDHWC")
    c_axis = x.ndim - 1 if channel_last else 1
    axes = [a for a in range(x.ndim) if a != c_axis]
    xf = x.astype("float32")
    c = xf.shape[c_axis]
    shape = [1] * x.ndim
    shape[c_axis] = c
    # two passes (mean, then the mean square deviation), as BatchNorm kernels do: E[x^2] - E[x]^2
    # loses the variance to cancellation in fp32 when |mean| >> std
    count = paddle.full([1], xf.size / c, dtype="float32")  # shapes are host data: no device read
    first = _AllReduceSum.apply(paddle.concat([xf.sum(axis=axes), count]))
    total = first[c]
    mean = first[:c] / total
    centered = xf - mean.reshape(shape)
    var = _AllReduceSum.apply((centered * centered).sum(axis=axes)) / total
    with paddle.no_grad():
        m = self._momentum
        paddle.assign(self._mean * m + mean.detach() * (1 - m), output=self._mean)
        paddle.assign(self._variance * m + var.detach() * (1 - m), output=self._variance)
    inv = paddle.rsqrt(var + self._epsilon)
    scale = inv if self.weight is None else inv * self.weight
    y = centered * scale.reshape(shape)
    if self.bias is not None:
        y = y + self.bias.reshape(shape)
    return y.astype(x.dtype)


def _sync_class(cls):
    if cls not in _SYNC_CLASSES:
        _SYNC_CLASSES[cls] = type(f"Sync{cls.__name__}", (cls,), {
            "forward": _sync_forward, "_plsc_base_forward": cls.forward,
            "__doc__": f"{cls.__name__} normalizing with global-batch statistics across ranks."})
    return _SYNC_CLASSES[cls]


def convert_sync_bn(model):
    """Make every BatchNorm1D / BatchNorm2D in `model` synchronized, in place; returns the count."""
    n = 0
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, _BN_TYPES) and type(layer) not in _SYNC_CLASSES.values():
            layer.__class__ = _sync_class(type(layer))
            n += 1
    return n
