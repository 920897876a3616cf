"""PartialFC: 2 ranks x b with the sharded FC == 1 rank x 2b with the full FC; sampling; margins; sparse momentum."""
import math
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from dist_utils import launch
from plsc.errors import ConfigError, DataError
from plsc.nn import build_head
from plsc.nn.partial_fc import init_rows
from plsc.optim.optimizers import build_sparse_optimizer
from plsc.optim.sparse import SparseMomentum

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pfc_worker as W  # noqa: E402

# ---------------------------------------------------------------- an independent dense reference
def reference(case):
    """Loss, feature grads and full weight grads of the global batch with one dense FC (plain paddle ops)."""
    loss_spec, classes, _, _ = W.CASES[case]
    (name, kw), = loss_spec.items()
    feats, labels = W.global_batch(case)
    x = paddle.to_tensor(feats, stop_gradient=False)
    w = paddle.to_tensor(init_rows(3, 0, classes, W.DIM), stop_gradient=False)
    cos = paddle.matmul(x / paddle.linalg.norm(x, axis=1, keepdim=True),
                        w / paddle.linalg.norm(w, axis=1, keepdim=True), transpose_y=True)
    onehot = F.one_hot(paddle.to_tensor(labels), classes)
    tcos = (cos * onehot).sum(axis=1)
    theta = paddle.acos(paddle.clip(tcos, -1 + 1e-7, 1 - 1e-7))
    if name == "MarginLoss":
        m1, m2, m3, s = kw.get("m1", 1.0), kw.get("m2", 0.5), kw.get("m3", 0.0), kw.get("s", 64.0)
        new = paddle.cos(m1 * theta + m2) - m3 if (m1, m2) != (1.0, 0.0) else tcos - m3
    else:
        m, h, s, a = kw["m"], kw["h"], kw["s"], kw["t_alpha"]
        norms = np.clip(np.linalg.norm(feats, axis=1), 0.001, 100)
        mu = a * norms.mean() + (1 - a) * 20.0
        sd = a * norms.std(ddof=1) + (1 - a) * 100.0
        z = paddle.to_tensor(np.clip((norms - mu) / (sd + 1e-3) * h, -1, 1).astype(np.float32))
        th = paddle.clip(paddle.acos(paddle.clip(tcos, -1 + 1e-3, 1 - 1e-3)) - m * z, 1e-3, math.pi - 1e-3)
        new = paddle.cos(th) - (m + m * z)
    logits = s * (cos + onehot * (new - tcos).unsqueeze(1))
    # not F.cross_entropy: Paddle's CPU kernel clips each sample's loss at 64
    loss = (paddle.logsumexp(logits, axis=1) - (logits * onehot).sum(axis=1)).mean()
    loss.backward()
    return loss.item(), x.grad.numpy(), w.grad.numpy(), feats, labels


def _close(a, b, rtol=1e-5, atol=1e-6):
    """Within rtol of the largest magnitude in b (fp32 sums in a different order differ by ~1e-7 of it)."""
    b = np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=max(atol, rtol * float(np.abs(b).max(initial=0))))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("pfc")
    launch([os.path.join(HERE, "pfc_worker.py"), str(out)], nproc=2, log_dir=out / "log")
    return out


@pytest.mark.parametrize("case", ["arc", "cos", "combined", "adaface", "replicated"])
def test_two_ranks_match_one_full_fc(two_rank_results, case):
    loss, xg, wg, feats, labels = reference(case)
    parallel = case != "replicated"
    covered = np.zeros(len(wg), dtype=bool)
    for r in range(2):
        d = np.load(two_rank_results / f"{case}_rank{r}.npz")
        _close(d["loss"], loss)
        # each rank holds W x its slice of the global-mean feature gradient (DP averaging then gives the total)
        _close(d["feat_grad"] / 2, xg[d["lo"]:d["hi"]])
        start, end = d["start"].item(), d["end"].item()
        assert (start, end) == ((0, 11) if not parallel else [(0, 6), (6, 11)][r] if len(wg) == 11 else [(0, 8), (8, 16)][r])
        _close(d["row_grad"], wg[start:end][d["index"]])
        covered[start:end] = True
    assert covered.all()


