"""plsc-search's gallery on synthetic embeddings: build time, memory, query latency, recall of the approximate indexes.

    python tools/bench_search.py                           # 1M identities, 512-d, flat / ivf / hnsw
    python tools/bench_search.py --n 100000 --kinds flat,hnsw

Gallery: n random unit vectors (one template per identity). Queries: a gallery vector plus Gaussian noise
scaled so that cos(query, its identity) ~ 0.7 (a new photo of an enrolled person), `--queries` of them,
searched one at a time with one faiss thread (`--query-threads`) for p50 / p99 latency; the approximate
kinds at half, the default and twice their search parameter (efSearch / nprobe). recall@1: how often the
approximate index's top identity equals the exact (flat) index's. Memory: growth of the process's resident
set while the index is built (the vectors themselves are n x d x 4 bytes). Threads: faiss's default
(all cores) for the build.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None):
    from plsc.deploy.gallery import Gallery

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--kinds", default="flat,ivf,hnsw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--query-threads", type=int, default=1, help="faiss threads per query (default 1: one "
                   "request per core, as a service would run)")
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    x = np.empty((a.n, a.dim), np.float32)
    for i in range(0, a.n, 100_000):
        block = rng.standard_normal((min(100_000, a.n - i), a.dim), dtype=np.float32)
        x[i:i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    src = rng.integers(0, a.n, a.queries)
    noise = rng.standard_normal((a.queries, a.dim), dtype=np.float32) / np.sqrt(a.dim)
    q = x[src] + noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    fp = {"embedding_size": a.dim, "probe": [[0.0] * a.dim]}
    ids = np.arange(a.n, dtype=np.int64)
    rows, exact = [], None
    print(f"gallery {a.n} x {a.dim}, {a.queries} queries (cos to their identity ~ "
          f"{float(np.mean(np.sum(q * x[src], axis=1))):.2f}), faiss threads: build {a.build_threads}, "
          f"query {a.query_threads}", flush=True)
    import faiss

    from plsc.deploy.gallery import default_search_param

    for kind in a.kinds.split(","):
        faiss.omp_set_num_threads(a.build_threads)
        before = rss_mb()
        t0 = time.perf_counter()
        g = Gallery.create(fp, kind, train=x)
        g.index.add_with_ids(x, ids)
        build = time.perf_counter() - t0
        mem = rss_mb() - before
        faiss.omp_set_num_threads(a.query_threads)
        default = default_search_param(kind, g.index)
        params = [None] if kind == "flat" else sorted({default // 2, default, default * 2})
        for param in params:
            if param is not None:
                g.set_search_param(param)
            lat, top = [], []
            for i in range(a.queries):
                t = time.perf_counter()
                _, found = g.index.search(q[i:i + 1], 1)
                lat.append(time.perf_counter() - t)
                top.append(int(found[0, 0]))
            top = np.asarray(top)
            if kind == "flat":
                exact = top
            recall = float(np.mean(top == exact)) if exact is not None else float("nan")
            name = kind if param is None else f"{kind} {'ef' if kind == 'hnsw' else 'nprobe'}={param}" + \
                (" (default)" if param == default else "")
            rows.append((name, build, mem, 1e3 * np.percentile(lat, 50), 1e3 * np.percentile(lat, 99), recall,
                         float(np.mean(top == src))))
        print(f"  {kind} done", flush=True)
        del g
    print(f"\n{'index':<24} {'build s':>8} {'memory MB':>10} {'p50 ms':>8} {'p99 ms':>8} {'recall@1 vs flat':>17} "
          f"{'top-1 = identity':>17}")
    for name, build, mem, p50, p99, recall, truth in rows:
        print(f"{name:<24} {build:8.1f} {mem:10.0f} {p50:8.2f} {p99:8.2f} {recall:17.4f} {truth:17.4f}")

if __name__ == "__main__":
    main()
