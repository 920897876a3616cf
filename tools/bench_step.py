"""What one training step costs besides compute: host syncs, collectives (count, bytes), peak memory.

    python tools/bench_step.py                      # IResNet50, 1M classes, ratio 0.1, 2 ranks, batch 8/rank
    python tools/bench_step.py --classes 100000 --world 1 --batch 4

Runs real Trainer steps (synthetic data) under paddle.distributed.launch and prints two tables:
1. measured here, per step and rank: device->host reads (plsc.tools.step_cost.StepCost), every
   collective issued from Python with its bytes, the paddle.DataParallel gradient all-reduces
   (one per bucket; they run in Paddle's C++ reducer, so their sizes are computed from the
   parameters with Paddle's bucketing rule), the peak RSS of the rank;
2. the same step on a realistic GPU job (--gpus, --gpu-batch), computed from table 1: each
   collective's bytes scale with the dimension of its tensor that is the local batch (x B) or the
   global batch (x W*B); the rest (DataParallel buckets, the scalar verdict) does not change; the FC
   memory per GPU follows from the sharding (weight + momentum 8*D bytes per class, the sampled rows,
   their gradient and the [N, K] logits in fp32).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(args):
    from plsc.env import setup_threads

    setup_threads()
    import paddle

    from plsc.config import load_config
    from plsc.engine.engine import Trainer
    from plsc.tools.step_cost import StepCost, dp_buckets

    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    samples = args.batch * world * (args.steps + 1)
    overrides = [f"Model.name={args.model}", "Model.arch_kwargs={}", "Model.num_features=512",
                 f"Model.class_num={args.classes}", f"Model.pfc_config.sample_ratio={args.ratio}",
                 f"Global.output_dir={args.out}", f"Global.max_train_step={args.steps + 1}", "Global.print_batch_step=1",
                 "Global.save_interval=100000", "Global.save_unit=step", "Global.eval_during_train=false",
                 "Global.use_visualdl=false",
                 f"DataLoader.Train.dataset={{name: FaceRandomDataset, num_classes: {args.classes}, "
                 f"num_samples: {samples}}}", f"DataLoader.Train.sampler.batch_size={args.batch}",
                 "DataLoader.Train.loader.num_workers=0",
                 "Optimizer.grad_clip={name: ClipGradByGlobalNorm, clip_norm: 5.0, no_clip_list: [dist]}"]
    e = Trainer(load_config(os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml"), overrides))
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps, step, after = [], e.train_step, e._after_step

    def counted(batch):
        t = time.perf_counter()
        with StepCost() as c:
            loss = step(batch)
        steps.append({"syncs": c.syncs, "collectives": [(n, b, s) for n, b, s in c.collectives_shaped],
                      "seconds": time.perf_counter() - t})
        return loss

    def counted_after(loss, timer):
        with StepCost() as c:
            after(loss, timer)
        steps[-1]["syncs_after"] = c.syncs

    e.train_step, e._after_step = counted, counted_after
    e.state["last_saved_step"] = None
    e.train()
    row = {"rank": e.rank, "world": e.world_size, "steps": steps[1:], "rss_built": rss_built,
           "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "dp_buckets": dp_buckets(e.backbone.parameters()) if e.world_size > 1 else [],
           "local_rows": e.head.num_local, "sampled_rows": max(e.head.num_sample, min(e.head.num_local,
                                                                                       args.batch * e.world_size)),
           "params": sum(p.size for p in e.backbone.parameters() if not p.stop_gradient)}
    with open(os.path.join(args.out, f"cost_rank{e.rank}.json"), "w") as f:
        json.dump(row, f)
    del paddle


def _fmt_bytes(n):
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _scaled(shape, batch, world, to_batch, to_world):
    """Bytes factor of a tensor shape when the local batch becomes to_batch on to_world ranks."""
    if not shape:
        return 1.0
    if shape[0] == batch * world and world > 1 or (world == 1 and shape[0] == batch):
        return to_batch * to_world / shape[0] if shape[0] else 1.0
    if shape[0] == batch:
        return to_batch / batch
    return 1.0


def report(rows, args):
    r0 = rows[0]
    step = r0["steps"][-1]
    w, b = r0["world"], args.batch
    print(f"## Measured: {args.model}, {args.classes:,} classes, sample_ratio {args.ratio}, {w} CPU rank(s), batch "
          f"{b}/rank, fp32 (steps timed: {len(r0['steps'])}, {step['seconds']:.1f} s/step)\n")
    print("| per step and rank | count | bytes sent per rank |\n|---|---|---|")
    syncs = [s["syncs"] + s.get("syncs_after", 0) for s in r0["steps"]]
    print(f"| device->host reads (the train step; + the loss on logging steps) | {step['syncs']} "
          f"(+{step.get('syncs_after', 0)}) | |")
    groups = {}
    for name, nbytes, shape in step["collectives"]:
        key = (name, tuple(shape))
        count, total = groups.get(key, (0, 0))
        groups[key] = (count + 1, total + nbytes)
    for (name, shape), (count, total) in sorted(groups.items()):
        print(f"| {name} {list(shape)} | {count} | {_fmt_bytes(total)} |")
    dp = r0["dp_buckets"]
    if dp:
        print(f"| DataParallel gradient all-reduce (buckets) | {len(dp)} | {_fmt_bytes(sum(dp))} |")
    print(f"| peak RSS (after build / after the steps) | | {_fmt_bytes(max(r['rss_built'] for r in rows))} / "
          f"{_fmt_bytes(max(r['rss_peak'] for r in rows))} |")
    print(f"\n(max host reads over every step and rank: {max(max(s['syncs'] + s.get('syncs_after', 0) for s in r['steps']) for r in rows)}; "
          f"per step on rank 0: {syncs})\n")
    gw, gb = args.gpus, args.gpu_batch
    print(f"## Computed for {gw} GPUs: batch {gb}/GPU (global {gw * gb}), same model, classes and ratio\n")
    print("| per step and GPU | count | bytes sent per GPU |\n|---|---|---|")
    for (name, shape), (count, total) in sorted(groups.items()):
        f = _scaled(list(shape), b, w, gb, gw)
        new_shape = [round(shape[0] * f)] + list(shape[1:]) if shape else []
        print(f"| {name} {new_shape} | {count} | {_fmt_bytes(int(total * f))} |")
    if dp:
        print(f"| DataParallel gradient all-reduce (buckets of <= 25 MB) | {len(dp)} | {_fmt_bytes(sum(dp))} |")
    d, local = 512, -(-args.classes // gw)
    k = max(-(-int(args.ratio * local * 10 ** 6) // 10 ** 6), min(local, gw * gb)) if args.ratio < 1 else local
    n = gw * gb
    print(f"| FC state per GPU: {local:,} rows x (weight + momentum) | | {_fmt_bytes(8 * d * local)} |")
    print(f"| FC step temporaries: {k:,} sampled rows + their gradient, [{n}, {k:,}] logits (fp32) | | "
          f"{_fmt_bytes(8 * d * k + 4 * n * k)} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--model", default="IResNet50")
    p.add_argument("--classes", type=int, default=1_000_000)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=8, help="batch per rank")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-batch", type=int, default=128)
    args = p.parse_args()
    if args.one:
        return one(args)
    out = tempfile.mkdtemp(prefix="bench_step_")
    cmd = [__file__, "--one", "--out", out, "--model", args.model, "--classes", str(args.classes), "--ratio",
           str(args.ratio), "--batch", str(args.batch), "--steps", str(args.steps)]
    if args.world > 1:
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(args.world),
               "--log_dir", os.path.join(out, "log")] + cmd
    else:
        cmd = [sys.executable] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = []
    for r in range(args.world):
        path = os.path.join(out, f"cost_rank{r}.json")
        if not os.path.exists(path):
            sys.exit(f"rank {r} wrote no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        with open(path) as f:
            rows.append(json.load(f))
    report(rows, args)


if __name__ == "__main__":
    main()
