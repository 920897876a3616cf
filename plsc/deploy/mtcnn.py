"""MTCNN face detector (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks"): P-Net proposals over an image pyramid, R-Net refinement, O-Net boxes and five
landmarks. Runs on onnxruntime from graphs built here; no torch, no download.

    det = MTCNN()                                   # weights from the installed facenet-pytorch package
    boxes, points = det.detect(rgb)                 # [n, 5] (x1, y1, x2, y2, score), [n, 5, 2] (x, y)

Weights: the P/R/O-Net state dicts that the `facenet-pytorch` wheel ships (facenet_pytorch/data/
{pnet,rnet,onet}.pt, MIT licence, converted by its author from the original MTCNN release), copied
byte for byte into plsc/deploy/weights/ with their licence (facenet-pytorch cannot be a dependency: it
requires torch). They are in torch's legacy pre-zip format and are read by plsc's restricted torch
reader (plsc.interop.torch_legacy); torch is never imported. Looked up in this order: `weights`,
PLSC_MTCNN_WEIGHTS, an installed facenet-pytorch (`pip install --no-deps facenet-pytorch`), the copy in plsc.
"""
import importlib.metadata
import os

import cv2
import numpy as np

from plsc.errors import CheckpointError
from plsc.interop.torch_file import read_torch_file

_NETS = ("pnet", "rnet", "onet")
# (layer kind, name, extra): conv / prelu / pool (kernel, stride) / flat (channels-last transpose) / fc / head
_PNET = [("conv", "conv1"), ("prelu", "prelu1"), ("pool", (2, 2)), ("conv", "conv2"), ("prelu", "prelu2"),
         ("conv", "conv3"), ("prelu", "prelu3")]
_RNET = [("conv", "conv1"), ("prelu", "prelu1"), ("pool", (3, 2)), ("conv", "conv2"), ("prelu", "prelu2"),
         ("pool", (3, 2)), ("conv", "conv3"), ("prelu", "prelu3"), ("flat", None), ("fc", "dense4"),
         ("prelu", "prelu4")]
_ONET = [("conv", "conv1"), ("prelu", "prelu1"), ("pool", (3, 2)), ("conv", "conv2"), ("prelu", "prelu2"),
         ("pool", (3, 2)), ("conv", "conv3"), ("prelu", "prelu3"), ("pool", (2, 2)), ("conv", "conv4"),
         ("prelu", "prelu4"), ("flat", None), ("fc", "dense5"), ("prelu", "prelu5")]
_HEADS = {"pnet": ("conv", ["conv4_1", "conv4_2"]), "rnet": ("fc", ["dense5_1", "dense5_2"]),
          "onet": ("fc", ["dense6_1", "dense6_2", "dense6_3"])}


def weights_dir(explicit=None):
    """The directory holding pnet.pt / rnet.pt / onet.pt, or CheckpointError saying how to get them."""
    candidates = [explicit] if explicit else []
    if os.environ.get("PLSC_MTCNN_WEIGHTS"):
        candidates.append(os.environ["PLSC_MTCNN_WEIGHTS"])
    try:
        dist = importlib.metadata.distribution("facenet-pytorch")
        candidates.append(str(dist.locate_file("facenet_pytorch/data")))
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights"))
    for d in candidates:
        if all(os.path.isfile(os.path.join(d, f"{n}.pt")) for n in _NETS):
            return d
    where = f" (looked in {', '.join(candidates)})" if candidates else ""
    raise CheckpointError(f"MTCNN face detector weights not found{where}: reinstall plsc (it ships them in "
                          f"plsc/deploy/weights), `pip install --no-deps facenet-pytorch` (MIT licence; torch is not "
                          f"needed), set PLSC_MTCNN_WEIGHTS to a directory with pnet.pt, rnet.pt, onet.pt, or use "
                          f"--align crops/none for images that are already aligned 112x112 crops")


def _graph(name, sd):
    """An ONNX model for one of the three nets, from its state dict (numpy arrays)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "input"

    def const(key, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), key))
        return key

    def need(key):
        if key not in sd:
            raise CheckpointError(f"MTCNN {name}.pt has no tensor {key!r} (not facenet-pytorch's MTCNN weights)")
        return sd[key]

    def layer(kind, arg, x, out, flat=False):
        if kind == "conv":
            nodes.append(helper.make_node("Conv", [x, const(f"{arg}.w", need(f"{arg}.weight")),
                                                   const(f"{arg}.b", need(f"{arg}.bias"))], [out]))
        elif kind == "prelu":
            slope = need(f"{arg}.weight")
            shape = (-1,) if flat else (-1, 1, 1)
            nodes.append(helper.make_node("PRelu", [x, const(f"{arg}.s", slope.reshape(shape))], [out]))
        elif kind == "pool":
            nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=[arg[0]] * 2, strides=[arg[1]] * 2,
                                          ceil_mode=1))
        elif kind == "flat":  # the dense layers were trained on a (W, H, C) flattening
            nodes.append(helper.make_node("Transpose", [x], [out + "_t"], perm=[0, 3, 2, 1]))
            nodes.append(helper.make_node("Flatten", [out + "_t"], [out], axis=1))
        elif kind == "fc":
            nodes.append(helper.make_node("Gemm", [x, const(f"{arg}.w", need(f"{arg}.weight")),
                                                   const(f"{arg}.b", need(f"{arg}.bias"))], [out], transB=1))
        return out

    body = {"pnet": _PNET, "rnet": _RNET, "onet": _ONET}[name]
    fc_seen = False
    for i, (kind, arg) in enumerate(body):
        fc_seen = fc_seen or kind in ("flat", "fc")
        x = layer(kind, arg, x, f"h{i}", fc_seen)
    head_kind, heads = _HEADS[name]
    outputs = []
    for j, h in enumerate(heads):
        out = layer(head_kind, h, x, f"out{j}")
        if j == 0:
            nodes.append(helper.make_node("Softmax", [out], ["prob"], axis=1))
            out = "prob"
        outputs.append(out)
    size = {"pnet": ["h", "w"], "rnet": [24, 24], "onet": [48, 48]}[name]
    dims = ["n", "c", "y", "x"] if name == "pnet" else ["n", "c"]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3] + size)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _session(blob):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def nms(boxes, scores, threshold, method="union"):
    """Indices kept by greedy non-maximum suppression (pixel-inclusive areas, as MTCNN)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, np.int64)


