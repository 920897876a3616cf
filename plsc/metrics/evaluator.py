"""Evaluate a model on several verification sets (LFW, CFP-FP, AgeDB-30, any .bin or pairs folder).

    results = evaluate_sets(embed_fn, {"lfw": {"name": "FaceBinDataset", "bin_path": "lfw.bin"}, ...},
                            batch_size=128, flip_test=True, rank=0, world_size=1)
    print(format_table(results, best={"lfw": 0.995}))

`embed_fn(np.float32 [N,3,112,112]) -> [N, D]` may be any backend (dygraph, Paddle inference, ONNX).
results[set] = {acc, std, xnorm, threshold, val, val_std, far, num_pairs, feat_norm, fold_acc}: plain
Python numbers, identical on every rank. Under several ranks each rank embeds its own contiguous
slice of every set (plsc.metrics.embedding) and the embeddings are all-gathered; the protocol itself
(plsc.metrics.verification) then runs on the full set on every rank.
"""
import os

from plsc.distributed import shard_range
from plsc.errors import ConfigError, DataError
from plsc.metrics.embedding import embed_images, on_all_ranks
from plsc.data.transforms import build_transforms
from plsc.metrics.verification import LFWAcc
from plsc.registry import DATASETS


def build_eval_dataset(name, spec):
    """A dataset spec {name: FaceBinDataset|FaceVerificationDataset, ...} (or a built dataset) -> dataset."""
    if not isinstance(spec, dict):
        ds = spec
    else:
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        if "name" not in spec:
            raise ConfigError(f"eval set '{name}': the dataset mapping has no 'name' (e.g. FaceBinDataset)")
        ops = kwargs.get("transform_ops")
        if ops is not None and build_transforms(ops).random:
            raise ConfigError(f"eval set '{name}': transform_ops {[next(iter(o)) for o in ops]} contain a random "
                              f"op; evaluation must be deterministic (flip_test embeds the mirrored images)")
        kwargs.setdefault("seed", 0)
        ds = DATASETS.build(spec["name"], **kwargs)
    issame = getattr(ds, "issame", None)
    if issame is None:
        raise ConfigError(f"eval set '{name}': {type(ds).__name__} is not a verification dataset "
                          f"(use FaceBinDataset or FaceVerificationDataset)")
    if len(ds) != 2 * len(issame):
        raise DataError(f"eval set '{name}': {len(ds)} images for {len(issame)} pairs; "
                        f"a verification set holds exactly 2 x pairs images")
    return ds


def evaluate_sets(embed_fn, sets, batch_size=64, flip_test=True, rank=0, world_size=1, progress_for=None,
                  metric=None, log=None, num_workers=0, use_shared_memory=True):
    """{set name: dataset spec or dataset} -> {set name: verification results} (same on every rank).

    metric: a Metric.Eval object (LFWAcc) deciding flip_test and the folds; default LFWAcc(flip_test).
    progress_for(set name, images on this rank) -> a progress(done, total) callback, or None.
    num_workers, use_shared_memory: DataLoader.Eval.loader (0: one decoding thread per rank)."""

    workers = {"num_workers": num_workers, "use_shared_memory": use_shared_memory}
    metric = metric or LFWAcc(flip_test=flip_test)
    results = {}
    for name, spec in sets.items():
        ds = on_all_ranks(lambda: build_eval_dataset(name, spec), rank, world_size, f"loading eval set '{name}'")
        start, end = shard_range(len(ds), rank, world_size)
        stored = getattr(ds, "mirrors", None) is not None  # a PLSC folder holding the mirrored images itself
        if stored and log:
            log(f"eval set '{name}': a PLSC pairs folder made with --flip_test; "
                + ("its stored mirror images are fused with the originals (as PLSC's flip_test does)" if
                   metric.flip_test else "flip_test is false: its mirrored copies are not scored"))
        raw, flipped = embed_images(embed_fn, lambda i, ds=ds: ds[i][0], len(ds), batch_size=batch_size,
                                    flip_test=metric.flip_test and not stored, rank=rank, world_size=world_size,
                                    name=f"eval set '{name}'",
                                    progress=progress_for(name, end - start) if progress_for else None, **workers)
        if stored and metric.flip_test:
            flipped, _ = embed_images(embed_fn, lambda i, ds=ds: ds.mirror(i), len(ds), batch_size=batch_size,
                                      flip_test=False, rank=rank, world_size=world_size,
                                      name=f"eval set '{name}' (stored mirrors)", **workers)
        results[name] = metric(raw, ds.issame, flipped, name=f"eval set '{name}'")
    return results


def evaluate_bins(embed_fn, bins, batch_size=64, flip_test=True, rank=0, world_size=1):
    """{set name: path to an insightface .bin} (or a list of paths) -> evaluate_sets results."""
    if not isinstance(bins, dict):
        bins = {os.path.splitext(os.path.basename(p))[0]: p for p in bins}
    sets = {k: {"name": "FaceBinDataset", "bin_path": p} for k, p in bins.items()}
    return evaluate_sets(embed_fn, sets, batch_size, flip_test, rank, world_size)


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def format_table(results, best=None):
    """Per-set table (accuracy, std, XNorm, threshold, TAR@FAR=1e-3 [, best]) and the feature-norm table."""
    if not results:
        return "(no eval sets)"
    header = ["set", "pairs", "acc", "std", "xnorm", "threshold", "val@far1e-3"]
    header += ["best"] if best is not None else []
    rows = []
    for name, r in results.items():
        row = [name, r["num_pairs"], f"{r['acc']:.5f}", f"{r['std']:.5f}", f"{r['xnorm']:.3f}",
               f"{r['threshold']:.3f}", f"{r['val']:.5f}+-{r['val_std']:.5f}"]
        if best is not None:
            b = best.get(name)
            row.append("-" if b is None else f"{b:.5f}")
        rows.append(row)
    if len(results) > 1:
        n = len(results)
        mean = lambda k: sum(r[k] for r in results.values()) / n
        row = ["mean", sum(r["num_pairs"] for r in results.values()), f"{mean('acc'):.5f}", "", f"{mean('xnorm'):.3f}",
               "", f"{mean('val'):.5f}"]
        if best is not None:
            known = [best[k] for k in results if best.get(k) is not None]
            row.append(f"{sum(known) / len(known):.5f}" if len(known) == n else "-")
        rows.append(row)
    norms = _table(["mean feature norm"] + list(results),
                   [["fused embedding"] + [f"{r.get('feat_norm', float('nan')):.2f}" for r in results.values()]])
    return _table(header, rows) + "\n\n" + norms


def format_comparison(name_a, results_a, name_b, results_b):
    """One table of two models on the same sets: accuracy and TAR@FAR=1e-3 of each, and the change."""
    header = ["set", "pairs", "acc A", "acc B", "B - A", "val@far1e-3 A", "val@far1e-3 B"]
    rows = [[k, a["num_pairs"], f"{a['acc']:.5f}", f"{results_b[k]['acc']:.5f}",
             f"{results_b[k]['acc'] - a['acc']:+.5f}", f"{a['val']:.5f}", f"{results_b[k]['val']:.5f}"]
            for k, a in results_a.items() if k in results_b]
    return f"A = {name_a}\nB = {name_b}\n" + _table(header, rows)
