"""Benchmark the PartialFC step: time, peak memory and bytes per class, against the matmul floor.

    python tools/bench_partial_fc.py                       # the default grid (C x W x ratio), prints a table
    python tools/bench_partial_fc.py --classes 5000000 --world 2 --ratio 0.1 --batch 32 --steps 3
    python tools/bench_partial_fc.py --classes 1000000 --ratio 0.1 --storage float32 bfloat16   # 16-bit storage
    python tools/bench_partial_fc.py --classes 10000000 --world 2 --sample-num 20000 --storage bfloat16 --batch 32
    python tools/bench_partial_fc.py --classes 1000000 --ratio 0.1 --storage float32 --steps 3 --profile  # + cProfile
    python tools/bench_partial_fc.py --probe-threads       # the step's row work split over 1 vs 2 Python threads

Each configuration runs in fresh processes (2 ranks through paddle.distributed.launch for W=2) so
peak RSS belongs to it alone. One step = PartialFC forward + backward + sparse momentum update
(the backbone is not included). The floor is 6 * N * K * D / F: N the global batch, K the rows
used per rank, D the embedding size, F the FLOP/s paddle.matmul reaches here on a [N, D] x [D, K]
product (forward logits, feature grad and weight grad are three such matmuls of 2*N*K*D flops).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

GRID = [(c, w, r) for c in (100_000, 1_000_000, 4_000_000) for w in (1, 2) for r in (1.0, 0.1)]
HOST_BYTES = 24 * 2 ** 30


def estimate_bytes(classes, world, ratio, batch, dim, storage="float32", sample_num=None):
    """Rough peak per rank: weight + momentum, sampled rows (copy, grad, temp), logits copies."""
    local = -(-classes // world)
    k = local if ratio >= 1 else -(-int(ratio * local * 1e6) // int(1e6))
    if sample_num:
        k = min(local, sample_num)
    n = batch * world
    value = 4 if storage == "float32" else 2
    return 2 * value * local * dim + 3 * 4 * k * dim + 6 * 4 * n * k + 600 * 2 ** 20


def one(args):
    from plsc.env import setup_threads, tune_allocator

    setup_threads()
    tune_allocator()  # as plsc-train sets up a CPU run (PLSC_MALLOC_TUNING=0: glibc's defaults)
    import numpy as np
    import paddle
    import paddle.distributed as dist

    from plsc.nn import build_head
    from plsc.optim.optimizers import build_sparse_optimizer

    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world > 1:
        dist.init_parallel_env()
    rank = dist.get_rank() if world > 1 else 0
    t0 = time.perf_counter()
    head = build_head({"num_features": args.dim, "class_num": args.classes,
                       "pfc_config": {"sample_ratio": 1.0 if args.sample_num else args.ratio,
                                      "sample_num": args.sample_num, "model_parallel": True,
                                      "storage_dtype": args.storage[0]}},
                      [{"MarginLoss": {"m2": 0.5}}], seed=0)
    opt = head.set_optimizer(build_sparse_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4},
                                                    head.weight, store=head.store))
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(rank)
    times = []
    prof = None
    if args.profile and rank == 0:
        import cProfile
        prof = cProfile.Profile()
    for step in range(args.steps + 1):
        if prof is not None and step == 1:
            prof.enable()
        x = paddle.to_tensor(rng.standard_normal((args.batch, args.dim)).astype(np.float32), stop_gradient=False)
        y = paddle.to_tensor(rng.integers(0, args.classes, args.batch))
        if world > 1:
            dist.barrier()
        t = time.perf_counter()
        loss = head(x, y)
        loss.backward()
        head.step(0.1)
        head.clear_sparse_grad()
        _ = loss.item()
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - t)
    if prof is not None:
        import pstats
        prof.disable()
        print(f"cProfile of the {args.steps} timed steps (seconds summed over them):")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    k = max(head.num_sample, min(head.num_local, args.batch * world))
    n = args.batch * world
    a = paddle.randn([n, args.dim])
    b = paddle.randn([k, args.dim])
    paddle.matmul(a, b, transpose_y=True)
    t = time.perf_counter()
    for _ in range(3):
        paddle.matmul(a, b, transpose_y=True).numpy()
    flops = 2 * n * k * args.dim * 3 / (time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"classes": args.classes, "world": world, "ratio": args.ratio, "batch": args.batch, "dim": args.dim,
           "rows_used": k, "step_s": float(np.median(times)), "floor_s": 6 * n * k * args.dim / flops,
           "peak_rss": rss, "persistent_bytes_per_class": (head.weight.size * head.weight.element_size() +
                                                   opt.slots["momentum"].size * opt.slots["momentum"].element_size())
           / head.num_local, "storage": args.storage[0], "sample_num": args.sample_num, "init_s": init_s, "loss": loss.item()}
    if world > 1:
        t = paddle.to_tensor([rss], dtype="int64")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        row["peak_rss"] = t.item()
    if rank == 0:
        print("RESULT " + json.dumps(row), flush=True)


def probe_threads(args):
    """Would splitting the step's row work over Python threads pay? Paddle's CPU row kernels (gather, scatter,
    elementwise) run on one thread each and release the GIL, so two threads can work on two halves of the rows.
    Times the sparse Momentum update of K = ratio * C rows (gather w and v rows, update, scatter both back, in
    chunks: plsc.optim.sparse.SparseMomentum itself) and the row gather, on 1 and 2 threads, interleaved; prints the medians."""
    import threading

    from plsc.env import setup_threads, tune_allocator

    setup_threads()
    tune_allocator()
    import numpy as np
    import paddle

    from plsc.nn.rows import take_rows
    from plsc.optim.sparse import SparseMomentum

    c, d = args.classes or 1_000_000, args.dim
    k = int(args.ratio * c)
    w, v = paddle.randn([c, d]), paddle.randn([c, d])  # written: no first-touch page faults in the timings
    idx = paddle.sort(paddle.randperm(c)[:k])
    g = paddle.randn([k, d])
    chunk = 1 << 12

    opt = SparseMomentum(w, momentum=0.9, weight_decay=5e-4)
    opt.slots["momentum"] = v  # (the slot as the head's: written rows, no first-touch faults)

    def update(a, b):  # plsc's own sparse optimizer on the rows [a, b) of the step (it chunks them itself)
        opt.step(idx[a:b], g[a:b], 0.1)

    def gather(a, b):
        take_rows(w, idx[a:b]).numpy()

    def timed(f, threads):
        cuts = np.linspace(0, k, threads + 1).astype(int) // chunk * chunk
        cuts[-1] = k
        ts = [threading.Thread(target=f, args=(int(cuts[j]), int(cuts[j + 1]))) for j in range(threads)]
        t = time.perf_counter()
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        return time.perf_counter() - t

    print(f"{k:,} rows of {c:,} x {d} float32, median of {args.steps} interleaved repetitions:\n")
    print("| row work | 1 thread (ms) | 2 threads (ms) | speed-up |\n|---|---|---|---|")
    for name, f in ((f"sparse Momentum update of {k:,} rows (chunks of {chunk})", update),
                    (f"row gather of {k:,} rows (index_select)", gather)):
        res = {1: [], 2: []}
        timed(f, 1)
        for _ in range(args.steps):
            for th in (1, 2):
                res[th].append(timed(f, th))
        one, two = np.median(res[1]), np.median(res[2])
        print(f"| {name} | {one * 1e3:.0f} | {two * 1e3:.0f} | {one / two:.2f}x |", flush=True)


def run_config(classes, world, ratio, batch, dim, steps, storage="float32", sample_num=None, profile=False):
    cmd = [__file__, "--one", "--classes", str(classes), "--ratio", str(ratio), "--batch", str(batch),
           "--dim", str(dim), "--steps", str(steps), "--storage", storage]
    if sample_num:
        cmd += ["--sample-num", str(sample_num)]
    if profile:
        cmd += ["--profile"]
    env = dict(os.environ)
    if world > 1:
        log_dir = tempfile.mkdtemp(prefix="bench_pfc_")
        full = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(world),
                "--log_dir", log_dir] + cmd
    else:
        log_dir, full = None, [sys.executable] + cmd
    out = subprocess.run(full, capture_output=True, text=True, env=env)
    text = out.stdout
    if log_dir:
        with open(os.path.join(log_dir, "workerlog.0")) as f:
            text += f.read()
    if profile:
        print(text[text.find("cProfile of"):text.find("RESULT ")], flush=True)
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"config C={classes} W={world} ratio={ratio} failed:\n{text[-2000:]}\n{out.stderr[-2000:]}")


def table(rows):
    head = ("| classes | W | ratio / sample_num | storage | batch/rank | rows used/rank | step (s) | matmul floor (s) | step/floor "
            "| peak RSS/rank (GiB) | bytes/class/rank (weight+mom) | vs 8*D |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['classes']:,} | {r['world']} | {r['ratio']} | {r['storage']} | {r['batch']} | | skipped: "
                         f"{r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['classes']:,} | {r['world']} | {r.get('sample_num') or r['ratio']} | {r['storage']} | "
                     f"{r['batch']} | "
                     f"{r['rows_used']:,} | "
                     f"{r['step_s']:.3f} | {r['floor_s']:.3f} | {r['step_s'] / r['floor_s']:.2f} | "
                     f"{r['peak_rss'] / 2 ** 30:.2f} | {r['persistent_bytes_per_class']:.0f} | "
                     f"{r['persistent_bytes_per_class'] / (8 * r['dim']):.3f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--classes", type=int)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=128, help="batch per rank")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--force", action="store_true", help="run even when the memory estimate exceeds 90%% of RAM")
    p.add_argument("--storage", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                   help="Model.pfc_config.storage_dtype; several: one row each")
    p.add_argument("--sample-num", type=int, default=None, help="Model.pfc_config.sample_num instead of --ratio")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the timed steps (rank 0)")
    p.add_argument("--probe-threads", action="store_true",
                   help="time the step's row work on 1 vs 2 Python threads (C = --classes or 1M, --ratio, --steps)")
    args = p.parse_args()
    if args.one:
        return one(args)
    if args.probe_threads:
        return probe_threads(args)
    grid = [(args.classes, args.world, args.ratio)] if args.classes else GRID
    rows = []
    for (classes, world, ratio), storage in [(g, s) for g in grid for s in args.storage]:
        need = estimate_bytes(classes, world, ratio, args.batch, args.dim, storage, args.sample_num) * world
        if need > 0.9 * HOST_BYTES and not args.force:
            rows.append({"classes": classes, "world": world, "ratio": ratio, "batch": args.batch, "storage": storage,
                         "skipped": f"needs ~{need / 2 ** 30:.0f} GiB of {HOST_BYTES / 2 ** 30:.0f}"})
        else:
            rows.append(run_config(classes, world, ratio, args.batch, args.dim, args.steps, storage, args.sample_num,
                                   args.profile))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
