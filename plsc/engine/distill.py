"""Knowledge distillation into the trained backbone (the Distill section).

    Distill: {teacher: imported/r100, loss: cosine, weight: 1.0}

The teacher is any plsc checkpoint directory (plsc-train's, or plsc-import's of insightface / AdaFace /
PLSC weights); its architecture comes from the checkpoint's state.json and its weights load strictly. It
runs in eval mode without gradient, in the same step as the student, on every rank for that rank's own
images (no second pass over the data, no collective). Per sample, with s the student's embedding and t
the teacher's:

    cosine   1 - cos(P s, t)
    l2       |P s - t|^2 / D_t            (mean squared error of the raw embeddings)

and the step's loss is margin loss + weight * mean over the batch. P is the identity when both
embeddings have the same size, else a learned linear projection D_s -> D_t (no bias): trained with the
backbone's optimizer, its gradient averaged over ranks, saved as distill.npz beside the backbone and
dropped by plsc-export (which exports the backbone only).
"""
import os

import numpy as np
import paddle

from plsc.distributed import all_reduce_sum_
from plsc.config.schema import _TRANSFORMS_DEFAULT
from plsc.data.transforms import NormalizeImage
from plsc.io import checkpoint as ckpt
from plsc.errors import ConfigError
from plsc.models.loading import load_backbone
from plsc.registry import MODELS

STANDARD_INPUT = ("rgb", (1 / 127.5,) * 3, (-1.0,) * 3)  # (x / 255 - 0.5) / 0.5 on RGB: every plsc backbone's


def input_pipeline(dataset_spec):
    """(channel order, per-channel multiplier, offset) a training dataset hands the model, or None when
    its images come already normalized (FaceRandomDataset)."""
    if dataset_spec.get("name") == "FaceRandomDataset":
        return None
    order, mul, add = "bgr", (1.0,) * 3, (0.0,) * 3
    for op in dataset_spec.get("transform_ops") or _TRANSFORMS_DEFAULT:
        (name, kw), = op.items()
        kw = kw or {}
        if name == "DecodeImage":
            order = "rgb" if kw.get("to_rgb", True) else "bgr"
        elif name == "NormalizeImage":
            n = NormalizeImage(**kw)
            mul, add = tuple(float(v) for v in n.mul), tuple(float(v) for v in n.add)
    return order, mul, add


def _same_input(a, b):
    return a[0] == b[0] and np.allclose(a[1], b[1], rtol=1e-5) and np.allclose(a[2], b[2], rtol=1e-5, atol=1e-6)


def build_teacher(path):
    """(backbone in eval mode with frozen weights, its Model section as a dict, its input pipeline)."""
    d = ckpt.resolve(path)
    ckpt.verify(d)
    state = ckpt.load_json(os.path.join(d, "state.json"))
    if isinstance(state.get("config"), dict):  # plsc-train's checkpoint: its own config
        m = state["config"]["Model"]
        kwargs = {"num_features": m["num_features"], "data_format": "NCHW", "dropout": 0.0}
        if m.get("arch_kwargs"):
            kwargs["arch_kwargs"] = dict(m["arch_kwargs"])
        for key in ("mask_ratio", "drop_path_rate"):
            if m.get(key) is not None:
                kwargs[key] = m[key]
        name = m["name"]
        pipeline = input_pipeline(state["config"]["DataLoader"]["Train"]["dataset"])
    else:  # plsc-import's: architecture recorded from the source file; plsc's standard input
        name = state["model"]
        kwargs = {"num_features": state["num_features"], **(state.get("model_options") or {})}
        if state.get("arch_kwargs"):
            kwargs["arch_kwargs"] = dict(state["arch_kwargs"])
        pipeline = STANDARD_INPUT
    if name not in MODELS:
        raise ConfigError(f"Distill.teacher={path}: its model {name!r} is not a registered backbone")
    teacher = MODELS.build(name, **kwargs)
    load_backbone(teacher, ckpt.load_arrays(os.path.join(d, "backbone.npz")), f"Distill.teacher {d}", name,
                  kwargs["num_features"])
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    return teacher, {"name": name, "num_features": int(kwargs["num_features"])}, pipeline, d


class Distiller:
    def __init__(self, section, cfg, log):
        self.kind, self.weight = section["loss"], float(section["weight"])
        self.teacher, info, teacher_input, where = build_teacher(section["teacher"])
        student_input = input_pipeline(cfg["DataLoader"]["Train"]["dataset"])
        if teacher_input is not None and student_input is not None and not _same_input(teacher_input,
                                                                                       student_input):
            raise ConfigError(
                f"Distill.teacher {where} takes {teacher_input[0].upper()} images scaled by {teacher_input[1]} "
                f"and shifted by {teacher_input[2]}, but DataLoader.Train.dataset.transform_ops give "
                f"{student_input[0].upper()}, {student_input[1]}, {student_input[2]}: the teacher would see other "
                f"pixels than it was trained on; use the teacher's normalization")
        ds, dt = cfg["Model"]["num_features"], info["num_features"]
        self.proj = None
        if ds != dt:
            self.proj = paddle.nn.Linear(ds, dt, bias_attr=False)
        log.info(f"distillation: teacher {info['name']} ({dt}-d) from {where}, {self.kind} loss x {self.weight:g}"
                 + (f", learned projection {ds} -> {dt}" if self.proj is not None else ""))
        self.last = None

    def parameters(self):
        return [] if self.proj is None else list(self.proj.parameters())

    def loss(self, features, images):
        """weight * the batch mean of the per-sample distillation loss (a device scalar)."""
        with paddle.no_grad():
            t = self.teacher(images).astype("float32")
        s = features.astype("float32")
        if self.proj is not None:
            s = self.proj(s)
        if self.kind == "cosine":
            per = 1.0 - paddle.nn.functional.cosine_similarity(s, t, axis=1)
        else:
            per = ((s - t) ** 2).mean(axis=1)
        value = per.mean()
        self.last = value.detach()
        return value * self.weight

    def sync_grads(self, world_size):
        """The projection is outside DataParallel: average its gradient over the ranks."""
        if world_size > 1:
            for p in self.parameters():
                if p.grad is not None:
                    g = p.grad.detach()  # the same memory, outside autograd
                    all_reduce_sum_(g)
                    g.scale_(1.0 / world_size)

    def arrays(self):
        return {} if self.proj is None else {"proj.weight": self.proj.weight.numpy()}

    def load_arrays(self, arrays, source):
        if self.proj is None:
            return
        if "proj.weight" not in arrays or tuple(arrays["proj.weight"].shape) != tuple(self.proj.weight.shape):
            raise ConfigError(f"{source}: no distillation projection of shape {list(self.proj.weight.shape)}")
        paddle.assign(paddle.to_tensor(arrays["proj.weight"]), output=self.proj.weight)
