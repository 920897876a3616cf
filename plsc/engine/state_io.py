"""Convert layer / optimizer state to numpy arrays + JSON and back (checkpoint payloads)."""
import numpy as np
import paddle


def to_numpy(t):
    if isinstance(t, paddle.Tensor):
        return t.numpy() if t.dtype != paddle.bfloat16 else t.astype("float32").numpy()
    return np.asarray(t)


def layer_arrays(layer):
    return {k: to_numpy(v) for k, v in layer.state_dict().items()}


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
