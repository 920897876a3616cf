"""Dense optimizers of the backbone (Momentum, AdamW) and their sparse twins for the FC weight.

    opt, clip = build_optimizer(cfg["Optimizer"], backbone, lr, multi_precision=amp.level == "O2")
    head.set_optimizer(build_sparse_optimizer(cfg["Optimizer"], head.weight, store=head.store))  # same name, same hyper-parameters

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


def _param_groups(model, weight_decay, no_weight_decay_for_bn_bias, no_weight_decay_name=()):
    """Trainable parameters; with weight decay 0 for norm layers / 1-D parameters (no_weight_decay_for_bn_bias)
    and for parameters whose structured name contains one of no_weight_decay_name (PLSC)."""
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    if not isinstance(no_weight_decay_name, (list, tuple)) or not all(isinstance(x, str) for x in no_weight_decay_name):
        raise ConfigError(f"Optimizer.no_weight_decay_name must be a list of name substrings, got "
                          f"{no_weight_decay_name!r}")
    no_decay_ids = {id(p) for n, p in named if any(s in n for s in no_weight_decay_name)}
    if no_weight_decay_for_bn_bias:
        for layer in model.sublayers(include_self=True):
            if isinstance(layer, _NORM_LAYERS):
                no_decay_ids.update(id(p) for p in layer.parameters(include_sublayers=False))
        no_decay_ids.update(id(p) for _, p in named if p.ndim == 1)  # biases, PReLU slopes
    if not no_decay_ids:
        return [p for _, p in named]
    decay = [p for _, p in named if id(p) not in no_decay_ids]
    no_decay = [p for _, p in named if id(p) in no_decay_ids]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@OPTIMIZERS.register()
def Momentum(model, learning_rate, momentum=0.9, weight_decay=0.0, use_nesterov=False,
             no_weight_decay_for_bn_bias=False, no_weight_decay_name=(), use_master_param=True,
             multi_precision=False):
    """paddle.optimizer.Momentum with L2 weight decay (PLSC's defaults: weight_decay 0, master weights under O2),
    as Paddle's multi-tensor update (one fused kernel per parameter group; bit-identical to the per-tensor one).

    use_master_param: under FP16 O2, keep fp32 master weights (false: update the fp16 weights directly)."""
    if not 0 <= momentum < 1:
        raise ConfigError(f"Optimizer.momentum must be in [0, 1), got {momentum}")
    return paddle.optimizer.Momentum(
        learning_rate=learning_rate, momentum=momentum, use_nesterov=use_nesterov,
        parameters=_param_groups(model, weight_decay, no_weight_decay_for_bn_bias, no_weight_decay_name),
        weight_decay=float(weight_decay), multi_precision=bool(multi_precision and use_master_param),
        use_multi_tensor=True)


@OPTIMIZERS.register()
def AdamW(model, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0,
          no_weight_decay_for_bn_bias=False, no_weight_decay_name=(), use_master_param=False, multi_precision=False):
    """paddle.optimizer.AdamW (decoupled decay) with PLSC's defaults: weight decay 0 on every parameter unless
    no_weight_decay_name / no_weight_decay_for_bn_bias exclude it, fp32 master weights under O2 only with
    use_master_param (PLSC's `betas` / `eps` are translated into beta1 / beta2 / epsilon when the config loads)."""
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= value < 1:
            raise ConfigError(f"Optimizer.{name} must be in [0, 1), got {value}")
    if not epsilon >= 0:
        raise ConfigError(f"Optimizer.epsilon must be >= 0, got {epsilon}")
    params = _param_groups(model, weight_decay, no_weight_decay_for_bn_bias, no_weight_decay_name)
    return paddle.optimizer.AdamW(
        learning_rate=learning_rate, beta1=float(beta1), beta2=float(beta2), epsilon=float(epsilon),
        parameters=params, weight_decay=float(weight_decay), multi_precision=bool(multi_precision and use_master_param))


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


def build_sparse_optimizer(cfg, param, every_row=False, store=None):
    """The FC weight's optimizer: the twin of Optimizer.name (plsc.config.rules checks there is one), with the
    same hyper-parameters.

    every_row: Model.pfc_config.update_rows all (every row each step); store: the head's
    plsc.nn.storage.RowStorage (its storage dtype; None: float32)."""
    cls = SPARSE_OPTIMIZERS.get(cfg["name"])
    accepted = [k for k in inspect.signature(cls).parameters if k != "param"]
    settings = optimizer_settings(cfg)
    if any(s in name for s in settings.get("no_weight_decay_name") or () for name in ("head.weight", param.name)):
        settings["weight_decay"] = 0.0  # the classifier's structured name is head.weight (the model's head)
    kwargs = {k: settings[k] for k in accepted if k in settings}
    kwargs["every_row"] = bool(every_row)
    return cls(param, store=store, **kwargs)
