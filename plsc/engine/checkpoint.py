"""Checkpoints: one directory per checkpoint, written atomically, no pickle.

    <run_dir>/latest/            (also epoch_N/, best_model/)
        backbone.npz             backbone parameters and buffers (numpy, allow_pickle=False)
        optimizer.npz            dense optimizer tensors; optimizer.json its non-tensor state
        fc_rank<r>.npz           rank r's FC shard: weight rows, optimizer slot rows, head scalars (below)
        state.json               epoch, step, data position, scaler, best metrics, world size, config
        manifest.json            every file with its size and sha256, plsc version, world size

A save writes into a temporary sibling directory, then renames it into place; a kill during a
save leaves the previous checkpoint intact (`<name>.old` is used if the rename was cut between
its two steps). Loading verifies the manifest and names a corrupt or missing file.
"""
import hashlib
import json
import os
import shutil

import numpy as np

import plsc
from plsc.errors import CheckpointError

MANIFEST = "manifest.json"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_arrays(path, arrays):
    """Write {name: np.ndarray} as an .npz (no pickled objects)."""
    with open(path, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})


def load_arrays(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None


def save_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({type(e).__name__})") from None


def tmp_dir_for(final_dir):
    parent, name = os.path.split(os.path.abspath(final_dir))
    return os.path.join(parent, f".{name}.tmp")


def begin(final_dir):
    """Rank 0: create an empty temporary directory for the checkpoint (others wait on a barrier)."""
    tmp = tmp_dir_for(final_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def commit(final_dir, world_size):
    """Rank 0, after every rank wrote its files: write the manifest and move the directory in place."""
    tmp = tmp_dir_for(final_dir)
    commit_existing(tmp, world_size)
    old = final_dir.rstrip("/") + ".old"
    if os.path.isdir(final_dir):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final_dir, old)
    os.rename(tmp, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def commit_existing(ckpt_dir, world_size):
    """Write the manifest (size and sha256 of every file) of a directory holding a checkpoint."""
    files = {}
    for name in sorted(os.listdir(ckpt_dir)):
        if name == MANIFEST:
            continue
        p = os.path.join(ckpt_dir, name)
        files[name] = {"bytes": os.path.getsize(p), "sha256": _sha256(p)}
    save_json(os.path.join(ckpt_dir, MANIFEST), {"plsc_version": plsc.__version__, "world_size": world_size,
                                                 "files": files})


def resolve(path):
    """The directory to load for `path` (falls back to `<path>.old` left by an interrupted save)."""
    if os.path.isdir(path):
        return path
    old = path.rstrip("/") + ".old"
    if os.path.isdir(old):
        return old
    raise CheckpointError(f"checkpoint not found: {path} (expected a directory written by plsc-train)")


def verify(ckpt_dir):
    """Check every file against the manifest; raise naming the first missing or corrupt file."""
    manifest = load_json(os.path.join(ckpt_dir, MANIFEST))
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not isinstance(manifest.get("world_size"), int):
        raise CheckpointError(f"checkpoint {ckpt_dir}: {MANIFEST} is not a plsc manifest")
    for name, info in files.items():
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", "..") or \
                not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or \
                not isinstance(info.get("sha256"), str):
            raise CheckpointError(f"checkpoint {ckpt_dir}: {MANIFEST} has a malformed entry {name!r}")
        p = os.path.join(ckpt_dir, name)
        if not os.path.isfile(p):
            raise CheckpointError(f"checkpoint {ckpt_dir}: file {name} listed in the manifest is missing")
        if os.path.getsize(p) != info["bytes"] or _sha256(p) != info["sha256"]:
            raise CheckpointError(f"checkpoint {ckpt_dir}: file {name} is corrupt (size or sha256 differs "
                                  f"from the manifest)")
    return manifest


def prune(run_dir, keep):
    """Keep the `keep` newest epoch_N checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    epochs = sorted((int(d.split("_", 1)[1]), d) for d in os.listdir(run_dir)
                    if d.startswith("epoch_") and d.split("_", 1)[1].isdigit())
    for _, d in epochs[:-keep]:
        shutil.rmtree(os.path.join(run_dir, d), ignore_errors=True)


# ---------------------------------------------------------------- FC shards (fc_rank<r>.npz)
# One file per rank: `weight` [rows, D] fp32, `class_range` [start, end, C], `replicated`,
# `optimizer_steps`, the optimizer's per-row slots (`momentum`, or `moment1` + `moment2`) and the
# head's scalars as `extra.<name>` (sampling draws, AdaFace norm statistics). A saved shard set
# loads at any world size: each rank takes the rows that overlap its own range.

def fc_shard_arrays(head, head_opt):
    """This rank's shard file contents."""
    arrays = {"weight": head.weight.numpy(),
              "class_range": np.array([head.start, head.end, head.num_classes], dtype=np.int64),
              "replicated": np.array(not head.model_parallel)}
    if head_opt is not None:
        state = head_opt.state_dict()
        arrays["optimizer_steps"] = np.array(state["num_steps"])
        arrays.update({name: t.numpy() for name, t in state["slots"].items()})
    for k, val in head.extra_state().items():
        arrays[f"extra.{k}"] = np.array(val)
    return arrays


def read_fc_shards(ckpt_dir, world_size):
    """The saved FC shards of a checkpoint directory one at a time, in rank order (never all in memory)."""
    for r in range(world_size):
        yield load_arrays(os.path.join(ckpt_dir, f"fc_rank{r}.npz"))


def load_fc_shards(head, head_opt, shards, weights_only=False):
    """Fill this rank's rows of the head (and of head_opt's slots unless weights_only) from saved shards.

    weights_only (fine-tuning, eval): the weight rows only; the optimizer and the head's scalars
    start fresh."""
    import paddle

    w = head.weight.numpy()
    slots = {} if weights_only or head_opt is None else {n: t.numpy() for n, t in head_opt.state_dict()["slots"].items()}
    filled = np.zeros(head.num_local, dtype=bool)
    extra, steps = None, 0
    for i, s in enumerate(shards):
        start, end, classes = (x.item() for x in s["class_range"])
        if classes != head.num_classes or s["weight"].shape[1] != head.num_features:
            raise CheckpointError(f"FC shard {i}: saved for {classes} classes x {s['weight'].shape[1]} "
                                  f"features, the config has {head.num_classes} x {head.num_features}")
        lo, hi = max(start, head.start), min(end, head.end)
        if lo < hi and not filled[lo - head.start: hi - head.start].all():
            w[lo - head.start: hi - head.start] = s["weight"][lo - start: hi - start]
            for name, arr in slots.items():
                if name not in s:
                    raise CheckpointError(f"FC shard {i} has no '{name}' state (saved with another optimizer?); "
                                          f"use Global.pretrained_model to start it fresh")
                arr[lo - head.start: hi - head.start] = s[name][lo - start: hi - start]
            filled[lo - head.start: hi - head.start] = True
        if extra is None:
            extra = {k[len("extra."):]: s[k].item() for k in s if k.startswith("extra.")}
            steps = s["optimizer_steps"].item() if "optimizer_steps" in s else 0
    if not filled.all():
        missing = np.flatnonzero(~filled)[0] + head.start
        raise CheckpointError(f"the saved FC shards do not cover class {missing} (shard files missing?)")
    paddle.assign(paddle.to_tensor(w), output=head.weight)
    if not weights_only and head_opt is not None:
        head_opt.set_state_dict({"slots": {n: paddle.to_tensor(a) for n, a in slots.items()}, "num_steps": steps})
        head.load_extra_state(extra or {})


def shard_row_slots(shard):
    """Names of the per-row optimizer arrays in a shard (momentum; or moment1, moment2)."""
    return sorted(k for k, v in shard.items() if k != "weight" and getattr(v, "ndim", 0) == 2)


def merge_fc_shards(shards):
    """One shard dict covering all classes (rows in class order) from a list of shards."""
    first = shards[0]
    classes = first["class_range"][2].item()
    if first["replicated"].item():
        return dict(first)
    dim = first["weight"].shape[1]
    rows = ["weight"] + shard_row_slots(first)
    full = {k: np.empty((classes, dim), np.float32) for k in rows}
    covered = np.zeros(classes, bool)
    for i, s in enumerate(shards):
        start, end, c = (x.item() for x in s["class_range"])
        if c != classes or s["weight"].shape != (end - start, dim) or shard_row_slots(s) != rows[1:]:
            raise CheckpointError(f"FC shard {i} does not fit the others ({c} classes, rows [{start}, {end}), "
                                  f"weight {s['weight'].shape}, state {shard_row_slots(s)})")
        for k in rows:
            full[k][start:end] = s[k]
        covered[start:end] = True
    if not covered.all():
        raise CheckpointError(f"the FC shards do not cover class {np.flatnonzero(~covered)[0]}")
    out = {k: v for k, v in first.items() if k not in rows and k != "class_range"}
    out.update(full, class_range=np.array([0, classes, classes], np.int64), replicated=np.array(False))
    return out


def split_fc_shards(full, world_size):
    """Shard dicts for `world_size` ranks (plsc's shard rule) from a merged one."""
    from plsc.distributed import shard_range

    classes = full["class_range"][2].item()
    if world_size < 1 or world_size > classes:
        raise CheckpointError(f"world size must be in [1, {classes}] (the class count), got {world_size}")
    rows = ["weight"] + shard_row_slots(full)
    keep = {k: v for k, v in full.items() if k not in rows and k != "class_range"}
    shards = []
    for r in range(world_size):
        start, end = shard_range(classes, r, world_size)
        shards.append(dict(keep, **{k: full[k][start:end] for k in rows},
                           class_range=np.array([start, end, classes], np.int64), replicated=np.array(False)))
    return shards
