"""LR schedules give the expected values at chosen steps."""
import math

import pytest

from plsc.errors import ConfigError
from plsc.optim.lr import build_lr_schedule


def sched(**cfg):
    spe, epochs = cfg.pop("steps_per_epoch", 10), cfg.pop("epochs", 10)
    return build_lr_schedule(cfg, spe, epochs)


def test_poly_with_warmup_steps():
    s = sched(name="Poly", learning_rate=0.1, warmup_steps=10, power=2.0, decay_unit="step")
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.05)
    assert s(10) == pytest.approx(0.1)
    # halfway through the 90 decay steps: 0.1 * 0.5^2
    assert s(55) == pytest.approx(0.1 * 0.25)
    assert s(100) == pytest.approx(0.0)


def test_poly_power_one_and_epoch_unit():
    s = sched(name="Poly", learning_rate=0.2, decay_unit="epoch", power=1.0)
    assert s(0) == pytest.approx(0.2)
    assert s(9) == pytest.approx(0.2)          # still epoch 0
    assert s(10) == pytest.approx(0.2 * 0.9)   # epoch 1
    assert s(55) == pytest.approx(0.2 * 0.5)


def _plsc_poly(t, lr, epochs, spe, unit, warmup_steps=0, warmup_epochs=0, start=0.0, end=0.0):
    """PLSC v2.4's Poly (plsc/scheduler/lr_scheduler.py), written out: power 2, warmup to warmup_end_lr."""
    if unit == "step":
        total = epochs * spe
        warm = warmup_epochs * spe if (warmup_steps == 0 and warmup_epochs > 0) else warmup_steps
    else:
        total, warm = epochs, warmup_epochs
    if t < warm:
        return (end - start) * t / warm + start
    return lr * (1 - (t - warm) / (total - warm)) ** 2


@pytest.mark.parametrize("cfg", [
    # the published PLSC face configs' schedules (IResNet50 / IResNet100, MobileFaceNet, FaceViT) and epoch units
    dict(learning_rate=0.1, decay_unit="step", warmup_steps=0),
    dict(learning_rate=0.1, decay_unit="step", warmup_steps=2, warmup_start_lr=0.0, warmup_end_lr=0.1),
    dict(learning_rate=0.001, decay_unit="step", warmup_epochs=4, warmup_start_lr=1e-6, warmup_end_lr=0.001),
    dict(learning_rate=0.4, decay_unit="step", warmup_epochs=2, warmup_end_lr=0.4),
    dict(learning_rate=0.1, decay_unit="epoch", warmup_epochs=1, warmup_end_lr=0.1),
])
def test_poly_equals_plscs_formula_at_every_step(cfg):
    spe, epochs = 7, 5
    s = sched(name="Poly", steps_per_epoch=spe, epochs=epochs, **cfg)
    for step in range(spe * epochs):
        t = step if cfg["decay_unit"] == "step" else step // spe
        want = _plsc_poly(t, cfg["learning_rate"], epochs, spe, cfg["decay_unit"], cfg.get("warmup_steps", 0),
                          cfg.get("warmup_epochs", 0), cfg.get("warmup_start_lr", 0.0), cfg.get("warmup_end_lr", 0.0))
        assert s(step) == pytest.approx(want, rel=1e-12, abs=1e-15), step


def test_plscs_step_is_piecewise_and_default_unit_is_epoch():
    s = sched(name="Step", boundaries=[10, 16, 22], values=[0.2, 0.02, 0.002, 0.0002], steps_per_epoch=3, epochs=25)
    assert s.decay_unit == "epoch"
    assert [s(e * 3) for e in (0, 9, 10, 15, 16, 21, 22, 24)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002])
    assert s(3 * 10 - 1) == pytest.approx(0.2)  # constant within an epoch
    with pytest.raises(ConfigError, match="values have one entry more"):
        sched(name="Step", boundaries=[10, 16], values=[0.1, 0.01])
    quiet = sched(name="Poly", learning_rate=0.1, decay_unit="epoch", warmup_steps=5)
    assert len(quiet.notes) == 1 and "warmup_steps=5 has no effect" in quiet.notes[0]


def test_cosine_and_warmup_epochs():
    s = sched(name="Cosine", learning_rate=1.0, warmup_epochs=1, eta_min=0.0, decay_unit="step")
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(100) == pytest.approx(0.0, abs=1e-12)


def test_step_and_multistep():
    s = sched(name="Step", learning_rate=1.0, step_size=3, gamma=0.5, decay_unit="epoch")  # plsc's step_size form
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


def _arcface_torch_v2(step, lr, warmup, total, power=1.0):
    """arcface_torch train_v2.py: PolynomialLRWarmup(opt, warmup_step, total_step), default power 1.0, written out."""
    if step < warmup:
        return lr * step / warmup
    return lr * (1 - (step - warmup) / (total - warmup)) ** power


def test_the_zoo_poly_schedule_is_arcface_torchs_train_v2_schedule():
    """docs/from_peers.md's arcface_torch row: `LRScheduler: {name: Poly, power: 1.0, decay_unit: step,
    warmup_epochs: N}` with `Global.epochs` gives train_v2.py's learning rate at every step."""
    from plsc.config import load_config
    import os

    zoo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "ms1mv3",
                       "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml")
    spe, epochs = 9, 4
    cfg = dict(load_config(zoo, ["LRScheduler.warmup_epochs=1"])["LRScheduler"])
    assert cfg["power"] == 1.0
    s = sched(steps_per_epoch=spe, epochs=epochs, **cfg)
    for step in range(spe * epochs):
        assert s(step) == pytest.approx(_arcface_torch_v2(step, 0.1, spe, spe * epochs), rel=1e-12, abs=1e-15), step
