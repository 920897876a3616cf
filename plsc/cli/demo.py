"""plsc-demo: build a small real dataset, train on 2 ranks, evaluate, export ONNX, plot, summarize.

    plsc-demo                      # ~10 minutes on 2 CPU cores; writes ./output/demo/
    plsc-demo --quick              # ~2 minutes: fewer identities, images and epochs (used by the tests)

The data needs no download: identity = one character, images = that character rendered in each of the
TrueType fonts matplotlib ships (plsc/demo/run.py tells the whole story).
"""
# The demo is imported inside _demo: --help and a bad command line answer without loading it.
from plsc.cli.wrapper import Parser, describe, run_command


def _demo(args):
    from plsc.demo.run import run_demo

    return run_demo(args.out, quick=args.quick, nproc=args.nproc, seed=args.seed, force=args.force)


def demo_parser():
    description, epilog = describe(__doc__)
    p = Parser(prog="plsc-demo", description=description, epilog=epilog)
    p.add_argument("--out", default="./output/demo", help="output folder (data, run, export, plots)")
    p.add_argument("--quick", action="store_true", help="a ~2 minute version (CI)")
    p.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rendered dataset (default 0)")
    p.add_argument("--force", action="store_true", help="reuse --out even if it holds an earlier demo")
    p.set_defaults(run=_demo)
    return p


def demo_main(argv=None):
    return run_command(demo_parser(), argv)
