"""Whole Trainer runs that must compute the same thing, checked after 10 updated steps at 1e-5:

- 2 ranks x b images == 1 rank x 2b (paddle.DataParallel backbone, sharded or replicated FC,
  synchronized BatchNorm, clipping, Momentum / AdamW, micro-batches);
- a batch split into Global.accum_steps micro-batches == the same batch in one piece (a backbone
  without BatchNorm, whose statistics would otherwise see the micro-batches), with PartialFC sampling.

The backbones are tests/smooth_net.py (tanh, no PReLU kinks): with IResNet's kinks, runs whose sums
are merely added in another order drift chaotically (1e-7 -> 1e-3 within 10 steps), which would
hide real errors. The launched run also counts host synchronisations per step on each rank, and trains the
smoke config (IResNet, plain BatchNorm) for the check that data-parallel ranks hold identical parameters.
"""
import os
import sys

import numpy as np
import pytest

from dist_utils import launch
from test_train import SMOKE

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 10
BASE = ["Model.name=SmoothNet", "Model.arch_kwargs={}", "Model.class_num=15",
        "DataLoader.Train.dataset={name: FaceRandomDataset, num_classes: 15, num_samples: 320}",
        f"Global.max_train_step={STEPS}", "Global.save_interval=1000", "Global.save_unit=step",
        "Global.print_batch_step=3", "DistributedStrategy.sync_bn=true"]
CASES = {
    "momentum_sharded": ["Loss.Train=[{MarginLoss: {m2: 0.5, s: 32.0}}]"],
    "adamw_replicated_accum": [
        "Optimizer={name: AdamW, beta1: 0.9, beta2: 0.99, weight_decay: 0.05, grad_clip: {name: ClipGradByGlobalNorm, "
        "clip_norm: 1.0, always_clip: true, no_clip_list: [dist]}}", "LRScheduler.learning_rate=0.001",
        "Model.pfc_config.model_parallel=false", "Loss.Train=[{MarginLoss: {m3: 0.4, s: 32.0, model_parallel: false}}]",
        "Global.accum_steps=2"],
}

# the smoke config as it is (IResNet, BatchNorm without sync, DataParallel): the ranks hold identical parameters
IDENTICAL = {"smoke_iresnet": ["Global.max_train_step=3"]}

WORKER = r"""
import os, sys
from plsc.env import setup_threads; setup_threads()
sys.path.insert(0, {here!r})
import numpy as np
import smooth_net  # noqa: F401  (registers SmoothNet)
from plsc.config import load_config
from plsc.engine.engine import Trainer
from plsc.tools.step_cost import StepCost


def run(out, overrides):
    e = Trainer(load_config({smoke!r}, [f"Global.output_dir={{out}}", *overrides]))
    losses, syncs = [], []
    step, after = e.train_step, e._after_step

    def counted(batch):
        with StepCost() as c:
            loss = step(batch)
        syncs.append(c.syncs)
        losses.append(loss)
        return loss

    def counted_after(loss, timer):
        with StepCost() as c:
            after(loss, timer)
        syncs[-1] += c.syncs

    e.train_step, e._after_step = counted, counted_after
    e.train()
    params = {{n: p.numpy() for n, p in e.backbone.named_parameters()}}
    np.savez(os.path.join(out, f"w{{e.world_size}}_r{{e.rank}}.npz"), losses=np.array([x.item() for x in losses]),
             syncs=np.array(syncs), fc=e.head.weight.numpy(), start=e.head.start,
             **{{"p." + k: v for k, v in params.items()}})


if __name__ == "__main__":
    import json
    cases = json.loads(sys.argv[2])
    for name, overrides in cases.items():
        out = os.path.join(sys.argv[1], name)
        os.makedirs(out, exist_ok=True)
        run(out, overrides)
"""


def _worker(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER.format(here=HERE, smoke=SMOKE))
    sys.path.insert(0, str(tmp_path))
    return path


