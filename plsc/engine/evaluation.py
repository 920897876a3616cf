"""Evaluation (the Trainer's hook and plsc-eval): the configured eval sets, the metric, best-so-far tracking.

DataLoader.Eval.dataset is one dataset mapping or a list of them (one per eval set):
FaceBinDataset {bin_path} for insightface .bin files, FaceVerificationDataset {image_root,
cls_label_path} for PLSC's pairs folders. Metric.Eval: [- LFWAcc {flip_test}].
"""
from plsc.config.rules import eval_sets
from plsc.metrics.evaluator import evaluate_sets, format_table
from plsc.progress import Progress
from plsc.registry import METRICS


class Evaluator:
    def __init__(self, cfg, rank, world_size, log):
        self.sets = eval_sets(cfg)
        self.rank, self.world_size, self.log = rank, world_size, log
        sampler = cfg["DataLoader"]["Eval"]["sampler"]
        self.batch_size = sampler["batch_size"]
        loader = cfg["DataLoader"]["Eval"]["loader"]
        self.workers = {"num_workers": loader["num_workers"], "use_shared_memory": loader["use_shared_memory"]}
        metrics = cfg["Metric"]["Eval"] or []  # plsc.config.rules.check_eval: at most one; sets read in order
        self.metric = None
        if metrics:
            (name, kwargs), = metrics[0].items()
            self.metric = METRICS.build(name, **(kwargs or {}))
        self.enabled = bool(self.sets) and self.metric is not None

    def run(self, embed_fn):
        share = f" (rank 0's share of {self.world_size} ranks)" if self.world_size > 1 else ""
        progress_for = (lambda name, n: Progress(n, "images", f"eval set '{name}': embedded", log=self.log.info,
                                                 note=share)) if self.rank == 0 else None
        results = evaluate_sets(embed_fn, self.sets, batch_size=self.batch_size, metric=self.metric,
                                rank=self.rank, world_size=self.world_size, progress_for=progress_for,
                                log=self.log.info, **self.workers)
        self.log.info("verification:\n" + format_table(results))
        return results

    def track(self, results, best, step, writer, tag="eval", label=""):
        """Update best-so-far accuracy per set; True when the mean accuracy over sets improved."""
        for name, r in results.items():
            writer.add(f"{tag}/{name}/acc", r["acc"], step)
            writer.add(f"{tag}/{name}/xnorm", r["xnorm"], step)
            if r["acc"] > best.get(name, {}).get("acc", -1.0):
                best[name] = {"acc": r["acc"], "step": step}
        mean_acc = sum(r["acc"] for r in results.values()) / len(results)
        writer.add(f"{tag}/mean_acc", mean_acc, step)
        self.log.info(f"{label}eval at global_step {step}: mean acc {mean_acc:.4f}")
        improved = mean_acc > best.get("__mean__", {}).get("acc", -1.0)
        if improved:
            best["__mean__"] = {"acc": mean_acc, "step": step}
        self.log.info("best so far:\n" + format_table(results, best={k: v["acc"] for k, v in best.items()
                                                                     if k != "__mean__"}))
        return improved
