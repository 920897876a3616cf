"""AdaFace `.ckpt` files (PyTorch Lightning checkpoints of mk-minchul/AdaFace) -> plsc IR / IR_SE.

The Lightning module keeps the backbone as `self.model` (net.build_model: ir_18/34/50/101,
ir_se_50) and the margin head as `self.head`, so `ckpt['state_dict']` holds `model.<net.py name>`
and `head.kernel` [512, classes] (+ the head's running statistics t / batch_mean / batch_std). The
rest of the file (optimizer_states, lr_schedulers, callbacks, loops, hyper_parameters) is reported,
not imported. Conversions: the `model.` prefix is dropped; AdaFace feeds BGR images, so the stem
conv's input channels are reversed and the imported model takes plsc's RGB input with the same
embedding; blocks whose shortcut is AdaFace's weight-free MaxPool2d(1, stride) are plsc IRBlocks
without `downsample`; the affine-free embedding BatchNorm1d gets plsc's frozen scale 1 / shift 0.
"""
import numpy as np

from plsc.interop.insightface import bn_size
from plsc.interop.mapping import ArchUnreadable, Family, arch_kwargs_against, count, nearest_member, shape_of, tensors
from plsc.io.safe_pickle import brief, clip
from plsc.models import ir

PREFIX = "model."
TABLE = [
    (r"input_layer\.0", "conv1"), (r"input_layer\.1", "bn1"), (r"input_layer\.2", "prelu"),
    (r"body\.(?P<n>\d+)\.res_layer\.0", "{unit}.bn1"),
    (r"body\.(?P<n>\d+)\.res_layer\.1", "{unit}.conv1"),
    (r"body\.(?P<n>\d+)\.res_layer\.2", "{unit}.bn2"),
    (r"body\.(?P<n>\d+)\.res_layer\.3", "{unit}.prelu"),
    (r"body\.(?P<n>\d+)\.res_layer\.4", "{unit}.conv2"),
    (r"body\.(?P<n>\d+)\.res_layer\.5", "{unit}.bn3"),
    (r"body\.(?P<n>\d+)\.res_layer\.se_block\.(?P<f>fc[12])", "{unit}.se.{f}"),
    (r"body\.(?P<n>\d+)\.shortcut_layer\.(?P<k>[01])", "{unit}.downsample.{k}"),
    (r"output_layer\.0", "bn2"), (r"output_layer\.3", "fc"), (r"output_layer\.4", "features"),
]
# hyper_parameters 'arch' -> plsc name (build_model's names)
ARCH_NAMES = {"ir_18": "IR_18", "ir_34": "IR_34", "ir_50": "IR_50", "ir_101": "IR_101", "ir_se_50": "IR_SE_50"}


def _units(shapes):
    return count(shapes, r"body\.(\d+)\.res_layer\.1\.weight")


def _detect(shapes):
    units = _units(shapes)
    starts = [n for n in range(units) if n == 0 or f"body.{n}.shortcut_layer.0.weight" in shapes]
    if units == 0 or len(starts) != 4:
        raise ArchUnreadable(f"{len(starts)} stages (blocks with a conv shortcut) instead of 4")
    layers = [b - a for a, b in zip(starts, starts[1:] + [units])]
    widths = [shape_of(shapes, f"body.{n}.res_layer.1.weight", 4)[0] for n in starts]
    se = "body.0.res_layer.se_block.fc1.weight" in shapes
    nf, nf_key = bn_size(shapes, "output_layer.4")
    return {"arch": {"layers": layers, "widths": widths}, "se": se, "num_features": nf, "nf_key": nf_key}


def _unit(groups, arch):
    if "n" not in groups:
        return {}
    n = int(groups["n"])
    for stage, depth in enumerate(arch["layers"]):
        if n < depth:
            return {"unit": f"layer{stage + 1}.{n}"}
        n -= depth
    raise IndexError(groups["n"])


def _choose(info, model):
    arch, se = info["arch"], info["se"]
    members = [m for m, (_, has_se) in ir.ARCHS.items() if has_se == se]
    if model is None:
        exact = [m for m in members if ir.ARCHS[m][0] == arch["layers"]]
        model = exact[0] if exact else nearest_member(
            members, lambda m: sum(abs(a - b) for a, b in zip(ir.ARCHS[m][0], arch["layers"])))
    return model, arch_kwargs_against(arch, {"layers": ir.ARCHS[model][0], "widths": ir.WIDTHS})


FAMILY = Family("AdaFace IR / IR-SE (net.py names)", TABLE, _detect, _choose, resolve=_unit, default="IR_50",
                members=list(ir.ARCHS),
                guess=lambda shapes: nearest_member(ir.ARCHS, lambda m: abs(sum(ir.ARCHS[m][0]) - _units(shapes))))


def claims(obj):
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    return isinstance(sd, dict) and any(isinstance(k, str) and k.startswith(PREFIX) for k in sd)


def split(obj, path):
    """-> (backbone arrays without the prefix, {what: description} of everything else, notes)."""
    sd = obj["state_dict"]
    backbone = tensors({k[len(PREFIX):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(PREFIX)},
                       path, "state_dict")
    rest = {}
    others = [k for k in sd if not (isinstance(k, str) and k.startswith(PREFIX))]
    if others:
        desc = ", ".join(f"{clip(k, 60)} {list(sd[k].shape)}" if isinstance(k, str) and isinstance(sd[k], np.ndarray)
                         else f"{brief(k)} ({type(sd[k]).__name__})" for k in others[:6])
        rest["state_dict (head)"] = f"{desc}{', ...' if len(others) > 6 else ''}: the margin head, not imported"
    for k in obj:
        if k != "state_dict":
            rest[clip(k, 120) if isinstance(k, str) else brief(k)] = "not imported"
    notes = []
    hp = obj.get("hyper_parameters")
    if isinstance(hp, dict) and isinstance(hp.get("arch"), str):
        arch = hp["arch"]
        notes.append(f"hyper_parameters: arch '{clip(arch, 40)}' (plsc {ARCH_NAMES.get(arch, 'has no such name')})")
    return backbone, rest, notes


def constants(num_features):
    """plsc tensors AdaFace has no counterpart for: the affine-free BatchNorm1d's scale and shift."""
    return {"features.weight": np.ones(num_features, np.float32), "features.bias": np.zeros(num_features, np.float32)}


def to_rgb(backbone):
    """AdaFace's stem reads BGR: reverse its input channels so the plsc model reads RGB."""
    backbone["conv1.weight"] = np.ascontiguousarray(backbone["conv1.weight"][:, ::-1])
    return "BGR -> RGB: the stem conv's input channels reversed (AdaFace feeds BGR images, plsc RGB)"
