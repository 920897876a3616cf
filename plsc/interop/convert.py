"""Released checkpoint -> plsc backbone arrays: read the file, pick its layout, detect the
architecture, map names, translate leaves, check every tensor against the plsc model.

    src = load_source("model.pt")              # or an AdaFace .ckpt, a PLSC .pdparams file / prefix
    src.model, src.arch_kwargs, src.num_features, src.model_options, src.backbone, src.fc, src.class_num

Leaves are translated by the type of the plsc layer a tensor lands in: BatchNorm running_mean /
running_var -> _mean / _variance, PReLU weight -> _weight, torch Linear weights transposed to
Paddle's [in, out]; float16 / bfloat16 / float64 become float32. A source tensor no table row
claims, or a plsc tensor without a source, is an unknown architecture (the error names the nearest
registered plsc model and the unmatched keys); a tensor of the wrong shape names itself and both
shapes (and the tensor num_features was read from, when the two disagree on it); two source tensors
landing on one plsc name are an error. Tensors that hold nothing plsc uses (BatchNorm batch
counters, a margin head, optimizer state, a FaceViT mask token at mask_ratio 0) are listed in
`src.unused`, never dropped silently. Build options the weights do not store (FaceViT mask_ratio)
come back in `src.model_options`, to be passed as `-o Model.<key>=<value>`.
"""
import hashlib
import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from plsc.errors import CheckpointError, PlscError
from plsc.interop import adaface, insightface, plsc_paddle
from plsc.interop.mapping import COUNTER_LEAVES, ArchUnreadable, check_model_family, map_keys, pick_family
from plsc.io.safe_pickle import brief, clip
from plsc.interop.torch_file import read_torch_file

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_LISTED = 8


@dataclass
class Source:
    format: str                 # "plsc-pdparams" | "insightface-pt" | "adaface-ckpt"
    path: str
    files: list
    sha256: str
    model: str                  # plsc Model.name
    arch_kwargs: dict
    num_features: int
    backbone: dict              # plsc state_dict name -> float32 array
    fc: np.ndarray = None       # [class_num, num_features] float32, or None
    model_options: dict = field(default_factory=dict)   # Model.<key> the weights do not store (mask_ratio)
    notes: list = field(default_factory=list)
    unused: dict = field(default_factory=dict)   # what -> description (reported, not imported)

    @property
    def class_num(self):
        return None if self.fc is None else int(self.fc.shape[0])


