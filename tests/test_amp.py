"""FP16 policy and loss scaler: what O1/O2 run in low precision, scaler arithmetic, cross-rank skip."""
import numpy as np
import paddle
import pytest

from dist_utils import launch
from plsc.amp import AmpPolicy, LossScaler
from plsc.errors import ConfigError

FP16 = {"level": "O1", "dtype": "float16", "fp16_custom_white_list": ["matmul"], "fp16_custom_black_list": ["exp"],
        "GradScaler": {"init_loss_scaling": 1024.0, "incr_ratio": 2.0, "decr_ratio": 0.5, "incr_every_n_steps": 3,
                       "decr_every_n_nan_or_inf": 2, "use_dynamic_loss_scaling": True}}


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)
        self.bn = paddle.nn.BatchNorm2D(4)
        self.fc = paddle.nn.Linear(4, 6)
        self.neck = paddle.nn.BatchNorm1D(6)

    def fp32_layers(self):
        return [self.fc, self.neck]


def test_autocast_arguments_follow_the_config():
    kw = AmpPolicy.from_config(FP16, "cpu").autocast_kwargs()
    assert kw == {"enable": True, "custom_white_list": {"matmul"}, "custom_black_list": {"exp"}, "level": "O1",
                  "dtype": "float16"}
    o0 = AmpPolicy.from_config(dict(FP16, level="O0"), "cpu").autocast_kwargs()
    assert o0["enable"] is False
    o2 = AmpPolicy.from_config(dict(FP16, level="O2", dtype="bfloat16"), "cpu").autocast_kwargs()
    assert (o2["level"], o2["dtype"]) == ("O2", "bfloat16")


def test_o2_decorate_asks_paddle_for_master_weights_and_keeps_the_fp32_layers(monkeypatch):
    """paddle.amp.decorate casts nothing on CPU: check what plsc asks it for (GPU runs get exactly this)."""
    calls = []
    monkeypatch.setattr(paddle.amp, "decorate", lambda **kw: (calls.append(kw), (kw["models"], kw["optimizers"]))[1])
    net = Net()
    opt = paddle.optimizer.Momentum(parameters=net.parameters(), multi_precision=True)
    with pytest.warns(UserWarning, match="computes in fp32"):
        policy = AmpPolicy.from_config(dict(FP16, level="O2", dtype="bfloat16"), "cpu")
    policy.decorate(net, opt, excluded_layers=net.fp32_layers())
    (kw,) = calls
    assert kw["level"] == "O2" and kw["dtype"] == "bfloat16" and kw["master_weight"] is True
    assert kw["excluded_layers"] == [net.fc, net.neck]
    AmpPolicy.from_config(FP16, "cpu").decorate(net, opt, excluded_layers=net.fp32_layers())
    assert len(calls) == 1, "O1 does not decorate"


def test_o2_decorate_gives_master_weights_and_cpu_run_stays_fp32():
    net = Net()
    opt = paddle.optimizer.Momentum(parameters=net.parameters(), multi_precision=True)
    with pytest.warns(UserWarning, match="computes in fp32"):
        policy = AmpPolicy.from_config(dict(FP16, level="O2"), "cpu")
    net2, opt2 = policy.decorate(net, opt, excluded_layers=net.fp32_layers())
    assert opt2._multi_precision  # fp32 master weights requested from the optimizer
    with policy.autocast():
        out = net2.neck(net2.fc(paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(
            net2.bn(net2.conv(paddle.randn([2, 3, 5, 5]))), 1), 1)))
    assert out.dtype == paddle.float32


def _check(scaler, grads, clip=None, loss=None, fc=None):
    from plsc.optim.grad_step import GradCheck

    return GradCheck(scaler, clip)([(f"w{i}", g) for i, g in enumerate(grads)], fc=fc, loss=loss)


def test_scaler_growth_backoff_and_skip_counting():
    s = LossScaler.from_config(FP16)
    assert s.scale_value == 1024.0
    loss = paddle.to_tensor(2.0)
    assert s.scale(loss).item() == 2048.0
    g = paddle.to_tensor([1024.0, -2048.0])
    assert _check(s, [g]).ok
    np.testing.assert_array_equal(g.numpy(), [1.0, -2.0])  # unscaled in place
    for _ in range(3):
        s.update(False)
    assert s.scale_value == 2048.0  # grew after incr_every_n_steps=3 finite steps
    s.update(True)
    assert s.scale_value == 2048.0  # one bad step: decr_every_n_nan_or_inf=2 not reached
    s.update(False)
    s.update(True)
    assert s.scale_value == 2048.0  # the good step in between reset the bad count
    s.update(True)
    assert s.scale_value == 1024.0 and s.num_skipped == 3
    bad = paddle.to_tensor([1.0, float("inf")])
    v = _check(s, [paddle.ones([3]), bad])
    assert not v.ok and v.nonfinite
    state = s.state_dict()
    t = LossScaler.from_config(FP16)
    t.set_state_dict(state)
    assert t.state_dict() == state
    for _ in range(40):
        s.update(True)
    assert s.scale_value == 1.0  # never below 1


