"""Margin heads: what happens to the target class's cosine before the softmax.

    MarginLoss {m1, m2, m3, s}:  s * (cos(m1 * theta + m2) - m3)
        ArcFace  m2 > 0 (insightface: m2 = 0.5), CosFace  m3 > 0 (0.4), SphereFace-style  m1 > 1,
        and any combination of the three (insightface's "combined" margin, e.g. 1.0 / 0.3 / 0.2).
    AdaFaceLoss {m, h, s, t_alpha}: the margin adapts to image quality through the feature norm.

Every function here takes the *target* cosines only (a 1-D fp32 tensor) and returns the new
target logits before scaling; non-target logits are s * cos. Nothing produces NaN or inf for any
angle: cosines are clamped away from +-1 before acos, and when m1 * theta + m2 would pass pi
(where cos(m1 * theta + m2) stops decreasing) MarginLoss continues linearly in cos: for m1 = 1
insightface's cos - m3 - m2 * sin(m2), for m1 > 1 a continuous continuation from -1 - m3.
"""
import math

import paddle

from plsc.errors import ConfigError
from plsc.registry import LOSSES

_EPS = 1e-7


def _check(name, value, low, high, what):
    if not (isinstance(value, (int, float)) and low <= value <= high):
        raise ConfigError(f"Loss.Train.{name}: {what}, got {value!r}")


def _theta(cos):
    return paddle.acos(paddle.clip(cos, -1.0 + _EPS, 1.0 - _EPS))


@LOSSES.register()
class MarginLoss:
    """Combined margin softmax: s * (cos(m1 * theta + m2) - m3) on the target class."""

    uses_norms = False

    def __init__(self, m1=1.0, m2=0.5, m3=0.0, s=64.0, weight=1.0):
        _check("MarginLoss.m1", m1, 1.0, 10.0, "m1 (multiplicative angular margin) must be in [1, 10]")
        _check("MarginLoss.m2", m2, 0.0, math.pi / 2, "m2 (additive angular margin) must be in [0, pi/2]")
        _check("MarginLoss.m3", m3, 0.0, 1.0, "m3 (additive cosine margin) must be in [0, 1]")
        _check("MarginLoss.s", s, 1e-3, 1e4, "s (scale) must be positive")
        _check("MarginLoss.weight", weight, 0.0, 1e6, "weight must be >= 0")
        self.m1, self.m2, self.m3, self.s = float(m1), float(m2), float(m3), float(s)
        self.weight = float(weight)
        # past this angle m1*theta + m2 >= pi: continue linearly in cos (insightface's fallback)
        self._theta_max = (math.pi - self.m2) / self.m1

    def target_logits(self, cos, norms=None):
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3
        theta = _theta(cos)
        margin = paddle.cos(self.m1 * theta + self.m2) - self.m3
        if self.m1 == 1.0:
            # insightface's ArcFace fallback: cos - m2 * sin(m2) (slope 1 in cos, keeps a margin)
            linear = cos - self.m3 - self.m2 * math.sin(self.m2)
        else:
            # continuous slope-1 continuation from the boundary value -1 - m3
            linear = (cos - math.cos(self._theta_max)) - 1.0 - self.m3
        return paddle.where(theta < self._theta_max, margin, linear)

    def state(self):
        return {}

    def load_state(self, state):
        pass

    def __repr__(self):
        return f"MarginLoss(m1={self.m1}, m2={self.m2}, m3={self.m3}, s={self.s})"


@LOSSES.register()
class AdaFaceLoss:
    """AdaFace (Kim et al., CVPR 2022): a margin that depends on the normalized feature norm.

    z = clip(h * (|x| - mu) / (sigma + eps), -1, 1), mu / sigma the EMA (rate t_alpha) of the
    global batch's mean / std of feature norms; the target angle moves by -m * z (clipped to
    [eps, pi - eps]) and the target cosine then loses m + m * z.
    """

    uses_norms = True
    eps = 1e-3

    def __init__(self, m=0.4, h=0.333, s=64.0, t_alpha=0.01, weight=1.0):
        _check("AdaFaceLoss.m", m, 0.0, 2.0, "m must be in [0, 2]")
        _check("AdaFaceLoss.h", h, 0.0, 10.0, "h must be in [0, 10]")
        _check("AdaFaceLoss.s", s, 1e-3, 1e4, "s (scale) must be positive")
        _check("AdaFaceLoss.t_alpha", t_alpha, 0.0, 1.0, "t_alpha must be in [0, 1]")
        self.m, self.h, self.s, self.t_alpha = float(m), float(h), float(s), float(t_alpha)
        self.weight = float(weight)
        # AdaFace's initial EMA values; device tensors, so the update needs no host read
        self.batch_mean = paddle.full([1], 20.0, dtype="float32")
        self.batch_std = paddle.full([1], 100.0, dtype="float32")

    @paddle.no_grad()
    def update_stats(self, norms):
        """EMA of the mean / unbiased std of the (global batch's) feature norms, on the device."""
        safe = paddle.clip(norms.detach(), 0.001, 100.0)
        n = safe.shape[0]
        mean = safe.mean().reshape([1])
        # unbiased std written out: paddle.std reads a tensor back to check the degrees of freedom
        std = (paddle.sqrt(paddle.square(safe - mean).sum() / (n - 1)).reshape([1]) if n > 1
               else paddle.zeros([1], dtype="float32"))
        a = self.t_alpha
        self.batch_mean = mean * a + self.batch_mean * (1 - a)
        self.batch_std = std * a + self.batch_std * (1 - a)

    def target_logits(self, cos, norms):
        safe = paddle.clip(norms.detach(), 0.001, 100.0)
        z = paddle.clip((safe - self.batch_mean) / (self.batch_std + self.eps) * self.h, -1.0, 1.0)
        theta = paddle.acos(paddle.clip(cos, -1.0 + self.eps, 1.0 - self.eps))
        theta_m = paddle.clip(theta - self.m * z, self.eps, math.pi - self.eps)
        return paddle.cos(theta_m) - (self.m + self.m * z)

    def state(self):
        return {"adaface_batch_mean": self.batch_mean.item(), "adaface_batch_std": self.batch_std.item()}

    def load_state(self, state):
        if "adaface_batch_mean" in state:
            self.batch_mean = paddle.full([1], float(state["adaface_batch_mean"]), dtype="float32")
            self.batch_std = paddle.full([1], float(state["adaface_batch_std"]), dtype="float32")

    def __repr__(self):
        return f"AdaFaceLoss(m={self.m}, h={self.h}, s={self.s}, t_alpha={self.t_alpha})"
