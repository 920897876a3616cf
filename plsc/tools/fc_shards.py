"""plsc-fc-shards: merge a checkpoint's FC shards into one file, or split one for another world size.

    plsc-fc-shards merge output/IResNet50/latest --out fc_full.npz
    plsc-fc-shards split output/IResNet50/latest --world-size 4 --out output/IResNet50/latest_w4
    plsc-fc-shards split fc_full.npz --world-size 4 --out shards/

Training resumes at any world size by itself (each rank reads the rows it needs); this tool is for
moving the classifier elsewhere: one [C, D] weight (+ momentum) array, or a checkpoint whose shard
files match the world size it will run on. Splitting a checkpoint copies its other files, updates
its world size and writes a fresh manifest.
"""
import argparse
import os
import shutil
import sys

import numpy as np

from plsc.distributed import shard_range
from plsc.engine import checkpoint as ckpt
from plsc.errors import CheckpointError, PlscError


def read_shards(ckpt_dir):
    """The saved shards of a checkpoint directory, verified against its manifest, in rank order."""
    d = ckpt.resolve(ckpt_dir)
    manifest = ckpt.verify(d)
    return [ckpt.load_arrays(os.path.join(d, f"fc_rank{r}.npz")) for r in range(manifest["world_size"])]


def merge(shards):
    """One shard_state dict covering all classes (rows in class order)."""
    first = shards[0]
    classes = first["class_range"][2].item()
    if first["replicated"].item():
        return dict(first)
    dim = first["weight"].shape[1]
    rows = ["weight"] + row_slots(first)
    full = {k: np.empty((classes, dim), np.float32) for k in rows}
    covered = np.zeros(classes, bool)
    for i, s in enumerate(shards):
        start, end, c = (x.item() for x in s["class_range"])
        if c != classes or s["weight"].shape != (end - start, dim) or row_slots(s) != rows[1:]:
            raise CheckpointError(f"FC shard {i} does not fit the others ({c} classes, rows [{start}, {end}), "
                                  f"weight {s['weight'].shape}, state {row_slots(s)})")
        for k in rows:
            full[k][start:end] = s[k]
        covered[start:end] = True
    if not covered.all():
        raise CheckpointError(f"the FC shards do not cover class {np.flatnonzero(~covered)[0]}")
    out = {k: v for k, v in first.items() if k not in rows and k != "class_range"}
    out.update(full, class_range=np.array([0, classes, classes], np.int64), replicated=np.array(False))
    return out


def row_slots(shard):
    """Names of the per-row optimizer arrays in a shard (momentum; or moment1, moment2)."""
    return sorted(k for k, v in shard.items() if k != "weight" and getattr(v, "ndim", 0) == 2)


def split(full, world_size):
    classes = full["class_range"][2].item()
    if world_size < 1 or world_size > classes:
        raise PlscError(f"--world-size must be in [1, {classes}] (the class count), got {world_size}")
    rows = ["weight"] + row_slots(full)
    keep = {k: v for k, v in full.items() if k not in rows and k != "class_range"}
    shards = []
    for r in range(world_size):
        start, end = shard_range(classes, r, world_size)
        shards.append(dict(keep, **{k: full[k][start:end] for k in rows},
                           class_range=np.array([start, end, classes], np.int64), replicated=np.array(False)))
    return shards


def _load_full(src):
    if os.path.isdir(src) or os.path.isdir(src.rstrip("/") + ".old"):
        return merge(read_shards(src)), ckpt.resolve(src)
    if not os.path.isfile(src):
        raise CheckpointError(f"not found: {src} (expected a checkpoint directory or a merged .npz)")
    return ckpt.load_arrays(src), None


def _check_out(path, force):
    if os.path.exists(path) and not force:
        raise PlscError(f"{path} exists; pass --force to overwrite it")


def main(argv=None):
    p = argparse.ArgumentParser(prog="plsc-fc-shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="all shards of a checkpoint -> one .npz (weight, momentum: [C, D])")
    m.add_argument("checkpoint")
    m.add_argument("--out", required=True)
    m.add_argument("--force", action="store_true")
    s = sub.add_parser("split", help="a checkpoint or merged .npz -> shards for --world-size ranks")
    s.add_argument("source")
    s.add_argument("--world-size", type=int, required=True)
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.cmd == "merge":
            _check_out(args.out, args.force)
            full = merge(read_shards(args.checkpoint))
            ckpt.save_arrays(args.out, full)
            print(f"wrote {args.out}: {full['weight'].shape[0]} classes x {full['weight'].shape[1]}")
            return 0
        _check_out(args.out, args.force)
        full, src_dir = _load_full(args.source)
        shards = split(full, args.world_size)
        tmp = args.out.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if src_dir is not None:  # a whole checkpoint: copy the rest, new world size, new manifest
            for name in os.listdir(src_dir):
                if not name.startswith("fc_rank") and name != ckpt.MANIFEST:
                    shutil.copy2(os.path.join(src_dir, name), tmp)
            state = ckpt.load_json(os.path.join(tmp, "state.json"))
            state["world_size"] = args.world_size
            ckpt.save_json(os.path.join(tmp, "state.json"), state)
        for r, shard in enumerate(shards):
            ckpt.save_arrays(os.path.join(tmp, f"fc_rank{r}.npz"), shard)
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        os.rename(tmp, args.out)
        if src_dir is not None:
            ckpt.commit_existing(args.out, args.world_size)
        print(f"wrote {args.world_size} shard(s) to {args.out}")
        return 0
    except PlscError as e:
        print(f"plsc-fc-shards: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
