"""The training step is ready for GPUs: at most 3 device-to-host reads per step, whatever the model.

Counted in real Trainer steps (plsc.tools.step_cost.StepCost wraps Tensor.item / numpy / __bool__ /
...); a logging step reads the loss once more than a silent one. The 2-rank count is in
tests/test_equivalence.py (test_two_ranks_equal_one_rank_after_ten_steps), inside its launch.
"""
import pytest

from plsc.config import load_config
from plsc.tools.step_cost import StepCost, dp_buckets
from test_train import SMOKE

BOUND = 3
SMALL = ["DataLoader.Train.dataset={name: FaceRandomDataset, num_classes: 16, num_samples: 64}",
         "DataLoader.Train.sampler.batch_size=4", "DataLoader.Train.loader.num_workers=0", "Model.class_num=16"]


def _count(tmp_path, overrides, steps=3):
    from plsc.engine.engine import Trainer

    e = Trainer(load_config(SMOKE, [f"Global.output_dir={tmp_path}", f"Global.max_train_step={steps}",
                                   "Global.print_batch_step=3", "Global.save_interval=1000",
                                   "Global.save_unit=step", "Global.eval_during_train=false",
                                   "Global.use_visualdl=false", *SMALL, *overrides]))
    per_step, sites = [], {}
    step, after = e.train_step, e._after_step
    pending = {}

    def counted_step(batch):
        with StepCost() as c:
            out = step(batch)
        pending["syncs"] = c.syncs
        sites.update(c.sync_sites)
        return out

    def counted_after(loss, timer):
        with StepCost() as c:
            after(loss, timer)
        per_step.append(pending.pop("syncs") + c.syncs)
        sites.update(c.sync_sites)

    e.train_step, e._after_step = counted_step, counted_after
    e.state["last_saved_step"] = None
    e.train()
    return per_step, sites


@pytest.mark.parametrize("name, overrides", [
    ("smoke IResNet", []),
    ("IResNet50 full size", ["Model.name=IResNet50", "Model.arch_kwargs={}", "Model.num_features=512",
                             "DataLoader.Train.sampler.batch_size=2"]),  # the reads do not depend on the batch
    ("sampled AdaFace, clip, accumulation, O1", [
        "Model.pfc_config.sample_ratio=0.5", "Loss.Train=[{AdaFaceLoss: {m: 0.4, h: 0.333, s: 64.0, t_alpha: 0.01}}]",
        "Optimizer.grad_clip={name: ClipGradByGlobalNorm, clip_norm: 5.0, always_clip: true, no_clip_list: [dist]}",
        "Global.accum_steps=2", "FP16.level=O1"]),
    ("AdamW, sync_bn, model_parallel false", [
        "Optimizer={name: AdamW, weight_decay: 0.05}", "DistributedStrategy.sync_bn=true",
        "Model.pfc_config.model_parallel=false", "Loss.Train.0.MarginLoss.model_parallel=false"]),
])
def test_host_syncs_per_step_are_bounded(tmp_path, name, overrides):
    per_step, sites = _count(tmp_path, overrides)
    assert len(per_step) == 3
    assert max(per_step) <= BOUND, (per_step, sites)
    # steps 1 and 3 log (the first and the last; print_batch_step 3): one read more than the silent step 2
    silent = per_step[1]
    assert [per_step[0], per_step[2]] == [silent + 1] * 2, (per_step, sites)


def test_counter_counts_what_it_says():
    import paddle

    t = paddle.to_tensor([1.0, 2.0])
    with StepCost() as c:
        t[0].item()
        t.numpy()
        bool(t.sum() > 0)
        float(t.sum())
        _ = t.shape, t.dtype, t + 1
    assert c.syncs == 4, c.sync_sites
    buckets = dp_buckets([paddle.create_parameter([1 << 18], "float32") for _ in range(3)], comm_buffer_mb=2,
                         last_comm_buffer_mb=1)
    assert buckets == [1 << 20, 2 << 20]  # 1 MB first (the last layers' gradients), then up to 2 MB
