"""Training throughput of whole plsc steps (backbone + PartialFC + optimizers) on synthetic data.

    python tools/bench_train.py                          # the default rows below, one process
    python tools/bench_train.py --model IResNet50 --batch 32 --steps 3

Each row runs the Engine (FaceRandomDataset, FP16 O0 on CPU, Momentum, PartialFC 1.0 over 1000
classes) for --steps timed steps after one warm-up step and prints images/s as the train log
reports it (global batch / batch_cost). Real architectures unless --arch-kwargs is given.
"""
import argparse
import json
import subprocess
import sys
import time

ROWS = [("IResNet50", 32), ("IResNet18", 32), ("MobileFaceNet_base", 64), ("FaceViT_tiny_patch9_112", 32)]


def one(model, batch, steps, arch):
    from plsc.env import setup_threads

    setup_threads()
    from plsc.config import load_config
    from plsc.engine.engine import Engine

    overrides = [f"Model.name={model}", "Model.class_num=1000", "Model.num_features=512", "FP16.level=O0",
                 "Global.output_dir=/tmp/plsc_bench_train", f"Global.max_train_step={steps + 1}",
                 "Global.print_batch_step=1", "Global.save_interval=100000", "Global.save_unit=step",
                 "Global.eval_during_train=false", "Global.use_visualdl=false",
                 f"DataLoader.Train.dataset={{name: FaceRandomDataset, num_classes: 1000, num_samples: {batch * (steps + 1)}}}",
                 f"DataLoader.Train.sampler.batch_size={batch}", "DataLoader.Train.loader.num_workers=0"]
    overrides.append(f"Model.arch_kwargs={arch or '{}'}")  # the base config's tiny sizes must not leak in
    root = __file__.rsplit("/tools/", 1)[0]
    e = Engine(load_config(f"{root}/configs/smoke/IResNet_tiny_random.yaml", overrides))
    times = []
    step = e.train_step
    e.train_step = lambda micro: (lambda t: (step(micro), times.append(time.perf_counter() - t))[0])(time.perf_counter())
    e.state["last_saved_step"] = None
    e.train()
    timed = times[1:]
    print("RESULT " + json.dumps({"model": model, "batch": batch, "step_s": sum(timed) / len(timed),
                                  "ips": batch * len(timed) / sum(timed)}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--arch-kwargs", default="")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return one(a.model, a.batch, a.steps, a.arch_kwargs)
    rows = [(a.model, a.batch)] if a.model else ROWS
    print("| backbone | batch | step (s) | images/s |\n|---|---|---|---|")
    for model, batch in rows:
        out = subprocess.run([sys.executable, __file__, "--one", "--model", model, "--batch", str(batch),
                              "--steps", str(a.steps), "--arch-kwargs", a.arch_kwargs], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"| {model} | {batch} | failed: {(out.stderr or out.stdout)[-300:]!r} | |")
            continue
        r = json.loads(line[0][7:])
        print(f"| {model} | {batch} | {r['step_s']:.2f} | {r['ips']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