def test_o0_scaler_is_identity_but_still_detects_nan():
    s = LossScaler.from_config(dict(FP16, level="O0"))
    assert s.scale_value == 1.0
    assert not _check(s, [paddle.to_tensor([float("nan")])]).ok
    assert not _check(s, [paddle.ones([2])], loss=paddle.to_tensor(float("inf"))).ok, "a non-finite loss skips"
    fc = ("dist_fc_rank0.w_0", paddle.to_tensor([[1.0, float("nan")]]), True)
    assert not _check(s, [paddle.ones([2])], fc=fc).ok, "the FC gradient is checked too"
    s.update(True)
    assert s.scale_value == 1.0 and s.num_skipped == 1


@pytest.mark.parametrize("key, value, match", [
    ("init_loss_scaling", 0.0, "init_loss_scaling must be > 0, got 0.0"),
    ("decr_ratio", 1.5, "decr_ratio must be in \\(0, 1\\)"),
    ("incr_every_n_steps", 0, "incr_every_n_steps must be an integer >= 1"),
])
def test_bad_scaler_settings(key, value, match):
    cfg = dict(FP16, GradScaler=dict(FP16["GradScaler"], **{key: value}))
    with pytest.raises(ConfigError, match=match):
        LossScaler.from_config(cfg)


def test_bad_policy_settings():
    with pytest.raises(ConfigError, match="FP16.level: 'O3' is not one of"):
        AmpPolicy.from_config(dict(FP16, level="O3"))
    with pytest.raises(ConfigError, match="in both fp16_custom_white_list and fp16_custom_black_list"):
        AmpPolicy.from_config(dict(FP16, fp16_custom_black_list=["matmul"]))


TWO_RANKS = r"""
import json, sys
from plsc.env import setup_threads; setup_threads()
import numpy as np, paddle, paddle.distributed as dist
from plsc.amp import LossScaler
from plsc.engine.dp import average_running_stats
from plsc.optim.grad_step import ClipGradByGlobalNorm, GradCheck
dist.init_parallel_env()
r = dist.get_rank()
out = {}
s = LossScaler(init_loss_scaling=256.0, decr_every_n_nan_or_inf=1)
for step in range(3):  # an inf on rank 1 only: both ranks skip, the scale stays equal
    g = paddle.ones([4]) * 256.0
    if r == 1 and step == 1:
        g[2] = float('inf')
    found = not GradCheck(s, None, 2)([('w', g)]).ok
    s.update(found)
    out[f"skip{step}"], out[f"scale{step}"] = found, s.scale_value
# clipping over 2 ranks: a replicated gradient (equal on both ranks) and an FC gradient that is a
# different shard per rank (model parallel) or the same everywhere (replicated FC)
rep = np.arange(1, 7, dtype=np.float32)
shard = np.full(3, 2.0 + r, np.float32)
for name, sharded, no_clip in (("mp", True, []), ("rep", False, []), ("mp_noclip", True, ["dist"])):
    g, fc = paddle.to_tensor(rep), paddle.to_tensor(shard if sharded else np.full(3, 2.0, np.float32))
    clip = ClipGradByGlobalNorm(clip_norm=1.0, no_clip_list=no_clip)
    v = GradCheck(LossScaler(enabled=False), clip, 2)([("conv.w", g)], fc=("dist_fc_rank0.w_0", fc, sharded))
    out[name] = {"norm": float(v.norm), "rep": g.numpy().tolist(), "fc": fc.numpy().tolist()}
# BatchNorm running statistics averaged across ranks before eval / save
bn = paddle.nn.BatchNorm1D(3)
paddle.assign(paddle.full([3], float(r + 1)), output=bn._mean)
average_running_stats(bn)
out["bn_mean"] = bn._mean.numpy().tolist()
print("RESULT " + json.dumps(out), flush=True)
"""


def test_two_ranks_agree_on_skips_clipping_and_bn_statistics(tmp_path):
    import json

    script = tmp_path / "two.py"
    script.write_text(TWO_RANKS)
    launch([script], nproc=2, log_dir=tmp_path / "log")
    res = []
    for r in range(2):
        text = (tmp_path / "log" / f"workerlog.{r}").read_text()
        res.append(json.loads(text.split("RESULT ", 1)[1].splitlines()[0]))
    for r in range(2):  # the inf on rank 1 makes both skip step 1
        assert [res[r][f"skip{i}"] for i in range(3)] == [False, True, False]
        assert [res[r][f"scale{i}"] for i in range(3)] == [256.0, 128.0, 128.0]
    rep_sq = float(np.sum(np.arange(1, 7) ** 2))
    dense = {"mp": np.sqrt(rep_sq + 3 * 2.0 ** 2 + 3 * 3.0 ** 2),  # the dense reference: each shard once
             "rep": np.sqrt(rep_sq + 3 * 2.0 ** 2),                # a replicated FC counted once, not W times
             "mp_noclip": np.sqrt(rep_sq)}                         # no_clip_list ['dist']: the FC left out
    for case, norm in dense.items():
        for r in range(2):
            assert res[r][case]["norm"] == pytest.approx(norm, rel=1e-6), (case, r)
            coef = 1.0 / (norm + 1e-6)
            assert res[r][case]["rep"] == pytest.approx((np.arange(1, 7) * coef).tolist(), rel=1e-5)
            fc = (2.0 + r) if case.startswith("mp") else 2.0
            assert res[r][case]["fc"] == pytest.approx([fc * (1.0 if case == "mp_noclip" else coef)] * 3, rel=1e-5)
    assert res[0]["bn_mean"] == res[1]["bn_mean"] == [1.5, 1.5, 1.5]
