"""Faults: non-finite steps are skipped, counted and bounded; a stalled or killed rank ends the job."""
import os
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest

import procs
from dist_utils import free_port, rank_logs  # noqa: F401
from plsc.config import load_config
from plsc.errors import PlscError
from test_train import SMOKE, losses, plsc


def _engine(tmp_path, *overrides):
    from plsc.engine.engine import Trainer

    return Trainer(load_config(SMOKE, [f"Global.output_dir={tmp_path}", *overrides]))


def _flat(layer):
    return np.concatenate([p.numpy().ravel() for p in layer.parameters() if not p.stop_gradient])


def test_nan_loss_and_nan_gradient_steps_are_skipped_and_counted(tmp_path):
    e = _engine(tmp_path, "Global.max_train_step=6", "Global.max_nan_skips=3")
    forward = e.backbone.forward
    bad_loss, bad_grad = {2}, {4}
    params = {}

    def poisoned(x):
        y = forward(x)
        step = e.state["global_step"] + 1
        if step in bad_loss:
            y = y * float("nan")
        if step in bad_grad:
            y.register_hook(lambda g: g * float("inf"))
        return y

    e.backbone.forward = poisoned
    step_fn = e.train_step

    def recording(micro):
        before = _flat(e.backbone), e.head.weight.numpy().copy()
        out = step_fn(micro)
        params[e.state["global_step"] + 1] = (before, (_flat(e.backbone), e.head.weight.numpy().copy()))
        return out

    e.train_step = recording
    state = e.train()
    assert state["global_step"] == 6 and state["skipped_steps"] == 2
    for step in (2, 4):  # skipped: neither the backbone nor the FC moved
        (b0, w0), (b1, w1) = params[step]
        assert np.array_equal(b0, b1) and np.array_equal(w0, w1), step
    (b0, _), (b1, _) = params[3]
    assert not np.array_equal(b0, b1)
    log = (tmp_path / "IResNet18" / "train.log").read_text()
    assert "step 2: non-finite loss (nan)" in log and "step 4: non-finite loss" in log
    assert "(2 skipped so far" in log


def test_consecutive_non_finite_steps_stop_with_a_checkpoint(tmp_path):
    e = _engine(tmp_path, "Global.max_train_step=20", "Global.max_nan_skips=3")
    forward = e.backbone.forward
    e.backbone.forward = lambda x: forward(x) * (float("nan") if e.state["global_step"] >= 2 else 1.0)
    with pytest.raises(PlscError, match=r"3 consecutive steps had a non-finite loss or gradient \(last at step 5\)"):
        e.train()
    from plsc.io import checkpoint as ckpt

    saved = ckpt.load_json(str(tmp_path / "IResNet18" / "latest" / "state.json"))
    assert saved["train_state"]["global_step"] == 5 and saved["train_state"]["skipped_steps"] == 3


def _rank_pid(launcher_pid, rank):
    for child in procs.children(launcher_pid):
        try:
            env = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"PADDLE_TRAINER_ID={rank}".encode() in env:
            return child
    return None


def test_stalled_rank_ends_the_job_naming_it(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(
        "import time\n"
        "from plsc.env import setup_threads; setup_threads()\n"
        "from plsc.config import load_config\n"
        "from plsc.engine.engine import Trainer\n"
        f"cfg = load_config({SMOKE!r}, ['Global.output_dir={tmp_path / 'o'}', 'Global.max_train_step=6',\n"
        "                               'DistributedStrategy.collective_timeout=5'])\n"
        "e = Trainer(cfg)\n"
        "after = e._after_step\n"
        "def stuck(loss, timer):\n"
        "    after(loss, timer)\n"
        "    if e.rank == 1 and e.state['global_step'] == 2:\n"
        "        time.sleep(3600)  # a rank stuck on I/O between steps\n"
        "e._after_step = stuck\n"
        "e.train()\n")
    # without the watchdog rank 0 would wait for rank 1 for an hour: the timeout only guards against that hang
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                           str(tmp_path / "log"), str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    log0 = (tmp_path / "log" / "workerlog.0").read_text()
    assert "waited more than 5s in train step 3" in log0 and "rank(s) 1 stopped responding" in log0, log0[-3000:]


def test_killed_rank_ends_the_job_and_rerun_resumes(tmp_path):
    out = tmp_path / "o"
    args = ["plsc-train", "-c", SMOKE, "-o", f"Global.output_dir={out}", "-o", "Global.epochs=50",
            "-o", "Global.save_unit=step", "-o", "Global.save_interval=3",
            "-o", "DistributedStrategy.collective_timeout=20", "-o", "DataLoader.Train.loader.num_workers=2"]
    proc = subprocess.Popen([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                             "--log_dir", str(tmp_path / "log"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log0 = tmp_path / "log" / "workerlog.0"
    try:
        procs.wait_until(lambda: max((losses(log0.read_text()) if log0.exists() else {}) or [0]) >= 7, 600,
                         "rank 0 to log step 7")
        victim = procs.wait_until(lambda: _rank_pid(proc.pid, 1), 60, "the rank 1 process")
        # both DataLoader workers of rank 1 are running (they start with the epoch; wait, don't sample)
        procs.wait_until(lambda: len(procs.children(victim)) == 2, 60, "rank 1's 2 DataLoader workers")
        os.kill(victim, signal.SIGKILL)
        killed_at = max(losses(log0.read_text()))
        # the watchdog (collective_timeout 20 s) ends the job; the timeout only guards against a hang
        proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            procs.kill_all([proc.pid, *procs.descendants(proc.pid)])
            proc.communicate()
    assert proc.returncode != 0
    procs.wait_until(lambda: not procs.descendants(), 60, "every process of the killed run to end")
    from plsc.io import checkpoint as ckpt

    saved = ckpt.load_json(str(out / "IResNet18" / "latest" / "state.json"))["train_state"]["global_step"]
    assert killed_at - saved <= 3 + 1  # at most one save interval (+ the step in flight) lost
    rerun = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'r'}", "-o",
                 f"Global.checkpoint={out / 'IResNet18' / 'latest'}", "-o", f"Global.max_train_step={saved + 2}")
    assert sorted(losses(rerun.stdout)) == [saved + 1, saved + 2]
