"""Convert layer / optimizer state to numpy arrays + JSON and back (checkpoint payloads)."""
import numpy as np
import paddle

from plsc.errors import CheckpointError


def to_numpy(t):
    if isinstance(t, paddle.Tensor):
        return t.numpy() if t.dtype != paddle.bfloat16 else t.astype("float32").numpy()
    return np.asarray(t)


def layer_arrays(layer):
    return {k: to_numpy(v) for k, v in layer.state_dict().items()}


def load_layer_arrays(layer, arrays, source, strict=True):
    """Load arrays into `layer`; shapes must match. Returns (missing, unexpected) key lists."""
    own = layer.state_dict()
    missing = [k for k in own if k not in arrays]
    unexpected = [k for k in arrays if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{source} does not match the model: missing {missing[:8]}"
                              f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                              f"{'...' if len(unexpected) > 8 else ''}")
    for k, v in own.items():
        if k in arrays and tuple(arrays[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: parameter '{k}' has shape {list(arrays[k].shape)} in the "
                                  f"checkpoint but {list(v.shape)} in the model built from the config")
    layer.set_state_dict({k: paddle.to_tensor(arrays[k]).astype(own[k].dtype) for k in own if k in arrays})
    return missing, unexpected


def split_state(sd, prefix=""):
    """Optimizer-style state dict -> ({flat name: array}, {json-able rest})."""
    arrays, rest = {}, {}
    for k, v in sd.items():
        key = f"{prefix}{k}"
        if isinstance(v, paddle.Tensor) or isinstance(v, np.ndarray):
            arrays[key] = to_numpy(v)
        elif isinstance(v, dict):
            a, r = split_state(v, key + "/")
            arrays.update(a)
            if r:
                rest[k] = r
            else:
                rest.setdefault("__dicts__", []).append(k)
        else:
            rest[k] = v
    return arrays, rest


def join_state(arrays, rest):
    """Inverse of split_state (tensors come back as paddle Tensors)."""
    out = {}
    for k, v in arrays.items():
        node = out
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = paddle.to_tensor(v)
    for k in rest.get("__dicts__", []):
        out.setdefault(k, {})
    for k, v in rest.items():
        if k == "__dicts__":
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out
