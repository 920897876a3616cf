"""What every backbone shares: option checking, the input check, the layout switch, the fp32 neck
and per-block recompute that does not update BatchNorm statistics twice.

    opts = parse_options("IResNet50", kwargs, arch_defaults={"layers": [...], "widths": [...]})
    class MyNet(Backbone):
        def forward(self, x):
            x = self.enter(x)                      # checks [N,3,112,112]; NCHW -> NHWC if asked
            for blk in self.blocks: x = self.run_block(blk, x)   # recompute when enabled
            return self.run_neck(self._neck, x)    # fp32, autocast off
"""
import paddle
from paddle import nn

from plsc.errors import ConfigError

INPUT_SIZE = 112
DATA_FORMATS = ("NCHW", "NHWC")
COMMON_OPTIONS = ("num_features", "data_format", "dropout", "recompute", "arch_kwargs")
VIT_OPTIONS = ("mask_ratio", "drop_path_rate")


def _fraction(name, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"Model.{key}: {value!r} for {name} is not a number")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"Model.{key}: {value} for {name} must be in [0, 1)")
    return float(value)


def _positive_int(name, key, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"Model.{key}: {value!r} for {name} must be a positive integer")
    return value


def parse_options(name, kwargs, arch_defaults, vit_defaults=None):
    """Validate builder kwargs. Returns a dict with the common options, the ViT options (when
    vit_defaults is given) and 'arch' (arch_defaults overridden by arch_kwargs). Unknown kwargs,
    unknown arch_kwargs keys and ViT-only keys on a CNN raise ConfigError naming the key."""
    kwargs = dict(kwargs)
    valid = COMMON_OPTIONS + (VIT_OPTIONS if vit_defaults is not None else ())
    for key in kwargs:
        if key in VIT_OPTIONS and vit_defaults is None:
            raise ConfigError(f"Model.{key} is a FaceViT option; {name} does not take it (remove Model.{key})")
        if key not in valid:
            raise ConfigError(f"Model: unknown option '{key}' for {name}; valid: {', '.join(valid)}")
    out = {
        "num_features": _positive_int(name, "num_features", kwargs.get("num_features", 512)),
        "dropout": _fraction(name, "dropout", kwargs.get("dropout", 0.0)),
        "recompute": _recompute_option(kwargs.get("recompute", False)),
    }
    fmt = kwargs.get("data_format", "NCHW")
    if fmt not in DATA_FORMATS:
        raise ConfigError(f"Model.data_format: '{fmt}' for {name} is not one of {', '.join(DATA_FORMATS)}")
    out["data_format"] = fmt
    if vit_defaults is not None:
        for key in VIT_OPTIONS:
            value = kwargs.get(key)
            out[key] = vit_defaults[key] if value is None else _fraction(name, key, value)
    arch_kwargs = kwargs.get("arch_kwargs") or {}
    if not isinstance(arch_kwargs, dict):
        raise ConfigError(f"Model.arch_kwargs: {arch_kwargs!r} for {name} is not a mapping")
    for key in arch_kwargs:
        if key not in arch_defaults:
            raise ConfigError(f"Model.arch_kwargs: unknown key '{key}' for {name}; valid: {', '.join(arch_defaults)}")
    out["arch"] = {**arch_defaults, **arch_kwargs}
    return out


def _recompute_option(value):
    """DistributedStrategy.recompute: true / false, or PLSC's {layerlist_interval: k, names: [...]}."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict) or set(value) - {"layerlist_interval", "names"}:
        raise ConfigError(f"DistributedStrategy.recompute: expected true / false or {{layerlist_interval: k, names: "
                          f"[stage names]}}, got {value!r}")
    interval = value.get("layerlist_interval", 1)
    names = value.get("names", [])
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ConfigError(f"DistributedStrategy.recompute.layerlist_interval must be an integer >= 1, got {interval!r}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"DistributedStrategy.recompute.names must be a list of names, got {names!r}")
    return {"layerlist_interval": interval, "names": list(names)}


def int_list(name, key, value, length):
    """A list of `length` positive ints (arch_kwargs entries such as layers / widths)."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ConfigError(f"Model.arch_kwargs.{key}: {value!r} for {name} must be a list of {length} positive integers")
    for v in value:
        _positive_int(name, f"arch_kwargs.{key}", v)
    return [int(v) for v in value]


def check_int(name, key, value):
    return _positive_int(name, f"arch_kwargs.{key}", value)


