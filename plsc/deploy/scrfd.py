"""insightface's SCRFD / RetinaFace-style ONNX detectors (`--detector det_10g.onnx`), as arcface_torch users have them.

    det = SCRFD("det_10g.onnx")
    boxes, points = det.detect(rgb)          # [n, 5] (x1, y1, x2, y2, score), [n, 5, 2], best score first

The model's contract (insightface's model zoo export): one input NCHW, RGB, (x - 127.5) / 128, 640x640
by default (or the fixed size the model declares); the photo is resized keeping its aspect ratio into
the top-left corner, zero-padded. Outputs: for strides 8, 16, 32 a score map [A, 1], box distances
[A, 4] and, with 9 outputs, landmark offsets [A, 10] (a leading batch axis of 1 is accepted), all
anchors of a stride in row-major order with 2 anchors per location; outputs come as all scores, then
all boxes, then all landmarks. A box is (cx - d0, cy - d1, cx + d2, cy + d3) x stride around the anchor
centre, a landmark (cx + dx, cy + dy) x stride. Boxes over 0.5 go through NMS at IoU 0.4.
A model without landmark outputs (6 outputs) cannot be used for alignment and is refused.

Tested here against a synthetic model with that output layout (no SCRFD weights can be downloaded on
the test machine), not against det_10g.onnx itself.
"""
import os

import cv2
import numpy as np

from plsc.deploy.mtcnn import nms
from plsc.errors import CheckpointError

STRIDES, ANCHORS = (8, 16, 32), 2


class SCRFD:
    def __init__(self, path, score_threshold=0.5, nms_threshold=0.4, input_size=640):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise CheckpointError(f"--detector {path}: no such file")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"--detector {path}: cannot load the ONNX model "
                                  f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) not in (6, 9):
            raise CheckpointError(f"--detector {path}: not an SCRFD / RetinaFace detector (expected 1 input and 9 "
                                  f"outputs: scores, boxes, landmarks for strides 8/16/32; it has {len(inputs)} and "
                                  f"{len(outputs)})")
        if len(outputs) == 6:
            raise CheckpointError(f"--detector {path}: this detector has no landmark outputs; five-point alignment "
                                  f"needs them (use insightface's det_10g / det_2.5g / det_500m, or MTCNN)")
        shape = inputs[0].shape
        fixed = len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:])
        self.size = (int(shape[3]), int(shape[2])) if fixed else (input_size, input_size)  # (w, h)
        self.input_name = inputs[0].name
        self.path, self.score_threshold, self.nms_threshold = path, score_threshold, nms_threshold
        self._centers = {}

    def _anchor_centers(self, h, w, stride):
        key = (h, w, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:h, :w]
            c = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
            self._centers[key] = np.repeat(c, ANCHORS, axis=0)
        return self._centers[key]

    def detect(self, rgb):
        h0, w0 = rgb.shape[:2]
        w_in, h_in = self.size
        scale = min(w_in / w0, h_in / h0)
        nw, nh = max(1, int(w0 * scale)), max(1, int(h0 * scale))
        canvas = np.zeros((h_in, w_in, 3), np.float32)
        canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh))
        x = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()
        outs = [o[0] if o.ndim == 3 else o for o in self.session.run(None, {self.input_name: x})]
        boxes, points = [], []
        for i, stride in enumerate(STRIDES):
            centers = self._anchor_centers(h_in // stride, w_in // stride, stride)
            scores = outs[i].reshape(-1)
            if scores.size != len(centers):
                raise CheckpointError(f"--detector {self.path}: output {i} has {scores.size} scores, stride {stride} "
                                      f"on a {w_in}x{h_in} input has {len(centers)} anchors")
            keep = np.flatnonzero(scores >= self.score_threshold)
            d = outs[i + 3].reshape(-1, 4)[keep] * stride
            k = outs[i + 6].reshape(-1, 10)[keep] * stride
            c = centers[keep]
            boxes.append(np.hstack([c - d[:, :2], c + d[:, 2:], scores[keep, None]]))
            points.append(c[:, None, :] + k.reshape(-1, 5, 2))
        boxes, points = np.vstack(boxes), np.vstack(points)
        if not len(boxes):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        pick = nms(boxes[:, :4], boxes[:, 4], self.nms_threshold)
        boxes, points = boxes[pick], points[pick]
        boxes[:, :4] /= scale
        points = points / scale
        order = np.argsort(-boxes[:, 4], kind="stable")
        return boxes[order].astype(np.float32), points[order].astype(np.float32)
