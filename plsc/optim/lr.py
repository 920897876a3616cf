"""Learning-rate schedules: pure functions of the optimizer step, so resuming needs no state.

PLSC's meaning of every key (plsc/scheduler/lr_scheduler.py of PLSC v2.4):

    decay_unit step    t = optimizer step (0-based), T = epochs x steps_per_epoch,
                       W = warmup_steps, or warmup_epochs x steps_per_epoch when warmup_steps is 0
    decay_unit epoch   t = epoch (0-based; the rate is constant within an epoch), T = epochs,
                       W = warmup_epochs (warmup_steps has no effect: warned)
    warmup (t < W)     warmup_start_lr + (warmup_end_lr - warmup_start_lr) * t / W
                       (warmup_end_lr: learning_rate when not set; PLSC's configs always set it)
    Poly               (learning_rate - end_lr) * (1 - (t - W) / (T - W)) ** power + end_lr, power 2
    Step               PLSC: {boundaries, values}: values[i] for the first boundary b_i > t, else the
                       last value (boundaries in decay units); or {step_size, gamma}: lr * gamma^((t - W) // size)
    MultiStep          learning_rate * gamma^(number of milestones <= t)
    Cosine             eta_min + (learning_rate - eta_min) * (1 + cos(pi * (t - W) / (T - W))) / 2
    Constant           learning_rate after the warmup

The default decay_unit is epoch, PLSC's. PLSC's `last_epoch` (-1 only) and `verbose` are handled when the
config loads (plsc/config/plsc_compat.py); a resumed run continues from Global.checkpoint.
"""
import math

from plsc.errors import ConfigError
from plsc.registry import LR_SCHEDULERS


class LRSchedule:
    def __init__(self, learning_rate=0.1, steps_per_epoch=1, epochs=1, decay_unit="epoch", warmup_steps=0,
                 warmup_epochs=0, warmup_start_lr=0.0, warmup_end_lr=None):
        if decay_unit not in ("step", "epoch"):
            raise ConfigError(f"LRScheduler.decay_unit: '{decay_unit}' is not one of ['step', 'epoch']")
        if learning_rate is None or learning_rate < 0:
            raise ConfigError(f"LRScheduler.learning_rate must be >= 0, got {learning_rate}")
        if warmup_steps < 0 or warmup_epochs < 0:
            raise ConfigError("LRScheduler.warmup_steps / warmup_epochs must be >= 0")
        self.notes = []  # keys that have no effect here (the engine logs them)
        self.base_lr = float(learning_rate)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.epochs = int(epochs)
        self.decay_unit = decay_unit
        if decay_unit == "step":
            if warmup_steps and warmup_epochs:
                self.notes.append(f"LRScheduler.warmup_epochs={warmup_epochs} has no effect: warmup_steps="
                                  f"{warmup_steps} is set (PLSC uses warmup_steps then)")
            self.warmup = float(warmup_steps) if warmup_steps else float(warmup_epochs) * self.steps_per_epoch
            self.total = float(self.epochs * self.steps_per_epoch)
        else:
            if warmup_steps:
                self.notes.append(f"LRScheduler.warmup_steps={warmup_steps} has no effect with decay_unit epoch "
                                  f"(warmup is warmup_epochs={warmup_epochs}, in epochs, as in PLSC)")
            self.warmup, self.total = float(warmup_epochs), float(self.epochs)
        self.warmup_start_lr = float(warmup_start_lr)
        self.warmup_end_lr = self.base_lr if warmup_end_lr is None else float(warmup_end_lr)

    def t_of(self, step):
        return float(step) if self.decay_unit == "step" else float(step // self.steps_per_epoch)

    def __call__(self, step):
        """Learning rate of optimizer step `step` (0-based)."""
        t = self.t_of(step)
        if t < self.warmup:
            return self.warmup_start_lr + (self.warmup_end_lr - self.warmup_start_lr) * t / self.warmup
        return self.decay(t)

    def progress(self, t):
        """(t - W) / (T - W) clipped to [0, 1]."""
        return min(1.0, max(0.0, (t - self.warmup) / max(1e-12, self.total - self.warmup)))

    def decay(self, t):
        raise NotImplementedError


@LR_SCHEDULERS.register()
class Constant(LRSchedule):
    def decay(self, t):
        return self.base_lr


@LR_SCHEDULERS.register()
class Poly(LRSchedule):
    def __init__(self, power=2.0, end_lr=0.0, **kw):
        super().__init__(**kw)
        self.power, self.end_lr = float(power), float(end_lr)

    def decay(self, t):
        return (self.base_lr - self.end_lr) * (1.0 - self.progress(t)) ** self.power + self.end_lr


@LR_SCHEDULERS.register()
class Cosine(LRSchedule):
    def __init__(self, eta_min=0.0, **kw):
        super().__init__(**kw)
        self.eta_min = float(eta_min)

    def decay(self, t):
        return self.eta_min + (self.base_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * self.progress(t)))


@LR_SCHEDULERS.register()
class Step(LRSchedule):
    def __init__(self, boundaries=None, values=None, step_size=None, gamma=0.1, learning_rate=None, **kw):
        piecewise = boundaries is not None or values is not None
        if piecewise:
            if boundaries is None or values is None or step_size is not None:
                raise ConfigError("LRScheduler Step: give boundaries and values (PLSC's piecewise schedule), or "
                                  "step_size and gamma")
            if len(values) != len(boundaries) + 1 or list(boundaries) != sorted(boundaries):
                raise ConfigError(f"LRScheduler Step: boundaries must increase and values have one entry more "
                                  f"(got {list(boundaries)} and {list(values)})")
            learning_rate = values[0] if learning_rate is None else learning_rate
        elif step_size is None or step_size <= 0:
            raise ConfigError(f"LRScheduler.step_size must be > 0, got {step_size}")
        super().__init__(learning_rate=0.1 if learning_rate is None else learning_rate, **kw)
        self.boundaries = None if not piecewise else [float(b) for b in boundaries]
        self.values = None if not piecewise else [float(v) for v in values]
        self.step_size, self.gamma = step_size, float(gamma)

    def decay(self, t):
        if self.boundaries is not None:
            for b, v in zip(self.boundaries, self.values):
                if t < b:
                    return v
            return self.values[-1]
        return self.base_lr * self.gamma ** int((t - self.warmup) // self.step_size)


@LR_SCHEDULERS.register()
class MultiStep(LRSchedule):
    def __init__(self, milestones=(), gamma=0.1, **kw):
        super().__init__(**kw)
        if list(milestones) != sorted(milestones):
            raise ConfigError(f"LRScheduler.milestones must be increasing, got {list(milestones)}")
        self.milestones, self.gamma = list(milestones), float(gamma)

    def decay(self, t):
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if t >= m)


def build_lr_schedule(cfg, steps_per_epoch, epochs):
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return LR_SCHEDULERS.build(cfg["name"], steps_per_epoch=steps_per_epoch, epochs=epochs, **kwargs)
