"""PLSC users bring their configs: every face config PLSC has published loads unchanged, the v2.4 ones
train 2 steps (dataset swapped for synthetic data), and each PLSC key has PLSC's meaning."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest

from plsc.config import load_config
from plsc.registry import MODELS
from plsc_published import published
from test_train import SMOKE, plsc
from test_zoo import train_two_steps

PUBLISHED = published()
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "interop")
SYNTHETIC = ["Global.max_train_step=2", "Global.eval_during_train=false", "Global.use_visualdl=false",
             "Global.print_batch_step=1", "Model.class_num=50",
             "DataLoader.Train.dataset={name: FaceRandomDataset, num_classes: 50, num_samples: 8}",
             "DataLoader.Train.sampler.batch_size=2", "DataLoader.Train.loader.num_workers=0"]


def _write(tmp_path, name):
    path = tmp_path / (name.replace("/", "_") + ".yaml")
    path.write_text(PUBLISHED[name])
    return str(path)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_plsc_face_config_loads_unchanged(tmp_path, name):
    cfg = load_config(_write(tmp_path, name))
    text = PUBLISHED[name]
    assert cfg["Model"]["name"] == text.split("Model:\n  name: ")[1].split("\n")[0]
    assert cfg["LRScheduler"]["name"] in ("Poly", "Step")
    if "level: O" in text:
        assert cfg["FP16"]["level"] == text.split("  level: ")[1].split("\n")[0]
    else:
        assert cfg["FP16"]["level"] == "O0", "no FP16 section: fp32, as in PLSC"


TRAINED = sorted(n for n in PUBLISHED if n.startswith("v2.4/")) + ["old/IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_fp16o2"]


@pytest.mark.parametrize("name", TRAINED, ids=lambda n: n.split("/")[1][:40])
def test_published_configs_train_two_steps(tmp_path, name):
    from plsc.engine.engine import Trainer

    cfg = load_config(_write(tmp_path, name), [f"Global.output_dir={tmp_path}", *SYNTHETIC])
    e = Trainer(cfg)
    train_two_steps(e)
    text = PUBLISHED[name]
    assert e.fc_opt.every_row == ("sparse_update: False" in text)
    assert e.head.model_parallel == ("model_parallel: True" in text)
    assert e.schedule.__class__.__name__ == cfg["LRScheduler"]["name"]


# ---------------------------------------------------------------- PLSC's meaning, key by key
def _engine(tmp_path, *overrides, mode="train"):
    """The Trainer of the smoke config with `overrides`; mode "eval": the model plsc-eval builds instead."""
    from plsc.engine.engine import Trainer
    from plsc.engine.inference_model import load_model

    cfg = load_config(SMOKE, [f"Global.output_dir={tmp_path}", *overrides])
    return Trainer(cfg) if mode == "train" else load_model(cfg, mode)


def test_fp16_section_and_grad_scaler_defaults(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("FP16:\n  GradScaler:\n    init_loss_scaling: 512.0\n")
    cfg = load_config(str(base))
    assert cfg["FP16"]["level"] == "O2", "PLSC: an FP16 section without a level is O2"
    gs = cfg["FP16"]["GradScaler"]
    assert (gs["incr_every_n_steps"], gs["decr_every_n_nan_or_inf"], gs["max_loss_scaling"]) == (1000, 2, 2.0 ** 32)
    assert load_config(PUBLISHED_PATH_REF)["FP16"]["GradScaler"]["init_loss_scaling"] == 27648.0
    from plsc.amp import LossScaler

    s = LossScaler(init_loss_scaling=4.0, incr_every_n_steps=1, max_loss_scaling=16.0)
    for _ in range(5):
        s.update(False)
    assert s.scale_value == 16.0, "the scale never grows past max_loss_scaling"


PUBLISHED_PATH_REF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                  "reference", "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml")


@pytest.mark.parametrize("keep, expect", [(0, []), (2, ["epoch_2", "epoch_3"]), (-1, ["epoch_1", "epoch_2", "epoch_3"])])
def test_max_num_latest_checkpoint_has_plscs_meaning(tmp_path, keep, expect):
    _engine(tmp_path, "Global.epochs=3", f"Global.max_num_latest_checkpoint={keep}",
            "DataLoader.Train.dataset.num_samples=16").train()  # one step per epoch
    run = tmp_path / "IResNet18"
    assert sorted(d for d in os.listdir(run) if d.startswith("epoch_")) == expect
    assert (run / "latest" / "manifest.json").exists()


def test_accum_steps_splits_the_configured_batch(tmp_path):
    e = _engine(tmp_path, "Global.accum_steps=4", "Global.max_train_step=2", "DataLoader.Train.sampler.batch_size=16")
    seen = []
    forward = e.head.forward
    e.head.forward = lambda f, lb, plan=None, part=0: (seen.append(f.shape[0]), forward(f, lb, plan, part))[1]
    assert e.steps_per_epoch == len(e.sampler) == 256 // 16, "one optimizer step per loaded batch"
    e.train()
    assert seen == [4] * 8 and e.global_batch == 16, "2 steps x 4 micro-batches of 16 / 4"


def _clip_case(always, cmax, scale):
    from plsc.amp import LossScaler
    from plsc.optim.grad_step import ClipGradByGlobalNorm, GradCheck

    g = paddle.to_tensor([3.0, 4.0]) * scale  # norm 5 * scale
    fc = paddle.to_tensor([[12.0]])
    clip = ClipGradByGlobalNorm(clip_norm=5.0, always_clip=always, no_clip_list=["dist"], clip_norm_max=cmax)
    v = GradCheck(LossScaler(enabled=False), clip)([("conv.w", g)], fc=("dist_fc_rank0.w_0", fc, True))
    return float(v.norm), np.linalg.norm(g.numpy()), fc.numpy().item()


@pytest.mark.parametrize("always, cmax, scale, norm_after", [
    (False, None, 0.2, 1.0),    # below clip_norm: untouched
    (False, None, 4.0, 5.0),    # above: scaled down to clip_norm
    (True, None, 0.2, 5.0),     # PLSC's always_clip: rescaled to clip_norm, also up
    (True, 2.0, 0.2, 2.0),      # ... with the coefficient capped at clip_norm_max (x2)
])
def test_clipping_has_plscs_meaning(always, cmax, scale, norm_after):
    norm_before, after, fc = _clip_case(always, cmax, scale)
    assert norm_before == pytest.approx(5.0 * scale)
    assert after == pytest.approx(norm_after, rel=1e-5)
    assert fc == 12.0, "no_clip_list ['dist'] leaves the classifier out"


def test_keys_without_effect_are_accepted_with_one_line_each(tmp_path):
    out = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path}", "-o", "Global.max_train_step=1",
               "-o", "Global.use_dali=true", "-o", "Global.device=xpu",
               "-o", "Global.flags={FLAGS_cudnn_exhaustive_search: 0, FLAGS_max_inplace_grad_add: 4}",
               "-o", "Loss.Eval=[{MarginLoss: {m2: 0.5}}]", "-o", "Metric.Train=[{TopkAcc: {topk: [1, 5]}}]",
               "-o", "LRScheduler.verbose=true", "-o", "DistributedStrategy.recompute=false")
    log = (tmp_path / "IResNet18" / "train.log").read_text()
    for key in ("Global.use_dali has no effect", "Global.device=xpu",
                "Global.flags.FLAGS_cudnn_exhaustive_search has no effect on a CPU run",
                "Loss.Eval has no effect", "Metric.Train is not computed", "LRScheduler.verbose has no effect"):
        assert log.count(key) == 1, (key, log[-3000:])
    assert "FLAGS_max_inplace_grad_add" not in log.split("resolved config")[0]
    bad = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'b'}",  # a run is in tmp_path
               "-o", "Global.flags={FLAGS_no_such: 1}",
               check=False)
    assert bad.returncode == 2 and "Global.flags.FLAGS_no_such" in bad.stderr


def test_optimizer_keys_have_plscs_meaning(monkeypatch):
    from plsc.optim.optimizers import _param_groups, build_optimizer, optimizer_settings

    vit = MODELS.build("FaceViT_tiny_patch9_112", num_features=8,
                       arch_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 1.0})
    groups = _param_groups(vit, 0.1, False, ["pos_embed", "norm"])
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in vit.named_parameters() if id(p) in no_decay}
    assert "pos_embed" in names and "norm.weight" in names and "blocks.0.norm1.bias" in names
    assert "blocks.0.attn.qkv.weight" not in names and groups[1]["weight_decay"] == 0.0
    assert len(_param_groups(vit, 0.1, False)) == len([p for p in vit.parameters() if not p.stop_gradient]), \
        "PLSC's AdamW decays every parameter unless told otherwise"
    adamw = load_config(SMOKE, ['Optimizer={name: AdamW, betas: "(0.9, 0.99)", epsilon: 1e-8, weight_decay: 0.1}'])
    s = optimizer_settings(adamw["Optimizer"])  # PLSC's text form, translated when the config loads
    assert (s["beta1"], s["beta2"], s["epsilon"]) == (0.9, 0.99, 1e-8)
    calls = []
    real = paddle.optimizer.Momentum
    monkeypatch.setattr(paddle.optimizer, "Momentum", lambda **kw: (calls.append(kw), real(**kw))[1])
    build_optimizer({"name": "Momentum", "use_master_param": False}, vit, 0.1, multi_precision=True)
    build_optimizer({"name": "Momentum"}, vit, 0.1, multi_precision=True)
    assert [c["multi_precision"] for c in calls] == [False, True], "use_master_param decides O2's master weights"
    assert calls[1]["weight_decay"] == 0.0, "PLSC's default weight decay is 0"


def test_dense_fc_update_when_sparse_update_is_false():
    """sparse_update false: every row's momentum decays and weight decay applies each step (PLSC's dense update),
    equal to paddle's Momentum on a dense gradient that is zero outside the sampled rows."""
    from plsc.nn import build_head
    from plsc.optim.optimizers import build_sparse_optimizer

    spec = {"num_features": 4, "class_num": 40, "pfc_config": {"sample_ratio": 0.2, "model_parallel": False}}
    head = build_head(spec, [{"MarginLoss": {"m2": 0.5, "s": 16.0}}], seed=1)
    opt = build_sparse_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4}, head.weight,
                                 every_row=True)
    ref = paddle.create_parameter([40, 4], "float32")
    ref.set_value(head.weight.numpy())
    mom = paddle.optimizer.Momentum(0.1, 0.9, parameters=[ref], weight_decay=paddle.regularizer.L2Decay(5e-4))
    rng = np.random.default_rng(0)
    for _ in range(3):
        head(paddle.to_tensor(rng.standard_normal((6, 4)).astype(np.float32)),
             paddle.to_tensor(rng.integers(0, 40, 6))).backward()
        index, grad, rows = head.sparse_grad()
        dense = np.zeros((40, 4), np.float32)
        dense[index.numpy()] = grad.numpy()
        (ref * paddle.to_tensor(dense)).sum().backward()
        mom.step()
        mom.clear_grad()
        opt.step(index, grad, 0.1, rows=rows)
        head.clear_sparse_grad()
        np.testing.assert_allclose(head.weight.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)
    assert (np.abs(opt.slots["momentum"].numpy()).sum(axis=1) > 0).all(), "every row moved"


