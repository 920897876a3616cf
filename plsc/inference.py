"""Run an exported backbone: a Paddle inference model or an ONNX file, behind one embed function.

    embed = load_embedder("output/IResNet50/export")          # dir with inference.json + .pdiparams
    embed = load_embedder("output/IResNet50/export/model.onnx")
    emb = embed(images)   # np.float32 [N, 3, 112, 112] (NCHW, RGB, (x/255 - 0.5) / 0.5) -> np.float32 [N, D]

`plsc-eval -o Global.pretrained_model=<exported path>` evaluates through this. The expected input
shape comes from meta.json next to the model (written by plsc.export) or, without it, from the
model's own input declaration; a wrong shape is a PlscError naming both shapes.
"""
import json
import os

import numpy as np

from plsc.errors import CheckpointError, PlscError
from plsc.io.exported import META_FILE, MODEL_JSON, MODEL_PARAMS, exported_format  # noqa: F401  (re-exported)


def _threads():
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def _read_meta(directory):
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable export metadata file ({e})") from None


class _Embedder:
    """Common part: input checks, batching, float32 output. Subclasses implement `_run(batch)`."""

    backend = "?"

    def __init__(self, path, input_shape, max_batch, declared):
        """declared: the model's own input shape ([N, C, H, W] with N <= 0 or a name when dynamic), or None."""
        self.path = path
        declared = list(declared) if declared is not None and len(declared) == 4 else None
        if input_shape is None and declared and all(isinstance(d, int) and d > 0 for d in declared[1:]):
            input_shape = declared[1:]
        self.input_shape = tuple(input_shape) if input_shape else None  # (C, H, W); None: not declared
        fixed = declared[0] if declared and isinstance(declared[0], int) and declared[0] > 0 else None
        self.fixed_batch = fixed  # a model exported with a fixed batch gets exactly that many (zero-padded)
        self.max_batch = fixed or max_batch

    def __call__(self, images):
        x = np.asarray(images)
        if x.ndim != 4 or (self.input_shape and tuple(x.shape[1:]) != self.input_shape):
            want = f"[N, {', '.join(map(str, self.input_shape))}]" if self.input_shape else "[N, C, H, W]"
            raise PlscError(f"{self.path}: the exported model takes images of shape {want} (NCHW float32), "
                            f"got an array of shape {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.number):
            raise PlscError(f"{self.path}: images must be a numeric array, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            raise PlscError(f"{self.path}: got an empty batch of images (shape {list(x.shape)})")
        outs = [self._run_chunk(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(outs).astype(np.float32, copy=False)

    def _run_chunk(self, chunk):
        n = len(chunk)
        if self.fixed_batch and n < self.fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), np.float32)])
        return self._run(chunk)[:n]

    def _run(self, batch):
        raise NotImplementedError


