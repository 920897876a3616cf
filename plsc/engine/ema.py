"""EMA section: an exponential moving average of the backbone's trainable weights.

    shadow = d * shadow + (1 - d) * weight      after every optimizer update
    d = min(decay, (1 + n) / (10 + n))          with thres_steps (n = updates so far), else decay

as PLSC's ExponentialMovingAverage defines it (PLSC's face loop never calls its update; plsc does).
Shadows are fp32 (also under FP16 O2) and live next to the weights on the device. They are saved
as `ema.npz` in every checkpoint and restored on resume; with the EMA section present, plsc-eval and
plsc-export use them instead of the raw weights, and `EMA.ema_eval` also evaluates them while
training. BatchNorm running statistics are not averaged: the EMA model uses the live ones.
"""
import contextlib

import numpy as np
import paddle

from plsc.errors import ConfigError


class BackboneEMA:
    def __init__(self, backbone, decay=0.9999, thres_steps=True):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA.decay must be in [0, 1), got {decay}")
        self.decay, self.thres_steps = float(decay), bool(thres_steps)
        self.params = averaged_params(backbone)
        self.updates = 0
        self.reset()

    def reset(self):
        """Shadows = the current weights (at the start, and after loading pretrained weights)."""
        with paddle.no_grad():
            self.shadow = {n: p.detach().astype("float32").clone() for n, p in self.params}
        self.updates = 0

    def rate(self):
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.thres_steps else self.decay

    @paddle.no_grad()
    def update(self):
        d = self.rate()
        for n, p in self.params:
            self.shadow[n].scale_(d).add_(p.detach().astype("float32") * (1.0 - d))
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """Within the block the backbone holds the EMA weights; the raw ones are restored after."""
        saved = {n: p.detach().clone() for n, p in self.params}
        self.copy_to_backbone()
        try:
            yield
        finally:
            with paddle.no_grad():
                for n, p in self.params:
                    paddle.assign(saved[n], output=p)

    @paddle.no_grad()
    def copy_to_backbone(self):
        for n, p in self.params:
            paddle.assign(self.shadow[n].astype(p.dtype), output=p)

    # ------------------------------------------------------------------ checkpoints
    def arrays(self):
        return {n: t.numpy() for n, t in self.shadow.items()}

    def load_arrays(self, arrays, updates, source):
        _check_shadows(self.params, arrays, source)
        for n, _ in self.params:
            self.shadow[n] = paddle.to_tensor(np.asarray(arrays[n], np.float32))
        self.updates = int(updates)


def averaged_params(backbone):
    """[(name, parameter)] the average covers: the backbone's trained parameters."""
    return [(n, p) for n, p in backbone.named_parameters() if not p.stop_gradient]


def _check_shadows(params, arrays, source):
    missing = [n for n, _ in params if n not in arrays]
    if missing:
        raise ConfigError(f"{source}: ema.npz has no shadow for {missing[:4]} (saved from another model?)")
    for n, p in params:
        if tuple(arrays[n].shape) != tuple(p.shape):
            raise ConfigError(f"{source}: EMA shadow '{n}' has shape {list(arrays[n].shape)}, the model "
                              f"{list(p.shape)}")


@paddle.no_grad()
def load_ema_weights(backbone, arrays, source):
    """A checkpoint's EMA shadows (ema.npz) as the backbone's weights: what plsc-eval / plsc-export use when the
    config has an EMA section (no average is kept)."""
    params = averaged_params(backbone)
    _check_shadows(params, arrays, source)
    for n, p in params:
        paddle.assign(paddle.to_tensor(np.asarray(arrays[n], np.float32)).astype(p.dtype), output=p)


def build_ema(cfg, backbone):
    """BackboneEMA for an enabled EMA section, else None."""
    e = cfg.get("EMA") or {}
    if not e.get("enabled"):
        return None
    return BackboneEMA(backbone, decay=e["decay"], thres_steps=e["thres_steps"])