def test_sampled_heads_keep_positives_and_match_reference_on_their_rows(two_rank_results):
    loss, xg, wg, feats, labels = reference("arc_sampled")
    classes, ratio = 40, 0.3
    for r in range(2):
        d = np.load(two_rank_results / f"arc_sampled_rank{r}.npz")
        start, end = d["start"].item(), d["end"].item()
        idx = d["index"]
        positives = np.unique(labels[(labels >= start) & (labels < end)]) - start
        assert set(positives) <= set(idx)
        # K = max(ceil(ratio * rows), min(rows, labels in the step)): every positive fits, no host read
        assert len(idx) == max(math.ceil(ratio * (end - start)), min(end - start, len(labels)))
        assert len(np.unique(idx)) == len(idx)
        # the loss differs from the full softmax (fewer negatives) but the positive rows' grads point the same way
        assert np.isfinite(d["loss"]) and d["loss"] < loss + 1e-4


def test_world_size_one_and_ratio_one_equals_no_sampling():
    loss, xg, wg, feats, labels = reference("cos")
    for ratio in (1.0,):
        head = build_head({"num_features": W.DIM, "class_num": 11, "pfc_config": {"sample_ratio": ratio,
                           "model_parallel": True}}, [W.CASES["cos"][0]], seed=3)
        x = paddle.to_tensor(feats, stop_gradient=False)
        out = head(x, paddle.to_tensor(labels))
        out.backward()
        index, grad, _ = head.sparse_grad()
        assert index is None and head.weight.grad is None
        _close(out.item(), loss)
        _close(x.grad.numpy(), xg)
        _close(grad.numpy(), wg)


def _plan(head, *labels):
    plan = head.plan([paddle.to_tensor(np.asarray(lb)) for lb in labels])
    return plan.index.numpy(), [t.numpy() for t in plan.targets]


def test_sampling_remaps_labels_to_the_chosen_rows_deterministically():
    spec = {"num_features": 4, "class_num": 1000, "pfc_config": {"sample_ratio": 0.1, "model_parallel": True}}
    head = build_head(spec, [{"MarginLoss": {}}], seed=5)
    labels = np.array([3, 999, 3, 512, 77])
    index, (target,) = _plan(head, labels)
    assert len(index) == 100 and {3, 999, 512, 77} <= set(index)
    assert (np.diff(index) > 0).all() and (index[target] == labels).all()
    twin = build_head(spec, [{"MarginLoss": {}}], seed=5)
    assert (_plan(twin, labels)[0] == index).all()
    assert not np.array_equal(_plan(head, labels)[0], index)  # the next draw differs
    many = np.arange(0, 1000, 5)  # 200 positives > 100 samples: every positive kept (K = 200)
    index, (target,) = _plan(head, many)
    assert (index == many).all() and (target == np.arange(200)).all()
    # two micro-batches: one set of rows for the step, each micro-batch's targets into it
    index, (t1, t2) = _plan(head, [5, 6], [700, 5])
    assert len(index) == 100 and (index[t1] == [5, 6]).all() and (index[t2] == [700, 5]).all()


def test_fc_weight_is_a_parameter_and_never_gets_a_dense_gradient():
    spec = {"num_features": 4, "class_num": 50, "pfc_config": {"sample_ratio": 0.2, "model_parallel": True}}
    head = build_head(spec, [{"MarginLoss": {}}], seed=1)
    assert [n for n, _ in head.named_parameters()] == ["weight"]
    assert list(head.state_dict()) == ["weight"] and head.weight.persistable and not head.weight.stop_gradient
    assert "dist" in head.weight.name and head.weight.is_distributed
    x = paddle.randn([6, 4])
    x.stop_gradient = False
    head(x, paddle.to_tensor([1, 2, 3, 4, 5, 49])).backward()
    index, grad, rows = head.sparse_grad()
    assert head.weight.grad is None and grad.shape == [10, 4] and rows.shape == [10, 4]
    replicated = build_head(dict(spec, pfc_config={"sample_ratio": 1.0, "model_parallel": False}),
                            [{"MarginLoss": {}}])
    assert "dist" in replicated.weight.name and not replicated.weight.is_distributed


