"""plsc-fc-shards' work: a checkpoint's FC shards merged into one .npz, or split for another world size (a whole
checkpoint with its manifest when the source is one); outputs written aside and renamed, only an earlier output of
this tool replaced. The command line: plsc/cli/data.py."""
import os
import shutil
import tempfile

import numpy as np

from plsc.io import checkpoint as ckpt
from plsc.errors import CheckpointError, PlscError
from plsc.io import fc_shards


def read_shards(ckpt_dir):
    """The saved shards of a checkpoint directory, verified against its manifest, in rank order."""
    d = ckpt.resolve(ckpt_dir)
    manifest = ckpt.verify(d)
    return list(fc_shards.read_all(d, manifest["world_size"]))


def _load_full(src):
    if os.path.isdir(src) or os.path.isdir(src.rstrip("/") + ".old"):
        return fc_shards.merge(read_shards(src)), ckpt.resolve(src)
    if not os.path.isfile(src):
        raise CheckpointError(f"not found: {src} (expected a checkpoint directory or a merged .npz)")
    return fc_shards.read(src), None


MERGED_KEYS = {"weight", "class_range"}  # what a merged .npz of this tool holds (plsc.io.checkpoint)


def _check_out(path, force, kind):
    """--out may replace only what this tool writes: a checkpoint directory (its manifest.json) or a
    directory of fc_rank<r>.npz shards for `split`, a merged .npz for `merge`."""
    if not os.path.lexists(path):
        return
    if not force:
        raise PlscError(f"{path} exists; pass --force to overwrite it (only an output of plsc-fc-shards is replaced)")
    if kind == "merge":
        if os.path.islink(path) or not os.path.isfile(path) or not _is_merged(path):
            raise PlscError(f"{path} exists and is not a merged FC .npz written by plsc-fc-shards merge: not "
                            f"replaced, also with --force; choose another --out")
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise PlscError(f"{path} exists and is not a directory: not replaced, also with --force")
    names = os.listdir(path)
    if os.path.isfile(os.path.join(path, ckpt.MANIFEST)):
        return  # a checkpoint directory (written with its manifest)
    if any(not (n.startswith("fc_rank") and n.endswith(".npz")) for n in names):
        other = next(n for n in names if not (n.startswith("fc_rank") and n.endswith(".npz")))
        raise PlscError(f"{path} holds {other}, which plsc-fc-shards did not write (neither a checkpoint with "
                        f"{ckpt.MANIFEST} nor a folder of fc_rank<r>.npz shards): not replaced, also with --force; "
                        f"choose another --out")


def _is_merged(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return MERGED_KEYS <= set(z.files)
    except Exception:  # noqa: BLE001  (not an .npz at all)
        return False


def merge_checkpoint(checkpoint, out, force=False):
    """All FC shards of a checkpoint -> one .npz at `out` (weight, momentum: [C, D]); -> the merged arrays."""
    _check_out(out, force, "merge")
    full = fc_shards.merge(read_shards(checkpoint))
    _write_whole(out, full)
    return full


def split_source(source, world_size, out, force=False):
    """A checkpoint or a merged .npz -> shards for `world_size` ranks in the folder `out` (a whole checkpoint when
    the source is one: its other files copied, its world size updated, a fresh manifest)."""
    _check_out(out, force, "split")
    full, src_dir = _load_full(source)
    shards = fc_shards.split(full, world_size)
    out = out.rstrip("/") or out
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp",
                           dir=os.path.dirname(os.path.abspath(out)))  # new: never a user's folder
    try:
        _write_split(tmp, out, src_dir, shards, world_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_whole(out, full):
    """The merged .npz written into a new temporary sibling, then renamed: never a half-written --out."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(out)))
    os.close(fd)
    try:
        fc_shards.write(tmp, full)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.remove(tmp)
        raise


def _write_split(tmp, out, src_dir, shards, world_size):
    """Fill the new temporary folder `tmp` and move it to `out` (an earlier output of this tool moves away first)."""
    if src_dir is not None:  # a whole checkpoint: copy the rest, new world size, new manifest
        for name in os.listdir(src_dir):
            if not name.startswith("fc_rank") and name != ckpt.MANIFEST:
                shutil.copy2(os.path.join(src_dir, name), tmp)
        state = ckpt.load_json(os.path.join(tmp, "state.json"))
        state["world_size"] = world_size
        ckpt.save_json(os.path.join(tmp, "state.json"), state)
    for r, shard in enumerate(shards):
        fc_shards.write(fc_shards.shard_file(tmp, r), shard)
    if src_dir is not None:
        ckpt.commit_existing(tmp, world_size)
    os.chmod(tmp, 0o755)
    aside = None
    if os.path.exists(out):  # checked by _check_out: an output of this tool
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=os.path.dirname(tmp))
        os.rename(out, os.path.join(aside, "x"))
    os.rename(tmp, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
