"""plsc-ijb's work: IJB-B / IJB-C 1:1 verification and 1:N identification of a model (an exported model or a
training checkpoint), its results written next to a manifest that marks them as plsc-ijb's. The command line is
plsc/cli/ijb.py."""
import json
import os

import numpy as np

from plsc.config import load_config
from plsc.distributed import init as init_distributed
from plsc.engine.inference_model import load_model
from plsc.engine.preflight import check_owned_outputs
from plsc.errors import ConfigError, PlscError
from plsc.inference import load_embedder
from plsc.io.exported import is_exported
from plsc.metrics.ijb import evaluate_ijb_verification, format_ijb, identify, plot_roc, read_ijb
from plsc.progress import Progress


def resolve_embedder(model=None, config=None, overrides=()):
    """-> (embed_fn, label, rank, world_size) of an exported model (--model) or a checkpoint (-c config -o ...)."""
    if bool(model) == bool(config):
        raise ConfigError("give the model either as --model <exported dir or .onnx> or as "
                          "-c <config> -o Global.pretrained_model=<checkpoint>")
    if config:
        cfg = load_config(config, list(overrides))
        path = cfg["Global"]["pretrained_model"]
        if not path:
            raise ConfigError("-c needs the checkpoint to evaluate: -o Global.pretrained_model=<checkpoint dir>")
        if not is_exported(path):
            loaded = load_model(cfg, "eval")
            return loaded.embed, cfg["Model"]["name"], loaded.rank, loaded.world_size
    else:
        if overrides:
            raise ConfigError("-o overrides apply to -c configs; an exported --model takes none")
        path = model
    rank, world_size = init_distributed()
    return load_embedder(path), os.path.basename(os.path.normpath(path)), rank, world_size


def run_ijb(root, target="IJBC", model=None, config=None, overrides=(), out=None, batch_size=128, flip=True,
            norm_weight=True, det_weight=True, save_scores=False, save_embeddings=False):
    """IJB-B / IJB-C 1:1 verification, then 1:N identification, of a model (see resolve_embedder); the results
    written to `out` (default ./ijb_results) by rank 0 and returned."""
    target = target.upper()
    if target not in ("IJBB", "IJBC"):
        raise ConfigError(f"--target {target}: expected IJBB or IJBC")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    out = out or "ijb_results"
    check_outputs(out, target)  # nothing of someone else's is replaced
    meta = read_ijb(root, target)  # fail on missing meta files before loading any model
    embed_fn, label, rank, world_size = resolve_embedder(model, config, overrides)
    share = f" (rank 0's share of {world_size} ranks)" if world_size > 1 else ""
    progress = Progress(len(meta.image_paths), "images", "embedded", note=share,
                        log=lambda m: print(m, flush=True)) if rank == 0 else None
    results, roc, (t_ids, t_feats) = evaluate_ijb_verification(
        embed_fn, root, target, batch_size=batch_size, flip_test=flip,
        norm_weight=norm_weight, det_weight=det_weight, rank=rank, world_size=world_size, meta=meta,
        progress=progress)
    stem = os.path.join(out, target.lower())
    results["model"] = label
    if rank == 0:  # the 1:1 results are kept before 1:N runs: a 1:N problem must not lose hours of embedding
        os.makedirs(out, exist_ok=True)
        _write_json(stem + MANIFEST_SUFFIX, {"written_by": "plsc-ijb", "files": _outputs(target)})
        _write_json(stem + "_results.json", results)
        plot_roc({label: (roc["fpr"], roc["tpr"])}, stem + "_roc.png", title=f"ROC on {target}")
        if save_scores:
            np.savez(stem + "_scores.npz", **roc)
        if save_embeddings:
            np.savez(stem + "_templates.npz", template_ids=t_ids, features=t_feats)
        print(f"wrote {stem}_results.json (1:1) and {stem}_roc.png", flush=True)
    if meta.one_to_n:
        try:
            results["identification"] = identify(t_ids, t_feats, meta.one_to_n)
        except PlscError as e:
            results["identification_error"] = str(e)
            if rank == 0:
                _write_json(stem + "_results.json", results)
            raise PlscError(f"{target} 1:N identification failed: {e} (the 1:1 results are in "
                            f"{stem}_results.json)") from None
    if rank != 0:
        return results
    _write_json(stem + "_results.json", results)
    print(format_ijb(results), flush=True)
    print(f"wrote {stem}_results.json and {stem}_roc.png", flush=True)
    return results


MANIFEST_SUFFIX = "_results.manifest.json"


def _outputs(target):
    t = target.lower()
    return [f"{t}_results.json", f"{t}_roc.png", f"{t}_scores.npz", f"{t}_templates.npz"]


def check_outputs(out, target):
    """--out may already hold this target's files only if plsc-ijb wrote them (its manifest beside them)."""
    def ours(manifest):
        try:
            with open(manifest) as f:
                return json.load(f).get("written_by") == "plsc-ijb"
        except (OSError, ValueError, AttributeError):
            return False

    check_owned_outputs(out, _outputs(target), (target.lower() + MANIFEST_SUFFIX, ours), "plsc-ijb", "--out")


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
