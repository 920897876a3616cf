"""Export a backbone (no classifier) for deployment: Paddle inference model, ONNX, metadata, parity check.

    result = export_model(backbone, "out/export", export_type="onnx", input_shape=(3, 112, 112))
    # out/export/inference.json + inference.pdiparams   (paddle.jit.save, input "images" [N,3,112,112])
    # out/export/model.onnx                             (export_type onnx: paddle2onnx, dynamic batch)
    # out/export/meta.json                              (input shape, mean/std, RGB, NCHW, embedding size, config)
    # result["parity"]: max relative error of each backend against the dygraph model

The export is fp32 with an NCHW input whatever the training precision (O1/O2 params are cast to fp32
on a copy; the caller's model is untouched) and Model.data_format (NHWC backbones are rebuilt NCHW).
`fp16=True` stores fp16 weights, fp32 inputs/outputs: onnx through onnxruntime's float16 converter
(runs on CPU), paddle through paddle.inference.convert_to_mixed_precision (needs CUDA Paddle).

Parity: random inputs in [-1, 1] at batch 1 and 4 go through the dygraph model, the paddle.inference
predictor and (onnx) onnxruntime; the error is max|y - y_ref| / max|y_ref| per batch. Above
`PARITY_TOL` (fp16 weights: `FP16_PARITY_TOL`) the export fails with ExportError naming the backend.
"""
import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np

import plsc
from plsc.errors import ConfigError, ExportError, PlscError
from plsc.inference import META_FILE, MODEL_JSON, MODEL_PARAMS, OnnxEmbedder, PaddleEmbedder

EXPORT_TYPES = ("paddle", "onnx")
ONNX_FILE = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"  # of the ONNX model
PARITY_TOL = 1e-3
FP16_PARITY_TOL = 1e-2
PARITY_BATCHES = (1, 4)
MIN_OPSET = 7
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def export_model(backbone, out_dir, export_type="paddle", input_shape=(3, 112, 112), opset_version=11,
                 fp16=False, parity_check=True, meta=None, parity_tol=None, log=print):
    """Export `backbone` (a paddle.nn.Layer: NCHW float32 images -> embeddings) into `out_dir`.

    input_shape: (C, H, W) or (batch, C, H, W) with batch None/-1 for a dynamic batch (the default).
    meta: extra metadata (model_name, embedding_size, source_config, ...) written to meta.json.
    Returns {"export_type", "out_dir", "model_file", "params_file", "onnx_file" (onnx only), "meta_file",
    "embedding_size", "parity": {backend: {"batch_<n>": err, "max_rel_err", "tol", "ok"}}}.
    """
    export_type = _check_type(export_type)
    batch, chw = _check_shape(input_shape)
    if export_type == "onnx":
        opset_version = _check_opset(opset_version)
    if fp16 and export_type == "paddle" and not _cuda_paddle():
        raise ConfigError("Export.fp16=true with export_type paddle needs a CUDA build of Paddle "
                          "(paddle.inference.convert_to_mixed_precision targets GPU; fp16 kernels do not exist on "
                          "CPU). Export fp32 (Export.fp16=false) or use export_type onnx for fp16 weights.")
    meta = dict(meta or {})
    model = _nchw_twin(_fp32_eval_copy(backbone), meta.get("source_config"), export_type, chw, log)
    emb_size = _probe(model, chw, meta.get("embedding_size"))
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "inference")
    result = {"export_type": export_type, "out_dir": out_dir, "model_file": prefix + ".json",
              "params_file": prefix + ".pdiparams", "meta_file": os.path.join(out_dir, META_FILE),
              "embedding_size": emb_size}
    if fp16 and export_type == "paddle":
        _save_paddle_fp16(model, batch, chw, out_dir)
    else:
        _save_paddle(model, batch, chw, prefix)
    if export_type == "paddle" and os.path.isfile(os.path.join(out_dir, ONNX_FILE)):
        os.remove(os.path.join(out_dir, ONNX_FILE))  # a stale ONNX model from an earlier export
    if export_type == "onnx":
        result["onnx_file"] = os.path.join(out_dir, ONNX_FILE)
        _save_onnx(result["model_file"], result["params_file"], result["onnx_file"], opset_version, fp16, log)
    name = meta.get("model_name") or type(backbone).__name__
    meta["cpu_onednn"] = _cpu_onednn(model)
    _write_meta(result, meta, batch, chw, emb_size, opset_version, fp16)
    log(f"exported {name} ({export_type}"
        f"{', fp16 weights' if fp16 else ''}) to {out_dir}")
    result["parity"] = run_parity(model, result, chw, batch, fp16, parity_tol, log) if parity_check else {}
    return result


