"""Millions of identities on this machine: peak memory per rank, step time and shard bytes of plsc-train.

    python tools/bench_scale.py --classes 1000000 5000000 10000000 --storage bfloat16
    python tools/bench_scale.py --classes 1000000 --storage float32 bfloat16 --steps 16

Each row is one real training run, `python -m paddle.distributed.launch --nproc_per_node <W>` of
plsc-train's entry point (plsc.cli.train.train_main, run by this script in each rank so that it can
read the rank's own peak resident memory, VmHWM, when the rank exits) on the smoke config with:
a small backbone (IResNet18 [1,1,1,1] / [8,16,16,32], 512-d embedding), synthetic data
(FaceRandomDataset: --samples images, labels 0..samples-1, repeated every epoch so the loss can fall),
Model.class_num = the row's classes, sample_num rows per rank per step, the storage dtype, Momentum,
and one checkpoint written at the end (its fc_rank<r>.npz files give the bytes per class).

Printed per run: the largest rank's and every rank's peak RSS (GiB), the RSS before the first step
(after building: the FC state + runtime), the median step time after the first steps (rank 0's
batch_cost), the shard file bytes per class (fc_rank0.npz / its rows), and the first / last logged loss.
The FC state alone is (1 + slots) * bytes(dtype) * D per class per rank.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")


def _status(field, pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rank_main(argv):
    """Run plsc-train's entry in this rank; at exit write this rank's peak RSS (and the RSS at the first step)."""
    out = argv[argv.index("--peak-dir") + 1]
    argv = [a for i, a in enumerate(argv) if a != "--peak-dir" and (i == 0 or argv[i - 1] != "--peak-dir")]
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    samples = []  # (seconds since start, RSS)
    t0 = time.time()
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            samples.append((time.time() - t0, _status("VmRSS")))

    threading.Thread(target=sample, daemon=True).start()
    from plsc.cli.train import train_main

    code = 0
    try:
        code = train_main(argv) or 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        stop.set()
        with open(os.path.join(out, f"peak_rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "vmhwm": _status("VmHWM"), "samples": samples, "t0": t0}, f)
    sys.exit(code)


def run(classes, storage, args):
    out = tempfile.mkdtemp(prefix=f"bench_scale_{classes}_{storage}_", dir=args.work)
    log_dir, peak_dir = os.path.join(out, "log"), os.path.join(out, "peak")
    os.makedirs(peak_dir)
    world, batch = args.world, args.batch
    steps_per_epoch = args.samples // (batch * world)
    epochs = -(-args.steps // steps_per_epoch)
    over = [f"Model.num_features={args.dim}", f"Model.class_num={classes}",
            "Model.pfc_config.sample_ratio=1.0", f"Model.pfc_config.sample_num={args.sample_num}",
            f"Model.pfc_config.storage_dtype={storage}", f"Global.output_dir={out}/run", f"Global.epochs={epochs}",
            f"Global.save_interval={epochs}", "Global.max_num_latest_checkpoint=0", "Global.print_batch_step=1",
            f"DataLoader.Train.dataset={{name: FaceRandomDataset, num_classes: {classes}, num_samples: {args.samples}}}",
            f"DataLoader.Train.sampler.batch_size={batch}", "LRScheduler.learning_rate=0.1"]
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(world), "--log_dir", log_dir,
           os.path.abspath(__file__), "--rank-main", "--peak-dir", peak_dir, "-c", CONFIG]
    for o in over:
        cmd += ["-o", o]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t
    log = _read(os.path.join(log_dir, "workerlog.0"))
    if proc.returncode:
        tail = "\n".join(_read(os.path.join(log_dir, f"workerlog.{r}"))[-3000:] for r in range(world))
        raise SystemExit(f"run C={classes} {storage} failed (exit {proc.returncode}):\n{tail}\n{proc.stderr[-2000:]}")
    peaks = [json.load(open(os.path.join(peak_dir, f"peak_rank{r}.json"))) for r in range(world)]
    losses = [float(x) for x in re.findall(r"loss: ([-+0-9.eEnaif]+)", log)]
    costs = [float(x) for x in re.findall(r"batch_cost: ([0-9.]+)s", log)]
    ckpt = os.path.join(out, "run", "IResNet18", "latest")
    shard = os.path.join(ckpt, "fc_rank0.npz")
    rows0 = -(-classes // world)
    first_step = _first_step_time(log, peaks[0]["t0"])
    before = [max([r for s, r in p["samples"] if first_step is None or s <= first_step] or [0]) for p in peaks]
    row = {"classes": classes, "storage": storage, "world": world, "batch": batch, "sample_num": args.sample_num,
           "peak_rss": [p["vmhwm"] for p in peaks], "rss_before_steps": before,
           "step_s": statistics.median(costs[2:] or costs), "steps": len(costs),
           "shard_bytes_per_class": os.path.getsize(shard) / rows0, "dim": args.dim,
           "loss_first": losses[0], "loss_last": losses[-1], "wall_s": wall}
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _first_step_time(log, t0):
    """Seconds from the rank's start to its first logged step (the log's timestamps have 1 s resolution)."""
    m = re.search(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] INFO epoch \d+ step", log, re.M)
    if not m:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) - t0 - 1.0


def table(rows):
    gib = lambda b: f"{b / 2 ** 30:.2f}"  # noqa: E731
    lines = ["| classes | storage | W | sample_num | batch/rank | peak RSS, largest rank (GiB) | peak RSS per rank (GiB) "
             "| RSS before the first step (GiB) | step (s) | shard file bytes/class | x D | loss first -> last |",
             "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['classes']:,} | {r['storage']} | {r['world']} | {r['sample_num']:,} | {r['batch']} | "
                     f"{gib(max(r['peak_rss']))} | {' / '.join(gib(x) for x in r['peak_rss'])} | "
                     f"{' / '.join(gib(x) for x in r['rss_before_steps'])} | {r['step_s']:.3f} | "
                     f"{r['shard_bytes_per_class']:.1f} | {r['shard_bytes_per_class'] / r['dim']:.3f} | "
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    return "\n".join(lines)


def main():
    if "--rank-main" in sys.argv:
        return rank_main([a for a in sys.argv[1:] if a != "--rank-main"])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[1_000_000, 5_000_000, 10_000_000])
    p.add_argument("--storage", nargs="+", default=["bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="batch per rank")
    p.add_argument("--sample-num", type=int, default=20000, help="Model.pfc_config.sample_num (rows per rank per step)")
    p.add_argument("--samples", type=int, default=512, help="synthetic images (an epoch); labels 0..samples-1")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps (whole epochs: rounded up)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--work", default=None, help="directory for the runs' outputs (default: the system's temp dir)")
    p.add_argument("--keep", action="store_true", help="keep each run's output directory (checkpoint, logs)")
    args = p.parse_args()
    rows = []
    for classes in args.classes:
        for storage in args.storage:
            try:
                rows.append(run(classes, storage, args))
            except SystemExit as e:  # a failed run is reported, the others still run
                print(f"C={classes} {storage}: {e}", flush=True)
                continue
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print("\nper run (json): " + json.dumps(rows))


if __name__ == "__main__":
    main()
