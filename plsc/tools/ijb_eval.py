"""plsc-ijb: IJB-B / IJB-C 1:1 verification and 1:N identification of a model.

    plsc-ijb --model output/IResNet50/export/model.onnx --root ./ijb/IJBC --target IJBC --out ijbc_out
    plsc-ijb --model output/IResNet50/export --root ./ijb/IJBB --target IJBB       # Paddle inference model
    plsc-ijb -c configs/ms1mv3/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml -o Global.pretrained_model=output/IResNet50/best_model \\
             --root ./ijb/IJBC --target IJBC                                       # training checkpoint
    python -m paddle.distributed.launch --nproc_per_node=8 plsc-ijb ...            # images split over ranks

Writes <out>/<target>_results.json, <out>/<target>_roc.png (and <target>_scores.npz with
--save-scores, <target>_templates.npz with --save-embeddings) as soon as 1:1 is done, then runs 1:N
and adds it to the json. Prints progress while embedding and the TAR@FAR and identification tables.
A user error prints one message and exits with code 2; a 1:N problem (e.g. a probe subject without a
gallery template) is recorded in the json ("identification_error") without discarding the 1:1 results.
"""
import argparse
import json
import os
import sys

from plsc.env import setup_threads

DOC = __doc__


def build_parser():
    p = argparse.ArgumentParser(prog="plsc-ijb", description=DOC.split("\n")[0],
                                epilog=DOC.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (one of)")
    src.add_argument("--model", help="exported model: a dir with inference.json + .pdiparams, or a .onnx file")
    src.add_argument("-c", "--config", help="training config of a checkpoint (with -o Global.pretrained_model=...)")
    src.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable)")
    p.add_argument("--root", required=True, help="IJB folder holding meta/ and loose_crop/")
    p.add_argument("--target", default="IJBC", type=str.upper, choices=["IJBB", "IJBC"], help="IJBB or IJBC")
    p.add_argument("--out", default=None, help="output folder (default: ./ijb_results)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--no-flip", action="store_true", help="do not add the embedding of the mirrored image")
    p.add_argument("--norm-weight", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the feature norm as a quality weight in the template average (default on)")
    p.add_argument("--det-weight", action=argparse.BooleanOptionalAction, default=True,
                   help="weight image features by the detector score (default on)")
    p.add_argument("--save-scores", action="store_true", help="also write the 1:1 pair scores and labels (.npz)")
    p.add_argument("--save-embeddings", action="store_true",
                   help="also write the template ids and features (.npz), before 1:N runs")
    return p


def _is_exported(path):
    return path.endswith(".onnx") or path.endswith("inference.json") or \
        os.path.isfile(os.path.join(path, "inference.json"))


def resolve_embedder(args):
    """-> (embed_fn, label, rank, world_size) for --model or -c/-o."""
    from plsc.errors import ConfigError

    if bool(args.model) == bool(args.config):
        raise ConfigError("give the model either as --model <exported dir or .onnx> or as "
                          "-c <config> -o Global.pretrained_model=<checkpoint>")
    if args.config:
        from plsc.config import load_config

        cfg = load_config(args.config, args.override)
        path = cfg["Global"]["pretrained_model"]
        if not path:
            raise ConfigError("-c needs the checkpoint to evaluate: -o Global.pretrained_model=<checkpoint dir>")
        if not _is_exported(path):
            from plsc.engine.engine import Engine

            engine = Engine(cfg, mode="eval")
            return engine.embed, cfg["Model"]["name"], engine.rank, engine.world_size
    else:
        if args.override:
            raise ConfigError("-o overrides apply to -c configs; an exported --model takes none")
        path = args.model
    from plsc.distributed import init as init_distributed
    from plsc.inference import load_embedder

    rank, world_size = init_distributed()
    return load_embedder(path), os.path.basename(os.path.normpath(path)), rank, world_size


def run(args):
    import numpy as np

    from plsc.errors import PlscError
    from plsc.metrics.ijb import evaluate_ijb_verification, format_ijb, identify, plot_roc, read_ijb
    from plsc.progress import Progress

    out = args.out or "ijb_results"
    check_outputs(out, args.target)  # nothing of someone else's is replaced
    meta = read_ijb(args.root, args.target)  # fail on missing meta files before loading any model
    embed_fn, label, rank, world_size = resolve_embedder(args)
    share = f" (rank 0's share of {world_size} ranks)" if world_size > 1 else ""
    progress = Progress(len(meta.image_paths), "images", "embedded", note=share,
                        log=lambda m: print(m, flush=True)) if rank == 0 else None
    results, roc, (t_ids, t_feats) = evaluate_ijb_verification(
        embed_fn, args.root, args.target, batch_size=args.batch_size, flip_test=not args.no_flip,
        norm_weight=args.norm_weight, det_weight=args.det_weight, rank=rank, world_size=world_size, meta=meta,
        progress=progress)
    stem = os.path.join(out, args.target.lower())
    results["model"] = label
    if rank == 0:  # the 1:1 results are kept before 1:N runs: a 1:N problem must not lose hours of embedding
        os.makedirs(out, exist_ok=True)
        _write_json(stem + MANIFEST_SUFFIX, {"written_by": "plsc-ijb", "files": _outputs(args.target)})
        _write_json(stem + "_results.json", results)
        plot_roc({label: (roc["fpr"], roc["tpr"])}, stem + "_roc.png", title=f"ROC on {args.target}")
        if args.save_scores:
            np.savez(stem + "_scores.npz", **roc)
        if args.save_embeddings:
            np.savez(stem + "_templates.npz", template_ids=t_ids, features=t_feats)
        print(f"wrote {stem}_results.json (1:1) and {stem}_roc.png", flush=True)
    if meta.one_to_n:
        try:
            results["identification"] = identify(t_ids, t_feats, meta.one_to_n)
        except PlscError as e:
            results["identification_error"] = str(e)
            if rank == 0:
                _write_json(stem + "_results.json", results)
            raise PlscError(f"{args.target} 1:N identification failed: {e} (the 1:1 results are in "
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
    from plsc.engine.preflight import check_owned_outputs

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


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_threads()  # before paddle is imported
    from plsc.errors import PlscError

    if args.batch_size < 1:
        print(f"plsc-ijb: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        sys.exit(2)
    try:
        run(args)  # return nothing: the console-script wrapper would sys.exit() a returned value
    except PlscError as e:
        print(f"plsc-ijb: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
