"""plsc-train, plsc-eval, plsc-export: the commands that take a YAML config (-c) and overrides (-o).

    plsc-train -c configs/ms1mv3/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml -o Global.epochs=1
    python -m paddle.distributed.launch --nproc_per_node=2 plsc-train -c ... -o ...
    plsc-eval -c <cfg> -o Global.pretrained_model=output/IResNet50/best_model [--compare other_model]
    plsc-export -c <cfg> -o Global.pretrained_model=... -o Export.export_type=onnx
"""
# Every plsc.cli module imports the library inside its run functions: --help and a bad command line answer
# without loading Paddle, and the thread settings (plsc.env.setup_threads) are made before Paddle loads.
from plsc.cli.wrapper import Parser, run_command
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


def config_parser(prog, description, action):
    p = Parser(prog=prog, description=description, epilog=SECTIONS_HELP)
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.set_defaults(run=lambda args: action(load(args), args))
    return p


def load(args):
    """The validated config of -c / -o, the thread settings made first (before Paddle is imported)."""
    from plsc.config import load_config, peek

    setup_threads(peek(args.config, args.override, ("Global", "device"), "gpu"))  # "gpu": unreadable yet
    return load_config(args.config, args.override)


def _train(cfg, args):
    from plsc.engine.engine import Trainer

    Trainer(cfg).train()


def _eval(cfg, args):
    from plsc.engine.commands import run_eval

    run_eval(cfg, compare=args.compare)


def _export(cfg, args):
    from plsc.engine.commands import run_export

    run_export(cfg)


def train_parser():
    return config_parser("plsc-train", "Train a face recognition model.", _train)


def eval_parser():
    p = config_parser("plsc-eval", "Evaluate a model on the configured verification sets.", _eval)
    p.add_argument("--compare", metavar="MODEL", default=None,
                   help="a second model (checkpoint dir, exported dir or .onnx) evaluated on the same sets: "
                        "one table of both (e.g. before / after fine-tuning), also in eval_compare.json")
    return p


def export_parser():
    return config_parser("plsc-export", "Export the backbone to a Paddle inference model or ONNX.", _export)


def train_main(argv=None):
    return run_command(train_parser(), argv)


def eval_main(argv=None):
    return run_command(eval_parser(), argv)


def export_main(argv=None):
    return run_command(export_parser(), argv)
