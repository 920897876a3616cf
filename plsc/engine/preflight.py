"""Start-up checks: every input a command will need, and every output it would replace, checked before
the run directory is created and before any rank trains (a bad one costs seconds, not an epoch).

    check_start(cfg, "train")    # plsc.engine.start.start_run (Trainer, plsc-eval / plsc-export): first thing, every rank

- plsc-train into <output_dir>/<Model.name>/ that already holds checkpoints: refused unless resuming
  (Global.checkpoint) or Global.overwrite=true.
- Global.checkpoint / Global.pretrained_model (a plsc checkpoint directory): present, a plsc manifest,
  and a backbone.npz whose tensor names and shapes are those of the configured backbone (read from the
  .npy headers, no weights loaded; plsc.models.check_backbone_state). The full load (manifest hashes,
  strict load_backbone) follows in plsc.engine.pretrained / resume.
- plsc-train with evaluation: every configured eval set is opened and checked (its .bin unpickled and
  validated, or its pairs list read and every listed image a regular file; its first image decoded and
  transformed). The other images are decoded at the first evaluation.
"""
import json
import os
import shutil
import zipfile

import numpy as np
import paddle

from plsc.config.rules import eval_sets
from plsc.data.regular import check_regular
from plsc.errors import CheckpointError, ConfigError
from plsc.interop import load_source
from plsc.io import checkpoint as ckpt
from plsc.metrics.evaluator import build_eval_dataset
from plsc.models.build import build_backbone
from plsc.models.loading import check_backbone_state

CHECKPOINT_NAMES = ("latest", "best_model")


def check_start(cfg, mode):
    g = cfg["Global"]
    if mode == "train":
        check_train_output(os.path.join(g["output_dir"], cfg["Model"]["name"]), g)
        if g["checkpoint"]:
            check_weights(cfg, g["checkpoint"], "Global.checkpoint")
        elif g["pretrained_model"]:
            check_weights(cfg, g["pretrained_model"], "Global.pretrained_model")
        if g["eval_during_train"] and cfg["Metric"]["Eval"]:
            open_eval_sets(cfg)
    elif g["pretrained_model"]:
        check_weights(cfg, g["pretrained_model"], "Global.pretrained_model")


def run_checkpoints(run_dir):
    """The checkpoint directories (holding a plsc manifest) of a run directory."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in sorted(os.listdir(run_dir)):
        base = name[:-4] if name.endswith(".old") else name
        if (base in CHECKPOINT_NAMES or base.startswith("epoch_")) and \
                os.path.isfile(os.path.join(run_dir, name, ckpt.MANIFEST)):
            found.append(name)
    return found


def check_train_output(run_dir, g):
    if g["checkpoint"] or g["overwrite"]:
        return
    found = run_checkpoints(run_dir)
    if found:
        raise ConfigError(f"Global.output_dir: {run_dir} already holds the checkpoints of a run ({', '.join(found)}); "
                          f"a new run would replace them. Resume it with -o Global.checkpoint="
                          f"{os.path.join(run_dir, found[0] if 'latest' not in found else 'latest')}, choose another "
                          f"-o Global.output_dir=..., or replace it with -o Global.overwrite=True")


def remove_replaced_run(run_dir, g, log):
    """Global.overwrite=true (and not resuming): the earlier run's checkpoints go when training starts (after
    every input, a pretrained model inside that run included, is loaded), so that its epoch_N never mix with
    the new run's (pruning keeps the highest epochs)."""
    if not g["overwrite"] or g["checkpoint"]:
        return
    found = run_checkpoints(run_dir)
    for name in found:
        shutil.rmtree(os.path.join(run_dir, name))
    if found:
        log.warning(f"Global.overwrite=True: removed the earlier run's checkpoints in {run_dir}: {', '.join(found)}")


def is_plsc_prefix(path):
    """A PLSC checkpoint prefix (`latest` for latest.pdparams), not a plsc checkpoint directory."""
    return not os.path.isdir(path) and (str(path).endswith(".pdparams") or os.path.isfile(f"{path}.pdparams"))


def npz_shapes(path):
    """{array name: shape} of an .npz from its .npy headers (no array is read)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not an .npy array")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shapes[info.filename[:-4]] = tuple(read(f)[0])
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:  # noqa: BLE001  (zipfile / numpy header errors of a damaged file)
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    return shapes


def configured_shapes(cfg):
    """{state_dict name: shape} of the backbone the config builds (built lazily: no weights)."""
    # a fresh name scope: the run's own layers keep the parameter names (optimizer state is keyed by them)
    with paddle.utils.unique_name.guard(), paddle.LazyGuard():
        model = build_backbone(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(cfg, path, key):
    """A plsc checkpoint directory given as `key` holds the configured backbone (names and shapes)."""
    m = cfg["Model"]
    if is_plsc_prefix(path):  # converted here once; plsc.engine.pretrained takes the result (take_source)
        with paddle.utils.unique_name.guard():  # the run's parameter names do not move
            src = load_source(path, model=m["name"])
        check_backbone_state(configured_shapes(cfg), {k: v.shape for k, v in src.backbone.items()},
                             f"{key}: PLSC weights {path}", m["name"], m["num_features"])
        _sources[(os.path.abspath(path), m["name"])] = src
        return
    d = ckpt.resolve(path)
    ckpt.load_json(os.path.join(d, ckpt.MANIFEST))
    what = "checkpoint" if key == "Global.checkpoint" else "pretrained model"
    check_backbone_state(configured_shapes(cfg), npz_shapes(os.path.join(d, "backbone.npz")),
                         f"{key}: {what} {d}", m["name"], m["num_features"])


_sources = {}


def take_source(path, model):
    """The PLSC prefix check_weights converted for this process (once), or None."""
    return _sources.pop((os.path.abspath(path), model), None)


def open_eval_sets(cfg):
    """Open every configured eval set as evaluation will (a refusal names the set and file)."""
    for name, spec in eval_sets(cfg).items():
        ds = build_eval_dataset(name, spec)
        if ds.__class__.__name__ == "FaceVerificationDataset":
            for path in list(ds.images) + list(ds.mirrors or []):
                check_regular(path, f"eval set '{name}': image")
        if len(ds):
            ds[0]  # its first image through the set's transform_ops (every image is decoded at evaluation)
        del ds


def _is_ours_json(path, key, value):
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get(key) == value


def check_owned_outputs(directory, names, marker, what, option):
    """`directory` may receive files `names` only if none exists or `marker` (a file name, predicate) says
    this tool wrote them; else ConfigError naming the file and what to do."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"{option}: {directory} exists and is not a directory")
    existing = [n for n in names if os.path.lexists(os.path.join(directory, n))]
    if not existing:
        return
    mark, ours = marker
    if not ours(os.path.join(directory, mark)):
        raise ConfigError(f"{option}: {os.path.join(directory, existing[0])} exists and was not written by {what} "
                          f"(no {mark} of it beside it): not replaced; move it away or choose another {option}")