def test_margins_finite_for_every_angle_and_match_formula():
    from plsc.nn.margins import AdaFaceLoss, MarginLoss

    cos = paddle.to_tensor(np.cos(np.linspace(0, math.pi, 2001)).astype(np.float32), stop_gradient=False)
    for m in (MarginLoss(m2=0.5), MarginLoss(m1=1.35, m2=0.25, m3=0.1), MarginLoss(m3=0.4), MarginLoss(m1=4, m2=0)):
        out = m.target_logits(cos)
        out.sum().backward()
        assert np.isfinite(out.numpy()).all() and np.isfinite(cos.grad.numpy()).all(), m
        theta = np.arccos(np.clip(cos.numpy(), -1 + 1e-7, 1 - 1e-7))
        ok = m.m1 * theta + m.m2 < math.pi - 1e-3
        _close(out.numpy()[ok], np.cos(m.m1 * theta[ok] + m.m2) - m.m3, atol=1e-5)
        assert (np.diff(out.numpy()) <= 1e-6).all(), f"{m}: target logit must not rise as theta grows"
        cos.clear_gradient()
    ada = AdaFaceLoss()
    norms = paddle.to_tensor(np.linspace(0, 200, 2001).astype(np.float32))
    out = ada.target_logits(cos, norms)
    out.sum().backward()
    assert np.isfinite(out.numpy()).all() and np.isfinite(cos.grad.numpy()).all()
    # combined margins really combine: m1, m2, m3 together differ from each alone
    c = paddle.to_tensor([0.5])
    both = MarginLoss(m1=1.2, m2=0.3, m3=0.2).target_logits(c).item()
    assert abs(both - (math.cos(1.2 * math.acos(0.5) + 0.3) - 0.2)) < 1e-6


def _step(head, opt, x, labels, lr):
    x = paddle.to_tensor(x, stop_gradient=False)
    loss = head(x, paddle.to_tensor(labels))
    loss.backward()
    index, grad, rows = head.sparse_grad()
    out = (None if index is None else index.numpy(), grad.numpy().copy(), loss.numpy(), x.grad.numpy())
    opt.step(index, grad, lr, rows=rows)
    head.clear_sparse_grad()
    return out


def test_sparse_momentum_touches_only_sampled_rows():
    cfg = {"num_features": 6, "class_num": 300, "pfc_config": {"sample_ratio": 0.05, "model_parallel": True}}
    head = build_head(cfg, [{"MarginLoss": {"m2": 0.5, "s": 30.0}}], seed=9)
    opt = SparseMomentum(head.weight, momentum=0.9, weight_decay=5e-4)
    w0 = head.weight.numpy().copy()
    w_ref, v_ref = w0.astype(np.float64), np.zeros_like(w0, dtype=np.float64)
    used = np.zeros(300, dtype=bool)
    rng = np.random.default_rng(0)
    for step in range(4):
        idx, g, _, _ = _step(head, opt, rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 300, 8), 0.1)
        used[idx] = True
        g = g.astype(np.float64) + 5e-4 * w_ref[idx]
        v_ref[idx] = 0.9 * v_ref[idx] + g
        w_ref[idx] -= 0.1 * v_ref[idx]
    w = head.weight.numpy()
    assert used.sum() < 300
    assert np.array_equal(w[~used], w0[~used]), "rows never sampled must be bit-identical"
    assert np.array_equal(opt.slots["momentum"].numpy()[~used], np.zeros_like(w0[~used]))
    _close(w[used], w_ref[used], rtol=1e-5)


