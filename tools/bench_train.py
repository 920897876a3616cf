"""Training throughput of whole plsc steps (backbone + PartialFC + optimizers) on synthetic data.

    python tools/bench_train.py                                   # the default rows, 3 rounds
    python tools/bench_train.py --model IResNet50 --batch 32 --rounds 3 --steps 3
    python tools/bench_train.py --model IResNet50 --profile       # + the per-op profile of one step

Each row runs the Trainer (FaceRandomDataset, FP16 O0, Momentum, PartialFC 1.0 over --classes
classes, fp32) in a fresh process: one warm-up step, then --steps timed steps; the step time is
their median. Rows are run --rounds times, interleaved (row 1, row 2, ..., row 1, row 2, ...) so a
busy machine slows every row alike; the table gives the median and the range over the rounds, and
the settings of each row (classes, batch, threads, layout, allocator tuning).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROWS = [("IResNet50", 32), ("IResNet18", 32), ("MobileFaceNet_base", 64)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(args):
    from plsc.env import setup_threads

    setup_threads()
    import paddle

    from plsc.config import load_config
    from plsc.engine.engine import Trainer

    b, steps = args.batch, args.steps
    overrides = [f"Model.name={args.model}", f"Model.class_num={args.classes}", "Model.num_features=512", "FP16.level=O0",
                 f"Model.data_format={args.layout}", "Global.output_dir=/tmp/plsc_bench_train",
                 f"Global.max_train_step={steps + 1}", "Global.print_batch_step=1000", "Global.save_interval=100000",
                 "Global.save_unit=step", "Global.eval_during_train=false", "Global.use_visualdl=false",
                 f"DataLoader.Train.dataset={{name: FaceRandomDataset, num_classes: {args.classes}, "
                 f"num_samples: {b * (steps + 1)}}}", f"DataLoader.Train.sampler.batch_size={b}",
                 "DataLoader.Train.loader.num_workers=0", f"Model.arch_kwargs={args.arch_kwargs or '{}'}"]
    e = Trainer(load_config(os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml"), overrides))
    times, step = [], e.train_step

    def timed(batch):
        t = time.perf_counter()
        out = step(batch)
        out.item()
        times.append(time.perf_counter() - t)
        return out

    e.train_step = timed
    e.state["last_saved_step"] = None
    e.train()
    row = {"step_s": statistics.median(times[1:]), "threads": os.environ.get("OMP_NUM_THREADS")}
    if args.profile:
        import paddle.profiler as profiler

        batch = next(iter(e.loader))
        p = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
        p.start()
        step(batch).item()
        p.stop()
        p.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=False, thread_sep=False, time_unit="ms")
    print("RESULT " + json.dumps(row), flush=True)
    del paddle


def run_row(model, batch, a):
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--one", "--model", model, "--batch", str(batch), "--steps", str(a.steps),
           "--classes", str(a.classes), "--layout", a.layout, "--arch-kwargs", a.arch_kwargs]
    if a.profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if a.profile:
        text = out.stdout
        start = text.find("Operator Summary")
        print(text[start - 200: start + 4000] if start >= 0 else text[-3000:])
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise SystemExit(f"{model} failed:\n{(out.stderr or out.stdout)[-3000:]}")
    return json.loads(line[0][7:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every row, interleaved")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"], help="Model.data_format")
    p.add_argument("--arch-kwargs", default="")
    p.add_argument("--profile", action="store_true", help="print the per-op profile of one step per row")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return one(a)
    rows = [(a.model, a.batch)] if a.model else ROWS
    plan = list(rows)
    results = {k: [] for k in plan}
    for _ in range(a.rounds):
        for key in plan:
            results[key].append(run_row(*key, a))
    tuning = os.environ.get("PLSC_MALLOC_TUNING", "1") != "0"
    print(f"| backbone | batch | classes | threads | layout | malloc tuning | step (s), median "
          f"[range] of {a.rounds} | images/s, median [range] |\n|---|---|---|---|---|---|---|---|")
    for (model, batch), rs in results.items():
        steps = sorted(r["step_s"] for r in rs)
        ips = sorted(batch / s for s in steps)
        print(f"| {model} | {batch} | {a.classes} | {rs[0]['threads']} | {a.layout} | {tuning} | "
              f"{statistics.median(steps):.2f} [{steps[0]:.2f}-{steps[-1]:.2f}] | "
              f"{statistics.median(ips):.2f} [{ips[0]:.2f}-{ips[-1]:.2f}] |", flush=True)


if __name__ == "__main__":
    main()
