"""Every setting changed for speed leaves the math unchanged, and CPU-only settings apply only to CPU runs.

- the numpy CPU route (PReLU, PartialFC rows, the device transform) vs the Paddle route (PLSC_NUMPY_ROUTE=0);
- Paddle's multi-tensor Momentum vs the per-tensor update;
- glibc allocator tuning (PLSC_MALLOC_TUNING) on and off;
- threads / MKL settings and the allocator tuning are made on CPU runs only.
"""
import os

import numpy as np
import paddle
import pytest

from plsc.config import load_config
from plsc.models.prelu import PReLU
from plsc.optim.optimizers import _param_groups
from plsc.registry import MODELS
from test_train import SMOKE, losses, plsc


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_prelu_cpu_route_equals_paddles_prelu(monkeypatch, fmt):
    rng = np.random.default_rng(0)
    shape = [6, 12, 9, 9] if fmt == "NCHW" else [6, 9, 9, 12]
    x0, g0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    slopes = rng.uniform(-0.5, 1.5, 12).astype(np.float32)
    out = {}
    for route in ("1", "0"):
        monkeypatch.setenv("PLSC_NUMPY_ROUTE", route)
        layer = PReLU(12, data_format=fmt)
        layer._weight.set_value(slopes)
        x = paddle.to_tensor(x0, stop_gradient=False)
        y = layer(x)
        (y * paddle.to_tensor(g0)).sum().backward()
        out[route] = (y.numpy(), x.grad.numpy(), layer._weight.grad.numpy())
    fast, ref = out["1"], out["0"]
    assert np.array_equal(fast[0], ref[0]) and np.array_equal(fast[1], ref[1])  # bit-identical y and dL/dx
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-5, atol=1e-6)            # dL/dw: another summation order
    assert list(PReLU(4).state_dict()) == list(paddle.nn.PReLU(4).state_dict()) == ["_weight"]


def _run(tmp_path, steps=4):
    from plsc.engine.engine import Engine

    e = Engine(load_config(SMOKE, [f"Global.output_dir={tmp_path}", f"Global.max_train_step={steps}",
                                   "Model.pfc_config.sample_ratio=0.5"]))
    seen, step = [], e.train_step
    e.train_step = lambda b: (lambda loss: (seen.append(loss.item()), loss)[1])(step(b))
    e.train()
    return np.array(seen), np.concatenate([p.numpy().ravel() for p in e.backbone.parameters()])


def test_engine_steps_equal_on_both_routes(tmp_path, monkeypatch):
    """A smoke run (PReLU, PartialFC sampling and rows, sparse momentum) on the numpy route and on the Paddle
    route: the same rows are chosen and the losses agree to fp32 summation order."""
    monkeypatch.setenv("PLSC_NUMPY_ROUTE", "1")
    fast_loss, fast_w = _run(tmp_path / "numpy")
    monkeypatch.setenv("PLSC_NUMPY_ROUTE", "0")
    ref_loss, ref_w = _run(tmp_path / "paddle")
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-4)
    np.testing.assert_allclose(fast_w, ref_w, rtol=0, atol=1e-4 * np.abs(ref_w).max())


def test_multi_tensor_momentum_is_bit_identical_to_per_tensor():
    res = {}
    for multi in (False, True):
        paddle.seed(0)
        m = MODELS.build("IResNet18", num_features=8, arch_kwargs={"layers": [1, 1, 1, 1], "widths": [4, 4, 8, 8]})
        opt = paddle.optimizer.Momentum(0.1, 0.9, parameters=_param_groups(m, 5e-4, True), weight_decay=5e-4,
                                        use_multi_tensor=multi, use_nesterov=True)
        x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 3, 112, 112)).astype(np.float32))
        for _ in range(3):
            m(x).square().sum().backward()
            opt.step()
            opt.clear_grad()
        res[multi] = [p.numpy() for p in m.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(res[False], res[True]))


def test_allocator_tuning_changes_no_number(tmp_path):
    runs = [losses(plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / t}", "-o", "Global.max_train_step=4",
                        env={"PLSC_MALLOC_TUNING": t}).stdout) for t in ("1", "0")]
    assert runs[0] == runs[1] and len(runs[0]) == 4


def test_cpu_settings_apply_to_cpu_runs_only(monkeypatch):
    from plsc import env

    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DEBUG_CPU_TYPE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(env, "cuda_paddle_installed", lambda: True)
    monkeypatch.setattr(env, "gpu_visible", lambda: True)
    monkeypatch.setattr(env, "cpu_vendor", lambda: "AuthenticAMD")
    assert env.setup_threads("gpu") is False  # a GPU run: Paddle's and MKL's defaults
    assert "OMP_NUM_THREADS" not in os.environ and "MKL_DEBUG_CPU_TYPE" not in os.environ
    assert env.setup_threads("cpu") is True   # Global.device cpu on the same machine: a CPU run
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // env.local_world_size()))
    assert os.environ["MKL_DEBUG_CPU_TYPE"] == "5"
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    monkeypatch.setattr(env, "cpu_vendor", lambda: "GenuineIntel")
    env.setup_threads("cpu")
    assert "MKL_DEBUG_CPU_TYPE" not in os.environ, "the AVX2 switch is for AMD CPUs only"
    monkeypatch.setattr(env, "cuda_paddle_installed", lambda: False)
    assert env.is_cpu_run("gpu"), "Global.device gpu without a CUDA Paddle build runs on the CPU"
    # the allocator is tuned by the Engine when the device is the CPU, never on a GPU run
    from plsc.engine import builders

    calls = []
    monkeypatch.setattr(builders, "tune_allocator", lambda: calls.append(1))
    builders.device_of({"Global": {"device": "cpu"}}, type("L", (), {"info": print, "warning": print})())
    assert calls == [1]

