"""plsc's synchronized BatchNorm: same values, gradients and running statistics as Paddle's BN on one rank."""
import numpy as np
import paddle
import pytest

from plsc.nn.sync_bn import convert_sync_bn


@pytest.mark.parametrize("kind, fmt, shape", [("2d", "NCHW", [6, 3, 5, 5]), ("2d", "NHWC", [6, 5, 5, 3]),
                                              ("1d", "NCL", [7, 3])])
def test_sync_bn_matches_batch_norm_on_one_rank(kind, fmt, shape):
    make = (lambda: paddle.nn.BatchNorm2D(3, data_format=fmt)) if kind == "2d" else (lambda: paddle.nn.BatchNorm1D(3))
    a, b = make(), make()
    a.weight.set_value(paddle.to_tensor([0.5, 1.5, 2.0]))
    a.bias.set_value(paddle.to_tensor([0.1, -0.2, 0.3]))
    b.set_state_dict(a.state_dict())
    assert convert_sync_bn(b) == 1 and type(b).__name__.startswith("Sync")
    assert list(b.state_dict()) == list(a.state_dict())  # checkpoints unchanged
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3 + 1)
    xa, xb = x.clone(), x.clone()
    xa.stop_gradient = xb.stop_gradient = False
    ya, yb = a(xa), b(xb)
    (ya * ya.detach().sin()).sum().backward()
    (yb * yb.detach().sin()).sum().backward()
    np.testing.assert_allclose(yb.numpy(), ya.numpy(), atol=2e-6)
    np.testing.assert_allclose(xb.grad.numpy(), xa.grad.numpy(), atol=2e-6)
    np.testing.assert_allclose(b.weight.grad.numpy(), a.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b._mean.numpy(), a._mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(b._variance.numpy(), a._variance.numpy(), atol=1e-6)
    a.eval(), b.eval()
    np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), atol=2e-6)