def test_accumulated_micro_batches_equal_one_batch_of_the_summed_size():
    """Two micro-batches of one step share the step's rows; their weighted gradients add up to the
    gradient of one batch holding both (same rows: the plan sees every micro-batch's labels)."""
    cfg = {"num_features": 6, "class_num": 200, "pfc_config": {"sample_ratio": 0.1, "model_parallel": True}}
    loss_cfg = [{"MarginLoss": {"m2": 0.5, "s": 30.0}}]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 6)).astype(np.float32)
    y = rng.integers(0, 200, 12)
    big, micro = build_head(cfg, loss_cfg, seed=4), build_head(cfg, loss_cfg, seed=4)
    xb = paddle.to_tensor(x, stop_gradient=False)
    big(xb, paddle.to_tensor(y)).backward()
    plan = micro.plan([paddle.to_tensor(y[:8]), paddle.to_tensor(y[8:])])
    xs = [paddle.to_tensor(x[:8], stop_gradient=False), paddle.to_tensor(x[8:], stop_gradient=False)]
    for i, (part, w) in enumerate(zip(xs, (8 / 12, 4 / 12))):
        (micro(part, paddle.to_tensor(y[:8] if i == 0 else y[8:]), plan, i) * w).backward()
    (bi, bg, _), (mi, mg, _) = big.sparse_grad(), micro.sparse_grad()
    assert np.array_equal(bi.numpy(), mi.numpy()) and len(bi.numpy()) == 20
    _close(mg.numpy(), bg.numpy(), rtol=1e-5)
    _close(np.concatenate([t.grad.numpy() for t in xs]), xb.grad.numpy(), rtol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_dense_step_equals_paddle_momentum(nesterov):
    cfg = {"num_features": 5, "class_num": 7, "pfc_config": {"sample_ratio": 1.0, "model_parallel": True}}
    head = build_head(cfg, [{"MarginLoss": {}}], seed=1)
    ref = paddle.create_parameter([7, 5], "float32")
    ref.set_value(head.weight.numpy())
    mom = paddle.optimizer.Momentum(0.1, 0.9, parameters=[ref], use_nesterov=nesterov,
                                    weight_decay=paddle.regularizer.L2Decay(5e-4))
    opt = build_sparse_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4,
                                  "use_nesterov": nesterov}, head.weight)
    assert opt.use_nesterov == nesterov
    rng = np.random.default_rng(1)
    for _ in range(3):
        x, y = rng.standard_normal((4, 5)).astype(np.float32), rng.integers(0, 7, 4)
        _, g, _, _ = _step(head, opt, x, y, 0.1)
        (ref * paddle.to_tensor(g)).sum().backward()  # ref.grad = the head's gradient
        mom.step()
        mom.clear_grad()
        _close(head.weight.numpy(), ref.numpy(), rtol=1e-6)


def test_bad_input_and_config():
    cfg = {"num_features": 4, "class_num": 10, "pfc_config": {"sample_ratio": 1.0, "model_parallel": True}}
    head = build_head(cfg, [{"MarginLoss": {}}])
    for labels, bad in (([1, 10], 10), ([-1, 0], -1)):  # ignored on the device, reported without a host read
        loss = head(paddle.randn([2, 4]), paddle.to_tensor(labels))
        assert np.isfinite(loss.item()) and head.last_plan.label_status().item() == 1.0
        with pytest.raises(DataError, match=f"label {bad} is out of range.*class_num is 10"):
            head.last_plan.raise_for_labels()
    head(paddle.randn([2, 4]), paddle.to_tensor([0, 9]))
    assert head.last_plan.label_status().item() == 0.0
    for ratio in (0.0, 1.5):
        bad = dict(cfg, pfc_config={"sample_ratio": ratio, "model_parallel": True})
        with pytest.raises(ConfigError, match=f"sample_ratio must be in \\(0, 1\\], got {ratio}"):
            build_head(bad, [{"MarginLoss": {}}])
    with pytest.raises(ConfigError, match="m2 .* must be in"):
        build_head(cfg, [{"MarginLoss": {"m2": -0.5}}])


