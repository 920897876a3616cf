"""Backbones: exact sizes, MACs, layouts, recompute (incl. BN statistics), FaceViT masking, jit round trip, errors."""
import numpy as np
import paddle
import pytest

from plsc.errors import ConfigError
from plsc.models import count_macs, count_params
from plsc.models.face_vit import Block as VitBlock
from plsc.models.iresnet import IBasicBlock
from plsc.registry import MODELS

IRESNET_LAYERS = {"IResNet18": [2, 2, 2, 2], "IResNet34": [3, 4, 6, 3], "IResNet50": [3, 4, 14, 3],
                  "IResNet100": [3, 13, 30, 3], "IResNet200": [6, 26, 60, 6], "IResNet2060": [3, 128, 896, 3]}
MBF = {"MobileFaceNet_base": ([1, 4, 6, 2], 2), "MobileFaceNet_large": ([2, 8, 12, 4], 4)}
# (embed_dim, depth, has a mask token: mask_ratio > 0 by default)
VIT = {"FaceViT_tiny_patch9_112": (256, 12, True), "FaceViT_small_patch9_112": (512, 12, True),
       "FaceViT_base_patch9_112": (512, 24, True), "FaceViT_large_patch9_112": (768, 24, True),
       "FaceViT_huge_patch9_112": (1024, 48, False)}
IR = {"IR_18": ([2, 2, 2, 2], False), "IR_34": ([3, 4, 6, 3], False), "IR_50": ([3, 4, 14, 3], False),
      "IR_101": ([3, 13, 30, 3], False), "IR_SE_50": ([3, 4, 14, 3], True)}  # (layers, squeeze-excitation)
ALL = sorted(list(IRESNET_LAYERS) + list(MBF) + list(VIT) + list(IR))

# reduced sizes for the slow checks: one per family
SMALL = {
    "IResNet18": {"layers": [2, 1, 1, 1], "widths": [8, 16, 16, 32]},
    "MobileFaceNet_large": {"blocks": [2, 1, 1, 1], "scale": 1},
    "FaceViT_tiny_patch9_112": {"embed_dim": 32, "depth": 2, "num_heads": 4},
    # AdaFace IR: one entry per 5-character name prefix (how test_reduced_forward_every_name finds a family)
    **{name: {"layers": [1, 1, 1, 1], "widths": [16, 16, 32, 32]} for name in ("IR_18", "IR_34", "IR_50", "IR_101",
                                                                                "IR_SE_50")},
}


def images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return paddle.to_tensor(rng.uniform(-1, 1, (n, 3, 112, 112)).astype("float32"))


