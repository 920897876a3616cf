"""Read a `.pdparams` file (what `paddle.save(layer.state_dict(), path)` writes in Paddle 2.x / 3.x)
without paddle and without a general unpickler.

    arrays, names = read_pdparams("output/IResNet50/latest.pdparams")
    # arrays {structured name: np.ndarray}; names {structured name: Paddle's internal parameter name}

The file is one pickle (protocol 2-4) of a dict: structured parameter name -> numpy array, plus
"StructuredToParameterName@@" (structured name -> Paddle's internal parameter name) and, for arrays
over 1 GiB saved with protocol 2/3, "UnpackBigParamInfor@@" with the slices to join. Paddle's own
pickler stores a tensor as `builtins.tuple((name, array))`. It goes through plsc's restricted
unpickler: only numpy's array rebuild names (plain bool/int/float dtypes incl. float16),
`_codecs.encode`, `builtins.tuple` / `bytearray` stand-ins and OrderedDict are allowed. Every value
must be an array (or a (name, array) pair) right after reading: anything else is refused, naming
its key. bfloat16 parameters (stored as uint16) are widened to float32 by the caller.
"""
import os

import numpy as np

from plsc.errors import CheckpointError
from plsc.io.numpy_pickle import HALF_DTYPES, PLAIN_DTYPES, numpy_globals
from plsc.io.safe_pickle import BYTES_GLOBALS, Budget, Refused, StandIn, brief, container_globals, safe_loads

NAME_TABLE = "StructuredToParameterName@@"
UNPACK_INFO = "UnpackBigParamInfor@@"
_WHAT = "PLSC / Paddle .pdparams pickle"
_HINT = "a .pdparams may only hold numpy arrays, numbers and strings (a file with code in it is refused unrun)"


def _tuple(*args):
    """Paddle pickles a tensor as tuple((name, array)): only a pair of a name and an array."""
    if len(args) == 1 and type(args[0]) in (tuple, list) and len(args[0]) == 2 and type(args[0][0]) is str and \
            isinstance(args[0][1], np.ndarray):
        return tuple(args[0])
    raise Refused("builtins.tuple called with anything but a (name, array) pair")


def _allowed(budget):
    return {**numpy_globals(PLAIN_DTYPES | HALF_DTYPES, max_ndim=8, budget=budget), **BYTES_GLOBALS,
            **container_globals(), ("builtins", "tuple"): StandIn("builtins.tuple", _tuple),
            ("__builtin__", "tuple"): StandIn("__builtin__.tuple", _tuple)}


def _join_big(obj, path):
    """Paddle's protocol-2/3 saving of an array over 1 GiB: its slices, joined into the original shape."""
    info = obj.pop(UNPACK_INFO)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: {UNPACK_INFO} is not a mapping")
    for key, spec in info.items():
        shape, parts = (spec.get("OriginShape"), spec.get("slices")) if isinstance(spec, dict) else (None, None)
        if type(key) is not str or type(shape) not in (list, tuple) or type(parts) not in (list, tuple) or \
                not all(type(n) is int and n >= 0 for n in shape) or not all(type(p) is str for p in parts):
            raise CheckpointError(f"{path}: {UNPACK_INFO} entry {brief(key)}: {brief(spec)} is not "
                                  f"{{'OriginShape': [sizes], 'slices': [names]}}")
        arrays = [obj.pop(p, None) for p in parts]
        missing = [p for p, a in zip(parts, arrays) if not isinstance(a, np.ndarray)]
        if missing:
            raise CheckpointError(f"{path}: the slices of {brief(key)}: {brief(missing)} are missing or not arrays")
        count = int(np.prod(shape, dtype=object))
        if sum(a.size for a in arrays) != count or len({a.dtype for a in arrays}) > 1:
            raise CheckpointError(f"{path}: the slices of {brief(key)} ({sum(a.size for a in arrays)} values) do not "
                                  f"make its shape {list(shape)}")
        obj[key] = np.concatenate([a.reshape(-1) for a in arrays]).reshape(shape)


def read_pdparams(path):
    """({name: np.ndarray}, {name: internal parameter name}) of a .pdparams state dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    obj = safe_loads(data, path, _allowed(Budget(len(data))), CheckpointError, _WHAT, _HINT, encoding="latin1")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: a pickle of a {type(obj).__name__}, not a Paddle state dict")
    obj = dict(obj)
    table = obj.pop(NAME_TABLE, None)
    names = {k: v for k, v in table.items() if type(k) is str and type(v) is str} if isinstance(table, dict) else {}
    if UNPACK_INFO in obj:
        _join_big(obj, path)
    out = {}
    for k, v in obj.items():
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], np.ndarray):
            v = v[1]
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise CheckpointError(f"{path}: entry {brief(k)} is a {type(v).__name__}, not an array: not a Paddle "
                                  f"state dict (.pdopt / .pdstates files hold optimizer or metric state)")
        out[k] = np.asarray(v)
    if not out:
        raise CheckpointError(f"{path}: an empty state dict")
    return out, names
