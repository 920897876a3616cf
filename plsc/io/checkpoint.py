"""Checkpoints: one directory per checkpoint, written atomically, no pickle.

    <run_dir>/latest/            (also epoch_N/, best_model/)
        backbone.npz             backbone parameters and buffers (numpy, allow_pickle=False)
        optimizer.npz            dense optimizer tensors; optimizer.json its non-tensor state
        fc_rank<r>.npz           rank r's FC shard: weight rows, optimizer slot rows, head scalars
                                 (plsc.io.fc_shards)
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


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoint manifests, eval results, gallery indexes)."""
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


def save_json(path, obj, sort_keys=True):
    """Write `obj` as JSON whole into a temporary sibling, then rename it over `path`: a reader (or a kill)
    never sees a half-written file. plsc's one JSON writer (checkpoints, plsc-eval's results)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=sort_keys)
    os.replace(tmp, path)


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
        files[name] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
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
        if os.path.getsize(p) != info["bytes"] or sha256_file(p) != info["sha256"]:
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


# FC shards (fc_rank<r>.npz): their format is built and read in one place, plsc.io.fc_shards.
