"""Name-mapping machinery shared by the source modules: a family of checkpoints (say insightface's
iresnet files) is a table of (source module path regex, plsc module path template) rows plus how
to read its architecture from the tensors. The tables are data; this module applies them.

    fam = Family("insightface iresnet", TABLE, detect, choose, resolve)
    mapped, unmatched = map_keys(arrays, fam, arch)   # {plsc module path + source leaf: (src key, array)}

Templates are `str.format` strings over the regex's named groups and what `resolve(groups, arch)`
adds (e.g. `unit` -> `layer2.0`). Leaves (weight, running_mean, _variance, ...) are translated to
plsc's later, from the type of the plsc layer they land in (plsc.interop.convert).
"""
import re

import numpy as np

from plsc.errors import ArchUnreadable, CheckpointError
from plsc.io.safe_pickle import brief, clip

# source leaves that hold no weights plsc uses; reported, never silently dropped
COUNTER_LEAVES = ("num_batches_tracked",)


def shape_of(shapes, key, ndim):
    """The shape of tensor `key`, which must exist and have `ndim` dimensions (else ArchUnreadable)."""
    if key not in shapes:
        raise ArchUnreadable(f"no tensor '{key}'")
    if len(shapes[key]) != ndim:
        raise ArchUnreadable(f"'{key}' has shape {list(shapes[key])}, expected {ndim} dimensions")
    return shapes[key]


class Family:
    """One checkpoint layout: its table, how to detect its architecture, how to name it in plsc.

    detect(shapes) -> {"arch": {...}, "num_features": n, "nf_key": tensor it was read from, "notes": [...]};
        raises ArchUnreadable (or KeyError / ValueError / IndexError) when the tensors do not tell.
    choose(info, model) -> (plsc model name, arch_kwargs) (model: the --model the user gave, or None).
    resolve(groups, arch) -> extra template fields (may raise KeyError/IndexError: no such unit).
    guess(shapes) -> the nearest registered name from what can always be counted (block keys), for
        the message when detect fails; default: the name when even that is not possible.
    options(shapes, name, requested) -> (model options, source keys not imported {key: why}, notes):
        build options of the plsc model the weights do not store (FaceViT's mask_ratio)."""

    def __init__(self, label, table, detect, choose, resolve=None, default=None, members=(), guess=None,
                 options=None):
        self.label = label
        self.table = [(re.compile(rx), tpl) for rx, tpl in table]
        self.detect, self.choose = detect, choose
        self.resolve = resolve or (lambda groups, arch: {})
        self.default = default
        self.members = tuple(members)
        self._guess = guess
        self.options = options or _no_options

    def guess(self, shapes):
        try:
            return self._guess(shapes) if self._guess else self.default
        except (ArchUnreadable, KeyError, IndexError, ValueError, TypeError, ZeroDivisionError):
            return self.default  # a hint for a message: never the reason the message fails

    def matches(self, path):
        for rx, tpl in self.table:
            m = rx.fullmatch(path)
            if m:
                return tpl, m.groupdict()
        return None, None


def _no_options(shapes, name, requested):
    if requested:
        flags = ", ".join("--" + k.replace("_", "-") for k in requested)
        raise ValueError(f"{flags}: only FaceViT imports take it")
    return {}, {}, []


def split_key(key):
    path, _, leaf = key.rpartition(".")
    return path, leaf


def map_keys(arrays, family, arch, path="<file>"):
    """Apply the family's table. Returns ({plsc path.leaf: (source key, array)}, [unmatched source keys]);
    two source keys that land on one plsc name are an error (never one silently overwriting the other)."""
    out, unmatched = {}, []
    for key, value in arrays.items():
        path, leaf = split_key(key)
        tpl, groups = family.matches(path)
        if tpl is None:
            unmatched.append(key)
            continue
        try:
            target = tpl.format(**groups, **family.resolve(groups, arch))
        except (KeyError, IndexError, ValueError):
            unmatched.append(key)
            continue
        name = f"{target}.{leaf}" if target else leaf
        if name in out:
            raise CheckpointError(f"{path}: tensors '{clip(out[name][0], 120)}' and '{clip(key, 120)}' both map to "
                                  f"plsc's '{name}'")
        out[name] = (key, value)
    return out, unmatched


def coverage(arrays, family):
    """How many source keys the family's table recognises (to pick the nearest family)."""
    return sum(1 for k in arrays if family.matches(split_key(k)[0])[0] is not None)


def pick_family(arrays, families):
    return max(families, key=lambda f: coverage(arrays, f))


def nearest_member(members, distance):
    """The registered name minimising distance(name) (members: iterable of names)."""
    return min(members, key=distance)


def count(shapes, pattern):
    """Number of distinct integers captured by `pattern` (one group) over the keys."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.fullmatch(k)] if m})


def arch_kwargs_against(arch, defaults):
    """The entries of `arch` that differ from a registered model's defaults."""
    return {k: v for k, v in arch.items() if k in defaults and v != defaults[k]}


def check_model_family(model, family, members, path):
    if model is not None and model not in members:
        raise CheckpointError(f"{path}: --model {model} does not fit this file: it holds a {family.label} layout "
                              f"(plsc models of that layout: {', '.join(members)})")


def tensors(obj, path, what):
    """`obj` as {name: np.ndarray}, checked right after reading: a dict whose keys are names and whose
    values are arrays (numpy never sees anything else: a ragged list, or a list shared through the
    pickle memo with 2**40 leaves, is refused here, naming its key)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} is a {type(obj).__name__}, not a {{name: tensor}} dict")
    out = {}
    for k, v in obj.items():
        if type(k) is not str:
            raise CheckpointError(f"{path}: {what} has a key {brief(k)} that is not a name")
        if not isinstance(v, np.ndarray):
            raise CheckpointError(f"{path}: {what} entry '{clip(k, 120)}' is a {type(v).__name__} "
                                  f"({brief(v)}), not a tensor")
        out[k] = np.asarray(v)
    return out
