"""Write an imported checkpoint as a plsc checkpoint directory (the layout of plsc.io.checkpoint).

    write_checkpoint(src, "imported/r50", world_size=2)

    backbone.npz      the plsc backbone's state_dict() names, float32
    fc_rank<r>.npz    (only when the source has a classifier) rank r's rows `shard_range(C, r, W)`
                      in plsc.io.fc_shards' format: float32 weight, optimizer_steps 0 (no momentum:
                      loaded weights-only for fine-tuning)
    state.json        model, arch_kwargs, model_options (Model.<key> the weights do not store, e.g. a
                      FaceViT's mask_ratio), num_features, class_num (null without FC), world_size (number
                      of fc files, 0 without FC), imported_from {format, path, files, sha256}, notes, unused
    manifest.json     size and sha256 of every file (plsc.io.checkpoint.commit_existing)

Everything is written into a temporary sibling and renamed into place, so nothing appears at the
output path when a step fails. An existing output is replaced (with `force`) only when it is a checkpoint
plsc-import wrote (manifest.json, and state.json records `imported_from`) or an empty directory: never
a file, a symbolic link, a training run's checkpoint or a folder of other things (`--out ~ --force`
is refused).
"""
import os
import shutil

from plsc.io import checkpoint as ckpt
from plsc.errors import CheckpointError, PlscError
from plsc.io import fc_shards


def check_replaceable(out_dir, force):
    """An existing --out may be replaced only with force, and only if it is a plsc checkpoint or empty."""
    if not force:
        raise PlscError(f"{out_dir} exists; pass --force to replace it (a plsc checkpoint or an empty directory)")
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        raise PlscError(f"{out_dir} exists and is not a directory (or is a symbolic link): not replaced, also with "
                        f"--force")
    if not os.listdir(out_dir):
        return
    if not os.path.isfile(os.path.join(out_dir, "manifest.json")):
        raise PlscError(f"{out_dir} is a directory that is neither a plsc checkpoint (no manifest.json) nor empty: "
                        f"not replaced, also with --force; choose another --out")
    if not _imported(out_dir):
        raise PlscError(f"{out_dir} is a plsc checkpoint that plsc-import did not write (a training run's?): not "
                        f"replaced, also with --force; choose another --out")


def _imported(out_dir):
    """plsc-import wrote this checkpoint: its state.json records where it was imported from."""
    try:
        state = ckpt.load_json(os.path.join(out_dir, "state.json"))
    except PlscError:
        return False
    return isinstance(state, dict) and isinstance(state.get("imported_from"), dict)


def state_of(src, world_size):
    return {"model": src.model, "arch_kwargs": src.arch_kwargs, "model_options": src.model_options,
            "num_features": src.num_features, "class_num": src.class_num,
            "world_size": world_size if src.fc is not None else 0,
            "imported_from": {"format": src.format, "path": os.path.abspath(src.path), "files":
                              [os.path.abspath(f) for f in src.files], "sha256": src.sha256},
            "notes": src.notes, "unused": src.unused}


def write_checkpoint(src, out_dir, world_size=1, force=False):
    """Returns the state written. Raises PlscError (nothing at out_dir) on a bad argument."""
    out_dir = out_dir.rstrip("/") or out_dir
    if os.path.lexists(out_dir):
        check_replaceable(out_dir, force)
    shards = list(fc_shards.split_weight(src.fc, world_size, src.path)) if src.fc is not None else []
    state = state_of(src, world_size)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise PlscError(f"--out {out_dir}: the folder {parent} does not exist")
    tmp = ckpt.begin(out_dir)
    try:
        ckpt.save_arrays(os.path.join(tmp, "backbone.npz"), src.backbone)
        for r, shard in enumerate(shards):
            fc_shards.write(fc_shards.shard_file(tmp, r), shard)
        ckpt.save_json(os.path.join(tmp, "state.json"), state)
        ckpt.commit(out_dir, state["world_size"])
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write {out_dir}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return state