def test_sparse_adamw_dense_step_equals_paddle_adamw_and_skips_unsampled_rows():
    cfg = {"num_features": 5, "class_num": 7, "pfc_config": {"sample_ratio": 1.0, "model_parallel": True}}
    head = build_head(cfg, [{"MarginLoss": {}}], seed=1)
    ref = paddle.create_parameter([7, 5], "float32")
    ref.set_value(head.weight.numpy())
    adamw = paddle.optimizer.AdamW(0.01, parameters=[ref], weight_decay=0.05)
    opt = build_sparse_optimizer({"name": "AdamW", "weight_decay": 0.05}, head.weight)
    assert type(opt).__name__ == "SparseAdamW"
    rng = np.random.default_rng(2)
    for _ in range(3):
        x, y = rng.standard_normal((4, 5)).astype(np.float32), rng.integers(0, 7, 4)
        _, g, _, _ = _step(head, opt, x, y, 0.01)
        (ref * paddle.to_tensor(g)).sum().backward()
        adamw.step()
        adamw.clear_grad()
        _close(head.weight.numpy(), ref.numpy(), rtol=1e-6)
    # sampled: rows never used keep weight and both moments; the state survives a shard round trip
    cfg = {"num_features": 6, "class_num": 300, "pfc_config": {"sample_ratio": 0.05, "model_parallel": True}}
    head = build_head(cfg, [{"MarginLoss": {}}], seed=9)
    opt = head.set_optimizer(build_sparse_optimizer({"name": "AdamW", "weight_decay": 0.05}, head.weight))
    w0, used = head.weight.numpy().copy(), np.zeros(300, bool)
    for _ in range(3):
        idx, _, _, _ = _step(head, opt, rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 300, 8), 0.01)
        used[idx] = True
    assert used.sum() < 300
    assert np.array_equal(head.weight.numpy()[~used], w0[~used])
    assert not opt.slots["moment1"].numpy()[~used].any() and opt.slots["moment2"].numpy()[used].any()
    shard = head.shard_state()
    twin_head = build_head(cfg, [{"MarginLoss": {}}], seed=4)
    twin = twin_head.set_optimizer(build_sparse_optimizer({"name": "AdamW", "weight_decay": 0.05}, twin_head.weight))
    twin_head.load_shards([shard])
    assert twin.num_steps == 3 and np.array_equal(twin.slots["moment2"].numpy(), opt.slots["moment2"].numpy())
    assert np.array_equal(twin_head.weight.numpy(), head.weight.numpy()) and twin_head.draws == head.draws
    with pytest.raises(ConfigError, match="unknown sparse FC optimizer 'Lamb'"):  # a config is refused at load
        build_sparse_optimizer({"name": "Lamb"}, head.weight)


_FAULTS = r"""
import ctypes, os, resource, sys
from plsc.env import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 128 << 20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    libc.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[0], faults[2])
"""


@pytest.mark.parametrize("mode", ["tuned", "default"])
def test_tuned_allocator_reuses_freed_memory(mode):
    """plsc.env.tune_allocator: a freed 128 MB block is reused without page faults (glibc's default
    returns it to the OS, so every reuse faults each page in again)."""
    import subprocess

    env = dict(os.environ, PLSC_MALLOC_TUNING="1")
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    first, third = map(int, out.stdout.split())
    assert first > 20000  # 32768 pages of 4 KiB touched the first time
    if mode == "tuned":
        assert third < first // 10
    else:
        assert third > first // 2