def test_ema_is_real_saved_resumed_and_used_for_eval_and_export(tmp_path):
    run = ["Global.save_unit=step", "Global.save_interval=100", "EMA={decay: 0.5, thres_steps: false}"]
    e = _engine(tmp_path / "a", "Global.max_train_step=3", *run)
    weights = []
    step = e.train_step
    e.train_step = lambda b: (step(b), weights.append({n: p.numpy().copy() for n, p in e.ema.params}))[0]
    first = {n: p.numpy().copy() for n, p in e.ema.params}
    e.train()
    name = e.ema.params[0][0]
    expect = first[name]
    for w in weights:
        expect = 0.5 * expect + 0.5 * w[name]
    np.testing.assert_allclose(e.ema.shadow[name].numpy(), expect, rtol=1e-5, atol=1e-7)
    latest = tmp_path / "a" / "IResNet18" / "latest"
    saved = np.load(latest / "ema.npz")
    np.testing.assert_array_equal(saved[name], e.ema.shadow[name].numpy())
    resumed = _engine(tmp_path / "b", "Global.max_train_step=4", *run, f"Global.checkpoint={latest}")
    assert resumed.ema.updates == 3
    np.testing.assert_array_equal(resumed.ema.shadow[name].numpy(), saved[name])
    ev = _engine(tmp_path / "c", *run, f"Global.pretrained_model={latest}", mode="eval")
    got = dict(ev.backbone.named_parameters())[name].numpy()
    np.testing.assert_array_equal(got, saved[name])  # plsc-eval / plsc-export see the EMA weights
    raw = _engine(tmp_path / "d", f"Global.pretrained_model={latest}", mode="eval")  # no EMA section: raw weights
    assert not np.array_equal(dict(raw.backbone.named_parameters())[name].numpy(), saved[name])


