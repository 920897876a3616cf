"""LR schedules give the expected values at chosen steps."""
import math

import pytest

from plsc.errors import ConfigError
from plsc.optim.lr import build_lr_schedule


def sched(**cfg):
    spe, epochs = cfg.pop("steps_per_epoch", 10), cfg.pop("epochs", 10)
    return build_lr_schedule(cfg, spe, epochs)


def test_poly_with_warmup_steps():
    s = sched(name="Poly", learning_rate=0.1, warmup_steps=10, power=2.0)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.05)
    assert s(10) == pytest.approx(0.1)
    # halfway through the 90 decay steps: 0.1 * 0.5^2
    assert s(55) == pytest.approx(0.1 * 0.25)
    assert s(100) == pytest.approx(0.0)


def test_poly_power_one_and_epoch_unit():
    s = sched(name="Poly", learning_rate=0.2, decay_unit="epoch")
    assert s(0) == pytest.approx(0.2)
    assert s(9) == pytest.approx(0.2)          # still epoch 0
    assert s(10) == pytest.approx(0.2 * 0.9)   # epoch 1
    assert s(55) == pytest.approx(0.2 * 0.5)


def test_cosine_and_warmup_epochs():
    s = sched(name="Cosine", learning_rate=1.0, warmup_epochs=1, eta_min=0.0)
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(100) == pytest.approx(0.0, abs=1e-12)


def test_step_and_multistep():
    s = sched(name="Step", learning_rate=1.0, step_size=3, gamma=0.5, decay_unit="epoch")
    assert [s(e * 10) for e in (0, 2, 3, 6)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    m = sched(name="MultiStep", learning_rate=0.1, milestones=[12, 20, 24], gamma=0.1, decay_unit="epoch",
              epochs=26)
    assert m(11 * 10) == pytest.approx(0.1)
    assert m(12 * 10) == pytest.approx(0.01)
    assert m(24 * 10 + 3) == pytest.approx(0.0001)


def test_bad_lr_settings():
    with pytest.raises(ConfigError, match="decay_unit"):
        sched(name="Poly", learning_rate=0.1, decay_unit="hour")
    with pytest.raises(ConfigError, match="milestones"):
        sched(name="MultiStep", learning_rate=0.1, milestones=[5, 2])