# ---------------------------------------------------------------- hand-derived parameter counts
def iresnet_params(layers, widths=(64, 128, 256, 512), nf=512, adaface=False, se=False):
    """insightface IResNet; adaface: AdaFace's IR (no conv shortcut where the width stays), se: IR-SE."""
    w0 = widths[0]
    total = 27 * w0 + 2 * w0 + w0  # conv3x3 stem, BN, PReLU
    cin = w0
    for n, w in zip(layers, widths):
        for i in range(n):
            i_ch = cin if i == 0 else w
            total += 2 * i_ch + 9 * i_ch * w + 2 * w + w + 9 * w * w + 2 * w  # BN conv BN PReLU conv BN
            if se:
                total += 2 * w * (w // 16)  # conv1x1 C -> C/16 -> C, no bias
            if i == 0 and not (adaface and i_ch == w):
                total += i_ch * w + 2 * w  # conv1x1 stride 2 + BN shortcut
        cin = w
    return total + 2 * cin + (cin * 49 * nf + nf) + 2 * nf  # BN2d, fc, feature BN1d (scale + shift)


def _cb(cin, cout, k, groups=1, act=True):
    return k * k * (cin // groups) * cout + 2 * cout + (cout if act else 0)


def _dw(cin, cout, inner):
    return _cb(cin, inner, 1) + _cb(inner, inner, 3, inner) + _cb(inner, cout, 1, act=False)


def mbf_params(blocks, s, nf=512):
    c1, c2 = 64 * s, 128 * s
    total = _cb(3, c1, 3)
    total += _cb(c1, c1, 3, 64) if blocks[0] == 1 else blocks[0] * _dw(c1, c1, 128)
    total += _dw(c1, c1, 128) + blocks[1] * _dw(c1, c1, 128)
    total += _dw(c1, c2, 256) + blocks[2] * _dw(c2, c2, 256)
    total += _dw(c2, c2, 512) + blocks[3] * _dw(c2, c2, 256)
    total += _cb(c2, 512, 1)
    return total + _cb(512, 512, 7, 512, act=False) + 512 * nf + 2 * nf  # GDC


def vit_params(d, depth, nf=512, mlp=4, mask=True):
    h = mlp * d
    block = 4 * d + 3 * d * d + (d * d + d) + (d * h + h) + (h * d + d)  # 2 LN, qkv, proj, fc1, fc2
    total = (3 * 81 * d + d) + 144 * d + (d if mask else 0) + depth * block + 2 * d
    return total + 144 * d * d + 2 * d + d * nf + 2 * nf


def expected_params(name):
    if name in IRESNET_LAYERS:
        return iresnet_params(IRESNET_LAYERS[name])
    if name in MBF:
        return mbf_params(*MBF[name])
    if name in IR:
        return iresnet_params(IR[name][0], adaface=True, se=IR[name][1])
    d, depth, mask = VIT[name]
    return vit_params(d, depth, mask=mask)


def test_every_name_is_registered():
    assert set(ALL) <= set(MODELS.names())


@pytest.mark.parametrize("name", ALL)
def test_real_size_builds_with_the_derived_parameter_count(name):
    with paddle.LazyGuard():  # the full architecture, without spending seconds on random init
        model = MODELS.build(name)
    assert count_params(model) == expected_params(name)


def test_iresnet50_real_size_matches_published_params_and_macs():
    paddle.seed(0)
    model = MODELS.build("IResNet50")
    assert abs(count_params(model) / 1e6 - 43.6) < 0.05  # published 43.6M
    assert abs(count_macs(model) / 1e9 - 6.31) < 0.01  # published 6.31G
    model.eval()
    emb = model(images(1))
    assert emb.shape == [1, 512] and np.isfinite(emb.numpy()).all()
    feat = model.features.weight
    assert feat.stop_gradient and np.all(feat.numpy() == 1.0)  # insightface: fixed feature-BN scale
    assert model.fp32_layers() == [model.bn2, model.dropout, model.fc, model.features]


def test_iresnet18_macs_and_real_size_small_models_run():
    paddle.seed(0)
    assert abs(count_macs(MODELS.build("IResNet18")) / 1e9 - 2.61) < 0.01  # published 2.61G
    d, n = 256, 144  # FaceViT tiny by hand: patch conv, 12 x (qkv, proj, MLP, q.k^T, attn.v), neck
    vit_macs = n * d * 243 + 12 * (n * (3 * d * d + d * d + 8 * d * d) + 2 * n * n * d) + n * d * d + d * 128
    for name in ("MobileFaceNet_base", "MobileFaceNet_large", "FaceViT_tiny_patch9_112"):
        model = MODELS.build(name, num_features=128)
        if name.startswith("FaceViT"):
            assert count_macs(model) == vit_macs
        model.train()
        emb = model(images(2))
        assert emb.shape == [2, 128] and np.isfinite(emb.numpy()).all()


@pytest.mark.parametrize("name", ALL)
def test_reduced_forward_every_name(name):
    family = next(k for k in SMALL if k[:5] == name[:5])
    model = MODELS.build(name, num_features=16, arch_kwargs=SMALL[family])
    for training in (True, False):
        model.train() if training else model.eval()
        emb = model(images(2))
        assert emb.shape == [2, 16] and np.isfinite(emb.numpy()).all()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_nhwc_equals_nchw_with_the_same_weights(name):
    paddle.seed(0)
    a = MODELS.build(name, num_features=16, arch_kwargs=SMALL[name])
    b = MODELS.build(name, num_features=16, arch_kwargs=SMALL[name], data_format="NHWC")
    b.set_state_dict(a.state_dict())  # identical parameter layout: checkpoints are interchangeable
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]
    seen = []
    first_conv = next(m for m in b.sublayers() if isinstance(m, paddle.nn.Conv2D))
    first_conv.register_forward_post_hook(lambda layer, inp, out: seen.append(list(out.shape)))
    x = images(3)
    for training in (False, True):
        a.train() if training else a.eval()
        b.train() if training else b.eval()
        paddle.seed(3)  # same dropout / drop-path / token-mask draws for both
        out_a = a(x).numpy()
        paddle.seed(3)
        tol = 3e-4 if training else 1e-5  # batch-stat sums run in a different order in NHWC
        np.testing.assert_allclose(out_a, b(x).numpy(), rtol=tol, atol=tol)
    assert seen[0][-1] == first_conv.weight.shape[0]  # channels last: the NHWC model really ran NHWC
    assert count_macs(a) == count_macs(b) > 0


def _train_step(name, recompute, x, counter=None, **extra):
    paddle.seed(1)
    model = MODELS.build(name, num_features=16, arch_kwargs=SMALL[name], recompute=recompute, dropout=0.3, **extra)
    if counter is not None:
        for m in model.sublayers():
            if isinstance(m, (IBasicBlock, VitBlock)) or type(m).__name__ == "DepthWise":
                m.register_forward_post_hook(lambda *a: counter.append(1))
    model.train()
    paddle.seed(5)
    out = model(x)
    loss = (out ** 2).mean() + 0.01 * out.sum()
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    stats = {n: p.numpy().copy() for n, p in model.named_parameters() if n.endswith(("_mean", "_variance"))}
    return loss.item(), grads, stats


@pytest.mark.parametrize("name", sorted(SMALL))
def test_recompute_gives_same_loss_grads_and_bn_stats(name):
    extra = {"mask_ratio": 0.25, "drop_path_rate": 0.5} if name.startswith("FaceViT") else {}
    x = images(4)
    plain_calls, re_calls = [], []
    loss0, g0, s0 = _train_step(name, False, x, plain_calls, **extra)
    loss1, g1, s1 = _train_step(name, True, x, re_calls, **extra)
    assert len(re_calls) == 2 * len(plain_calls) > 0  # every block really ran again in backward
    assert loss0 == loss1
    assert sorted(g0) == sorted(g1)
    for k in g0:
        np.testing.assert_allclose(g0[k], g1[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for k in s0:
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)
    if s0:  # the stats did move (once)
        assert any(np.abs(v).max() > 0 for k, v in s0.items() if k.endswith("_mean"))


@pytest.mark.parametrize("name, option, reruns", [
    ("IResNet18", {"names": ["layer2", "layer4"]}, 2),         # PLSC's names: two stages, one block each here
    ("IResNet18", {"layerlist_interval": 1}, 0),              # IResNet's stages are not block lists (as in PLSC)
    ("FaceViT_tiny_patch9_112", {"layerlist_interval": 2}, 1),  # blocks 0, 2, ... of the 2 here
    ("MobileFaceNet_large", {}, None),                         # every block of the block list
])
def test_plscs_recompute_dict(name, option, reruns):
    x = images(2)
    plain, re = [], []
    loss0, g0, s0 = _train_step(name, False, x, plain)
    loss1, g1, s1 = _train_step(name, option, x, re)
    assert len(re) - len(plain) == (len(plain) if reruns is None else reruns)
    assert loss0 == loss1
    for k in g0:
        np.testing.assert_allclose(g0[k], g1[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for k in s0:
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)
    with pytest.raises(ConfigError, match="has no part 'layer9'"):
        MODELS.build("IResNet18", num_features=16, arch_kwargs=SMALL["IResNet18"], recompute={"names": ["layer9"]})
    with pytest.raises(ConfigError, match="layerlist_interval must be an integer >= 1"):
        MODELS.build(name, num_features=16, arch_kwargs=SMALL[name], recompute={"layerlist_interval": 0})


def test_plain_fleet_recompute_would_update_bn_stats_twice():
    """Why the momentum guard exists: without it the backward re-forward moves the stats again."""
    from paddle.distributed.fleet.utils import recompute

    block = IBasicBlock(4, 4)
    block.train()
    x = paddle.randn([2, 4, 8, 8])
    x.stop_gradient = False
    recompute(block, x).sum().backward()
    once = 0.1 * x.numpy().transpose(1, 0, 2, 3).reshape(4, -1).mean(1)  # bn1: 0.9 * 0 + 0.1 * batch mean
    assert not np.allclose(block.bn1._mean.numpy(), once, atol=1e-6)
    np.testing.assert_allclose(block.bn1._mean.numpy(), once * 1.9, rtol=1e-4, atol=1e-6)


def test_vit_mask_ratio_changes_train_outputs_only():
    ak = SMALL["FaceViT_tiny_patch9_112"]
    paddle.seed(0)
    masked = MODELS.build("FaceViT_tiny_patch9_112", num_features=16, arch_kwargs=ak, mask_ratio=0.5,
                          drop_path_rate=0.0)
    plain = MODELS.build("FaceViT_tiny_patch9_112", num_features=16, arch_kwargs=ak, mask_ratio=0.0,
                         drop_path_rate=0.0)
    state = {k: v for k, v in masked.state_dict().items() if k != "mask_token"}
    plain.set_state_dict(state)
    tokens = []
    masked.blocks[0].register_forward_pre_hook(lambda layer, inp: tokens.append(inp[0].shape[1]))
    x = images(3)
    masked.eval(), plain.eval()
    np.testing.assert_array_equal(masked(x).numpy(), plain(x).numpy())
    masked.train(), plain.train()
    t1, t2, p1 = masked(x).numpy(), masked(x).numpy(), plain(x).numpy()
    np.testing.assert_array_equal(p1, plain(x).numpy())  # no masking: deterministic
    assert not np.allclose(t1, p1, atol=1e-4) and not np.allclose(t1, t2, atol=1e-4)
    assert tokens == [144, 72, 72]  # eval keeps all 144 tokens; training keeps int(144 * 0.5)


@pytest.mark.parametrize("name,fmt", [("IResNet18", "NHWC"), ("MobileFaceNet_large", "NCHW"),
                                      ("FaceViT_tiny_patch9_112", "NHWC")])
def test_jit_save_load_round_trip(name, fmt, tmp_path):
    model = MODELS.build(name, num_features=16, arch_kwargs=SMALL[name], data_format=fmt)
    model.train()
    model(images(4))  # move the BN statistics away from their init
    model.eval()
    x = images(3, seed=1)
    ref = model(x).numpy()
    path = str(tmp_path / "inference")
    paddle.jit.save(model, path, input_spec=[paddle.static.InputSpec([None, 3, 112, 112], "float32", "x")])
    loaded = paddle.jit.load(path)
    loaded.eval()
    np.testing.assert_allclose(loaded(x).numpy(), ref, rtol=1e-5, atol=1e-6)
    assert loaded(images(1)).shape == [1, 16]  # dynamic batch
    from plsc.export import _cpu_onednn
    from plsc.inference import onednn_unsafe

    verdict = _cpu_onednn(model)  # what plsc-export writes to meta.json
    assert verdict["safe"] == (fmt == "NCHW"), verdict  # eval-mode fixed-scale BN is a standard batch_norm
    assert (onednn_unsafe({"cpu_onednn": verdict}) is None) == verdict["safe"]
    assert onednn_unsafe({}) is not None, "without plsc's meta.json the predictor runs without oneDNN"


def test_fp32_layers_are_the_necks():
    mbf = MODELS.build("MobileFaceNet_base", num_features=16, arch_kwargs={"blocks": [1, 1, 1, 1], "scale": 1})
    assert mbf.fp32_layers() == [mbf.features]
    vit = MODELS.build("FaceViT_tiny_patch9_112", num_features=16, arch_kwargs=SMALL["FaceViT_tiny_patch9_112"])
    assert vit.fp32_layers() == [vit.norm, vit.dropout, vit.feature]
    for m in (mbf, vit):
        assert all(any(layer is s for s in m.sublayers()) for layer in m.fp32_layers())


def test_frozen_feature_scale_survives_an_optimizer_step():
    model = MODELS.build("IResNet18", num_features=16, arch_kwargs=SMALL["IResNet18"])
    opt = paddle.optimizer.Momentum(learning_rate=0.1, parameters=model.parameters(), weight_decay=5e-4)
    bias0 = model.features.bias.numpy().copy()
    model.train()
    (model(images(4)) * paddle.arange(16, dtype="float32")).sum().backward()
    opt.step()
    assert np.all(model.features.weight.numpy() == 1.0)
    assert not np.array_equal(model.features.bias.numpy(), bias0)
    # it computes exactly what a plain BatchNorm1D with the same state computes (train and eval)
    ref = paddle.nn.BatchNorm1D(16)
    ref.set_state_dict(model.features.state_dict())
    z = paddle.randn([5, 16]) * 3 + 1
    for training in (True, False):
        ref.train() if training else ref.eval()
        model.features.train() if training else model.features.eval()
        np.testing.assert_allclose(model.features(z).numpy(), ref(z).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.features._mean.numpy(), ref._mean.numpy(), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"data_format": "NCWH"}, "Model.data_format: 'NCWH'.*NCHW, NHWC"),
    ({"arch_kwargs": {"depth": 2}}, r"Model.arch_kwargs: unknown key 'depth' for IResNet18; valid: layers, widths"),
    ({"mask_ratio": 0.1}, "Model.mask_ratio is a FaceViT option; IResNet18"),
    ({"drop_path_rate": 0.1}, "Model.drop_path_rate is a FaceViT option"),
    ({"foo": 1}, "unknown option 'foo' for IResNet18"),
    ({"arch_kwargs": {"layers": [1, 1, 1]}}, "arch_kwargs.layers"),
    ({"dropout": 1.5}, r"Model.dropout: 1.5 .*\[0, 1\)"),
    ({"num_features": 0}, "Model.num_features"),
])
def test_bad_options_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MODELS.build("IResNet18", **kwargs)


