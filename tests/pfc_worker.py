"""Run under the launcher (or alone): PartialFC forward/backward for several heads; save what each rank sees.

    python -m paddle.distributed.launch --nproc_per_node=2 tests/pfc_worker.py OUT_DIR
Writes OUT_DIR/<case>_rank<r>.npz with the loss, the local feature gradient, the rows index and
their gradient, and the shard range. The test compares them with a single-process reference.
"""
import os
import sys

from plsc.env import setup_threads

setup_threads()
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

from plsc.nn import build_head  # noqa: E402

CASES = {
    # name: (loss spec, class_num, sample_ratio, batch per rank (rank 0, rank 1))
    "arc": ({"MarginLoss": {"m1": 1.0, "m2": 0.5, "m3": 0.0, "s": 64.0}}, 16, 1.0, (4, 4)),
    "cos": ({"MarginLoss": {"m1": 1.0, "m2": 0.0, "m3": 0.4, "s": 64.0}}, 11, 1.0, (4, 4)),
    "combined": ({"MarginLoss": {"m1": 1.1, "m2": 0.3, "m3": 0.2, "s": 32.0}}, 11, 1.0, (5, 3)),
    "adaface": ({"AdaFaceLoss": {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 1.0}}, 11, 1.0, (4, 2)),
    "arc_sampled": ({"MarginLoss": {"m2": 0.5}}, 40, 0.3, (4, 3)),
    "replicated": ({"MarginLoss": {"m2": 0.5, "model_parallel": False}}, 11, 1.0, (4, 3)),
}
DIM = 8


def global_batch(case):
    """Features and labels of the whole global batch (every rank builds the same, then takes its slice)."""
    sizes = CASES[case][3]
    rng = np.random.default_rng(sum(map(ord, case)))
    n, classes = sum(sizes), CASES[case][1]
    feats = rng.standard_normal((n, DIM)).astype(np.float32) * rng.uniform(0.5, 3.0, (n, 1)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int64)
    return feats, labels


def run(out_dir):
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world > 1:
        dist.init_parallel_env()
    rank = dist.get_rank() if world > 1 else 0
    for case, (loss, classes, ratio, sizes) in CASES.items():
        feats, labels = global_batch(case)
        if world == 1:
            lo, hi = 0, len(labels)
        else:
            lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
        (name, kwargs), = loss.items()
        kwargs = dict(kwargs)
        parallel = kwargs.pop("model_parallel", True)  # the case's Model.pfc_config.model_parallel
        model = {"num_features": DIM, "class_num": classes,
                 "pfc_config": {"sample_ratio": ratio, "model_parallel": parallel}}
        head = build_head(model, [{name: kwargs}], seed=3)
        f = paddle.to_tensor(feats[lo:hi])
        f.stop_gradient = False
        value = head(f, paddle.to_tensor(labels[lo:hi]))
        value.backward()
        index, row_grad, _ = head.sparse_grad()
        assert head.weight.grad is None, "no dense gradient of the shard"
        np.savez(os.path.join(out_dir, f"{case}_rank{rank}.npz"), loss=value.item(), feat_grad=f.grad.numpy(),
                 index=np.arange(head.num_local) if index is None else index.numpy(),
                 row_grad=row_grad.numpy(), start=head.start, end=head.end, lo=lo, hi=hi,
                 weight=head.weight.numpy())


if __name__ == "__main__":
    run(sys.argv[1])
