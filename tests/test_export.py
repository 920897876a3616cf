"""plsc.export / plsc.inference: Paddle inference + ONNX export of backbones, parity, metadata, bad input."""
import json
import os

import numpy as np
import paddle
import pytest

from plsc.errors import CheckpointError, ConfigError, PlscError
from plsc.export import ExportError, export_model, run_parity
from plsc.inference import load_embedder


class TinyNet(paddle.nn.Layer):
    """conv + BN + PReLU + linear + BN1D: the op mix of the face backbones, at a size that exports in ~1 s."""

    def __init__(self, num_features=16):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, stride=4, padding=1)
        self.bn = paddle.nn.BatchNorm2D(8)
        self.act = paddle.nn.PReLU(8)
        self.fc = paddle.nn.Linear(8 * 28 * 28, num_features)
        self.features = paddle.nn.BatchNorm1D(num_features)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        return self.features(self.fc(paddle.flatten(x, 1)))


def _tiny(seed=0):
    paddle.seed(seed)
    model = TinyNet()
    # non-trivial BN statistics, so that a forgotten eval() or a dropped buffer shows up
    for bn in (model.bn, model.features):
        bn._mean.set_value(paddle.uniform(bn._mean.shape, min=-0.5, max=0.5))
        bn._variance.set_value(paddle.uniform(bn._variance.shape, min=0.5, max=2.0))
    model.train()  # export must switch to eval itself
    return model


def _dygraph(model, x):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def _images(n, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 112, 112)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    model = _tiny()
    out = str(tmp_path_factory.mktemp("onnx_export"))
    result = export_model(model, out, export_type="onnx", input_shape=(None, 3, 112, 112), opset_version=11,
                          meta={"model_name": "TinyNet", "embedding_size": 16, "source_config": {"Model": {"x": 1}}})
    return model, out, result


def test_onnx_export_files_meta_and_parity(onnx_export, capsys):
    model, out, result = onnx_export
    for key in ("model_file", "params_file", "onnx_file", "meta_file"):
        assert os.path.isfile(result[key]), key
    assert set(result["parity"]) == {"paddle_inference", "onnxruntime"}
    for entry in result["parity"].values():
        assert entry["ok"] and entry["max_rel_err"] < 1e-3
        assert set(k for k in entry if k.startswith("batch_")) == {"batch_1", "batch_4"}
    meta = json.load(open(result["meta_file"]))
    assert meta["input_shape"] == [None, 3, 112, 112]
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    assert meta["channel_order"] == "RGB" and meta["layout"] == "NCHW"
    assert meta["embedding_size"] == 16 and meta["model_name"] == "TinyNet"
    assert meta["source_config"] == {"Model": {"x": 1}}
    assert meta["paddle_version"] == paddle.__version__ and meta["opset_version"] == 11
    assert model.training, "export must not change the caller's model"


def test_onnx_runs_in_onnxruntime_at_batch_1_and_7(onnx_export):
    import onnxruntime as ort

    model, _, result = onnx_export
    sess = ort.InferenceSession(result["onnx_file"], providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "images" and sess.get_outputs()[0].name == "embeddings"
    assert not isinstance(sess.get_inputs()[0].shape[0], int), "batch dimension must be dynamic"
    for n in (1, 7):
        x = _images(n, seed=n)
        y = sess.run(None, {"images": x})[0]
        assert y.shape == (n, 16)
        assert _rel(y, _dygraph(model, x)) < 1e-4


@pytest.mark.parametrize("which", ["dir", "json", "onnx"])
def test_load_embedder_matches_dygraph(onnx_export, which):
    model, out, result = onnx_export
    path = {"dir": out, "json": result["model_file"], "onnx": result["onnx_file"]}[which]
    embed = load_embedder(path, max_batch=4)  # 10 images -> batches of 4, 4, 2
    x = _images(10, seed=3)
    y = embed(x)
    assert y.dtype == np.float32 and y.shape == (10, 16)
    assert _rel(y, _dygraph(model, x)) < 1e-4
    assert _rel(embed(x[:1]), _dygraph(model, x[:1])) < 1e-4


def test_embedder_rejects_wrong_input_shape(onnx_export):
    _, out, result = onnx_export
    for path in (out, result["onnx_file"]):
        embed = load_embedder(path)
        with pytest.raises(PlscError, match=r"\[N, 3, 112, 112\].*\[2, 112, 112, 3\]"):
            embed(np.zeros((2, 112, 112, 3), np.float32))
        with pytest.raises(PlscError, match="shape"):
            embed(np.zeros((3, 112, 112), np.float32))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "mixed"])