def test_bad_vit_options_and_unknown_name():
    with pytest.raises(ConfigError, match="Model.mask_ratio: 1.2"):
        MODELS.build("FaceViT_tiny_patch9_112", mask_ratio=1.2)
    with pytest.raises(ConfigError, match="embed_dim 30 .* not divisible by num_heads 4"):
        MODELS.build("FaceViT_tiny_patch9_112", arch_kwargs={"embed_dim": 30, "num_heads": 4})
    with pytest.raises(ConfigError, match="unknown key 'widths' for MobileFaceNet_base; valid: blocks, scale"):
        MODELS.build("MobileFaceNet_base", arch_kwargs={"widths": [1]})
    with pytest.raises(ConfigError, match="unknown model 'IResNet17'.*IResNet18.*MobileFaceNet_base"):
        MODELS.build("IResNet17")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_wrong_input_size_says_112(name):
    model = MODELS.build(name, num_features=16, arch_kwargs=SMALL[name])
    model.eval()
    for shape in ([1, 3, 96, 96], [1, 1, 112, 112], [3, 112, 112]):
        with pytest.raises(ConfigError, match=r"112x112 expected"):
            model(paddle.zeros(shape))


def test_neck_runs_in_fp32_with_autocast_off():
    from plsc.models import Backbone

    seen = []

    def neck(t):
        seen.append((t.dtype, paddle.get_default_dtype()))
        return t * 2

    out = Backbone.run_neck(neck, paddle.ones([2, 3], dtype="float16"))
    assert out.dtype == paddle.float32 and seen[0][0] == paddle.float32
    np.testing.assert_array_equal(out.numpy(), np.full([2, 3], 2.0, np.float32))


