"""Softmax cross-entropy over logits whose class axis is split across ranks.

Each rank holds logits[:, its classes] for the whole global batch. The row max and the sum of
exponentials are all-reduced, so every rank gets the exact full-softmax loss; the backward is
local (softmax - one_hot on this rank's columns). Always computed in float32. This is what
Paddle's margin_cross_entropy does on GPUs, written with public APIs so it also runs on CPU.
"""
import paddle
from paddle.autograd import PyLayer

from plsc.distributed import all_reduce_max_, all_reduce_sum_


class ShardedSoftmaxCE(PyLayer):
    @staticmethod
    def forward(ctx, logits, target, sharded=True):
        """logits fp32 [N, K_local]; target int64 [N], the local column of the label or -1.

        Returns the per-sample loss [N] (identical on every rank)."""
        row_max = logits.max(axis=1)
        if sharded:
            all_reduce_max_(row_max)
        shifted = logits - row_max.unsqueeze(1)
        exp = paddle.exp(shifted)
        sum_exp = exp.sum(axis=1)
        if sharded:
            all_reduce_sum_(sum_exp)
        here = target >= 0
        safe = paddle.where(here, target, paddle.zeros_like(target))
        picked = paddle.take_along_axis(shifted, safe.unsqueeze(1), axis=1).squeeze(1)
        picked = paddle.where(here, picked, paddle.zeros_like(picked))
        if sharded:
            all_reduce_sum_(picked)
        ctx.save_for_backward(exp / sum_exp.unsqueeze(1), safe, here)
        return paddle.log(sum_exp) - picked

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, safe, here = ctx.saved_tensor()
        grad = softmax * grad_loss.unsqueeze(1)
        minus = (-grad_loss * here.astype(grad.dtype)).unsqueeze(1)
        return paddle.put_along_axis(grad, safe.unsqueeze(1), minus, axis=1, reduce="add"), None


def sharded_softmax_ce(logits, target, sharded=True):
    """Per-sample cross-entropy [N] of fp32 logits sharded by class across ranks (sharded=False: all
    classes are local, nothing is reduced)."""
    return ShardedSoftmaxCE.apply(logits.astype("float32"), target, sharded)
