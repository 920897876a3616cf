"""The recognition model behind plsc-embed / verify / search / calibrate, whatever form it has.

    m = RecognitionModel("output/IResNet50/export")            # Paddle inference dir (meta.json beside it)
    m = RecognitionModel("output/IResNet50/export/model.onnx")
    m = RecognitionModel("output/IResNet50/best_model", config="configs/....yaml", overrides=[...])
    raw = m.run(crops)          # uint8 RGB [N, H, W, 3] aligned crops -> float32 [N, D] raw features

Preprocessing comes from the export's meta.json (input shape, mean / std, channel order); a checkpoint
uses plsc's training preprocessing (RGB, (x / 255 - 0.5) / 0.5). `fingerprint()` identifies the model by
what it computes: its embeddings of two fixed pseudo-random probe images (plus the embedding size), so
the Paddle and ONNX exports of one model match each other and any other model does not.
Calibration (plsc-calibrate) is kept in `calibration.json` in `m.directory`.
"""
import json
import os

import numpy as np

from plsc.errors import CheckpointError, ConfigError
from plsc.inference import _read_meta, load_embedder
from plsc.io.exported import MODEL_JSON, exported_format, model_folder

CALIBRATION_FILE = "calibration.json"
PROBE_SEED, PROBE_MATCH = 20261207, 0.99


class RecognitionModel:
    def __init__(self, path, config=None, overrides=(), use_gpu=None, max_batch=256):
        path = str(path)
        self.path = path
        if not os.path.exists(path):
            raise CheckpointError(f"model not found: {path} (expected an exported Paddle inference directory, a "
                                  f"model.onnx, or a checkpoint directory with -c CONFIG)")
        kind = exported_format(path)
        if kind is not None:
            self._embed = load_embedder(path, max_batch=max_batch, use_gpu=use_gpu)
            self.directory = model_folder(path)
            self.meta = _read_meta(self.directory)
            self.kind = kind
        elif os.path.isdir(path):
            if not config:
                raise ConfigError(f"{path}: a directory without {MODEL_JSON}, so a checkpoint: pass the config it was "
                                  f"trained with (-c CONFIG), or give an exported model (plsc-export)")
            self._embed, self.meta = _checkpoint_embedder(path, config, overrides)
            self.directory, self.kind = path, "checkpoint"
        else:
            raise CheckpointError(f"{path}: not a model (expected an exported Paddle inference directory, a .onnx "
                                  f"file, or a checkpoint directory with -c CONFIG)")
        shape = self.meta.get("input_shape") or [None, 3, 112, 112]
        self.input_size = (int(shape[-2]), int(shape[-1]))
        if self.input_size[0] != self.input_size[1]:
            raise CheckpointError(f"{path}: input {self.input_size[0]}x{self.input_size[1]} is not square; the "
                                  f"five-point alignment produces square crops")
        self.mean = np.asarray(self.meta.get("mean", [0.5, 0.5, 0.5]), np.float32)
        self.std = np.asarray(self.meta.get("std", [0.5, 0.5, 0.5]), np.float32)
        self.bgr = str(self.meta.get("channel_order", "RGB")).upper() == "BGR"
        self._fingerprint = None

    def preprocess(self, crops, flip=False):
        x = np.asarray(crops, np.float32) / 255.0
        if self.bgr:
            x = x[..., ::-1]
        if flip:
            x = x[:, :, ::-1]
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def run(self, crops, flip=False):
        """Raw features of aligned uint8 RGB crops [N, H, W, 3] (flip=True: of their mirror images)."""
        return np.asarray(self._embed(self.preprocess(crops, flip)), np.float32)

    def fingerprint(self):
        if self._fingerprint is None:
            h, w = self.input_size
            probe = np.random.default_rng(PROBE_SEED).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
            probe[1] = np.sort(probe[1], axis=1)  # two inputs unlike each other
            e = self.run(probe).astype(np.float64)
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            self._fingerprint = {"embedding_size": int(e.shape[1]), "probe": np.round(e, 6).tolist(),
                                 "model_name": self.meta.get("model_name")}
        return self._fingerprint

    def calibration_path(self):
        return os.path.join(self.directory, CALIBRATION_FILE)


def same_model(fp_a, fp_b):
    """(True, "") if two fingerprints are one model; else (False, why)."""
    if fp_a["embedding_size"] != fp_b["embedding_size"]:
        return False, f"embedding size {fp_a['embedding_size']} vs {fp_b['embedding_size']}"
    a, b = np.asarray(fp_a["probe"]), np.asarray(fp_b["probe"])
    if a.shape != b.shape:
        return False, "different probe sets"
    cos = float(np.min(np.sum(a * b, axis=1)))
    if cos < PROBE_MATCH:
        return False, f"the models' embeddings of the same probe images differ (cosine {cos:.3f} < {PROBE_MATCH})"
    return True, ""


def read_calibration(path):
    """The calibration dict at `path`, None if there is none; CheckpointError if unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            cal = json.load(f)
        float(cal["threshold"])
        return cal
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable plsc calibration file ({type(e).__name__}: {e})") from None


def _checkpoint_embedder(path, config, overrides):
    """A plsc checkpoint directory + its config -> (embed fn on NCHW float32, meta-like dict)."""
    # optional: only a checkpoint needs the model built from a config (Paddle); an exported model runs without
    from plsc.config import load_config
    from plsc.engine.inference_model import load_model

    cfg = load_config(config, list(overrides) + [f"Global.pretrained_model={path}"])
    model = load_model(cfg, "eval")
    shape = cfg["Export"]["input_shape"]
    meta = {"model_name": cfg["Model"]["name"], "embedding_size": cfg["Model"]["num_features"],
            "input_shape": [None, *shape[-3:]], "mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "RGB"}
    return model.embed, meta
