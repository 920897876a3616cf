"""Run under the launcher (2 ranks) or alone: 16-bit class storage through a few training steps.

    python -m paddle.distributed.launch --nproc_per_node=2 tests/storage_worker.py OUT_DIR
For each storage dtype: PartialFC (every row used) + sparse Momentum, 3 steps on a fixed global
batch; writes OUT_DIR/<dtype>_rank<r>.npz (losses, this shard's rows as float32, its range) and the
shard file OUT_DIR/<dtype>_fc_rank<r>.npz (plsc.io.fc_shards, as a checkpoint holds it).
"""
import os
import sys

from plsc.env import setup_threads

setup_threads()
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

from plsc.io import fc_shards  # noqa: E402
from plsc.nn import build_head  # noqa: E402
from plsc.optim.optimizers import build_sparse_optimizer  # noqa: E402

CLASSES, DIM, BATCH, STEPS = 13, 8, (5, 3), 3


def batch(step):
    rng = np.random.default_rng(100 + step)
    n = sum(BATCH)
    return rng.standard_normal((n, DIM)).astype(np.float32), rng.integers(0, CLASSES, n).astype(np.int64)


def run(out_dir, dtype):
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = dist.get_rank() if world > 1 else 0
    head = build_head({"num_features": DIM, "class_num": CLASSES,
                       "pfc_config": {"sample_ratio": 1.0, "model_parallel": True, "storage_dtype": dtype}},
                      [{"MarginLoss": {"m2": 0.5, "s": 16.0}}], seed=5)
    head.set_optimizer(build_sparse_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4},
                                              head.weight, store=head.store))
    lo, hi = (0, sum(BATCH)) if world == 1 else (sum(BATCH[:rank]), sum(BATCH[:rank + 1]))
    losses = []
    for step in range(STEPS):
        feats, labels = batch(step)
        x = paddle.to_tensor(feats[lo:hi], stop_gradient=False)
        loss = head(x, paddle.to_tensor(labels[lo:hi]))
        loss.backward()
        head.step(0.5)
        head.clear_sparse_grad()
        losses.append(loss.item())
    np.savez(os.path.join(out_dir, f"{dtype}_rank{rank}.npz"), losses=np.array(losses), start=head.start,
             end=head.end, weight=head.weight_float32())
    fc_shards.write(os.path.join(out_dir, f"{dtype}_fc_rank{rank}.npz"), head.shard_state())


if __name__ == "__main__":
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        dist.init_parallel_env()
    for dtype in ("float32", "bfloat16", "float16"):
        run(sys.argv[1], dtype)