class Backbone(nn.Layer):
    """Base class: data layout, input check, recompute and the fp32 neck.

    recompute (DistributedStrategy.recompute): true recomputes every block in backward; PLSC's
    {layerlist_interval: k, names: [...]} recomputes every k-th block of the backbone's block lists
    (the LayerList `blocks` of FaceViT / MobileFaceNet) and each direct child named in `names` as one
    unit (e.g. IResNet's layer1 .. layer4), as PLSC's recompute_warp does."""

    def __init__(self, name, data_format="NCHW", recompute=False):
        super().__init__()
        self.model_name = name
        self.data_format = data_format
        self.recompute = recompute
        self._recompute_names = recompute["names"] if isinstance(recompute, dict) else []

    def fp32_layers(self):
        """Sublayers that must stay fp32 under FP16 O2 (paddle.amp.decorate excluded_layers)."""
        raise NotImplementedError

    def enter(self, x):
        """Check the input is [N, 3, 112, 112] (NCHW RGB) and switch to the compute layout."""
        shape = list(x.shape)
        if len(shape) != 4 or shape[1] != 3 or shape[2] != INPUT_SIZE or shape[3] != INPUT_SIZE:
            raise ConfigError(
                f"{self.model_name} expects images of shape [N, 3, {INPUT_SIZE}, {INPUT_SIZE}] (NCHW RGB, "
                f"{INPUT_SIZE}x{INPUT_SIZE} expected), got {shape}; check the transforms / Export.input_shape")
        if self.data_format == "NHWC":
            x = paddle.transpose(x, [0, 2, 3, 1])
        return x

    def to_nchw(self, x):
        return paddle.transpose(x, [0, 3, 1, 2]) if self.data_format == "NHWC" else x

    def check_recompute_names(self):
        """Call at the end of __init__: every recompute name must be a direct child."""
        children = [n for n, _ in self.named_children()]
        for n in self._recompute_names:
            if n not in children:
                raise ConfigError(f"DistributedStrategy.recompute.names: {self.model_name} has no part '{n}'; its parts: "
                                  f"{', '.join(children)}")

    def _recomputing(self):
        return bool(self.recompute) and self.training and paddle.is_grad_enabled()

    def run_block(self, block, x, index=None):
        """block(x) of a block list, recomputed in backward when DistributedStrategy.recompute asks for it:
        every block (true) or, with PLSC's dict, blocks at index % layerlist_interval == 0."""
        if not self._recomputing():
            return block(x)
        if isinstance(self.recompute, dict):
            interval = self.recompute["layerlist_interval"]
            if index is None or index % interval:
                return block(x)
        from paddle.distributed.fleet.utils import recompute

        return recompute(_stats_once(block), x)

    def run_part(self, name, part, x, blocks=None):
        """A named child (a stage): recomputed as one unit when named in recompute.names; otherwise its
        blocks one by one through run_block (index=None: PLSC's interval applies to block lists only)."""
        if self._recomputing() and name in self._recompute_names:
            from paddle.distributed.fleet.utils import recompute

            return recompute(_stats_once(part), x)
        for block in (blocks if blocks is not None else part):
            x = self.run_block(block, x) if self.recompute is True else block(x)
        return x

    @staticmethod
    def run_neck(neck_fn, x):
        """The embedding neck in fp32 whatever the autocast state (O1) or the input dtype (O2)."""
        with paddle.amp.auto_cast(enable=False):
            if x.dtype != paddle.float32:
                x = x.astype("float32")
            return neck_fn(x)


_BATCH_NORMS = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm)


def _stats_once(block):
    """Wrap `block` for recompute: the first (no-grad) forward runs as usual and updates the
    BatchNorm running statistics; the re-forward during backward (grad enabled) computes the same
    batch statistics but with momentum 1.0 (paddle: running = m * running + (1 - m) * batch), so
    running stats move once per step, exactly as without recompute. (Restoring a snapshot after
    the re-forward is not possible: the running stats are saved for backward and an in-place write
    trips paddle's inplace-version check.)"""

    def run(x):
        if not paddle.is_grad_enabled():
            return block(x)
        norms = [m for m in block.sublayers(include_self=True) if isinstance(m, _BATCH_NORMS)]
        momenta = [m._momentum for m in norms]
        for m in norms:
            m._momentum = 1.0
        try:
            return block(x)
        finally:
            for m, mom in zip(norms, momenta):
                m._momentum = mom

    return run


def count_params(model):
    """Number of parameters the architecture has: every weight (trainable or frozen, like the
    IResNet feature BN scale) but not BatchNorm running statistics."""
    total = 0
    for name, p in model.named_parameters():
        if name.endswith("._mean") or name.endswith("._variance") or name in ("_mean", "_variance"):
            continue
        total += int(p.size)
    return total


class DropPath(nn.Layer):
    """Stochastic depth: drop the whole residual branch per sample with probability p (training)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        mask = paddle.floor(keep + paddle.rand(shape, dtype="float32")).astype(x.dtype)
        return x / keep * mask
