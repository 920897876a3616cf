"""Parameters and MACs (multiply-accumulates) of every registered backbone at 112x112.

    python tools/flops.py [--names IResNet50 FaceViT_tiny_patch9_112] [--num-features 512] [--time]

Params: every weight (trainable or frozen) without BatchNorm running statistics. MACs: conv and
linear layers plus the attention matmuls of FaceViT, counted by forward hooks from the shapes each
layer sees (plsc.models.count_macs), per image. Published references: IResNet r18 2.61G, r34 4.46G,
r50 6.31G (43.6M params), r100 12.09G, r200 23.42G. --time adds the CPU eval latency of batch 1
(median of 3, this machine; only a rough guide).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.env import setup_threads  # noqa: E402

setup_threads()
import paddle  # noqa: E402

from plsc.models import count_macs, count_params  # noqa: E402
from plsc.registry import MODELS  # noqa: E402

PUBLISHED_MACS = {"IResNet18": 2.61, "IResNet34": 4.46, "IResNet50": 6.31, "IResNet100": 12.09, "IResNet200": 23.42}


def _display_order(name):
    """IResNet by depth, then MobileFaceNet base/large, FaceViT tiny..huge, AdaFace IR, then anything else."""
    if name.startswith("IResNet") and name[7:].isdigit():
        return 0, int(name[7:]), name
    for family, sizes in ((1, ["MobileFaceNet_base", "MobileFaceNet_large"]),
                          (2, [f"FaceViT_{s}_patch9_112" for s in ("tiny", "small", "base", "large", "huge")]),
                          (3, ["IR_18", "IR_34", "IR_50", "IR_101", "IR_SE_50"])):
        if name in sizes:
            return family, sizes.index(name), name
    return 4, 0, name


def _latency(model):
    x = paddle.zeros([1, 3, 112, 112])
    times = []
    with paddle.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return sorted(times)[1] * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="*", help="backbones (default: every registered one)")
    ap.add_argument("--num-features", type=int, default=512)
    ap.add_argument("--time", action="store_true", help="also measure CPU eval latency, batch 1")
    args = ap.parse_args(argv)
    import plsc.models  # noqa: F401  (registers the backbones)

    names = args.names or sorted(MODELS.names(), key=_display_order)
    header = f"| {'backbone':<26} | params (M) | MACs (G) | published MACs (G) |" + (" CPU ms/img |" if args.time else "")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in names:
        paddle.seed(0)
        model = MODELS.build(name, num_features=args.num_features)
        model.eval()
        row = (f"| {name:<26} | {count_params(model) / 1e6:10.2f} | {count_macs(model) / 1e9:8.2f} | "
               f"{PUBLISHED_MACS.get(name, ''):>18} |")
        if args.time:
            row += f" {_latency(model):10.0f} |"
        print(row, flush=True)
        del model


if __name__ == "__main__":
    main()
