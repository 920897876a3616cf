"""plsc-ijb: IJB-B / IJB-C 1:1 verification and 1:N identification of a model.

    plsc-ijb --model output/IResNet50/export/model.onnx --root ./ijb/IJBC --target IJBC --out ijbc_out
    plsc-ijb --model output/IResNet50/export --root ./ijb/IJBB --target IJBB       # Paddle inference model
    plsc-ijb -c configs/ms1mv3/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml \\
             -o Global.pretrained_model=output/IResNet50/best_model --root ./ijb/IJBC --target IJBC  # checkpoint
    python -m paddle.distributed.launch --nproc_per_node=8 plsc-ijb ...            # images split over ranks

Writes <out>/<target>_results.json, <out>/<target>_roc.png (and <target>_scores.npz with
--save-scores, <target>_templates.npz with --save-embeddings) as soon as 1:1 is done, then runs 1:N
and adds it to the json. Prints progress while embedding and the TAR@FAR and identification tables.
A user error prints one message and exits with code 2; a 1:N problem (e.g. a probe subject without a
gallery template) is recorded in the json ("identification_error") without discarding the 1:1 results.
"""
# The library is imported inside _ijb: --help and a bad command line answer without loading Paddle, and the
# thread settings are made before it loads.
import argparse

from plsc.cli.wrapper import Parser, describe, run_command
from plsc.env import setup_threads


def _ijb(args):
    setup_threads()
    from plsc.tools.ijb_eval import run_ijb

    # the results are in the files (a value returned here would become the exit code)
    run_ijb(args.root, args.target, model=args.model, config=args.config, overrides=args.override, out=args.out,
            batch_size=args.batch_size, flip=not args.no_flip, norm_weight=args.norm_weight,
            det_weight=args.det_weight, save_scores=args.save_scores, save_embeddings=args.save_embeddings)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def ijb_parser():
    description, epilog = describe(__doc__)
    p = Parser(prog="plsc-ijb", description=description, epilog=epilog)
    src = p.add_argument_group("model (one of)")
    src.add_argument("--model", help="exported model: a dir with inference.json + .pdiparams, or a .onnx file")
    src.add_argument("-c", "--config", help="training config of a checkpoint (with -o Global.pretrained_model=...)")
    src.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable)")
    p.add_argument("--root", required=True, help="IJB folder holding meta/ and loose_crop/")
    p.add_argument("--target", default="IJBC", type=str.upper, choices=["IJBB", "IJBC"], help="IJBB or IJBC")
    p.add_argument("--out", default=None, help="output folder (default: ./ijb_results)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--no-flip", action="store_true", help="do not add the embedding of the mirrored image")
    p.add_argument("--norm-weight", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the feature norm as a quality weight in the template average (default on)")
    p.add_argument("--det-weight", action=argparse.BooleanOptionalAction, default=True,
                   help="weight image features by the detector score (default on)")
    p.add_argument("--save-scores", action="store_true", help="also write the 1:1 pair scores and labels (.npz)")
    p.add_argument("--save-embeddings", action="store_true",
                   help="also write the template ids and features (.npz), before 1:N runs")
    p.set_defaults(run=_ijb)
    return p


def ijb_main(argv=None):
    return run_command(ijb_parser(), argv)
