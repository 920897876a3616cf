"""Every setting changed for speed leaves the math unchanged, and CPU-only settings apply only to CPU runs.

- the CPU fast paths (plsc.cpu_fast: PReLU, the device transform) vs their Paddle bodies;
- Paddle's multi-tensor Momentum vs the per-tensor update;
- glibc allocator tuning (PLSC_MALLOC_TUNING) on and off;
- threads / MKL settings and the allocator tuning are made on CPU runs only.
"""
import os

import numpy as np
import paddle
import pytest

from plsc.models.prelu import PReLU
from plsc.optim.optimizers import _param_groups
from plsc.registry import MODELS
from test_train import SMOKE, losses, plsc


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_prelu_cpu_path_equals_paddles_prelu(fmt):
    """plsc.cpu_fast's PReLU body (numpy) vs paddle.nn.PReLU's (what GPUs run): y and dL/dx bit-identical (the
    same elementwise products), dL/dw within the bound of a float32 sum taken in another order:
    |error| <= n * 2^-24 * sum_i |g_i * min(x_i, 0)| for the n terms of each channel."""
    rng = np.random.default_rng(0)
    shape = [6, 12, 9, 9] if fmt == "NCHW" else [6, 9, 9, 12]
    x0, g0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    slopes = rng.uniform(-0.5, 1.5, 12).astype(np.float32)
    out = {}
    for body in ("cpu", "paddle"):
        layer = PReLU(12, data_format=fmt)
        layer._weight.set_value(slopes)
        x = paddle.to_tensor(x0, stop_gradient=False)
        y = layer(x) if body == "cpu" else paddle.nn.PReLU.forward(layer, x)
        (y * paddle.to_tensor(g0)).sum().backward()
        out[body] = (y.numpy(), x.grad.numpy(), layer._weight.grad.numpy())
    fast, ref = out["cpu"], out["paddle"]
    assert np.array_equal(fast[0], ref[0]) and np.array_equal(fast[1], ref[1])
    axes = (0, 2, 3) if fmt == "NCHW" else (0, 1, 2)
    terms = np.abs(g0 * np.minimum(x0, 0))
    n = x0.size // 12
    assert (np.abs(fast[2] - ref[2]) <= n * 2.0 ** -24 * terms.sum(axis=axes)).all()
    assert list(PReLU(4).state_dict()) == list(paddle.nn.PReLU(4).state_dict()) == ["_weight"]


@pytest.mark.parametrize("layout, flip_code, swap", [("HWC", 1, True), ("CHW", -1, False), ("HWC", 0, False)])
def test_device_transform_cpu_path_equals_its_paddle_body(layout, flip_code, swap):
    """plsc.cpu_fast's device-transform body (cv2) vs the Paddle body GPUs run: bit-identical (both compute
    x * mul + add in float64 from exact uint8 values and round once to float32; flips move values)."""
    from plsc.data.device_transform import DeviceTransform
    from plsc.data.transforms import NormalizeImage

    rng = np.random.default_rng(1)
    shape = (5, 7, 6, 3) if layout == "HWC" else (5, 3, 7, 6)
    images = paddle.to_tensor(rng.integers(0, 256, shape).astype(np.uint8))
    flips = paddle.to_tensor(np.array([1, 0, 1, 1, 0], np.uint8))
    mul, add = NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).exact_coefficients()
    t = DeviceTransform(layout, swap, flip_code, mul, add)  # float32 coefficients, as NormalizeImage gives
    fast, ref = t(images, flips).numpy(), t.paddle_body(images, flips).numpy()
    assert fast.dtype == ref.dtype == np.float32 and np.array_equal(fast, ref)


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
    # the allocator is tuned at the start of a run (plsc.engine.start) when the device is the CPU, never on a GPU run
    from plsc.engine import builders

    calls = []
    monkeypatch.setattr(builders, "tune_allocator", lambda: calls.append(1))
    builders.device_of({"Global": {"device": "cpu"}}, type("L", (), {"info": print, "warning": print})())
    assert calls == [1]

