"""Evaluation cost: verification protocol, .bin pipeline, IJB pooling / scores / ROC (prints a table).

    python tools/bench_eval.py [--pairs 6000] [--ijb-images 100000] [--dim 512]

No model: the embed function is a cheap pooling. Rows: the 10-fold protocol on LFW-sized distances; the .bin
pipeline (decode + normalize + mirror) in images/s; the IJB math after embedding (template pooling, 1:1 scores,
ROC, 1:N) on synthetic features scaled like IJB-C (469k images, 23k templates, 15.7M pairs at full size).
"""
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np

from plsc.env import setup_threads, tune_allocator


def _pool_embed(x):
    return x.reshape(len(x), 3, 8, 14, 8, 14).mean(axis=(3, 5)).reshape(len(x), -1)


def bench_protocol(pairs, dim, rng):
    from plsc.metrics.verification import verify

    emb = rng.normal(size=(2 * pairs, dim)).astype(np.float32)
    issame = rng.random(pairs) < 0.5
    t = time.perf_counter()
    verify(emb, issame, emb + 0.1)
    return time.perf_counter() - t


def bench_bin(pairs, rng):
    from plsc.data.bin import save_bin
    from plsc.metrics.evaluator import evaluate_sets

    img = rng.integers(0, 256, (112, 112, 3)).astype(np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.bin")
        # one distinct bytes object per image, as in a real .bin (a pickle that lists one object many times
        # is refused by the .bin reader: it could expand far beyond the file's size)
        save_bin(path, [bytes(bytearray(jpg)) for _ in range(2 * pairs)], rng.random(pairs) < 0.5)
        t = time.perf_counter()
        evaluate_sets(_pool_embed, {"bench": {"name": "FaceBinDataset", "bin_path": path}}, batch_size=128)
        return time.perf_counter() - t


def bench_ijb(n_images, dim, rng):
    from plsc.metrics.ijb import image_features, pair_scores, roc_curve, tar_at_far, template_features
    from plsc.metrics.ijb_ident import identify

    scale = n_images / 469375
    n_templates = max(100, int(23124 * scale))
    n_pairs = max(1000, int(15658489 * scale))
    templates = rng.integers(0, n_templates, n_images)
    medias = templates * 8 + rng.integers(0, 8, n_images)
    feats = rng.normal(size=(n_images, dim)).astype(np.float32)
    times = {}
    t = time.perf_counter()
    f = image_features(feats, None, rng.random(n_images), True, True)
    t_ids, t_feats = template_features(f, templates, medias)
    times["template pooling"] = time.perf_counter() - t
    t1, t2 = rng.choice(t_ids, n_pairs), rng.choice(t_ids, n_pairs)
    t = time.perf_counter()
    scores = pair_scores(t_ids, t_feats, t1, t2)
    times[f"1:1 scores ({n_pairs} pairs)"] = time.perf_counter() - t
    labels = rng.random(n_pairs) < 0.01
    t = time.perf_counter()
    fpr, tpr, _ = roc_curve(labels, scores)
    tar_at_far(fpr, tpr)
    times["ROC + TAR@FAR"] = time.perf_counter() - t
    n_g = len(t_ids) // 13  # IJB-C: 1772 + 1759 gallery templates, 19593 probes
    g1, g2, p = t_ids[:n_g], t_ids[n_g:2 * n_g], t_ids[2 * n_g:]
    one_to_n = {"G1": (g1, np.arange(n_g)), "G2": (g2, np.arange(n_g, 2 * n_g)),
                "probe": (p, rng.integers(0, 2 * n_g, p.size))}
    t = time.perf_counter()
    identify(t_ids, t_feats, one_to_n)
    times[f"1:N ({p.size} probes x 2 x {n_g} gallery)"] = time.perf_counter() - t
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tools/bench_eval.py", description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=6000, help="verification pairs (default 6000)")
    ap.add_argument("--ijb-images", type=int, default=100000, help="IJB images (default 100000)")
    ap.add_argument("--dim", type=int, default=512, help="embedding size (default 512)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = [(f"10-fold protocol, {args.pairs} pairs, flip fusion", bench_protocol(args.pairs, args.dim, rng), "")]
    sec = bench_bin(args.pairs, rng)
    rows.append((f".bin pipeline, {2 * args.pairs} images (+ mirrors)", sec, f"{2 * args.pairs / sec:.0f} img/s"))
    for name, sec in bench_ijb(args.ijb_images, args.dim, rng).items():
        rows.append((f"IJB {name}, {args.ijb_images} images", sec, ""))
    w = max(len(r[0]) for r in rows)
    print(f"{'step':<{w}}  {'seconds':>8}  throughput")
    for name, sec, extra in rows:
        print(f"{name:<{w}}  {sec:8.2f}  {extra}")


if __name__ == "__main__":
    setup_threads()  # before paddle is imported (by the benchmarks' plsc modules)
    tune_allocator()  # as plsc-eval sets up a CPU run
    sys.exit(main())
