"""plsc-import: convert a released checkpoint into a plsc checkpoint directory.

    plsc-import ms1mv3_arcface_r50_fp16/backbone.pth --out imported/r50
    plsc-import adaface_ir50_ms1mv2.ckpt --out imported/ir50
    plsc-import output/IResNet50/latest --out imported/plsc_r50 --world-size 8   # PLSC prefix (+ _rank<r> shards)

Sources: PLSC `.pdparams` (IResNet, MobileFaceNet, FaceViT; the file or its prefix; `_rank<r>`
classifier shards next to it are joined and re-split for --world-size), insightface arcface_torch
`.pt` / `.pth` state dicts (r18..r200, r2060, mbf, ViT t/s/b/l/h), AdaFace `.ckpt` (IR-18/34/50/101,
IR-SE-50; converted to take RGB input). The format and architecture are read from the file;
--model names the plsc model when the file cannot tell, --mask-ratio a FaceViT's masking (not stored
in the weights; default: the plsc model's). Files are read without torch and without a general
unpickler: a file that names code is refused and nothing in it runs.

The output is what Global.pretrained_model takes for fine-tuning, plsc-eval and plsc-export; the
tool prints the -o overrides to pass with a config of that backbone (also Model.mask_ratio for a
FaceViT: pass it, the checkpoint holds a mask token exactly when it is > 0).
"""
# The library is imported inside _import: --help and a bad command line answer without loading Paddle, and the
# thread settings are made before it loads.
from plsc.cli.wrapper import Parser, describe, run_command
from plsc.env import setup_threads


def _import(args):
    setup_threads()
    from plsc.tools.import_ckpt import import_checkpoint

    print(import_checkpoint(args.source, args.out, model=args.model, mask_ratio=args.mask_ratio,
                            world_size=args.world_size, force=args.force), flush=True)


def import_parser():
    description, epilog = describe(__doc__)
    p = Parser(prog="plsc-import", description=description, epilog=epilog)
    p.add_argument("source", help="PLSC .pdparams file or prefix, insightface .pt/.pth, AdaFace .ckpt")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist unless --force)")
    p.add_argument("--model", default=None, help="plsc Model.name to import as (default: detected)")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="FaceViT only: the Model.mask_ratio the model was trained with (not stored in the weights; "
                        "default: the plsc model's default; 0 drops the file's mask token)")
    p.add_argument("--world-size", type=int, default=1, help="split the classifier (if any) for this many ranks")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (only an earlier plsc-import output or an empty directory)")
    p.set_defaults(run=_import)
    return p


def import_main(argv=None):
    return run_command(import_parser(), argv)
