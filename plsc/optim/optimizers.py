"""Dense optimizers of the backbone (Momentum, AdamW) and their sparse twins for the FC weight.

    opt, clip = build_optimizer(cfg["Optimizer"], backbone, lr, multi_precision=amp.level == "O2")
    fc_opt = build_sparse_optimizer(cfg["Optimizer"], head.weight)   # same name, same hyper-parameters

Every dense optimizer registered here has a twin of the same name in SPARSE_OPTIMIZERS
(plsc/optim/sparse.py) that applies the same rule to the rows of the FC a step used; both get
their hyper-parameters from the one config section, with the dense builder's defaults.
Clipping (Optimizer.grad_clip) is plsc.optim.grad_step.ClipGradByGlobalNorm.
"""
import inspect

import paddle

from plsc.errors import ConfigError
from plsc.registry import GRAD_CLIPS, OPTIMIZERS, SPARSE_OPTIMIZERS

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


def build_optimizer(cfg, model, learning_rate, multi_precision=False):
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "grad_clip")}
    opt = OPTIMIZERS.build(cfg["name"], model, learning_rate, multi_precision=multi_precision, **kwargs)
    clip_cfg = cfg.get("grad_clip")
    clip = None
    if clip_cfg:
        clip = GRAD_CLIPS.build(clip_cfg["name"], **{k: v for k, v in clip_cfg.items() if k != "name"})
    return opt, clip


def optimizer_settings(cfg):
    """{hyper-parameter: value} of the configured optimizer, its builder's defaults filled in."""
    builder = OPTIMIZERS.get(cfg["name"])
    settings = {k: p.default for k, p in inspect.signature(builder).parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings.update({k: v for k, v in cfg.items() if k not in ("name", "grad_clip")})
    return settings


def build_sparse_optimizer(cfg, param):
    """The FC weight's optimizer: the twin of Optimizer.name, with the same hyper-parameters."""
    name = cfg["name"]
    if name not in SPARSE_OPTIMIZERS:
        raise ConfigError(f"Optimizer.name={name}: there is no sparse version of it for the PartialFC weight "
                          f"(sparse optimizers: {', '.join(SPARSE_OPTIMIZERS.names())})")
    cls = SPARSE_OPTIMIZERS.get(name)
    accepted = [k for k in inspect.signature(cls).parameters if k != "param"]
    settings = optimizer_settings(cfg)
    return cls(param, **{k: settings[k] for k in accepted if k in settings})
