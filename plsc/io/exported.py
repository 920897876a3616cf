"""The exported model's files (plsc-export), and the one answer to "is this path an exported model or a
checkpoint?" for every command that takes either (plsc-eval, plsc-export, plsc-ijb, plsc-embed / verify /
search / calibrate).

    <export_dir>/inference.json + inference.pdiparams   Paddle inference model
    <export_dir>/model.onnx                             ONNX model (export_type onnx)
    <export_dir>/meta.json                              input shape, preprocessing, what wrote it

Everything else given as a model (a directory without inference.json, a PLSC prefix) is a checkpoint: its
weights enter the configured backbone through plsc.models.load_backbone. Reading a path here imports
nothing heavy (no Paddle), so the ONNX-only commands stay light.
"""
import os

MODEL_JSON, MODEL_PARAMS, META_FILE, ONNX_FILE = "inference.json", "inference.pdiparams", "meta.json", "model.onnx"


def exported_format(path):
    """'onnx' (a path ending in .onnx), 'paddle' (a directory holding inference.json, or a path naming that
    file) or None: not an exported model (a checkpoint directory, a PLSC prefix, a missing path)."""
    path = str(path)
    if path.endswith(".onnx"):
        return "onnx"
    if os.path.basename(path) == MODEL_JSON or os.path.isfile(os.path.join(path, MODEL_JSON)):
        return "paddle"
    return None


def is_exported(path):
    return exported_format(path) is not None


def model_folder(path):
    """The folder an exported model lives in (its meta.json, calibration, plsc-eval's results go there)."""
    path = str(path)
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")
