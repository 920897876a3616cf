"""PaddlePaddle/PLSC checkpoints: `<prefix>.pdparams` (+ `<prefix>_rank<r>.pdparams`) -> plsc.

PLSC's `Model.save(prefix)` writes the parameters that are not model-parallel (the backbone, and a
data-parallel classifier) with `paddle.save(state_dict, prefix + ".pdparams")` on local rank 0, and
every rank its class shard `head.weight` [rows_r, D] (PartialFC, `is_distributed`) to
`prefix_rank<r>.pdparams`. Rank r owns rows [C//W*r + min(r, C%W), ...) exactly as plsc shards
them, so the shards are joined in rank order into one [C, D] classifier and re-split by plsc-import
for any world size. `.pdopt` (optimizer) and `.pdstates` (metrics) files are not read.

What is checked: shard files must be ranks 0..W-1 without a gap; each shard's rank is read from the
name PLSC's PartialFC gives its parameter (`<name>@dist@rank@%05d.w`, kept in the file's
"StructuredToParameterName@@" table) and must match its file name; the row counts must be PLSC's
split of some class count over W ranks. What cannot be: the files do not record the world size, so
a run whose last shard(s) were not copied looks like a run on fewer ranks (the report says so).

PLSC's IResNet and FaceViT names are plsc's; its MobileFaceNet is insightface's layout (tables in
plsc.interop.insightface), all with Paddle's conventions (Linear weights [in, out], `_mean`,
`_variance`, PReLU `_weight`).
"""
import os
import re

import numpy as np

from plsc.errors import CheckpointError
from plsc.interop import insightface
from plsc.interop.pdparams import read_pdparams
from plsc.io.safe_pickle import brief, clip

FAMILIES = insightface.FAMILIES
HEAD_KEYS = ("head.weight",)
_RANK = re.compile(r"_rank(\d+)\.pdparams$")
_RANK_NAME = re.compile(r"@rank@(\d+)\.w(?:_\d+)?$")  # PLSC PartialFC: '<name>@dist@rank@%05d.w'


def locate(path):
    """(main .pdparams file, [rank shard files in rank order]) for a file or a prefix."""
    if _RANK.search(path):
        raise CheckpointError(f"{path} is one rank's classifier shard; pass the prefix or the main file "
                              f"({_RANK.sub('.pdparams', path)})")
    main = path if path.endswith(".pdparams") else path + ".pdparams"
    if not os.path.isfile(main):
        raise CheckpointError(f"not found: {path} (nor {main})")
    prefix = main[: -len(".pdparams")]
    folder = os.path.dirname(os.path.abspath(prefix))
    base = os.path.basename(prefix)
    ranks = sorted(int(m.group(1)) for name in os.listdir(folder)
                   for m in [re.fullmatch(re.escape(base) + r"_rank(0|[1-9]\d*)\.pdparams", name)] if m)
    if ranks and ranks != list(range(len(ranks))):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise CheckpointError(f"{prefix}_rank*.pdparams: the shards of rank(s) {missing} are missing "
                              f"(found ranks {ranks})")
    return main, [f"{prefix}_rank{r}.pdparams" for r in ranks]


def _shard_rank(names):
    """The rank PLSC's PartialFC put in its parameter's name (`...@dist@rank@00003.w`), or None."""
    m = _RANK_NAME.search(names.get("head.weight", ""))
    return int(m.group(1)) if m else None


def _join_shards(shard_files, notes):
    """Each rank's head.weight [rows_r, D], checked against its file name and PLSC's split -> [C, D]."""
    shards, unverified = [], []
    for r, f in enumerate(shard_files):
        s, names = read_pdparams(f)
        if "head.weight" not in s:
            raise CheckpointError(f"{f}: no 'head.weight' (keys {[brief(k) for k in sorted(s)[:6]]}); not a PLSC "
                                  f"classifier shard")
        w = s.pop("head.weight")
        if w.ndim != 2:
            raise CheckpointError(f"{f}: head.weight has shape {list(w.shape)}, expected [classes, features]")
        rank = _shard_rank(names)
        if rank is None:
            unverified.append(os.path.basename(f))
        elif rank != r:
            raise CheckpointError(f"{f}: holds the classifier shard of rank {rank} (its parameter is named "
                                  f"'{clip(names['head.weight'], 120)}'), not of rank {r}: shard files renamed or mixed up")
        shards.append(w)
    world, rows = len(shards), [w.shape[0] for w in shards]
    if len({w.shape[1] for w in shards}) != 1:
        raise CheckpointError(f"{shard_files[0]}: the rank shards' head.weight shapes do not fit together: "
                              f"{[list(w.shape) for w in shards]}")
    if rows != sorted(rows, reverse=True) or rows[0] - rows[-1] > 1:
        raise CheckpointError(f"{shard_files[0]}: the shards' row counts {rows} are not how {world} ranks split a "
                              f"classifier (rank r holds C//W rows, one more for r < C%W): a shard is missing or "
                              f"comes from another run")
    fc = np.concatenate(shards, axis=0)
    checked = ("each shard's rank confirmed by its parameter name" if not unverified else
               f"the rank of {', '.join(unverified)} is not recorded in the file (not checked)")
    notes.append(f"classifier: {world} rank shard(s) {rows} rows joined into {list(fc.shape)}; {checked}")
    notes.append(f"classifier: PLSC's files do not record the world size: a missing last shard cannot be detected; "
                 f"check that the run had {world} rank(s) and Model.class_num {fc.shape[0]}")
    return fc


def read(path):
    """-> (backbone arrays, full FC [C, D] or None, {what: description} of the rest, notes, files)."""
    main, shard_files = locate(path)
    arrays, names = read_pdparams(main)
    fc = arrays.pop("head.weight", None)
    rest, notes = {}, []
    if fc is not None and _shard_rank(names) is not None:
        raise CheckpointError(f"{main}: its head.weight is one rank's shard of a model-parallel classifier (named "
                              f"'{clip(names['head.weight'], 120)}'), not the whole classifier")
    if shard_files:
        if fc is not None:
            raise CheckpointError(f"{main} holds a full classifier 'head.weight' and there are rank shards too")
        fc = _join_shards(shard_files, notes)
    elif fc is not None:
        notes.append(f"classifier: head.weight {list(fc.shape)} (data parallel, one file)")
    else:
        notes.append(f"classifier: none in {os.path.basename(main)} and no {os.path.basename(main)[:-9]}_rank<r>"
                     f".pdparams next to it (a model-parallel run keeps its classifier in those files)")
    if fc is not None and fc.ndim != 2:
        raise CheckpointError(f"{main}: head.weight has shape {list(fc.shape)}, expected [classes, features]")
    return arrays, fc, rest, notes, [main] + shard_files
