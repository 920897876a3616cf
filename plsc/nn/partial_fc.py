"""PartialFC: the class-sharded, sampled, margin-softmax classifier, as one object.

Rank r of W owns the weight rows of classes [start_r, end_r) (C // W each, the first C % W ranks one
more): `head.weight`, a Paddle parameter ([rows, D], persistable, `is_distributed` when sharded)
stored in Model.pfc_config.storage_dtype (float32, or bfloat16 / float16: plsc.nn.storage). The head
also owns the shard's sparse optimizer (plsc.optim.sparse) and its file form (plsc.io.fc_shards).
One optimizer step:

  1. plan (`head.plan(labels of every micro-batch)`): gather every rank's labels once; choose this
     shard's rows: all of them (sample_ratio 1), or every class that occurs in the step plus
     uniformly drawn others, K rows in all (`num_sample`: ceil(sample_ratio * rows), or sample_num;
     at least the labels of the step, at most the shard), so every positive fits without reading
     labels back to the host; labels become columns of the chosen rows (-1 where the class lives on
     another shard). All on the device: random scores (`paddle.uniform`, seeded by (seed, draws,
     rank)), positives set to 2, the K largest kept. Labels outside [0, C) are ignored and reported
     by `plan.label_status()`.
  2. per micro-batch (`head(features, labels, plan, part)`): gather the features (gradient-
     carrying); cosine logits between the normalized features and the normalized chosen rows; the
     margin on each sample's target cosine (on the shard that owns it), times the scale s;
     softmax cross-entropy with the max and sum-exp all-reduced across shards (float32; plsc.nn.softmax_ce).
  3. `head.step(lr)`: the sparse optimizer updates the chosen rows and their slots (float32 math,
     written back in the storage dtype); every other row keeps its bits.

The chosen rows are one float32 copy per step (`plan.rows`), the leaf of the autograd graph: every
micro-batch's backward adds its [K, D] gradient to it and no dense gradient of the shard is ever
allocated (`head.sparse_grad()` hands it to the engine's gradient check). With model_parallel false
every rank holds all C rows and computes the same loss.
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F

from plsc.distributed import (all_gather_sizes, all_reduce_max_, barrier, derived_seed, gather_labels, gather_rows, rank,
                              seeded_rng, shard_range, world_size)
from plsc.errors import CheckpointError, DataError
from plsc.io import fc_shards
from plsc.nn.rows import top_k_sorted
from plsc.nn.softmax_ce import margin_softmax_ce
from plsc.nn.storage import RowStorage, tensor_from_file

INIT_STD = 0.01
_INIT_BLOCK = 1 << 16  # classes per init block: the initial weights do not depend on the world size
_SYNC_BLOCKS = 8      # init blocks between two barriers of the ranks (~5 s of work here)


def init_rows(seed, start, end, dim):
    """N(0, 0.01) rows [start, end) of the full C x D weight, identical for every sharding."""
    out = np.empty((end - start, dim), dtype=np.float32)
    block = start // _INIT_BLOCK
    while block * _INIT_BLOCK < end:
        b0, b1 = block * _INIT_BLOCK, (block + 1) * _INIT_BLOCK
        rows = seeded_rng(seed, 7, block).standard_normal((_INIT_BLOCK, dim), dtype=np.float32)
        lo, hi = max(b0, start), min(b1, end)
        out[lo - start: hi - start] = rows[lo - b0: hi - b0] * INIT_STD
        block += 1
    return out


class SamplingPlan:
    """The rows one optimizer step uses and each micro-batch's target columns (device tensors)."""

    def __init__(self, index, targets, sizes, labels, valid, num_classes):
        self.index = index        # int64 [K] ascending, or None: every row of the shard
        self.targets = targets    # per micro-batch: int64 [N_i] local column or -1
        self.sizes = sizes        # per micro-batch: rows each rank contributes
        self.rows = None          # [K, D] float32 copy of the chosen rows (the autograd leaf), made on first use
        self._labels, self._valid, self._classes = labels, valid, num_classes

    def label_status(self):
        """fp32 scalar tensor: 1 if some label of the step is outside [0, C), else 0 (no host read)."""
        return 1.0 - self._valid.astype("float32").min()

    def raise_for_labels(self):
        """Raise DataError naming a bad label (reads the labels back: call it on the error path)."""
        labels = self._labels.numpy()
        bad = labels[(labels < 0) | (labels >= self._classes)]
        if bad.size:
            raise DataError(f"label {bad[0]} is out of range: Model.class_num is {self._classes}, so labels "
                            f"must be in [0, {self._classes - 1}]")


