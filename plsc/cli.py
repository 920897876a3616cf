"""Console scripts: plsc-train, plsc-eval, plsc-export (one argument parser for all three).

    plsc-train -c configs/ms1mv3/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml -o Global.epochs=1
    python -m paddle.distributed.launch --nproc_per_node=2 plsc-train -c ... -o ...

A user error (bad config, missing file, bad data) prints one message and exits with code 2.
"""
import argparse
import sys

from plsc.env import setup_threads

SECTIONS_HELP = """config sections (see docs/config.md for every key):
  Global               run control: epochs, output_dir, checkpoint, pretrained_model, eval/save intervals
  FP16                 mixed precision: level O0/O1/O2, dtype, GradScaler
  DistributedStrategy  data_parallel, recompute
  Model                backbone name, num_features, data_format, class_num, pfc_config
  Loss                 Train: [- MarginLoss {m1, m2, m3, s}] or [- AdaFaceLoss {m, h, s, t_alpha}]
  LRScheduler          name (Poly, Cosine, Step, MultiStep, Constant), learning_rate, warmup
  Optimizer            name (Momentum, AdamW), weight_decay, grad_clip
  DataLoader           Train / Eval: dataset, sampler, loader
  Metric               Eval: [- LFWAcc {flip_test}]
  Export               export_type (paddle, onnx), input_shape, opset_version

override any key: -o Section.key=value   (list items by index: -o Loss.Train.0.MarginLoss.m2=0.4;
a YAML mapping replaces the subtree: -o 'DataLoader.Train.dataset={name: FaceRandomDataset}')"""


def build_parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=SECTIONS_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    return p


def _run(prog, description, action, argv, extra=None):
    parser = build_parser(prog, description)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    setup_threads(peek_device(args.config, args.override))  # before paddle is imported
    from plsc.errors import PlscError

    try:
        from plsc.config import load_config

        cfg = load_config(args.config, args.override)
        return action(cfg, args) if extra is not None else action(cfg)
    except PlscError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _train(cfg):
    from plsc.engine.engine import Engine

    Engine(cfg, mode="train").train()


def _eval(cfg, args):
    from plsc.engine.commands import run_eval

    run_eval(cfg, compare=args.compare)


def _eval_options(parser):
    parser.add_argument("--compare", metavar="MODEL", default=None,
                        help="a second model (checkpoint dir, exported dir or .onnx) evaluated on the same sets: "
                             "one table of both (e.g. before / after fine-tuning), also in eval_compare.json")


def _export(cfg):
    from plsc.engine.commands import run_export

    run_export(cfg)


def peek_device(path, overrides):
    """Global.device of the config before validation (validation imports paddle); "gpu" if unreadable."""
    from plsc.config import peek

    return peek(path, overrides, ("Global", "device"), "gpu")


def train_main(argv=None):
    _run("plsc-train", "Train a face recognition model.", _train, argv)


def eval_main(argv=None):
    _run("plsc-eval", "Evaluate a model on the configured verification sets.", _eval, argv, _eval_options)


def export_main(argv=None):
    _run("plsc-export", "Export the backbone to a Paddle inference model or ONNX.", _export, argv)