def test_sample_num_fixes_the_rows_per_step_keeps_positives_and_refuses_ambiguity():
    """Model.pfc_config.sample_num: K = min(shard rows, max(sample_num, labels of the step)), whatever C is."""
    loss = [{"MarginLoss": {}}]
    for classes in (1000, 50000):
        head = build_head({"num_features": 4, "class_num": classes,
                           "pfc_config": {"sample_ratio": 1.0, "sample_num": 64, "model_parallel": True}}, loss, seed=2)
        labels = np.array([3, classes - 1, 3, 512])
        index, (target,) = _plan(head, labels)
        assert len(index) == 64 and {3, classes - 1, 512} <= set(index) and (index[target] == labels).all()
    many = np.arange(0, 1000, 10)  # 100 labels in one step > sample_num 64: every positive kept
    index, (target,) = _plan(head, many)
    assert len(index) == 100 and (index[target] == many).all()
    small = build_head({"num_features": 4, "class_num": 30, "pfc_config": {"sample_ratio": 1.0, "sample_num": 64,
                                                                           "model_parallel": True}}, loss)
    assert small.num_sample == 30 and small.plan([paddle.to_tensor([1, 2])]).index is None  # whole shard used
    base = {"num_features": 4, "class_num": 100, "pfc_config": {"model_parallel": True}}
    for bad, message in (({"sample_ratio": 0.1, "sample_num": 10}, "sample_ratio=0.1 and sample_num=10 are both set"),
                         ({"sample_ratio": 1.0, "sample_num": 0}, "sample_num must be an integer >= 1"),
                         ({"sample_ratio": 1.0, "sample_num": 2.5}, "sample_num must be an integer >= 1")):
        with pytest.raises(ConfigError, match=message):
            build_head(dict(base, pfc_config=dict(base["pfc_config"], **bad)), loss)


def test_interclass_filtering_equals_arcface_torchs_rule():
    """interclass_filtering_threshold t: every non-target cosine above t is replaced by 0 (a constant) before the
    margin softmax; checked against a dense autograd reference, and t = 0 changes nothing."""
    rng = np.random.default_rng(4)
    classes, dim, t, s = 12, 8, 0.2, 16.0
    feats = rng.standard_normal((6, dim)).astype(np.float32)
    labels = rng.integers(0, classes, 6)
    spec = {"num_features": dim, "class_num": classes, "pfc_config": {
        "sample_ratio": 1.0, "model_parallel": True, "interclass_filtering_threshold": t}}
    loss_cfg = [{"MarginLoss": {"m2": 0.5, "s": s}}]
    head = build_head(spec, loss_cfg, seed=3)
    w0 = head.weight.numpy().copy()
    w0[:6] += 0.02 * feats[0][None, :]   # six classes close to sample 0: cosines above t
    paddle.assign(paddle.to_tensor(w0), output=head.weight)
    x = paddle.to_tensor(feats, stop_gradient=False)
    loss = head(x, paddle.to_tensor(labels))
    loss.backward()
    _, wgrad, _ = head.sparse_grad()
    xr, wr = paddle.to_tensor(feats, stop_gradient=False), paddle.to_tensor(w0, stop_gradient=False)
    cos = paddle.matmul(F.normalize(xr, axis=1), F.normalize(wr, axis=1), transpose_y=True)
    onehot = F.one_hot(paddle.to_tensor(labels), classes)
    dirty = ((cos > t).astype("float32") * (1 - onehot)).detach()
    assert 0 < dirty.numpy().sum() < dirty.size
    cos = cos * (1 - dirty)
    tcos = (cos * onehot).sum(axis=1)
    new = paddle.cos(paddle.acos(paddle.clip(tcos, -1 + 1e-7, 1 - 1e-7)) + 0.5)
    logits = s * (cos + onehot * (new - tcos).unsqueeze(1))
    ref = (paddle.logsumexp(logits, axis=1) - (logits * onehot).sum(axis=1)).mean()
    ref.backward()
    _close(loss.item(), ref.item())
    _close(x.grad.numpy(), xr.grad.numpy())
    _close(wgrad.numpy(), wr.grad.numpy())
    plain = build_head(dict(spec, pfc_config=dict(spec["pfc_config"], interclass_filtering_threshold=0.0)), loss_cfg, 3)
    paddle.assign(paddle.to_tensor(w0), output=plain.weight)
    assert plain(paddle.to_tensor(feats), paddle.to_tensor(labels)).item() > loss.item() + 1e-3
    with pytest.raises(ConfigError, match="interclass_filtering_threshold must be in \\[0, 1\\)"):
        build_head(dict(spec, pfc_config=dict(spec["pfc_config"], interclass_filtering_threshold=1.5)), loss_cfg)