class PaddleEmbedder(_Embedder):
    """A paddle.inference predictor over inference.json + inference.pdiparams."""

    backend = "paddle_inference"

    def __init__(self, directory, input_shape=None, max_batch=256, use_gpu=None, meta=None):
        import paddle
        import paddle.inference as pi

        meta = _read_meta(directory) if meta is None else meta

        model_file = os.path.join(directory, MODEL_JSON)
        params_file = os.path.join(directory, MODEL_PARAMS)
        config = pi.Config(model_file, params_file)
        if use_gpu is None:
            use_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        self.onednn_off_reason = None
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(_threads())
            self.onednn_off_reason = onednn_unsafe(meta)
            if self.onednn_off_reason:
                config.disable_mkldnn()
        config.disable_glog_info()
        try:
            self.predictor = pi.create_predictor(config)
        except Exception as e:  # a corrupt / truncated file surfaces as a Paddle C++ error
            raise CheckpointError(f"{model_file}: cannot load the Paddle inference model (with {MODEL_PARAMS}) "
                                  f"({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
        names = self.predictor.get_input_names()
        if len(names) != 1:
            raise CheckpointError(f"{model_file}: expected one input (images), the model has {names}")
        self.input = self.predictor.get_input_handle(names[0])
        self.output_name = self.predictor.get_output_names()[0]
        super().__init__(directory, input_shape, max_batch, declared=self.input.shape())

    def _run(self, batch):
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(batch)
        self.predictor.run()
        return self.predictor.get_output_handle(self.output_name).copy_to_cpu()


class OnnxEmbedder(_Embedder):
    """An onnxruntime session (CPUExecutionProvider unless CUDA is available to onnxruntime)."""

    backend = "onnxruntime"

    def __init__(self, onnx_path, input_shape=None, max_batch=256, providers=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.log_severity_level = 3
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(onnx_path, options, providers=providers)
        except Exception as e:
            raise CheckpointError(f"{onnx_path}: cannot load the ONNX model "
                                  f"({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{onnx_path}: expected one input (images), the model has "
                                  f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        super().__init__(onnx_path, input_shape, max_batch, declared=inputs[0].shape)

    def _run(self, batch):
        return self.session.run(None, {self.input_name: batch})[0]


def onednn_unsafe(meta):
    """Why the CPU predictor runs without oneDNN (None: with it), from the model's meta.json.

    Two Paddle 3.3 bugs make oneDNN fail on some programs: a batch_norm without scale / shift
    segfaults its oneDNN kernel, and its layout passes feed NCHW tensors to NHWC convolutions.
    plsc-export records in meta.json whether the exported model has either ("cpu_onednn"); a model
    without meta.json (not written by plsc-export) runs without oneDNN, to be safe."""
    info = meta.get("cpu_onednn") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        return "no plsc meta.json next to the model says oneDNN is safe for it"
    return None if info.get("safe") else str(info.get("reason") or "meta.json marks it unsafe")


def resolve_model_path(path):
    """-> ("paddle", directory) or ("onnx", file) for an exported model path; CheckpointError if missing."""
    if not path:
        raise CheckpointError("no exported model path given (expected an export dir, its inference.json "
                              "or a .onnx file)")
    path = str(path)
    kind = exported_format(path)
    if kind == "onnx":
        if not os.path.isfile(path):
            raise CheckpointError(f"ONNX model not found: {path}")
        return "onnx", path
    if kind == "paddle" and os.path.basename(path) == MODEL_JSON:
        directory = os.path.dirname(path) or "."
    elif os.path.isdir(path):
        directory = path
    else:
        raise CheckpointError(f"exported model not found: {path} (expected a directory with {MODEL_JSON} + "
                              f"{MODEL_PARAMS}, a path ending in {MODEL_JSON}, or a .onnx file)")
    missing = [n for n in (MODEL_JSON, MODEL_PARAMS) if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise CheckpointError(f"{directory}: not a Paddle inference model, missing "
                              f"{' and '.join(missing)} (export one with plsc-export)")
    return "paddle", directory


def load_embedder(path, max_batch=256, use_gpu=None):
    """Embed function for an exported model: np.float32 [N,3,H,W] -> np.float32 [N,D] (any N).

    path: export directory (inference.json + inference.pdiparams), a path ending in inference.json,
    or a .onnx file. The input shape is taken from meta.json next to the model when present.
    use_gpu: None = GPU when available (Paddle CUDA build / onnxruntime CUDA provider).
    """
    kind, resolved = resolve_model_path(path)
    meta = _read_meta(resolved if kind == "paddle" else os.path.dirname(resolved) or ".")
    shape = meta.get("input_shape")
    shape = tuple(shape[-3:]) if shape else None
    if kind == "onnx":
        providers = ["CPUExecutionProvider"] if use_gpu is False else None
        return OnnxEmbedder(resolved, shape, max_batch, providers=providers)
    return PaddleEmbedder(resolved, shape, max_batch, use_gpu=use_gpu, meta=meta)
