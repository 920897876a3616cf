"""PartialFC: the class-sharded, sampled, margin-softmax classifier.

Rank r of W owns the weight rows of classes [start_r, end_r) (C // W each, the first C % W ranks
one more). One forward:

  1. gather every rank's features and labels (features with a gradient-carrying gather; ranks
     may hold different batch sizes);
  2. choose this shard's rows: all of them (sample_ratio 1), or every class that occurs in the
     global batch plus uniformly drawn others up to ceil(sample_ratio * rows); labels are
     remapped to columns of the chosen rows (-1 when the class lives on another shard);
  3. cosine logits between the normalized global features and the normalized chosen rows;
  4. the margin on each sample's target cosine (on the shard that owns it), times the scale s;
  5. softmax cross-entropy with the max and sum-exp all-reduced across shards (fp32).

Steps 3-5 are one layer (plsc.nn.softmax_ce.MarginSoftmaxCE) working in place on the [N, K]
logits; the margin enters it as its value and derivative at the N target cosines.

The chosen rows are a copy (`self.sampled`) that is the leaf of the autograd graph, so the
backward produces a [rows chosen, D] gradient and never a dense one for the whole shard;
`plsc.optim.sparse_momentum.SparseMomentum` applies it to the chosen rows only.
With model_parallel false every rank holds all C rows and computes the same loss.
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F

from plsc.distributed import all_gather_sizes, gather_labels, gather_rows, rank, seeded_rng, shard_range, world_size
from plsc.errors import DataError
from plsc.nn.rows import take_rows
from plsc.nn.softmax_ce import margin_softmax_ce

INIT_STD = 0.01
_INIT_BLOCK = 1 << 16  # classes per init block: the initial weights do not depend on the world size


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


class PartialFC(paddle.nn.Layer):
    def __init__(self, num_features, num_classes, margin, sample_ratio=1.0, model_parallel=True, seed=0):
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes
        self.margin, self.sample_ratio, self.model_parallel = margin, float(sample_ratio), model_parallel
        self.seed, self.rank, self.world_size = seed, rank(), world_size()
        if model_parallel:
            self.start, self.end = shard_range(num_classes, self.rank, self.world_size)
        else:
            self.start, self.end = 0, num_classes
        self.weight_name = f"dist_fc_rank{self.rank}.w_0" if model_parallel else "fc.w_0"
        rows = self.end - self.start
        self.weight = paddle.empty([rows, num_features], dtype="float32")
        for a in range(0, rows, _INIT_BLOCK):  # fill in chunks: no second full-size host copy
            b = min(rows, a + _INIT_BLOCK)
            self.weight[a:b] = paddle.to_tensor(init_rows(seed, self.start + a, self.start + b, num_features))
        self.num_sample = rows if self.sample_ratio >= 1.0 else max(1, math.ceil(self.sample_ratio * rows))
        self.draws = 0          # sampling draws so far (part of the checkpoint: resumed runs sample alike)
        self.index = None       # rows chosen in the last forward (None: all rows)
        self.sampled = None     # leaf tensor holding those rows; its .grad is the sparse gradient

    @property
    def num_local(self):
        return self.end - self.start

    # ------------------------------------------------------------------ sampling
    def choose_rows(self, labels):
        """(row index or None, local target column per sample or -1) for global labels (numpy)."""
        local = labels - self.start
        here = (local >= 0) & (local < self.num_local)
        if self.num_sample >= self.num_local:
            return None, np.where(here, local, -1)
        positives = np.unique(local[here])
        index = positives
        if len(positives) < self.num_sample:
            rng = seeded_rng(self.seed, 11, self.draws, self.rank if self.model_parallel else 0)
            is_pos = np.zeros(self.num_local, dtype=bool)
            is_pos[positives] = True
            negatives = np.flatnonzero(~is_pos)
            pick = rng.choice(len(negatives), self.num_sample - len(positives), replace=False)
            index = np.sort(np.concatenate([positives, negatives[pick]]))
        self.draws += 1
        target = np.full(labels.shape, -1, dtype=np.int64)
        target[here] = np.searchsorted(index, local[here])
        return index, target

    def _check_labels(self, labels):
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise DataError(f"label {bad} is out of range: Model.class_num is {self.num_classes}, so labels "
                            f"must be in [0, {self.num_classes - 1}]")

    # ------------------------------------------------------------------ forward
    def forward(self, features, labels):
        features = features.astype("float32")
        labels = labels.reshape([-1]).astype("int64")
        sizes = all_gather_sizes(features.shape[0])
        feats = gather_rows(features, sizes, sum_grads=self.model_parallel)
        global_labels = gather_labels(labels, sizes).numpy()
        self._check_labels(global_labels)
        index, target = self.choose_rows(global_labels)
        self.index = index
        if index is None:
            self.sampled = self.weight.detach()
        else:
            self.sampled = take_rows(self.weight, index)
        self.sampled.stop_gradient = False
        target = paddle.to_tensor(target)

        norms = paddle.linalg.norm(feats, axis=1)
        if self.margin.uses_norms and self.training:
            self.margin.update_stats(norms)
        x_unit = F.normalize(feats, axis=1)
        new_t, dnew = self._target_margin(x_unit, target, norms)
        per_sample = margin_softmax_ce(x_unit, self.sampled, target, new_t, dnew, self.margin.s,
                                       sharded=self.model_parallel)
        return per_sample.mean() * self.margin.weight

    @paddle.no_grad()
    def _target_cos(self, x_unit, target):
        """cos between each sample and its target row ([N]; any row where the target is elsewhere)."""
        safe = paddle.where(target >= 0, target, paddle.zeros_like(target))
        rows = paddle.gather(self.sampled, safe)
        cos = (x_unit * rows).sum(axis=1) / paddle.clip(paddle.linalg.norm(rows, axis=1), min=1e-12)
        return paddle.clip(cos, -1.0, 1.0)

    def _target_margin(self, x_unit, target, norms):
        """(margin(cos_t), d margin / d cos_t) at each sample's target cosine: N scalars, by autograd."""
        cos = self._target_cos(x_unit.detach(), target)
        cos.stop_gradient = False
        with paddle.enable_grad():
            new = self.margin.target_logits(cos, norms.detach(), self.training)
            (dnew,) = paddle.grad([new], [cos])
        return new.detach(), dnew.detach()

    # ------------------------------------------------------------------ state
    def extra_state(self):
        return {"draws": self.draws, **self.margin.state()}

    def load_extra_state(self, state):
        self.draws = int(state.get("draws", self.draws))
        self.margin.load_state(state)

    def extra_repr(self):
        return (f"classes={self.num_classes}, rows [{self.start}, {self.end}) on rank {self.rank}/{self.world_size}, "
                f"sample_ratio={self.sample_ratio}, margin={self.margin}")