def test_pretrained_model_as_a_plsc_prefix(tmp_path):
    """Global.pretrained_model=<PLSC prefix>: <prefix>.pdparams + <prefix>_rank{r}.pdparams, through plsc.interop."""
    meta = json.loads(open(os.path.join(FIXTURES, "fixtures.json")).read())["fixtures"]["plsc_iresnet_thin"]
    prefix = tmp_path / "output" / "IResNet18" / "latest"
    os.makedirs(prefix.parent)
    for suffix in ("", "_rank0", "_rank1"):
        shutil.copy(os.path.join(FIXTURES, f"plsc_iresnet_thin{suffix}.pdparams"), f"{prefix}{suffix}.pdparams")
    common = [f"Model.arch_kwargs={json.dumps(meta['arch_kwargs'])}", f"Model.num_features={meta['num_features']}",
              f"Global.pretrained_model={prefix}", "Global.max_train_step=1"]
    e = _engine(tmp_path / "same", *common, f"Model.class_num={meta['class_num']}",
                f"DataLoader.Train.dataset.num_classes={meta['class_num']}")
    from plsc.interop import load_source

    src = load_source(str(prefix))
    for k, v in e.backbone.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), src.backbone[k], err_msg=k)
    np.testing.assert_array_equal(e.head.weight.numpy(), src.fc)
    fresh = _engine(tmp_path / "new", *common)  # 16 classes: the backbone only, the FC starts fresh
    assert not np.array_equal(fresh.head.weight.numpy()[:10], src.fc)
    log = (tmp_path / "new" / "IResNet18" / "train.log").read_text()
    assert "loaded backbone weights from the PLSC file" in log and "the FC starts fresh" in log
