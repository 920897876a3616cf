"""Data loader throughput on a generated .rec of 112x112 JPEGs (read + decode + flip + normalize).

    python tools/bench_data.py [--images 4096] [--batch-size 128] [--workers 0 1 2] [--jpeg smooth|noisy]

Prints img/s for raw cv2 decode (the reference), the training dataset alone (ds[i] in a loop; uint8
items, the flip and normalization deferred to the device as plsc-train does), plsc's loader with each
number of workers (total, per worker and per worker / decode-only), the same with float32 items
normalized on the host (what evaluation uses), and the device transform of a batch on this CPU.
--jpeg smooth: low-frequency images at quality 95 (~5 KB); noisy: uniform noise added, ~15 KB.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.env import setup_threads  # noqa: E402

setup_threads()
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
    noise, quality = (20, 95) if jpeg == "smooth" else (60, 90)
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


def rate(fn, n, repeat=3):
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jpeg", choices=["smooth", "noisy"], default="smooth")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    import paddle

    from plsc.data.loader import build_loader
    from plsc.registry import DATASETS, SAMPLERS

    rows = []
    with tempfile.TemporaryDirectory() as root:
        jpgs = make_rec(root, args.images, jpeg=args.jpeg)
        n = len(jpgs)
        decode = rate(lambda: [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in jpgs], n)
        rows.append(("cv2.imdecode only (reference)", 1, decode))
        for items in ("uint8", "float32"):
            ds = DATASETS.build("FaceRecordIODataset", root_dir=root, transform_ops=OPS, seed=0)
            if items == "uint8":
                device = ds.defer_to_device()
            rows.append((f"dataset ds[i] loop, {items} items", 1, rate(lambda: [ds[i] for i in range(n)], n)))
            for w in args.workers:
                sampler = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, seed=0, rank=0, world_size=1)
                loader = build_loader(ds, sampler, num_workers=w, use_shared_memory=True)
                count = len(sampler) * args.batch_size

                def run():
                    for _ in loader:
                        pass

                run()  # warm up
                rows.append((f"plsc loader, {w} workers, {items} items", max(w, 1), rate(run, count)))
        u8 = paddle.to_tensor(np.zeros((args.batch_size, 112, 112, 3), np.uint8))
        flips = paddle.to_tensor(np.arange(args.batch_size, dtype=np.uint8) % 2)
        rows.append(("device transform of a batch on this CPU", 1, rate(lambda: device(u8, flips).numpy(),
                                                                         args.batch_size)))
    jpeg_kb = sum(map(len, jpgs)) / len(jpgs) / 1024
    print(f"{args.images} JPEGs 112x112 ({args.jpeg}, {jpeg_kb:.1f} KB each), batch {args.batch_size}, "
          f"decode-only {decode:.0f} img/s\n")
    print("| measurement | procs | img/s | img/s per proc | per proc / decode-only |\n|---|---|---|---|---|")
    for name, procs, total in rows:
        print(f"| {name} | {procs} | {total:.0f} | {total / procs:.0f} | {total / procs / decode:.2f} |")


if __name__ == "__main__":
    main()
