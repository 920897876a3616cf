"""Mixed precision: the FP16 section as one policy object and one loss scaler.

    amp = AmpPolicy.from_config(cfg["FP16"], device)      # level O0 | O1 | O2, dtype float16 | bfloat16
    model, opt = amp.decorate(model, opt, excluded_layers=model.fp32_layers())   # O2: low-precision params
    with amp.autocast(): features = model(images)         # O1/O2: paddle.amp.auto_cast with the op lists
    scaler = LossScaler.from_config(cfg["FP16"])
    scaler.scale(loss).backward(); ...; scaler.update(found_inf)   # the check: plsc.optim.grad_step

What stays fp32 whatever the level: the PartialFC weight, its logits, the margin and the softmax
loss (plsc.nn computes them in fp32), BatchNorm / LayerNorm parameters and statistics, and the
embedding neck (each backbone's fp32_layers()). Under O2 the optimizer keeps fp32 master weights
(multi_precision) and the FC shard is its own fp32 master.

The scaler is plsc's own rather than paddle.amp.GradScaler because the check must cover the
sparse FC gradients too and must agree across ranks: plsc.optim.grad_step computes the verdict
for every gradient in one reduction, all-reduced, so every rank skips the same step and the scale
stays identical everywhere, at the cost of one host read per step. On CPU paddle.amp does nothing
(there are no fp16 / bf16 conv and matmul kernels): the same code runs in fp32 and says so.
"""
import warnings

import paddle

from plsc.config.rules import check_loss_scaling, check_op_lists
from plsc.errors import ConfigError


class AmpPolicy:
    def __init__(self, level="O0", dtype="float16", white_list=(), black_list=(), device="cpu"):
        if level not in ("O0", "O1", "O2"):
            raise ConfigError(f"FP16.level: '{level}' is not one of O0, O1, O2")
        if dtype not in ("float16", "bfloat16"):
            raise ConfigError(f"FP16.dtype: '{dtype}' is not one of float16, bfloat16")
        self.level, self.dtype, self.device = level, dtype, device
        self.white_list, self.black_list = list(white_list or []), list(black_list or [])
        check_op_lists(self.white_list, self.black_list)
        self.effective = level != "O0" and device != "cpu"
        if level != "O0" and device == "cpu":
            warnings.warn(f"FP16.level={level}: paddle.amp has no low-precision kernels on CPU; this run computes "
                          f"in fp32 (the policy, the loss scaler and its checks still run)", stacklevel=2)
        if self.effective:
            supported = (paddle.amp.is_float16_supported() if dtype == "float16"
                         else paddle.amp.is_bfloat16_supported())
            if not supported:
                raise ConfigError(f"FP16.dtype={dtype} is not supported on this device; use "
                                  f"{'bfloat16' if dtype == 'float16' else 'float16'} or FP16.level=O0")

    @classmethod
    def from_config(cls, fp16_cfg, device="cpu"):
        return cls(fp16_cfg["level"], fp16_cfg.get("dtype", "float16"), fp16_cfg.get("fp16_custom_white_list"),
                   fp16_cfg.get("fp16_custom_black_list"), device)

    def autocast_kwargs(self):
        """The arguments given to paddle.amp.auto_cast (what O1 / O2 run in low precision)."""
        return {"enable": self.level != "O0", "custom_white_list": set(self.white_list) or None,
                "custom_black_list": set(self.black_list) or None, "level": self.level if self.level != "O0" else "O1",
                "dtype": self.dtype}

    def autocast(self):
        return paddle.amp.auto_cast(**self.autocast_kwargs())

    def decorate(self, model, optimizer, excluded_layers=()):
        """O2: cast the model's parameters (fp32 master weights in the optimizer); O0 / O1: unchanged."""
        if self.level != "O2":
            return model, optimizer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "amp_guard can only be enabled on CUDAPlace" on CPU
            return paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=self.dtype,
                                       master_weight=True, excluded_layers=list(excluded_layers or []) or None)


class LossScaler:
    """Dynamic loss scaling with a cross-rank verdict on non-finite gradients.

    Disabled (scale 1, never changes) under O0 or with use_dynamic_loss_scaling false and
    init_loss_scaling 1; the finiteness check always runs so a NaN step is skipped at any level.
    """

    def __init__(self, init_loss_scaling=1024.0, incr_ratio=2.0, decr_ratio=0.5, incr_every_n_steps=1000,
                 decr_every_n_nan_or_inf=2, use_dynamic_loss_scaling=True, enabled=True, max_loss_scaling=2.0 ** 32):
        if not init_loss_scaling > 0:
            raise ConfigError(f"FP16.GradScaler.init_loss_scaling must be > 0, got {init_loss_scaling}")
        if not incr_ratio > 1:
            raise ConfigError(f"FP16.GradScaler.incr_ratio must be > 1, got {incr_ratio}")
        if not 0 < decr_ratio < 1:
            raise ConfigError(f"FP16.GradScaler.decr_ratio must be in (0, 1), got {decr_ratio}")
        for key, val in (("incr_every_n_steps", incr_every_n_steps), ("decr_every_n_nan_or_inf", decr_every_n_nan_or_inf)):
            if not (isinstance(val, int) and val >= 1):
                raise ConfigError(f"FP16.GradScaler.{key} must be an integer >= 1, got {val}")
        self.enabled = enabled
        self.dynamic = enabled and use_dynamic_loss_scaling
        check_loss_scaling(init_loss_scaling, max_loss_scaling)
        self.max_scale = float(max_loss_scaling)
        self.scale_value = float(init_loss_scaling) if enabled else 1.0
        self.incr_ratio, self.decr_ratio = float(incr_ratio), float(decr_ratio)
        self.incr_every, self.decr_every = incr_every_n_steps, decr_every_n_nan_or_inf
        self.good_steps = self.bad_steps = self.num_skipped = 0

    @classmethod
    def from_config(cls, fp16_cfg):
        gs = {k: v for k, v in (fp16_cfg.get("GradScaler") or {}).items() if k != "no_unscale_list"}
        return cls(enabled=fp16_cfg["level"] != "O0", **gs)

    def scale(self, loss):
        return loss * self.scale_value if self.scale_value != 1.0 else loss

    def update(self, found_inf):
        if found_inf:
            self.num_skipped += 1
        if not self.dynamic:
            return
        if found_inf:
            self.good_steps = 0
            self.bad_steps += 1
            if self.bad_steps >= self.decr_every:
                self.scale_value = max(self.scale_value * self.decr_ratio, 1.0)
                self.bad_steps = 0
        else:
            self.bad_steps = 0
            self.good_steps += 1
            if self.good_steps >= self.incr_every:
                self.scale_value = min(self.scale_value * self.incr_ratio, self.max_scale)
                self.good_steps = 0

    def state_dict(self):
        return {"scale": self.scale_value, "good_steps": self.good_steps, "bad_steps": self.bad_steps,
                "num_skipped": self.num_skipped}

    def set_state_dict(self, state):
        self.scale_value = float(state["scale"])
        self.good_steps, self.bad_steps = int(state["good_steps"]), int(state["bad_steps"])
        self.num_skipped = int(state.get("num_skipped", 0))