# ---------------------------------------------------------------- checks
def _check_type(export_type):
    if export_type not in EXPORT_TYPES:
        raise ConfigError(f"Export.export_type: unsupported value {export_type!r}; valid: {', '.join(EXPORT_TYPES)}")
    return export_type


def _check_shape(input_shape):
    shape = list(input_shape) if isinstance(input_shape, (list, tuple)) else None
    batch = None
    if shape is not None and len(shape) == 4:
        batch, shape = shape[0], shape[1:]
        if batch is not None and not (isinstance(batch, int) and (batch == -1 or batch > 0)):
            raise ConfigError(f"Export.input_shape: batch size must be null / -1 (dynamic) or > 0, got {batch!r}")
        batch = None if batch == -1 else batch
    if shape is None or len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                   for d in shape):
        raise ConfigError(f"Export.input_shape: expected [C, H, W] or [null, C, H, W] with positive ints "
                          f"(e.g. [null, 3, 112, 112]), got {input_shape!r}")
    return batch, tuple(shape)


def _check_opset(opset):
    import onnx.defs

    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ConfigError(f"Export.opset_version: expected an int in [{MIN_OPSET}, {top}] (default 11), got {opset!r}")
    return opset


def _cuda_paddle():
    import paddle
    return paddle.is_compiled_with_cuda()


# ---------------------------------------------------------------- model preparation
def _fp32_eval_copy(backbone):
    """A copy of the backbone in eval mode with every floating param/buffer in fp32 (O2 trains in fp16/bf16)."""
    import paddle

    if not isinstance(backbone, paddle.nn.Layer):
        raise ExportError(f"export needs a paddle.nn.Layer backbone, got {type(backbone).__name__}")
    model = copy.deepcopy(backbone)
    model.to(dtype="float32")
    model.eval()
    return model


def _nchw_twin(model, source_config, export_type, chw, log):
    """A backbone trained with Model.data_format NHWC, rebuilt NCHW with the same weights.

    paddle2onnx converts NCHW convolutions only, and NCHW is what CPU inference runs fastest; the weights
    of plsc backbones do not depend on the layout. Needs the run's config (meta["source_config"]) to
    rebuild; without it a Paddle export keeps the NHWC graph and an ONNX export is an ExportError.
    """
    if getattr(model, "data_format", "NCHW") != "NHWC":
        return model
    model_cfg = (source_config or {}).get("Model") if isinstance(source_config, dict) else None
    if not model_cfg:
        if export_type == "onnx":
            raise ExportError(f"{type(model).__name__} computes in NHWC and paddle2onnx converts NCHW convolutions "
                              f"only; export a backbone built with Model.data_format=NCHW (the weights are the same) "
                              f"or pass meta={{'source_config': cfg}} so that export can rebuild it")
        return model
    import paddle  # optional: only this rebuild needs Paddle; exporting an ONNX model's files does not

    from plsc.models.build import build_backbone

    cfg = copy.deepcopy(source_config)
    cfg["Model"]["data_format"] = "NCHW"
    twin = build_backbone(cfg)
    twin.to(dtype="float32")
    state = model.state_dict()
    mine = twin.state_dict()
    bad = [f"{k}: {list(v.shape)} vs {list(mine[k].shape)}" for k, v in state.items()
           if k in mine and list(v.shape) != list(mine[k].shape)]
    missing = sorted(set(mine) ^ set(state))
    if bad or missing:
        raise ExportError(f"cannot rebuild the NHWC-trained {type(model).__name__} as NCHW: "
                          f"{'; '.join(bad[:3] + [f'unmatched parameter {k}' for k in missing[:3]])}")
    twin.set_state_dict(state)
    twin.eval()
    x = paddle.to_tensor(np.random.default_rng(1).uniform(-1, 1, (2, *chw)).astype(np.float32))
    with paddle.no_grad():
        err = _rel_err(twin(x).numpy(), model(x).numpy())
    if not err <= PARITY_TOL:
        raise ExportError(f"the NCHW rebuild of the NHWC-trained {type(model).__name__} disagrees with it "
                          f"(max relative error {err:.3g} > {PARITY_TOL:g})")
    log(f"{type(model).__name__} was trained in NHWC; exporting an NCHW rebuild with the same weights "
        f"(max relative error vs NHWC dygraph {err:.2e})")
    return twin


