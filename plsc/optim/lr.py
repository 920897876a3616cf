"""Learning-rate schedules: pure functions of the optimizer step, so resuming needs no state.

Every schedule has a linear warmup (warmup_steps, or warmup_epochs x steps_per_epoch) from
warmup_start_lr to learning_rate, then decays over the remaining steps. With decay_unit
"epoch" the decay part advances once per epoch (warmup stays per step).
"""
import math

from plsc.errors import ConfigError
from plsc.registry import LR_SCHEDULERS


class LRSchedule:
    def __init__(self, learning_rate=0.1, steps_per_epoch=1, epochs=1, decay_unit="step", warmup_steps=0,
                 warmup_epochs=0, warmup_start_lr=0.0):
        if decay_unit not in ("step", "epoch"):
            raise ConfigError(f"LRScheduler.decay_unit: '{decay_unit}' is not one of ['step', 'epoch']")
        if warmup_steps and warmup_epochs:
            raise ConfigError("LRScheduler: set warmup_steps or warmup_epochs, not both")
        if learning_rate < 0:
            raise ConfigError(f"LRScheduler.learning_rate must be >= 0, got {learning_rate}")
        self.base_lr = float(learning_rate)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.epochs = int(epochs)
        self.decay_unit = decay_unit
        self.warmup_steps = int(warmup_steps) or int(round(float(warmup_epochs) * self.steps_per_epoch))
        self.warmup_start_lr = float(warmup_start_lr)
        self.total_steps = self.epochs * self.steps_per_epoch

    def __call__(self, step):
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * frac
        if self.decay_unit == "step":
            t, total = step - self.warmup_steps, self.total_steps - self.warmup_steps
        else:
            warm_epochs = self.warmup_steps / self.steps_per_epoch
            t, total = step // self.steps_per_epoch - warm_epochs, self.epochs - warm_epochs
        return self.decay(max(0.0, t), max(1e-12, total))

    def decay(self, t, total):
        raise NotImplementedError


@LR_SCHEDULERS.register()
class Constant(LRSchedule):
    def decay(self, t, total):
        return self.base_lr


@LR_SCHEDULERS.register()
class Poly(LRSchedule):
    """lr = (base - end_lr) * (1 - t/T)^power + end_lr."""

    def __init__(self, power=1.0, end_lr=0.0, **kw):
        super().__init__(**kw)
        self.power, self.end_lr = float(power), float(end_lr)

    def decay(self, t, total):
        frac = min(1.0, t / total)
        return (self.base_lr - self.end_lr) * (1.0 - frac) ** self.power + self.end_lr


@LR_SCHEDULERS.register()
class Cosine(LRSchedule):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * t/T)) / 2."""

    def __init__(self, eta_min=0.0, **kw):
        super().__init__(**kw)
        self.eta_min = float(eta_min)

    def decay(self, t, total):
        frac = min(1.0, t / total)
        return self.eta_min + (self.base_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * frac))


@LR_SCHEDULERS.register()
class Step(LRSchedule):
    """lr = base * gamma^floor(t / step_size); t counts decay units after warmup."""

    def __init__(self, step_size=10, gamma=0.1, **kw):
        super().__init__(**kw)
        if step_size <= 0:
            raise ConfigError(f"LRScheduler.step_size must be > 0, got {step_size}")
        self.step_size, self.gamma = step_size, float(gamma)

    def decay(self, t, total):
        return self.base_lr * self.gamma ** int(t // self.step_size)


@LR_SCHEDULERS.register()
class MultiStep(LRSchedule):
    """lr = base * gamma^(number of milestones <= t); milestones in decay units (e.g. epochs [12, 20, 24])."""

    def __init__(self, milestones=(), gamma=0.1, **kw):
        super().__init__(**kw)
        if list(milestones) != sorted(milestones):
            raise ConfigError(f"LRScheduler.milestones must be increasing, got {list(milestones)}")
        self.milestones, self.gamma = list(milestones), float(gamma)

    def __call__(self, step):
        if step < self.warmup_steps:
            return super().__call__(step)
        t = step if self.decay_unit == "step" else step // self.steps_per_epoch
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if t >= m)


def build_lr_schedule(cfg, steps_per_epoch, epochs):
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return LR_SCHEDULERS.build(cfg["name"], steps_per_epoch=steps_per_epoch, epochs=epochs, **kwargs)
