"""PReLU with a fast CPU route: y = max(x, 0) + w * min(x, 0), per channel.

Paddle's CPU PReLU kernels are ~3x slower than numpy on the same memory (IResNet50, batch 32: the
24 PReLUs of a training step take 2.7 s of 15 s; `python tools/bench_train.py --profile`). On CPU
tensors this layer computes forward and backward with numpy through zero-copy views, split over
the cores by the batch axis (one of plsc's two CPU fast paths: plsc.cpu_fast); everywhere else (GPU
tensors, static graphs for export) it is paddle.nn.PReLU itself. Same parameter (`_weight`), same
state dict, same values: the forward is bit-identical, the weight gradient sums in another order.

    dL/dx = g where x > 0, w * g elsewhere;   dL/dw_c = sum over (N, H, W) of g * min(x, 0)
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import paddle
from paddle import nn
from paddle.autograd import PyLayer

from plsc.cpu_fast import host_view

_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        threads = os.environ.get("OMP_NUM_THREADS", "")
        _POOL = ThreadPoolExecutor(max(1, int(threads) if threads.isdigit() else (os.cpu_count() or 1)))
    return _POOL


def _chunks(n):
    parts = min(n, _pool()._max_workers)
    return [slice(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def _broadcast(w, ndim, channel_last):
    shape = [1] * ndim
    shape[-1 if channel_last else 1] = w.shape[0]
    return w.reshape(shape)


class _PReLUCPU(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, channel_last):
        xs = host_view(x)
        wb = _broadcast(host_view(weight), xs.ndim, channel_last)
        out = paddle.empty(x.shape, dtype=x.dtype)
        ys = host_view(out)

        def part(s):
            np.maximum(xs[s], 0, out=ys[s])
            ys[s] += wb * np.minimum(xs[s], 0)

        list(_pool().map(part, _chunks(xs.shape[0])))
        ctx.save_for_backward(x, weight)
        ctx.channel_last = channel_last
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensor()
        xs, gs = host_view(x), host_view(grad.contiguous())
        wb = _broadcast(host_view(weight), xs.ndim, ctx.channel_last)
        dx = paddle.empty(x.shape, dtype=x.dtype)
        ds = host_view(dx)
        axes = "".join("abcdefgh"[: xs.ndim])
        chan = axes[-1] if ctx.channel_last else axes[1]

        def part(s):
            np.multiply(gs[s], wb, out=ds[s])
            np.copyto(ds[s], gs[s], where=xs[s] > 0)
            return np.einsum(f"{axes},{axes}->{chan}", gs[s], np.minimum(xs[s], 0))

        dw = sum(_pool().map(part, _chunks(xs.shape[0])))
        return dx, paddle.to_tensor(dw.astype(np.float32).reshape(weight.shape))


class PReLU(nn.PReLU):
    """paddle.nn.PReLU (one slope per channel), with the CPU route above in dygraph."""

    def forward(self, x):
        if (paddle.in_dynamic_mode() and x.ndim in (2, 4) and self._weight.shape[0] > 1
                and host_view(x) is not None and x.dtype == paddle.float32):
            return _PReLUCPU.apply(x, self._weight, self._data_format in ("NHWC", "NLC", "NDHWC"))
        return super().forward(x)