def _probe(model, chw, expected_size):
    """Run one image through the model: catches a wrong input_shape early and gives the embedding size."""
    import paddle

    x = paddle.to_tensor(np.zeros((1, *chw), np.float32))
    try:
        with paddle.no_grad():
            y = model(x)
    except Exception as e:
        raise ExportError(f"{type(model).__name__} cannot run on an input of shape [1, {', '.join(map(str, chw))}] "
                          f"(Export.input_shape): {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(y, paddle.Tensor) or y.ndim != 2:
        raise ExportError(f"{type(model).__name__} must return one [N, D] embedding tensor, got "
                          f"{getattr(y, 'shape', type(y).__name__)}")
    size = y.shape[1]
    if expected_size is not None and expected_size != size:
        raise ExportError(f"Model.num_features is {expected_size} but {type(model).__name__} returns "
                          f"{size}-dim embeddings")
    return size


# ---------------------------------------------------------------- writers
def _save_paddle(model, batch, chw, prefix):
    import paddle

    spec = [paddle.static.InputSpec([batch, *chw], "float32", name=INPUT_NAME)]
    try:
        paddle.jit.save(model, prefix, input_spec=spec)
    except Exception as e:
        raise ExportError(f"paddle.jit.save failed for {type(model).__name__}: {type(e).__name__}: "
                          f"{_first_line(e)}") from None
    for path in (prefix + ".json", prefix + ".pdiparams"):
        if not os.path.isfile(path):
            raise ExportError(f"paddle.jit.save did not write {path}")


def _save_paddle_fp16(model, batch, chw, out_dir):
    import paddle.inference as pi

    tmp = os.path.join(out_dir, ".fp32_tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save_paddle(model, batch, chw, os.path.join(tmp, "inference"))
        pi.convert_to_mixed_precision(os.path.join(tmp, MODEL_JSON), os.path.join(tmp, MODEL_PARAMS),
                                      os.path.join(out_dir, MODEL_JSON), os.path.join(out_dir, MODEL_PARAMS),
                                      pi.PrecisionType.Half, pi.PlaceType.GPU, True)
    except PlscError:
        raise
    except Exception as e:
        raise ExportError(f"fp16 conversion of the Paddle inference model failed: {type(e).__name__}: "
                          f"{_first_line(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# paddle2onnx aborts the whole process (SIGABRT) on an unsupported op or layout, so it runs in a child
# process; its "[ERROR][Paddle2ONNX]" lines become the error message.
_P2O_CHILD = """
import sys
import paddle2onnx
model_file, params_file, onnx_file, opset = sys.argv[1:5]
# optimize_tool="None": the default (polygraphy) pip-installs packages at run time
paddle2onnx.export(model_file, params_file, onnx_file, opset_version=int(opset), enable_onnx_checker=True,
                   optimize_tool="None")
"""


def _save_onnx(model_file, params_file, onnx_file, opset_version, fp16, log=print):
    if os.path.exists(onnx_file):
        os.remove(onnx_file)
    cmd = [sys.executable, "-c", _P2O_CHILD, model_file, params_file, onnx_file, str(opset_version)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout or ""
    if proc.returncode != 0 or not os.path.isfile(onnx_file):
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if "[ERROR]" in line] or [line for line in lines if "error" in line.lower()]
        detail = " | ".join(errors[:5] if errors else lines[-5:]) or "(no output)"
        if "NHWC" in detail:
            detail += (" -- paddle2onnx converts NCHW convolutions only: export a backbone built with "
                       "Model.data_format=NCHW (the weights are the same)")
        raise ExportError(f"paddle2onnx could not convert {model_file} to ONNX (opset {opset_version}, exit code "
                          f"{proc.returncode}): {detail}")
    for line in output.splitlines():
        if "Paddle2ONNX" in line:
            log(line.strip())
    _finish_onnx(onnx_file, fp16)


def _finish_onnx(onnx_file, fp16):
    """Name the output "embeddings"; fp16: fp16 weights and compute, fp32 inputs/outputs (casts at the borders)."""
    import onnx

    model = onnx.load(onnx_file)
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
        _toposort(model.graph)  # the converter appends the border casts at the end of the node list
    old = model.graph.output[0].name
    for node in model.graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = OUTPUT_NAME
    model.graph.output[0].name = OUTPUT_NAME
    onnx.checker.check_model(model)
    onnx.save(model, onnx_file)


def _toposort(graph):
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"fp16 ONNX conversion left {len(rest)} node(s) with unknown inputs "
                              f"(first: {rest[0].name})")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _write_meta(result, meta, batch, chw, emb_size, opset_version, fp16):
    import paddle

    files = {"model": os.path.basename(result["model_file"]), "params": os.path.basename(result["params_file"])}
    if "onnx_file" in result:
        files["onnx"] = os.path.basename(result["onnx_file"])
    info = {
        "model_name": meta.pop("model_name", None), "embedding_size": emb_size,
        "export_type": result["export_type"], "files": files,
        "input_name": INPUT_NAME, "input_shape": [batch, *chw], "input_dtype": "float32",
        "onnx_output_name": OUTPUT_NAME if "onnx_file" in result else None,
        "layout": "NCHW", "channel_order": "RGB", "mean": MEAN, "std": STD,
        "preprocess": "x = (rgb_uint8 / 255 - mean) / std, i.e. in [-1, 1]",
        "weights_dtype": "float16" if fp16 else "float32",
        "opset_version": opset_version if "onnx_file" in result else None,
        "plsc_version": plsc.__version__,
        "paddle_version": paddle.__version__,
    }
    if "onnx_file" in result:
        import paddle2onnx

        info["paddle2onnx_version"] = paddle2onnx.__version__
    meta.pop("embedding_size", None)
    info.update(meta)  # source_config and anything else the caller adds
    with open(result["meta_file"], "w") as f:
        json.dump(info, f, indent=1, default=str)


def _cpu_onednn(model):
    """Whether Paddle's CPU oneDNN path can run the exported program (see plsc.inference.onednn_unsafe),
    decided from the model itself: its layout and its BatchNorm layers."""
    import paddle

    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Conv2D) and "data_format=NHWC" in layer.extra_repr():
            return {"safe": False, "reason": "an NHWC convolution"}
        if isinstance(layer, (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm)) and \
                (getattr(layer, "weight", None) is None or getattr(layer, "bias", None) is None):
            return {"safe": False, "reason": "a batch_norm without scale or shift"}
    return {"safe": True, "reason": None}


# ---------------------------------------------------------------- parity
def run_parity(model, result, chw, batch=None, fp16=False, tol=None, log=print):
    """Compare the exported backends with the dygraph `model`; print a table; ExportError above tolerance."""
    import paddle

    backends = [("paddle_inference", lambda: PaddleEmbedder(result["out_dir"], chw), fp16 and "onnx_file" not in result)]
    if "onnx_file" in result:
        backends.append(("onnxruntime", lambda: OnnxEmbedder(result["onnx_file"], chw,
                                                             providers=["CPUExecutionProvider"]), fp16))
    rng = np.random.default_rng(0)
    batches = (batch,) if batch else PARITY_BATCHES
    inputs = {n: rng.uniform(-1, 1, (n, *chw)).astype(np.float32) for n in batches}
    with paddle.no_grad():
        refs = {n: model(paddle.to_tensor(x)).numpy() for n, x in inputs.items()}
    if not all(np.isfinite(r).all() for r in refs.values()):
        raise ExportError(f"{type(model).__name__} returns non-finite embeddings on random inputs; not exporting "
                          f"a broken model (check the checkpoint)")
    report, failures = {}, []
    for name, make, half in backends:
        limit = tol if tol is not None else (FP16_PARITY_TOL if half else PARITY_TOL)
        entry = {"tol": limit}
        try:
            embed = make()
            if getattr(embed, "onednn_off_reason", None):
                entry["note"] = f"oneDNN off on CPU: the program has {embed.onednn_off_reason} (Paddle bug)"
            for n, x in inputs.items():
                entry[f"batch_{n}"] = _rel_err(embed(x), refs[n])
        except Exception as e:  # a backend that cannot load or run the model is a parity failure, named
            entry["error"] = f"{type(e).__name__}: {_first_line(e)}"
        errs = [v for k, v in entry.items() if k.startswith("batch_")]
        entry["max_rel_err"] = max(errs) if errs and "error" not in entry else float("inf")
        entry["ok"] = entry["max_rel_err"] <= limit
        if not entry["ok"]:
            failures.append(f"{name}: " + (entry["error"] if "error" in entry else
                                           f"max relative error {entry['max_rel_err']:.3g} > {limit:g}"))
        report[name] = entry
    log(_table(report, batches))
    if failures:
        raise ExportError(f"parity check failed for the model exported to {result['out_dir']} "
                          f"(reference: dygraph fp32): " + "; ".join(failures))
    return report


def _rel_err(y, ref):
    if y.shape != ref.shape:
        return float("inf")
    return float(np.abs(y.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def _table(report, batches):
    cols = [f"batch {n}" for n in batches]
    lines = ["parity vs dygraph (max |y - y_ref| / max |y_ref|):",
             f"  {'backend':<18}" + "".join(f"{c:>12}" for c in cols) + f"{'tol':>10}  status"]
    for name, e in report.items():
        vals = "".join(f"{e.get(f'batch_{n}', float('nan')):>12.2e}" for n in batches)
        lines.append(f"  {name:<18}{vals}{e['tol']:>10.0e}  {'ok' if e['ok'] else 'FAIL'}"
                     + (f"  ({e['note']})" if "note" in e else ""))
    return "\n".join(lines)


def _first_line(e):
    return (str(e).strip().splitlines() or ["(no message)"])[0]
