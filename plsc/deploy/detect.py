"""From a photo to aligned 112x112 faces: detect, choose, warp to insightface's five-point template.

    prep = FacePreparer(align="auto", faces="largest")      # MTCNN from facenet-pytorch's weights
    faces = prep(rgb)        # list of Face(crop, box, landmarks, score, status)

align:  auto   detect faces and warp each with the similarity transform of insightface's norm_crop
               (plsc.metrics.align); an image that already is a 112x112 crop passes through as is
        crops  every image is an aligned crop: resized to the model's input if needed, no detection
        none   no detection, no warp: the whole image resized to the model's input
faces:  largest  the face with the largest box (the others are counted in the status)
        all      every face found
Status words: "face" (detected and aligned), "crop" (used as given), "resized" (align none),
"no_face" (nothing found: no row in the output).
Detection runs on a copy whose long side is at most DETECT_SIDE pixels (bounded time and memory on
large photos); landmarks are scaled back and the warp reads the full-resolution photo.
"""
import collections

import cv2
import numpy as np

from plsc.deploy.mtcnn import MTCNN
from plsc.deploy.scrfd import SCRFD
from plsc.errors import ConfigError
from plsc.metrics.align import align_face

ALIGN_MODES, FACE_MODES = ("auto", "crops", "none"), ("largest", "all")
DETECT_SIDE = 1280

Face = collections.namedtuple("Face", "crop box landmarks score status")
_NO_BOX, _NO_LMK = np.full(4, np.nan, np.float32), np.full((5, 2), np.nan, np.float32)


def build_detector(detector=None):
    """'mtcnn' / None -> plsc.deploy.mtcnn.MTCNN; a .onnx path -> insightface's SCRFD (plsc.deploy.scrfd)."""
    if detector in (None, "mtcnn"):
        return MTCNN()
    if str(detector).endswith(".onnx"):
        return SCRFD(str(detector))
    raise ConfigError(f"--detector {detector!r}: expected 'mtcnn' or an SCRFD .onnx file (e.g. det_10g.onnx)")


class FacePreparer:
    def __init__(self, align="auto", faces="largest", size=112, detector=None):
        if align not in ALIGN_MODES:
            raise ConfigError(f"--align {align!r}: expected one of {', '.join(ALIGN_MODES)}")
        if faces not in FACE_MODES:
            raise ConfigError(f"--faces {faces!r}: expected one of {', '.join(FACE_MODES)}")
        self.align, self.faces, self.size = align, faces, size
        self.detector = build_detector(detector) if align == "auto" else None

    def _resized(self, rgb, status):
        crop = rgb if rgb.shape[:2] == (self.size, self.size) else \
            cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return [Face(crop, _NO_BOX, _NO_LMK, np.float32(np.nan), status)]

    def detect(self, rgb):
        """-> boxes [n, 5], landmarks [n, 5, 2] in the photo's pixels, best score first."""
        h, w = rgb.shape[:2]
        scale = min(1.0, DETECT_SIDE / max(h, w))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                    interpolation=cv2.INTER_AREA)
        boxes, points = self.detector.detect(small)  # onnxruntime sessions may run from several threads
        if scale != 1.0:
            boxes = boxes.copy()
            boxes[:, :4] /= scale
            points = points / scale
        return boxes, points

    def __call__(self, rgb):
        """(faces kept, number of faces found) of one photo; no face: ([], 0)."""
        if self.align == "crops":
            return self._resized(rgb, "crop"), 1
        if self.align == "none":
            return self._resized(rgb, "resized"), 1
        if rgb.shape[:2] == (112, 112):  # already an aligned crop (as insightface's .bin / rec images)
            return self._resized(rgb, "crop"), 1
        boxes, points = self.detect(rgb)
        if not len(boxes):
            return [], 0
        order = np.arange(len(boxes))
        if self.faces == "largest":
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            order = order[[int(np.argmax(area))]]
        return [Face(align_face(rgb, points[i], self.size), boxes[i, :4].copy(), points[i].copy(),
                     np.float32(boxes[i, 4]), "face") for i in order], len(boxes)