def _square(boxes):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out = boxes.copy()
    out[:, 0] += (w - side) / 2
    out[:, 1] += (h - side) / 2
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out


def _regress(boxes, reg, plus_one=True):
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + (1 if plus_one else 0)
    h = boxes[:, 3] - boxes[:, 1] + (1 if plus_one else 0)
    out[:, :4] += reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return out


def _crops(img, boxes, size):
    """Square crops of `boxes` (outside the image: zeros), resized to size x size, normalised NCHW."""
    hi, wi = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw < 2 or bh < 2:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx, sy, ex, ey = max(x1, 0), max(y1, 0), min(x2 + 1, wi), min(y2 + 1, hi)
        if ex > sx and ey > sy:
            patch[sy - y1:ey - y1, sx - x1:ex - x1] = img[sy:ey, sx:ex]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return ((out - 127.5) * 0.0078125).transpose(0, 3, 1, 2).copy()


class MTCNN:
    """Three-stage cascade; `detect(rgb)` -> boxes [n, 5] and landmarks [n, 5, 2], best score first."""

    def __init__(self, weights=None, min_face=20, thresholds=(0.6, 0.7, 0.7), factor=0.709):
        d = weights_dir(weights)
        self.source = d
        self.nets = {n: _session(_graph(n, read_torch_file(os.path.join(d, f"{n}.pt")))) for n in _NETS}
        self.min_face, self.thresholds, self.factor = min_face, thresholds, factor

    def _run(self, name, x):
        return self.nets[name].run(None, {"input": x})

    def detect(self, rgb):
        img = np.ascontiguousarray(rgb)
        h, w = img.shape[:2]
        empty = np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        if min(h, w) < 12:
            return empty
        boxes = self._proposals(img)
        if len(boxes):
            boxes = self._refine(img, boxes)
        if not len(boxes):
            return empty
        return self._output(img, boxes)

    def _proposals(self, img):
        h, w = img.shape[:2]
        scale, found = 12.0 / self.min_face, []
        while min(h, w) * scale >= 12:
            hs, ws = int(h * scale + 1), int(w * scale + 1)
            x = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA).astype(np.float32)
            x = ((x - 127.5) * 0.0078125).transpose(2, 0, 1)[None].copy()
            prob, reg = self._run("pnet", x)
            ys, xs = np.nonzero(prob[0, 1] >= self.thresholds[0])
            if len(ys):
                cell = np.stack([xs, ys], axis=1).astype(np.float64)
                q1, q2 = np.floor((2 * cell + 1) / scale), np.floor((2 * cell + 12) / scale)
                b = np.hstack([q1, q2, prob[0, 1, ys, xs][:, None], reg[0][:, ys, xs].T])
                found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
            scale *= self.factor
        if not found:
            return np.zeros((0, 9))
        b = np.vstack(found)
        b = b[nms(b[:, :4], b[:, 4], 0.7)]
        out = _regress(b[:, :5], b[:, 5:9], plus_one=False)
        return _square(out)

    def _refine(self, img, boxes):
        prob, reg = self._run("rnet", _crops(img, boxes, 24))
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.hstack([boxes[keep, :4], prob[keep, 1:2]])
        reg = reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], reg[pick]))

    def _output(self, img, boxes):
        prob, reg, lmk = self._run("onet", _crops(img, boxes, 48))
        keep = prob[:, 1] > self.thresholds[2]
        boxes, reg, lmk = np.hstack([boxes[keep, :4], prob[keep, 1:2]]), reg[keep], lmk[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([w * lmk[:, 0:5] + boxes[:, 0:1] - 1, h * lmk[:, 5:10] + boxes[:, 1:2] - 1], axis=2)
        boxes = _regress(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "min")
        boxes, points = boxes[pick], points[pick]
        order = np.argsort(-boxes[:, 4], kind="stable")
        return boxes[order].astype(np.float32), points[order].astype(np.float32)