class PartialFC(paddle.nn.Layer):
    def __init__(self, num_features, num_classes, margin, sample_ratio=1.0, model_parallel=True, seed=0,
                 sample_num=None, storage_dtype="float32", interclass_filtering_threshold=0.0):
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes
        self.margin, self.sample_ratio, self.model_parallel = margin, float(sample_ratio), model_parallel
        self.seed, self.rank, self.world_size = seed, rank(), world_size()
        if model_parallel:
            self.start, self.end = shard_range(num_classes, self.rank, self.world_size)
        else:
            self.start, self.end = 0, num_classes
        rows = self.end - self.start
        self.storage_dtype = storage_dtype
        self.filter_t = float(interclass_filtering_threshold)  # > 0: non-target cosines above it count as 0
        self.store = RowStorage(storage_dtype, first_class=self.start, seed=seed)
        # 'dist' in the name: PLSC's no_clip_list ['dist'] names the classifier, sharded or not
        prefix = f"dist_fc_rank{self.rank}" if model_parallel else "dist_fc_replicated"
        self.weight_name = paddle.utils.unique_name.generate(prefix) + ".w_0"  # dygraph names must be unique
        self.weight = self.create_parameter(
            [rows, num_features], dtype=storage_dtype, attr=paddle.ParamAttr(name=self.weight_name),
            default_initializer=paddle.nn.initializer.Constant(0.0))
        self.weight.is_distributed = bool(model_parallel)
        self._init_weight(rows)
        if sample_num is not None:
            self.num_sample = min(rows, int(sample_num))
        else:
            self.num_sample = rows if self.sample_ratio >= 1.0 else max(1, math.ceil(self.sample_ratio * rows))
        self.optimizer = None   # the shard's sparse optimizer (set_optimizer)
        self.draws = 0          # sampling draws so far (part of the checkpoint: resumed runs sample alike)
        self.last_plan = None   # the plan of the current step (its rows hold the gradient)

    @paddle.no_grad()
    def _init_weight(self, rows):
        """Fill the shard in blocks (no second full-size copy). Millions of rows take a minute on a CPU, so
        the ranks meet every _SYNC_BLOCKS blocks: a rank slowed by other work never leaves the others
        waiting in the next collective past gloo's 30 s timeout (seen at 10M classes on 2 ranks)."""
        sync = self.model_parallel and self.world_size > 1
        most = -(-self.num_classes // self.world_size) if sync else rows  # every rank counts the same blocks
        for i, a in enumerate(range(0, most, _INIT_BLOCK)):
            if a < rows:
                b = min(rows, a + _INIT_BLOCK)
                block = paddle.to_tensor(init_rows(self.seed, self.start + a, self.start + b, self.num_features))
                self.weight[a:b] = block.astype(self.storage_dtype)  # 16-bit: rounded to nearest once
            if sync and i % _SYNC_BLOCKS == _SYNC_BLOCKS - 1:
                barrier()

    @property
    def num_local(self):
        return self.end - self.start

    def set_optimizer(self, optimizer):
        """The sparse optimizer (plsc.optim.sparse) of this shard; it stores its slots like the weight."""
        self.optimizer = optimizer
        return optimizer

    # ------------------------------------------------------------------ sampling
    def plan(self, labels_list, sizes_list=None):
        """SamplingPlan for one optimizer step whose micro-batches have these (local) labels.

        sizes_list[i]: rows every rank contributes to micro-batch i (None: gathered, one host read)."""
        labels_list = [lb.reshape([-1]).astype("int64") for lb in labels_list]
        w = world_size()
        if sizes_list is None:
            sizes_list = [all_gather_sizes(lb.shape[0]) if w > 1 else [lb.shape[0]] for lb in labels_list]
        local = paddle.concat(labels_list) if len(labels_list) > 1 else labels_list[0]
        totals = [sum(s[r] for s in sizes_list) for r in range(w)]
        gathered = gather_labels(local, totals)
        per_micro = _split_gathered(gathered, sizes_list, totals)
        step_labels = paddle.concat(per_micro) if len(per_micro) > 1 else per_micro[0]
        valid = (step_labels >= 0) & (step_labels < self.num_classes)
        shard_col = [self._local_columns(g) for g in per_micro]
        if self.num_sample >= self.num_local:
            index, targets = None, [paddle.where(here, col, paddle.full_like(col, -1)) for col, here in shard_col]
        else:
            index = self._choose_rows(shard_col, int(step_labels.shape[0]))
            targets = [paddle.where(here, paddle.searchsorted(index, col), paddle.full_like(col, -1))
                       for col, here in shard_col]
        self.last_plan = SamplingPlan(index, targets, sizes_list, step_labels, valid.all(), self.num_classes)
        return self.last_plan

    def _local_columns(self, global_labels):
        """(label - start, True where the class is on this shard) for global labels (invalid ones never are)."""
        col = global_labels - self.start
        here = (col >= 0) & (col < self.num_local) & (global_labels < self.num_classes)
        return col, here

    def _choose_rows(self, shard_col, labels_in_step):
        # every positive must fit: a step's labels may all be distinct classes of this shard
        k = max(self.num_sample, min(self.num_local, labels_in_step))
        seed = derived_seed(self.seed, 11, self.draws, self.rank if self.model_parallel else 0)
        self.draws += 1
        if k >= self.num_local:
            return paddle.arange(self.num_local, dtype="int64")
        scores = paddle.uniform([self.num_local + 1], dtype="float32", min=0.0, max=1.0, seed=seed)
        slot = paddle.concat([paddle.where(here, col, paddle.full_like(col, self.num_local)) for col, here in shard_col])
        scores = paddle.scatter(scores, slot, paddle.full(slot.shape, 2.0, dtype="float32"), overwrite=True)
        return top_k_sorted(scores[:self.num_local], k)

    # ------------------------------------------------------------------ forward
    def forward(self, features, labels, plan=None, part=0):
        """Mean margin-softmax loss over the global (micro-)batch; the same value on every rank."""
        if plan is None:
            plan = self.plan([labels])
        if plan.rows is None:
            plan.rows = self.store.get(self.weight.detach(), plan.index)
            plan.rows.stop_gradient = False
        feats = gather_rows(features.astype("float32"), plan.sizes[part], sum_grads=self.model_parallel)
        target = plan.targets[part]
        norms = paddle.linalg.norm(feats, axis=1)
        if self.margin.uses_norms and self.training:
            self.margin.update_stats(norms)
        x_unit = F.normalize(feats, axis=1)
        new_t, dnew = self._target_margin(plan.rows, x_unit, target, norms)
        per_sample = margin_softmax_ce(x_unit, plan.rows, target, new_t, dnew, self.margin.s,
                                       sharded=self.model_parallel, filter_t=self.filter_t)
        return per_sample.mean() * self.margin.weight

    @paddle.no_grad()
    def _target_cos(self, rows, x_unit, target):
        """cos between each sample and its target row ([N]; any row where the target is elsewhere)."""
        safe = paddle.where(target >= 0, target, paddle.zeros_like(target))
        picked = paddle.gather(rows, safe)
        cos = (x_unit * picked).sum(axis=1) / paddle.clip(paddle.linalg.norm(picked, axis=1), min=1e-12)
        return paddle.clip(cos, -1.0, 1.0)

    def _target_margin(self, rows, x_unit, target, norms):
        """(margin(cos_t), d margin / d cos_t) at each sample's target cosine: N scalars, by autograd."""
        cos = self._target_cos(rows.detach(), x_unit.detach(), target)
        cos.stop_gradient = False
        with paddle.enable_grad():
            new = self.margin.target_logits(cos, norms.detach())
            (dnew,) = paddle.grad([new], [cos])
        return new.detach(), dnew.detach()

    # ------------------------------------------------------------------ gradient and update
    def sparse_grad(self):
        """(index or None, [K, D] float32 gradient, [K, D] rows) of the current step, or None before a backward."""
        plan = self.last_plan
        if plan is None or plan.rows is None or plan.rows.grad is None:
            return None
        return plan.index, plan.rows.grad, plan.rows

    def step(self, lr):
        """Apply the current step's (checked, unscaled, clipped) gradient to its rows with the optimizer.

        float16 storage: one more small all-reduce and host read per step, for the range verdict."""
        got = self.sparse_grad()
        if got is None:
            return
        index, grad, rows = got
        self.optimizer.step(index, grad, lr, rows=rows)
        flag = self.store.take_overflow()
        if flag is not None:
            flag = flag.reshape([1])
            if self.model_parallel and self.world_size > 1:
                all_reduce_max_(flag)
            if flag.item() > 0:
                raise self.store.overflow_error(f"in optimizer step {self.optimizer.num_steps}")

    def clear_sparse_grad(self):
        self.last_plan = None

    # ------------------------------------------------------------------ state (plsc.io.fc_shards)
    def extra_state(self):
        return {"draws": self.draws, **self.margin.state()}

    def load_extra_state(self, state):
        self.draws = int(state.get("draws", self.draws))
        self.margin.load_state(state)

    def shard_state(self):
        """This rank's shard file contents (rows in the storage dtype, as they are). The row arrays are
        `fc_shards.Rows` read from the tensors a block at a time: saving makes no copy of the shard."""
        opt = None if self.optimizer is None else self.optimizer.state_dict()
        return fc_shards.build(
            self._file_rows(self.weight), self.start, self.end, self.num_classes, storage_dtype=self.storage_dtype,
            replicated=not self.model_parallel, steps=None if opt is None else opt["num_steps"],
            slots=None if opt is None else {n: self._file_rows(t) for n, t in opt["slots"].items()},
            extra=self.extra_state())

    def _file_rows(self, t):
        # clone: `.numpy()` of a slice (a view) would copy the whole underlying tensor
        read = lambda a, b: fc_shards.to_file_array(t[a:b].clone().numpy(), self.storage_dtype)  # noqa: E731
        return fc_shards.Rows(t.shape, fc_shards.file_dtype(self.storage_dtype), read)

    @paddle.no_grad()
    def load_shards(self, shards, weights_only=False):
        """Fill this rank's rows (and the optimizer's unless weights_only) from saved shards of any
        world size and storage dtype, a block of rows at a time (no full-size host copy). weights_only
        (fine-tuning, eval): the optimizer and the head's scalars start fresh."""
        slots = {} if weights_only or self.optimizer is None else self.optimizer.slots
        targets = {"weight": self.weight, **slots}
        filled = np.zeros(self.num_local, dtype=bool)
        extra, steps = None, 0
        for i, s in enumerate(shards):
            start, end, classes = fc_shards.class_range(s)
            if classes != self.num_classes or s["weight"].shape[1] != self.num_features:
                raise CheckpointError(f"FC shard {i}: saved for {classes} classes x {s['weight'].shape[1]} "
                                      f"features, the config has {self.num_classes} x {self.num_features}")
            lo, hi = max(start, self.start), min(end, self.end)
            if lo < hi and not filled[lo - self.start: hi - self.start].all():
                for k in targets:
                    if k not in s:
                        raise CheckpointError(f"FC shard {i} has no '{k}' state (saved with another optimizer?); "
                                              f"use Global.pretrained_model to start it fresh")
                for a in range(lo, hi, fc_shards.BLOCK_ROWS):
                    b = min(hi, a + fc_shards.BLOCK_ROWS)
                    for k, t in targets.items():
                        block = fc_shards.rows_as(s, k, a - start, b - start, self.storage_dtype)
                        t[a - self.start: b - self.start] = tensor_from_file(block, self.storage_dtype)
                filled[lo - self.start: hi - self.start] = True
            if extra is None:
                extra, steps = fc_shards.extra_state(s), fc_shards.optimizer_steps(s)
        if not filled.all():
            missing = np.flatnonzero(~filled)[0] + self.start
            raise CheckpointError(f"the saved FC shards do not cover class {missing} (shard files missing?)")
        if slots:
            self.optimizer.num_steps = steps
            self.load_extra_state(extra or {})

    def weight_float32(self):
        """This shard's weight rows as a float32 numpy array (exact for every storage dtype)."""
        return self.weight.astype("float32").numpy()

    @paddle.no_grad()
    def set_weight_float32(self, rows):
        """Replace this shard's weight rows by float32 values (16-bit storage: rounded to nearest once)."""
        paddle.assign(paddle.to_tensor(np.ascontiguousarray(rows, np.float32)).astype(self.storage_dtype),
                      output=self.weight)

    def extra_repr(self):
        return (f"classes={self.num_classes}, rows [{self.start}, {self.end}) on rank {self.rank}/{self.world_size}, "
                f"{self.num_sample} sampled per step, storage {self.storage_dtype}, margin={self.margin}")


def _split_gathered(gathered, sizes_list, totals):
    """Per micro-batch global labels (rank order) from labels gathered as rank-major [micro 0, micro 1, ...]."""
    if len(sizes_list) == 1:
        return [gathered]
    starts = np.concatenate([[0], np.cumsum(totals)])
    out, offsets = [], [0] * len(totals)
    for sizes in sizes_list:
        parts = []
        for r, n in enumerate(sizes):
            a = int(starts[r]) + offsets[r]
            if n:
                parts.append(gathered[a:a + n])
            offsets[r] += n
        out.append(paddle.concat(parts))
    return out
