"""Dense optimizers for the backbone (Momentum, AdamW) and global-norm gradient clipping.

The FC shards of the large-scale classifier are updated by SparseMomentum (sparse_momentum.py);
the clip below sees both, so the global norm covers every gradient that is not excluded by
`no_clip_list` (a parameter is excluded when its name contains one of the listed substrings).
"""
import paddle

from plsc.errors import ConfigError
from plsc.registry import GRAD_CLIPS, OPTIMIZERS

_NORM_LAYERS = (paddle.nn.BatchNorm, paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D,
                paddle.nn.LayerNorm, paddle.nn.GroupNorm)


def _param_groups(model, weight_decay, no_weight_decay_for_bn_bias):
    params = [p for p in model.parameters() if not p.stop_gradient]
    if not no_weight_decay_for_bn_bias:
        return params
    no_decay_ids = set()
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, _NORM_LAYERS):
            no_decay_ids.update(id(p) for p in layer.parameters(include_sublayers=False))
    no_decay_ids.update(id(p) for p in params if p.ndim == 1)  # biases, PReLU slopes
    decay = [p for p in params if id(p) not in no_decay_ids]
    no_decay = [p for p in params if id(p) in no_decay_ids]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@OPTIMIZERS.register()
def Momentum(model, learning_rate, momentum=0.9, weight_decay=5e-4, use_nesterov=False,
             no_weight_decay_for_bn_bias=False, multi_precision=False):
    if not 0 <= momentum < 1:
        raise ConfigError(f"Optimizer.momentum must be in [0, 1), got {momentum}")
    return paddle.optimizer.Momentum(
        learning_rate=learning_rate, momentum=momentum, use_nesterov=use_nesterov,
        parameters=_param_groups(model, weight_decay, no_weight_decay_for_bn_bias),
        weight_decay=float(weight_decay), multi_precision=multi_precision)


@OPTIMIZERS.register()
def AdamW(model, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.05,
          no_weight_decay_for_bn_bias=True, multi_precision=False):
    params = _param_groups(model, weight_decay, no_weight_decay_for_bn_bias)
    return paddle.optimizer.AdamW(
        learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon, parameters=params,
        weight_decay=float(weight_decay), multi_precision=multi_precision)


@GRAD_CLIPS.register()
class ClipGradByGlobalNorm:
    """Scale all clipped grads by clip_norm / max(global_norm, clip_norm).

    `no_clip_list`: substrings of parameter names left out of the norm and of the scaling (the
    reference config lists 'dist', the sharded FC). The squared norm of the FC shards is summed
    over ranks, so every rank uses the same global norm. `always_clip` is accepted for PLSC
    configs; the scaling is the same either way (a factor of 1 when the norm is below clip_norm).
    """

    def __init__(self, clip_norm=5.0, always_clip=True, no_clip_list=(), clip_norm_max=None):
        if clip_norm <= 0:
            raise ConfigError(f"Optimizer.grad_clip.clip_norm must be > 0, got {clip_norm}")
        self.clip_norm = float(clip_norm)
        self.no_clip_list = list(no_clip_list or [])

    def excluded(self, name):
        return any(s in name for s in self.no_clip_list)

    def __call__(self, replicated, sharded, all_reduce=None):
        """Clip in place. `replicated`/`sharded`: lists of (name, grad); returns the global norm."""
        rep = [g for n, g in replicated if g is not None and not self.excluded(n)]
        sh = [g for n, g in sharded if g is not None and not self.excluded(n)]
        sq = paddle.zeros([1], dtype="float32")
        for g in rep:
            sq = sq + paddle.sum(paddle.square(g.astype("float32")))
        if sh:
            sq_sh = paddle.zeros([1], dtype="float32")
            for g in sh:
                sq_sh = sq_sh + paddle.sum(paddle.square(g.astype("float32")))
            if all_reduce is not None:
                all_reduce(sq_sh)
            sq = sq + sq_sh
        norm = paddle.sqrt(sq)
        scale = self.clip_norm / paddle.maximum(norm, paddle.to_tensor(self.clip_norm, dtype="float32"))
        if scale.item() < 1.0:
            with paddle.no_grad():
                for g in rep + sh:
                    g.multiply_(scale.astype(g.dtype))
        return norm.item()


def build_optimizer(cfg, model, learning_rate, multi_precision=False):
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "grad_clip")}
    opt = OPTIMIZERS.build(cfg["name"], model, learning_rate, multi_precision=multi_precision, **kwargs)
    clip_cfg = cfg.get("grad_clip")
    clip = None
    if clip_cfg:
        clip = GRAD_CLIPS.build(clip_cfg["name"], **{k: v for k, v in clip_cfg.items() if k != "name"})
    return opt, clip