def test_paddle_export_from_low_precision_weights_is_fp32(tmp_path, dtype):
    model = _tiny(seed=2)
    model.eval()
    x = _images(3, seed=4)
    model.to(dtype="float16" if dtype == "mixed" else dtype)
    if dtype == "mixed":  # O2 keeps norm layers in fp32
        model.bn.to(dtype="float32")
        model.features.to(dtype="float32")
    dtypes = {str(p.dtype) for p in model.parameters()}
    assert dtypes == ({"paddle.float16", "paddle.float32"} if dtype == "mixed" else {f"paddle.{dtype}"})
    result = export_model(model, str(tmp_path), export_type="paddle", input_shape=(3, 112, 112))
    assert "onnx_file" not in result and set(result["parity"]) == {"paddle_inference"}
    assert {str(p.dtype) for p in model.parameters()} == dtypes, "caller's model must stay untouched"
    meta = json.load(open(result["meta_file"]))
    assert meta["weights_dtype"] == "float32" and meta["export_type"] == "paddle"
    embed = load_embedder(str(tmp_path))
    y = embed(x)
    assert y.dtype == np.float32
    model.to(dtype="float32")  # the rounded weights, in fp32: what the export must reproduce
    assert _rel(y, _dygraph(model, x)) < 1e-4
    # the saved params are fp32: file size = 4 bytes per element (+ small headers)
    n_elem = sum(int(np.prod(p.shape)) for p in model.parameters())
    assert os.path.getsize(result["params_file"]) >= 4 * n_elem


def test_fp16_onnx_export_runs_on_cpu(tmp_path):
    import onnx

    model = _tiny(seed=5)
    result = export_model(model, str(tmp_path), export_type="onnx", fp16=True)
    weights = onnx.load(result["onnx_file"])
    floats = [a.t.data_type for n in weights.graph.node if n.op_type == "Constant" for a in n.attribute
              if a.t.dims and np.prod(a.t.dims) > 100]
    floats += [t.data_type for t in weights.graph.initializer if np.prod(t.dims) > 100]
    assert floats and all(d == onnx.TensorProto.FLOAT16 for d in floats)
    assert json.load(open(result["meta_file"]))["weights_dtype"] == "float16"
    assert result["parity"]["onnxruntime"]["tol"] == 1e-2 and result["parity"]["onnxruntime"]["ok"]
    x = _images(5, seed=6)
    y = load_embedder(result["onnx_file"])(x)
    assert y.dtype == np.float32 and _rel(y, _dygraph(model, x)) < 1e-2


def test_parity_failure_names_the_backend(onnx_export, tmp_path):
    model, out, result = onnx_export
    other = _tiny(seed=9)  # a different model as the reference: every backend disagrees
    with pytest.raises(ExportError, match=r"paddle_inference: max relative error .*onnxruntime: max relative"):
        run_parity(other, result, (3, 112, 112), log=lambda s: None)


def test_bad_export_type_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"'tensorrt'.*paddle, onnx"):
        export_model(_tiny(), str(tmp_path), export_type="tensorrt")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("shape", [(112, 112), (None, 3, 0, 112), ("3", 112, 112), (0, 3, 112, 112)])
def test_bad_input_shape(tmp_path, shape):
    with pytest.raises(ConfigError, match="Export.input_shape"):
        export_model(_tiny(), str(tmp_path), input_shape=shape)


def test_input_shape_the_model_cannot_take(tmp_path):
    with pytest.raises(ExportError, match=r"\[1, 3, 96, 96\].*Export.input_shape"):
        export_model(_tiny(), str(tmp_path), input_shape=(3, 96, 96))


def test_bad_opset(tmp_path):
    with pytest.raises(ConfigError, match="Export.opset_version"):
        export_model(_tiny(), str(tmp_path), export_type="onnx", opset_version=3)


def test_embedding_size_mismatch(tmp_path):
    with pytest.raises(ExportError, match="num_features is 512.*16-dim"):
        export_model(_tiny(), str(tmp_path), meta={"embedding_size": 512})


