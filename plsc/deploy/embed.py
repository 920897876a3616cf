"""Photos -> L2-normalised embeddings, with a status for every input.

    emb = Embedder("export/model.onnx")                 # align="auto", faces="largest", flip=False
    r = emb.embed(["a.jpg", "photos/", rgb_array])      # paths, folders, list files or uint8 RGB arrays
    r.embeddings  [N, D] float32 L2-normalised (one row per face kept)
    r.norms       [N] the raw feature norm (a quality score, as in AdaFace)
    r.row_input   [N] which input each row comes from; r.landmarks [N, 5, 2], r.boxes [N, 4]
    r.inputs, r.status, r.messages, r.n_faces   one entry per input
    r.save("out.npz")                                   # atomic: a temporary file, then os.replace

Decoding and detection run in `workers` threads while the model embeds the previous batch (OpenCV and
onnxruntime release the GIL); batches hold `batch_size` aligned crops. With flip=True the raw features
of each crop and its mirror image are summed before normalising, as evaluation does (plsc.metrics).
"""
import concurrent.futures
import os
import sys

import numpy as np

from plsc.deploy.detect import FacePreparer
from plsc.deploy.images import gather_inputs, read_image_scaled
from plsc.deploy.model import RecognitionModel
from plsc.errors import PlscError
from plsc.progress import Progress

OK_STATUS = ("face", "crop", "resized", "several_faces")


class EmbedResult:
    def __init__(self, dim):
        self.embeddings = np.zeros((0, dim), np.float32)
        self.norms = np.zeros(0, np.float32)
        self.row_input = np.zeros(0, np.int64)
        self.face_index = np.zeros(0, np.int64)
        self.boxes = np.zeros((0, 4), np.float32)
        self.landmarks = np.zeros((0, 5, 2), np.float32)
        self.scores = np.zeros(0, np.float32)
        self.inputs, self.status, self.messages, self.n_faces = [], [], [], []

    @property
    def ok(self):
        """Per input: True when at least one row came from it."""
        return np.asarray([s in OK_STATUS for s in self.status], bool)

    def rows_of(self, i):
        return np.flatnonzero(self.row_input == i)

    def save(self, path, extra=None):
        arrays = {"embeddings": self.embeddings, "norms": self.norms,
                  "paths": np.asarray([self.inputs[i] for i in self.row_input], dtype=str).reshape(-1),
                  "row_input": self.row_input, "face": self.face_index, "boxes": self.boxes,
                  "landmarks": self.landmarks, "det_scores": self.scores,
                  "inputs": np.asarray(self.inputs, dtype=str).reshape(-1),
                  "status": np.asarray(self.status, dtype=str).reshape(-1),
                  "messages": np.asarray(self.messages, dtype=str).reshape(-1),
                  "n_faces": np.asarray(self.n_faces, np.int64)}
        for k, v in (extra or {}).items():
            arrays[k] = np.asarray(v)
        atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path, write, mode="wb"):
    """Write `path` through a temporary file in the same directory and os.replace (nothing half-written)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PlscError(f"{path}: the folder {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Embedder:
    """A recognition model plus face preparation; `embed(inputs)` -> EmbedResult."""

    def __init__(self, model, config=None, overrides=(), align="auto", faces="largest", detector=None,
                 flip=False, batch_size=64, workers=2, use_gpu=None):
        self.model = model if isinstance(model, RecognitionModel) else \
            RecognitionModel(model, config, overrides, use_gpu=use_gpu, max_batch=max(batch_size, 1))
        self.prepare = FacePreparer(align, faces, self.model.input_size[0], detector)
        self.flip, self.batch_size, self.workers = flip, max(1, int(batch_size)), max(1, int(workers))

    def _load(self, item):
        """(faces, n_found, error message or None) for one input (a path or an array)."""
        try:
            scale = 1
            if isinstance(item, np.ndarray):
                rgb = item
                if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                    raise PlscError(f"array input must be uint8 RGB [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
            else:
                rgb, scale = read_image_scaled(item)
            faces, found = self.prepare(rgb)
            if scale != 1:  # a large JPEG decoded at 1/scale: report positions in the file's pixels
                faces = [f._replace(box=f.box * scale, landmarks=f.landmarks * scale) for f in faces]
            return faces, found, None
        except PlscError as e:
            return [], 0, str(e)

    def embed(self, inputs, progress=None):
        items, notes = [], []
        names = []
        for x in inputs:
            if isinstance(x, np.ndarray):
                items.append(x)
                names.append(f"<array {len(names)}>")
            else:
                paths, more = gather_inputs([x])
                notes += more
                items += paths
                names += paths
        result = EmbedResult(0)
        result.notes = notes
        rows = {"crops": [], "meta": []}
        out = {"emb": [], "norm": []}

        def flush():
            if not rows["crops"]:
                return
            crops = np.stack(rows["crops"])
            raw = self.model.run(crops)
            norm = np.linalg.norm(raw, axis=1)
            fused = raw + self.model.run(crops, flip=True) if self.flip else raw
            out["emb"].append(fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12))
            out["norm"].append(norm)
            rows["crops"].clear()

        meta = []
        window = 4 * self.batch_size
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            pending = {}
            for i in range(min(window, len(items))):
                pending[i] = pool.submit(self._load, items[i])
            for i in range(len(items)):
                faces, found, error = pending.pop(i).result()
                if i + window < len(items):
                    pending[i + window] = pool.submit(self._load, items[i + window])
                status, message = _status(names[i], faces, found, error, self.prepare.faces)
                result.inputs.append(names[i])
                result.status.append(status)
                result.messages.append(message)
                result.n_faces.append(found)
                for k, f in enumerate(faces):
                    rows["crops"].append(f.crop)
                    meta.append((i, k, f.box, f.landmarks, f.score))
                    if len(rows["crops"]) >= self.batch_size:
                        flush()
                if progress:
                    progress(i + 1, len(items))
        flush()
        if meta:
            result.embeddings = np.concatenate(out["emb"]).astype(np.float32)
            result.norms = np.concatenate(out["norm"]).astype(np.float32)
            result.row_input = np.asarray([m[0] for m in meta], np.int64)
            result.face_index = np.asarray([m[1] for m in meta], np.int64)
            result.boxes = np.stack([m[2] for m in meta]).astype(np.float32)
            result.landmarks = np.stack([m[3] for m in meta]).astype(np.float32)
            result.scores = np.asarray([m[4] for m in meta], np.float32)
        else:
            result.embeddings = np.zeros((0, self.model.fingerprint()["embedding_size"]), np.float32)
        return result


def _status(name, faces, found, error, mode):
    if error is not None:
        return "error", error
    if not faces:
        return "no_face", f"{name}: no face found"
    if found > 1 and mode == "largest":
        return "several_faces", f"{name}: {found} faces found, kept the largest (--faces all keeps every one)"
    if found > 1:
        return faces[0].status, f"{name}: {found} faces found, all kept"
    return faces[0].status, ""


def terminal_progress(label="embedded"):
    """A Progress printer on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    p = Progress(total=0, what="images", label=label, log=lambda s: print(s, file=sys.stderr, flush=True))
    return lambda done, total: p(done, total)