def _close_params(a, b, tol=1e-5):
    """Every parameter within tol of its largest magnitude (floor 1e-3: a bias right before a BatchNorm
    has zero gradient in theory and holds only rounding noise around 0)."""
    for k in a.files:
        if k.startswith("p."):
            scale = max(float(np.abs(a[k]).max()), 1e-3)
            assert np.abs(a[k] - b[k]).max() <= tol * scale, (k, np.abs(a[k] - b[k]).max(), scale)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    import json

    tmp = tmp_path_factory.mktemp("eq")
    worker = _worker(tmp)
    cases = {k: BASE + v + ["DataLoader.Train.sampler.batch_size=8"] for k, v in CASES.items()}
    launch([worker, tmp, json.dumps({**cases, **IDENTICAL})], nproc=2, log_dir=tmp / "log")
    return tmp, worker


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_equal_one_rank_after_ten_steps(two_rank_runs, case, tmp_path):
    tmp, worker = two_rank_runs
    import importlib

    mod = importlib.import_module(worker.stem)
    mod.run(str(tmp_path), BASE + CASES[case] + ["DataLoader.Train.sampler.batch_size=16"])
    one = np.load(tmp_path / "w1_r0.npz")
    two = [np.load(tmp / case / f"w2_r{r}.npz") for r in range(2)]
    assert len(one["losses"]) == STEPS
    for r in range(2):
        np.testing.assert_allclose(two[r]["losses"], one["losses"], rtol=1e-5)
        _close_params(one, two[r])
        assert two[r]["syncs"].max() <= 3, two[r]["syncs"]  # host reads per step, on every rank
    fc = np.concatenate([t["fc"] for t in two]) if "sharded" in case else two[0]["fc"]
    np.testing.assert_allclose(fc, one["fc"], rtol=0, atol=1e-5 * np.abs(one["fc"]).max())
    if "replicated" in case:
        assert np.array_equal(two[0]["fc"], two[1]["fc"]), "a replicated FC stays identical on every rank"


def test_ranks_hold_identical_params_after_steps(two_rank_runs):
    """Data parallel: after 3 steps of the smoke config every backbone parameter is the same on both ranks,
    to the bit (each rank saved its own; checked in the launch of the equivalence runs)."""
    tmp, _ = two_rank_runs
    r0, r1 = (np.load(tmp / "smoke_iresnet" / f"w2_r{r}.npz") for r in range(2))
    assert len(r0["losses"]) == len(r1["losses"]) == 3
    params = [k for k in r0.files if k.startswith("p.")]
    assert params and set(params) == {k for k in r1.files if k.startswith("p.")}
    for k in params:
        assert np.array_equal(r0[k], r1[k]), f"ranks diverged: {k}"


def test_micro_batches_equal_one_batch_after_ten_steps(tmp_path):
    worker = _worker(tmp_path)
    import importlib

    mod = importlib.import_module(worker.stem)
    common = [o for o in BASE if "sync_bn" not in o] + [
        "Model.name=SmoothNetNoBN", "Model.pfc_config.sample_ratio=0.5", "DataLoader.Train.sampler.batch_size=12",
        "Optimizer.grad_clip={name: ClipGradByGlobalNorm, clip_norm: 2.0, no_clip_list: [dist]}"]
    mod.run(str(tmp_path / "whole"), common)
    mod.run(str(tmp_path / "micro"), common + ["Global.accum_steps=3"])
    whole, micro = (np.load(tmp_path / d / "w1_r0.npz") for d in ("whole", "micro"))
    np.testing.assert_allclose(micro["losses"], whole["losses"], rtol=1e-5)
    _close_params(whole, micro)
    np.testing.assert_allclose(micro["fc"], whole["fc"], rtol=0, atol=1e-5 * np.abs(whole["fc"]).max())
    assert micro["syncs"].max() <= 3