def test_fp16_paddle_export_on_cpu_build_is_a_config_error(tmp_path):
    if paddle.is_compiled_with_cuda():
        pytest.skip("this check is about CPU-only Paddle builds")
    with pytest.raises(ConfigError, match="Export.fp16.*CUDA"):
        export_model(_tiny(), str(tmp_path), export_type="paddle", fp16=True)


def test_load_embedder_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no_such.onnx"):
        load_embedder(str(tmp_path / "no_such.onnx"))
    with pytest.raises(CheckpointError, match="nowhere"):
        load_embedder(str(tmp_path / "nowhere"))
    (tmp_path / "inference.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"missing inference.pdiparams"):
        load_embedder(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"missing inference.pdiparams"):
        load_embedder(str(tmp_path / "inference.json"))


def test_load_embedder_corrupt_files(tmp_path, onnx_export):
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError, match="bad.onnx: cannot load"):
        load_embedder(str(tmp_path / "bad.onnx"))
    (tmp_path / "inference.json").write_text("{ truncated")
    (tmp_path / "inference.pdiparams").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="inference.json: cannot load the Paddle inference model"):
        load_embedder(str(tmp_path))
    # a valid program with truncated weights
    _, _, result = onnx_export
    (tmp_path / "inference.json").write_bytes(open(result["model_file"], "rb").read())
    (tmp_path / "inference.pdiparams").write_bytes(open(result["params_file"], "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="cannot load the Paddle inference model"):
        load_embedder(str(tmp_path))(_images(1))


class TinyNHWC(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 8, stride=8, data_format="NHWC")
        self.fc = paddle.nn.Linear(4 * 14 * 14, 8)

    def forward(self, x):  # takes NCHW like every backbone, computes in NHWC
        return self.fc(paddle.flatten(self.conv(x.transpose([0, 2, 3, 1])), 1))


def test_nhwc_graph_to_onnx_is_a_clear_error_not_a_crash(tmp_path):
    # paddle2onnx aborts its process on NHWC convolutions; the export must survive and say what to do
    with pytest.raises(ExportError, match=r"NHWC.*Model.data_format=NCHW"):
        export_model(TinyNHWC(), str(tmp_path), export_type="onnx")
    # the same graph exports fine as a Paddle inference model (input still NCHW)
    model = TinyNHWC()
    result = export_model(model, str(tmp_path / "paddle"), export_type="paddle")
    x = _images(2)
    assert _rel(load_embedder(result["out_dir"])(x), _dygraph(model, x)) < 1e-4


def test_fixed_batch_export_and_embedder_padding(tmp_path):
    model = _tiny(seed=3)
    result = export_model(model, str(tmp_path), export_type="paddle", input_shape=[2, 3, 112, 112])
    assert set(result["parity"]["paddle_inference"]) >= {"batch_2"}
    embed = load_embedder(str(tmp_path))
    assert embed.fixed_batch == 2
    x = _images(3, seed=8)  # 3 images -> batches of 2 and 1 (+1 zero image)
    assert _rel(embed(x), _dygraph(model, x)) < 1e-4


def test_verification_on_exported_models_equals_dygraph(onnx_export, tmp_path):
    """plsc-eval's metric on an exported model (Paddle inference and ONNX) = on the dygraph model."""
    import cv2

    from plsc.data.bin import save_bin
    from plsc.metrics.evaluator import evaluate_bins

    rng = np.random.default_rng(11)
    images, issame = [], []
    for i in range(40):
        a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        same = i % 2 == 0
        b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8) if same \
            else rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        images += [cv2.imencode(".png", a)[1].tobytes(), cv2.imencode(".png", b)[1].tobytes()]
        issame.append(same)
    save_bin(str(tmp_path / "toy.bin"), images, issame)
    model, out, result = onnx_export

    def dygraph(x):
        return _dygraph(model, x)

    bins = {"toy": str(tmp_path / "toy.bin")}
    ref = evaluate_bins(dygraph, bins, batch_size=16)["toy"]
    for path in (out, result["onnx_file"]):
        got = evaluate_bins(load_embedder(path), bins, batch_size=16)["toy"]
        assert got["acc"] == ref["acc"] and got["fold_acc"] == ref["fold_acc"]
        assert abs(got["xnorm"] - ref["xnorm"]) < 1e-4 * ref["xnorm"]


# ---------------------------------------------------------------- the registered backbones (reduced sizes)
BACKBONES = {
    "IResNet18": {"layers": [1, 1, 1, 1], "widths": [8, 16, 16, 32]},
    "MobileFaceNet_base": {"blocks": [1, 1, 1, 1], "scale": 1},
    "FaceViT_tiny_patch9_112": {"embed_dim": 32, "depth": 1, "num_heads": 2},
}


def _smoke_cfg(name, data_format="NCHW"):
    from plsc.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    arch = json.dumps(BACKBONES[name])
    return load_config(os.path.join(root, "configs/smoke/IResNet_tiny_random.yaml"),
                       [f"Model.name={name}", f"Model.data_format={data_format}", f"Model.arch_kwargs={arch}"])


def _trained_like(model):
    """Non-trivial BN statistics (fresh ones are 0 / 1 and would hide a BN left in train mode)."""
    for layer in model.sublayers():
        if isinstance(layer, (paddle.nn.BatchNorm2D, paddle.nn.BatchNorm1D)):
            layer._mean.set_value(paddle.uniform(layer._mean.shape, min=-0.2, max=0.2))
            layer._variance.set_value(paddle.uniform(layer._variance.shape, min=0.5, max=1.5))
    model.train()
    return model


@pytest.mark.parametrize("name", list(BACKBONES))
def test_registered_backbone_exports_to_onnx_with_parity(name, tmp_path):
    import onnxruntime as ort

    from plsc.models.build import build_backbone

    paddle.seed(0)
    cfg = _smoke_cfg(name)
    model = _trained_like(build_backbone(cfg))
    result = export_model(model, str(tmp_path), export_type="onnx", input_shape=tuple(cfg["Export"]["input_shape"]),
                          opset_version=cfg["Export"]["opset_version"],
                          meta={"model_name": name, "embedding_size": 32, "source_config": cfg})
    assert all(e["ok"] and e["max_rel_err"] < 1e-3 for e in result["parity"].values())
    assert json.load(open(result["meta_file"]))["source_config"]["Model"]["name"] == name
    sess = ort.InferenceSession(result["onnx_file"], providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = _images(n, seed=n)
        y = sess.run(None, {"images": x})[0]
        assert y.shape == (n, 32) and _rel(y, _dygraph(model, x)) < 1e-4


def test_nhwc_trained_backbone_exports_as_nchw(tmp_path):
    from plsc.models.build import build_backbone

    paddle.seed(1)
    cfg = _smoke_cfg("IResNet18", "NHWC")
    model = _trained_like(build_backbone(cfg))
    assert model.data_format == "NHWC"
    lines = []
    result = export_model(model, str(tmp_path), export_type="onnx",
                          meta={"model_name": "IResNet18", "source_config": cfg}, log=lines.append)
    assert any("NCHW rebuild" in line for line in lines)
    assert json.load(open(result["meta_file"]))["layout"] == "NCHW"
    x = _images(3, seed=2)  # NCHW in, the NHWC model's embeddings out
    assert _rel(load_embedder(result["onnx_file"])(x), _dygraph(model, x)) < 1e-4
    # without the config to rebuild from, ONNX export of an NHWC backbone says what to do
    with pytest.raises(ExportError, match="Model.data_format=NCHW"):
        export_model(model, str(tmp_path / "no_cfg"), export_type="onnx")


class ScaleFreeBN(TinyNet):
    """A BatchNorm without scale/shift: its batch_norm crashes Paddle 3.3's oneDNN kernel."""

    def __init__(self):
        super().__init__()
        self.plain = paddle.nn.BatchNorm1D(self.fc.weight.shape[1], weight_attr=False, bias_attr=False)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        return self.plain(self.fc(paddle.flatten(x, 1)))


def test_predictor_avoids_onednn_crash_on_scale_free_batch_norm(tmp_path):
    model = ScaleFreeBN()
    result = export_model(model, str(tmp_path), export_type="paddle")
    assert "scale" in result["parity"]["paddle_inference"]["note"]
    embed = load_embedder(str(tmp_path))
    assert embed.onednn_off_reason == "a batch_norm without scale or shift"  # from meta.json, written by export
    assert json.load(open(result["meta_file"]))["cpu_onednn"] == {"safe": False,
                                                                  "reason": "a batch_norm without scale or shift"}
    x = _images(2)
    assert _rel(embed(x), _dygraph(model, x)) < 1e-4
    assert load_embedder(_tiny_export(tmp_path / "plain")).onednn_off_reason is None


def _tiny_export(out):
    export_model(_tiny(), str(out), export_type="paddle", parity_check=False)
    return str(out)
