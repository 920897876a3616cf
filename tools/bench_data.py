"""Data loader throughput on a generated .rec of 112x112 JPEGs (read + decode + flip + normalize).

    python tools/bench_data.py [--images 8192] [--batch-size 128] [--workers 0 1 2] [--jpeg smooth|noisy]

Prints img/s for raw cv2 decode (the reference), the training dataset alone (ds[i] in a loop; uint8
items, the flip and normalization deferred to the device as plsc-train does), plsc's loader with each
number of workers (total, per worker and per worker / decode-only), the same with float32 items
normalized on the host (what evaluation uses), and the device transform of a batch on this CPU.
Each measurement alternates with a pass of the reference and its ratio is taken to the pass just
before it (median of --repeat pairs, with the range), so a shared machine's drift cancels out. Loader
rows are the steady state of an epoch (first batch to last); the time to an epoch's first batch
(forking the workers) is printed under the table.
--jpeg smooth: low-frequency images with mild noise at quality 95 (~9 KB); noisy: strong uniform noise,
quality 95 (~15 KB). The process is set up as plsc-train sets up a CPU run (threads, glibc's allocator
kept from returning freed batches to the OS: plsc.env.tune_allocator); the header says which.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.env import setup_threads, tune_allocator  # noqa: E402

setup_threads("cpu")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from plsc.data.recordio import IndexedRecordIOWriter, pack  # noqa: E402

OPS = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"RandFlipImage": {"flip_code": 1}},
       {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}},
       {"ToCHWImage": None}]


def make_rec(root, n, classes=100, jpeg="smooth"):
    rng = np.random.default_rng(0)
    base = [cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112)) for _ in range(64)]
    jpgs = []
    noise, quality = (20, 95) if jpeg == "smooth" else (128, 95)
    for i in range(n):
        img = np.clip(base[i % 64].astype(np.int16) + rng.integers(-noise, noise, (112, 112, 3)), 0, 255)
        jpgs.append(cv2.imencode(".jpg", img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    labels = sorted(i % classes for i in range(n))
    with IndexedRecordIOWriter(os.path.join(root, "train.idx"), os.path.join(root, "train.rec")) as w:
        w.write(0, pack([n + 1, n + 1 + classes], b""))
        for k, (lab, data) in enumerate(zip(labels, jpgs), 1):
            w.write(k, pack(float(lab), data, id=k))
        for c in range(classes):
            w.write(n + 1 + c, pack([1 + labels.index(c), 1 + n - labels[::-1].index(c)], b""))
    return jpgs


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paired(decode, fn, repeat):
    """Run the cv2 reference and `fn` alternately `repeat` times -> (median img/s of fn, median of its
    ratio to the reference pass just before it): a machine that speeds up or slows down during the
    run moves both alike. `fn` returns (images, seconds)."""
    rates, ratios = [], []
    for _ in range(repeat):
        ref = decode()
        n, sec = fn()
        rates.append(n / sec)
        ratios.append(n / sec / ref)
    return statistics.median(rates), statistics.median(ratios), (min(ratios), max(ratios))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jpeg", choices=["smooth", "noisy"], default="smooth")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--glibc-malloc", action="store_true", help="keep glibc's allocator defaults")
    args = ap.parse_args(argv)
    tuned = False if args.glibc_malloc else tune_allocator()
    cv2.setNumThreads(1)
    import paddle

    from plsc.data.loader import build_loader
    from plsc.registry import DATASETS, SAMPLERS

    rows, starts = [], []
    with tempfile.TemporaryDirectory() as root:
        jpgs = make_rec(root, args.images, jpeg=args.jpeg)
        n = len(jpgs)

        def decode():
            return n / timed(lambda: [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in jpgs])

        ref = statistics.median(decode() for _ in range(args.repeat))
        rows.append(("cv2.imdecode only (reference)", 1, ref, 1.0, (1.0, 1.0)))
        for items in ("uint8", "float32"):
            ds = DATASETS.build("FaceRecordIODataset", root_dir=root, transform_ops=OPS, seed=0)
            if items == "uint8":
                device = ds.defer_to_device()
            rows.append((f"dataset ds[i] loop, {items} items", 1,
                         *paired(decode, lambda: (n, timed(lambda: [ds[i] for i in range(n)])), args.repeat)))
            for w in args.workers:
                sampler = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, seed=0, rank=0, world_size=1)
                loader = build_loader(ds, sampler, num_workers=w, use_shared_memory=True)

                def epoch():
                    """Steady state: from the first batch to the last (the start is reported apart)."""
                    t0 = time.perf_counter()
                    batches = iter(loader)
                    next(batches)
                    t1 = time.perf_counter()
                    count = sum(1 for _ in batches)
                    starts.append((w, items, t1 - t0))
                    return count * args.batch_size, time.perf_counter() - t1

                epoch()  # warm up
                total, ratio, span = paired(decode, epoch, args.repeat)
                rows.append((f"plsc loader, {w} workers, {items} items", max(w, 1), total, ratio / max(w, 1),
                             (span[0] / max(w, 1), span[1] / max(w, 1))))
        u8 = paddle.to_tensor(np.zeros((args.batch_size, 112, 112, 3), np.uint8))
        flips = paddle.to_tensor(np.arange(args.batch_size, dtype=np.uint8) % 2)
        dev = statistics.median(args.batch_size / timed(lambda: device(u8, flips).numpy()) for _ in range(5))
        rows.append(("device transform of a batch on this CPU", 1, dev, dev / ref, (dev / ref, dev / ref)))
    jpeg_kb = sum(map(len, jpgs)) / len(jpgs) / 1024
    start = {w: statistics.median(s for ww, it, s in starts if ww == w and it == "uint8") for w in args.workers}
    print(f"{args.images} JPEGs 112x112 ({args.jpeg}, {jpeg_kb:.1f} KB each), batch {args.batch_size}, decode-only "
          f"{ref:.0f} img/s, allocator {'tuned (as plsc-train on CPU)' if tuned else 'glibc defaults'}, "
          f"median of {args.repeat} passes\n")
    print("| measurement | procs | img/s | img/s per proc | per proc / decode-only (range) |\n|---|---|---|---|---|")
    for name, procs, total, ratio, (lo, hi) in rows:
        print(f"| {name} | {procs} | {total:.0f} | {total / procs:.0f} | {ratio:.2f} ({lo:.2f}-{hi:.2f}) |")
    print("\nloader rows: steady state, first batch to last; time to the first batch of an epoch (uint8): " +
          ", ".join(f"{w} workers {start[w]:.2f} s" for w in args.workers))


if __name__ == "__main__":
    main()
