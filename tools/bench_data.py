"""Data loader throughput on a generated .rec of 112x112 JPEGs (read + decode + flip + normalize).

    python tools/bench_data.py [--images 4096] [--batch-size 128] [--workers 0 1 2]

Prints img/s for raw cv2 decode (reference), the dataset alone (ds[i] in a loop), and
paddle.io.DataLoader with each number of workers (total and per worker).
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


def make_rec(root, n, classes=100):
    rng = np.random.default_rng(0)
    base = [cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112)) for _ in range(64)]
    jpgs = []
    for i in range(n):
        img = np.clip(base[i % 64].astype(np.int16) + rng.integers(-20, 20, (112, 112, 3)), 0, 255).astype(np.uint8)
        jpgs.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
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
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    import paddle

    from plsc.registry import DATASETS, SAMPLERS

    rows = []
    with tempfile.TemporaryDirectory() as root:
        jpgs = make_rec(root, args.images)
        n = len(jpgs)
        r = rate(lambda: [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in jpgs], n)
        rows.append(("cv2.imdecode only (reference)", 1, r, r))
        ds = DATASETS.build("FaceRecordIODataset", root_dir=root, transform_ops=OPS, seed=0)
        r = rate(lambda: [ds[i] for i in range(n)], n)
        rows.append(("dataset ds[i] loop, no loader", 1, r, r))
        for w in args.workers:
            sampler = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=args.batch_size, shuffle=True,
                                     drop_last=True, seed=0, rank=0, world_size=1)
            loader = paddle.io.DataLoader(ds, batch_sampler=sampler, num_workers=w, use_shared_memory=w > 0,
                                          worker_init_fn=lambda _: cv2.setNumThreads(1))
            count = len(sampler) * args.batch_size

            def run():
                for x, y in loader:
                    pass

            run()  # warm up (worker start)
            r = rate(run, count)
            rows.append((f"DataLoader num_workers={w}, batch {args.batch_size}", max(w, 1), r, r / max(w, 1)))
    print(f"{'measurement':<44}{'procs':>6}{'img/s':>10}{'img/s/proc':>12}")
    for name, procs, total, per in rows:
        print(f"{name:<44}{procs:>6}{total:>10.0f}{per:>12.0f}")


if __name__ == "__main__":
    main()