def sha256_of(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _listed(keys):
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(clip(k, 120) for k in keys[:_MAX_LISTED]) + more


def _layer_kinds(model):
    from paddle import nn

    kinds = {}
    for name, layer in model.named_sublayers():
        if isinstance(layer, (nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm)):
            kinds[name] = "bn"
        elif isinstance(layer, nn.PReLU):
            kinds[name] = "prelu"
        elif isinstance(layer, nn.Linear):
            kinds[name] = "linear"
    return kinds


_LEAVES = {"bn": {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance",
                  "_mean": "_mean", "_variance": "_variance"},
           "prelu": {"weight": "_weight", "_weight": "_weight"}}


def reference_shapes(name, arch_kwargs, num_features, build):
    """{state_dict name: shape} and layer kinds of the plsc model (built lazily: no weights allocated)."""
    import paddle

    import plsc.models  # noqa: F401  (optional: Paddle and the backbones only when shapes are compared)
    from plsc.registry import MODELS

    with paddle.LazyGuard():
        model = MODELS.build(name, num_features=num_features, **({"arch_kwargs": arch_kwargs} if arch_kwargs else {}),
                             **build)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, _layer_kinds(model)


def _as_float32(key, arr, path):
    if not isinstance(arr, np.ndarray):
        raise CheckpointError(f"{path}: '{key}' is a {type(arr).__name__}, not a tensor")
    if arr.dtype.kind != "f":
        raise CheckpointError(f"{path}: tensor '{clip(key, 120)}' has dtype {arr.dtype}, expected a float tensor")
    return arr.astype(np.float32)


def translate(mapped, kinds, framework, path):
    """{plsc path.source leaf: (source key, array)} -> ({plsc name: (source key, array)}, [counters])."""
    out, counters = {}, []
    for target, (src, arr) in mapped.items():
        layer, _, leaf = target.rpartition(".")
        kind = kinds.get(layer)
        if leaf in COUNTER_LEAVES:
            counters.append(src)
            continue
        leaf = _LEAVES.get(kind, {}).get(leaf, leaf)
        if kind == "linear" and leaf == "weight" and framework == "torch" and arr.ndim == 2:
            arr = arr.T
        name = f"{layer}.{leaf}" if layer else leaf
        if name in out:  # e.g. both running_mean and _mean of one BatchNorm
            raise CheckpointError(f"{path}: tensors '{clip(out[name][0], 120)}' and '{clip(src, 120)}' both map to "
                                  f"plsc's '{name}'")
        out[name] = (src, arr)
    return out, counters


def _unknown(path, family, name, unmatched, missing):
    parts = []
    if unmatched:
        parts.append(f"tensors in the file that plsc's {name} has no place for: {_listed(unmatched)}")
    if missing:
        parts.append(f"{name} tensors the file does not provide: {_listed(missing)}")
    return CheckpointError(f"{path}: unknown architecture: the nearest registered plsc model is {name} "
                           f"({family.label} layout); {'; '.join(parts)}")


def _shape_error(path, src, file_shape, file_want, name, ak, nf, nf_key, shapes):
    """The message of a tensor whose shape is not the plsc model's: when the two differ exactly where
    the model has num_features, the file disagrees with itself on the embedding size (name both)."""
    what = f"{name}{f' with arch_kwargs {ak}' if ak else ''} (num_features {nf})"
    diff = [i for i, (a, b) in enumerate(zip(file_shape, file_want)) if a != b] \
        if len(file_shape) == len(file_want) else []
    if src != nf_key and diff and all(file_want[i] == nf for i in diff):
        return CheckpointError(f"{path}: the file's tensors disagree on the embedding size: '{nf_key}' "
                               f"{list(shapes[nf_key])} gives num_features {nf}, but tensor '{clip(src, 120)}' has "
                               f"shape {list(file_shape)} ({name} needs {list(file_want)} with num_features {nf})")
    return CheckpointError(f"{path}: tensor '{clip(src, 120)}' has shape {list(file_shape)} in the file but {what} "
                           f"needs {list(file_want)} for it")


@dataclass
class Converted:
    model: str
    arch_kwargs: dict
    num_features: int
    model_options: dict
    backbone: dict
    unused: dict
    notes: list


def convert(arrays, families, framework, path, model=None, constants=None, options=None):
    """Source arrays (one backbone, {name: np.ndarray}) -> Converted."""
    family = pick_family(arrays, families)
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    check_model_family(model, family, family.members, path)
    try:
        info = family.detect(shapes)
    except (ArchUnreadable, KeyError, ValueError, IndexError, ZeroDivisionError, TypeError) as e:
        reason = str(e) if isinstance(e, ArchUnreadable) else f"{type(e).__name__}: {clip(str(e))}"
        raise CheckpointError(f"{path}: unknown architecture: its tensors do not give the sizes of the {family.label} "
                              f"layout ({reason}); the nearest registered plsc model is "
                              f"{model or family.guess(shapes)}") from None
    name, arch_kwargs = family.choose(info, model)
    nf, nf_key = int(info["num_features"]), info["nf_key"]
    try:
        model_options, dropped, option_notes = family.options(shapes, name, options or {})
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    arrays = {k: v for k, v in arrays.items() if k not in dropped}
    try:
        ref, kinds = reference_shapes(name, arch_kwargs, nf, model_options)
    except (PlscError, ValueError, AssertionError, TypeError, IndexError, OverflowError, RuntimeError,
            MemoryError) as e:  # e.g. a zero-size conv tensor of shape [10**8, 0, 3, 3] claiming a width
        raise CheckpointError(f"{path}: the architecture its tensors describe ({name}"
                              f"{f' with arch_kwargs {arch_kwargs}' if arch_kwargs else ''}, num_features {nf} from "
                              f"'{nf_key}') is not one plsc can build: {type(e).__name__}: {clip(str(e).strip())}") from None
    mapped, unmatched = map_keys(arrays, family, info["arch"], path)
    plsc_arrays, counters = translate(mapped, kinds, framework, path)
    unmatched += [src for k, (src, _) in plsc_arrays.items() if k not in ref]
    extra = constants(nf) if constants else {}
    missing = [k for k in ref if k not in plsc_arrays and k not in extra]
    if unmatched or missing:
        raise _unknown(path, family, name, unmatched, missing)
    backbone = {}
    for k, want in ref.items():
        if k not in plsc_arrays:
            backbone[k] = extra[k]
            continue
        src, arr = plsc_arrays[k]
        if tuple(arr.shape) != want:
            transposed = framework == "torch" and kinds.get(k.rpartition(".")[0]) == "linear" and len(want) == 2
            raise _shape_error(path, src, shapes[src], tuple(want[::-1]) if transposed else tuple(want), name,
                               arch_kwargs, nf, nf_key, shapes)
        backbone[k] = _as_float32(src, np.ascontiguousarray(arr), path)
    unused = {f"{k} {list(shapes[k])}": why for k, why in dropped.items()}
    if counters:
        unused["BatchNorm num_batches_tracked"] = f"{len(counters)} batch counters (plsc keeps no such counter)"
    notes = [f"layout: {family.label}"] + info.get("notes", []) + option_notes
    return Converted(name, arch_kwargs, nf, model_options, backbone, unused, notes)


def _sniff(path):
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "manifest.json")):
            raise CheckpointError(f"{path} is already a plsc checkpoint directory: pass it to "
                                  f"Global.pretrained_model directly")
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        if os.path.isfile(path + ".pdparams"):
            return "pdparams"
        raise CheckpointError(f"not found: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC) or head[:2] == b"\x80\x02" and head[2:4] == b"\x8a\x0a":
        return "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pdparams"
    raise CheckpointError(f"{path}: not a checkpoint: neither a torch zip file (.pt / .pth / .ckpt) nor a Paddle "
                          f".pdparams pickle (it starts with {head[:8]!r})")


def load_source(path, model=None, mask_ratio=None):
    """Read a released checkpoint (format and architecture detected; `model` forces the plsc name,
    `mask_ratio` the FaceViT masking the weights do not record)."""

    options = {} if mask_ratio is None else {"mask_ratio": mask_ratio}
    kind = _sniff(path)
    if kind == "pdparams":
        arrays, fc, rest, notes, files = plsc_paddle.read(path)
        fmt, families, framework, constants = "plsc-pdparams", plsc_paddle.FAMILIES, "paddle", None
        path = files[0]
    else:
        obj = read_torch_file(path)
        files, fc = [path], None
        if adaface.claims(obj):
            arrays, rest, notes = adaface.split(obj, path)
            fmt, families, constants = "adaface-ckpt", (adaface.FAMILY,), adaface.constants
        elif insightface.claims(obj):
            arrays, rest, notes = insightface.split(obj, path)
            fmt, families, constants = "insightface-pt", insightface.FAMILIES, None
        else:
            what = (f"a dict with keys {[brief(k) for k in itertools.islice(obj, 8)]}" if isinstance(obj, dict)
                    else f"a {type(obj).__name__}")
            raise CheckpointError(f"{path}: a torch file, but not a state dict plsc knows: {what} (expected "
                                  f"arcface_torch's {{name: tensor}} or an AdaFace Lightning .ckpt)")
        framework = "torch"
    c = convert(arrays, families, framework, path, model, constants, options)
    notes = c.notes + notes
    if fmt == "adaface-ckpt":
        notes.append(adaface.to_rgb(c.backbone))
    unused = {**rest, **c.unused}
    if fc is not None:
        if fc.shape[1] != c.num_features:
            raise CheckpointError(f"{path}: the classifier head.weight has shape {list(fc.shape)} but the backbone's "
                                  f"embedding has {c.num_features} features")
        fc = _as_float32("head.weight", fc, path)
    return Source(fmt, path, files, sha256_of(files), c.model, c.arch_kwargs, c.num_features, c.backbone, fc,
                  c.model_options, notes, unused)
