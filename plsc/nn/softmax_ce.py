"""Margin softmax cross-entropy over a class-sharded cosine classifier, as one PyLayer.

Each rank holds the chosen rows w [K, D] of its shard and the whole global batch of unit
features x [N, D]. With cos = x . w_j / |w_j|, the logits are s * cos everywhere except at each
sample's target column (on the shard that owns it), which holds s * margin(cos). The row max and
the sum of exponentials are all-reduced, so every rank gets the exact full-softmax loss; the
backward is local. Always float32. This is what Paddle's margin_cross_entropy does on GPUs,
written with public APIs so it also runs on CPU.

Written as one layer because at millions of classes the [N, K] logits and the [K, D] rows are
the memory traffic: the forward turns the matmul output into the softmax in place (scale, max,
subtract, exp, normalize) and keeps one copy of the scaled cosines; the backward needs no
normalized copy of w, using

    dL/dw_j = M_j - c_j w_j,    M = (G / |w|)^T x,    G = dL/dcos,
    c_j = |w_j|^-2 (M_j . w_j) = |w_j|^-2 sum_n G_nj cos_nj

so the radial coefficient comes from the [N, K] gradient and cosines (a column sum, done as a
matmul) instead of a second pass over the [K, D] rows and M; the correction is one in-place pass. The [N, K] copy of the cosines is the price
(4 N K bytes: 51 MB for N = 128 and K = 100k, against 205 MB of [K, D] rows). Cosines are not clipped to [-1, 1]
here (they leave it only by rounding); the margin functions clip the target ones themselves.
The margin's derivative at the target cosines (`dnew`) comes from the caller (autograd on N
scalars), so any elementwise margin works: ArcFace, CosFace, combined, AdaFace.

Inter-class filtering (arcface_torch's interclass_filtering_threshold t > 0, for noisy labels): a
non-target cosine above t is taken as 0 (constant: no gradient), so a near-duplicate identity under
another label stops pushing the sample away. t = 0 turns it off.
"""
import paddle
from paddle.autograd import PyLayer

from plsc.distributed import all_reduce_max_, all_reduce_sum_
from plsc.nn.rows import remove_radial_, row_sq_norms, scale_



def inverse_row_norms(w):
    """1 / |w_j| for each row."""
    return paddle.rsqrt(paddle.clip(row_sq_norms(w), min=1e-24))


class MarginSoftmaxCE(PyLayer):
    @staticmethod
    def forward(ctx, x, w, target, new_t, dnew, s, sharded, filter_t=0.0):
        """x [N, D] unit features; w [K, D] rows; target int64 [N]: local column or -1;
        new_t [N]: margin(cos) at the target (used where target >= 0); dnew [N]: its derivative.

        Returns the per-sample loss [N] (identical on every rank)."""
        here = target >= 0
        safe = paddle.where(here, target, paddle.zeros_like(target)).unsqueeze(1)
        inv = inverse_row_norms(w)
        z = paddle.matmul(x, w, transpose_y=True)                  # [N, K], becomes the softmax
        scale_(z, cols=inv * s)                                     # s * cos
        cos_s = z.clone()                                           # for the backward's radial coefficient
        dirty = None
        if filter_t > 0:                                            # filtered negatives: cos = 0
            cols = paddle.arange(z.shape[1], dtype=safe.dtype).unsqueeze(0)
            dirty = (z > filter_t * s) & ((cols != safe) | ~here.unsqueeze(1))   # never the target itself
            z = paddle.where(dirty, paddle.zeros([], dtype=z.dtype), z)
        current = paddle.take_along_axis(z, safe, axis=1).squeeze(1)
        target_logit = paddle.where(here, new_t * s, current)
        z.put_along_axis_(safe, target_logit.unsqueeze(1), 1)       # s * margin(cos) at the targets
        row_max = z.max(axis=1)
        if sharded:
            all_reduce_max_(row_max)
        picked = paddle.where(here, target_logit - row_max, paddle.zeros_like(row_max))
        if sharded:
            all_reduce_sum_(picked)
        z.subtract_(row_max.unsqueeze(1))
        z.exp_()
        sum_exp = z.sum(axis=1)
        if sharded:
            all_reduce_sum_(sum_exp)
        scale_(z, rows=1.0 / sum_exp)
        ctx.save_for_backward(x, w, inv, z, safe, here, dnew, cos_s)
        ctx.s, ctx.need_x, ctx.dirty = s, not x.stop_gradient, dirty
        return paddle.log(sum_exp) - picked

    @staticmethod
    def backward(ctx, grad_loss):
        if getattr(ctx, "done", False):
            raise RuntimeError("the PartialFC loss was backpropagated twice (retain_graph): its backward "
                               "reuses the saved softmax in place; run the forward again instead")
        ctx.done = True
        x, w, inv, g, safe, here, dnew, cos_s = ctx.saved_tensor()
        gl = grad_loss * ctx.s                                      # d loss / d logit = gl * (p - onehot)
        p_t = paddle.take_along_axis(g, safe, axis=1).squeeze(1)
        scale_(g, rows=gl)                                          # in place: the softmax is not needed again
        if ctx.dirty is not None:                                   # filtered cosines are constants
            g = paddle.where(ctx.dirty, paddle.zeros([], dtype=g.dtype), g)
        g_t = paddle.where(here, gl * (p_t - 1.0) * dnew, gl * p_t)
        g.put_along_axis_(safe, g_t.unsqueeze(1), 1)                # G = d loss / d cos
        # c_j = |w_j|^-2 (M_j . w_j) = |w_j|^-2 sum_n G_nj cos_nj: a column sum of G * cos, as a matmul
        cos_s.multiply_(g)
        ones = paddle.ones([1, g.shape[0]], dtype=g.dtype)
        coef = paddle.matmul(ones, cos_s).squeeze(0) * (inv * inv / ctx.s)
        del cos_s
        scale_(g, cols=inv)                                         # G / |w|
        grad_x = paddle.matmul(g, w) if ctx.need_x else None
        # M = (G / |w|)^T x, then the radial correction in place (one [K, D] product: no chunk copies)
        grad_w = paddle.matmul(g, x, transpose_x=True)
        remove_radial_(grad_w, w, coef)
        return grad_x, grad_w, None, None, None


def margin_softmax_ce(x_unit, w, target, new_t, dnew, s, sharded=True, filter_t=0.0):
    """Per-sample loss [N]; gradients flow to x_unit and w (see the module docstring)."""
    return MarginSoftmaxCE.apply(x_unit, w, target, new_t.detach(), dnew.detach(), float(s), bool(sharded),
                                 float(filter_t))