def test_vit_mask_token_exists_only_when_masking_and_gets_a_gradient():
    ak = SMALL["FaceViT_tiny_patch9_112"]
    assert "mask_token" not in MODELS.build("FaceViT_tiny_patch9_112", arch_kwargs=ak, mask_ratio=0).state_dict()
    model = MODELS.build("FaceViT_tiny_patch9_112", num_features=8, arch_kwargs=ak, mask_ratio=0.3)
    model.train()
    model(images(2))[0].sum().backward()  # (a plain sum through the last BN has zero gradient)
    assert model.mask_token.grad is not None and np.abs(model.mask_token.grad.numpy()).sum() > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fp32_layers_hold_the_neck_and_no_block(name):
    """What FP16 O2 keeps in fp32 (paddle.amp.decorate excluded_layers): the embedding neck, no block."""
    model = MODELS.build(name, num_features=16, arch_kwargs=SMALL[name])
    neck = {id(p) for layer in model.fp32_layers() for p in layer.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    last_linear = [n for n, p in model.named_parameters() if p.ndim == 2][-1]
    assert neck and any(names[i] == last_linear for i in neck), "the embedding projection stays fp32"
    body = [n for n, p in model.named_parameters() if id(p) not in neck and n.endswith("weight") and p.ndim >= 2]
    assert body, "convs / linears of the blocks are cast to low precision"


def test_parameter_names_follow_insightface_and_plsc():
    """Checkpoints of the PLSC / insightface layouts load by name (PLSC's model zoo has IResNet50 and FaceViT)."""
    r = MODELS.build("IResNet18", num_features=16, arch_kwargs=SMALL["IResNet18"]).state_dict()
    for key in ("conv1.weight", "bn1._mean", "prelu._weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.weight", "layer1.0.prelu._weight", "layer1.0.conv2.weight", "layer1.0.bn3._variance",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight", "layer4.0.conv2.weight",
                "bn2.weight", "fc.weight", "fc.bias", "features.weight", "features.bias", "features._mean"):
        assert key in r, key
    v = MODELS.build("FaceViT_tiny_patch9_112", num_features=16, arch_kwargs=SMALL["FaceViT_tiny_patch9_112"])
    v = v.state_dict()
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "mask_token", "blocks.0.norm1.weight",
                "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight",
                "blocks.1.mlp.fc2.bias", "norm.weight", "feature.0.weight", "feature.1._mean", "feature.2.weight",
                "feature.3.bias"):
        assert key in v, key
    assert "blocks.0.attn.qkv.bias" not in v and "feature.0.bias" not in v
