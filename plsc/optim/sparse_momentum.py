"""Sparse momentum for the PartialFC shard: only the rows a step used are touched.

For the rows R chosen in a step (the sampled rows; all rows when sample_ratio is 1), with g the
gradient of those rows (summed over accumulation micro-batches, unscaled by the loss scaler):

    g      = g + weight_decay * w[R]
    v[R]   = momentum * v[R] + g
    w[R]   = w[R] - lr * v[R]

which is paddle.optimizer.Momentum's rule restricted to R. Rows outside R keep their weight and
their momentum bit for bit: a row's momentum changes only when the row is sampled (arcface_torch's
v2 instead decays every row's momentum each step; here an unsampled class is simply not part of
that step). The weight and the momentum are the only [rows, D] tensors: 8 bytes x D per class
in fp32, no dense gradient of the shard.
"""
import numpy as np
import paddle

from plsc.errors import CheckpointError

_CHUNK = 1 << 16  # rows updated at a time


class SparseMomentum:
    def __init__(self, head, momentum=0.9, weight_decay=5e-4, multi_precision=False):
        self.head = head
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.multi_precision = multi_precision  # the FC weight is always fp32 (it is its own master copy)
        self.velocity = paddle.zeros_like(head.weight)
        self._parts = []      # (index or None, grad) per accumulated micro-batch
        self._merged = None
        self._rows = None     # weight rows gathered by the forward (reused by a single-part step)

    # ------------------------------------------------------------------ gradients
    def accumulate(self):
        """Collect the gradient of the rows the last forward used (call after each backward)."""
        sampled = self.head.sampled
        if sampled is not None and sampled.grad is not None:
            self._parts.append((self.head.index, sampled.grad))
            # the rows as gathered in the forward: still the current weights, so a single-part
            # step reuses them instead of gathering again
            self._rows = sampled.detach() if len(self._parts) == 1 and self.head.index is not None else None
        self.head.sampled = None
        self._merged = None

    def _merge(self):
        if self._merged is not None or not self._parts:
            return self._merged
        if len(self._parts) == 1:
            index, grad = self._parts[0]
        elif all(i is None for i, _ in self._parts):
            index, grad = None, paddle.add_n([g for _, g in self._parts])
        else:
            n = self.head.num_local
            full = [np.arange(n) if i is None else i for i, _ in self._parts]
            index, inverse = np.unique(np.concatenate(full), return_inverse=True)
            grad = paddle.zeros([len(index), self.head.num_features], dtype="float32")
            grad = paddle.index_add(grad, paddle.to_tensor(inverse.astype(np.int64)), 0,
                                    paddle.concat([g for _, g in self._parts]))
        self._merged = (index, grad)
        return self._merged

    def grads(self):
        merged = self._merge()
        return [] if merged is None else [merged[1]]

    def named_grads(self):
        merged = self._merge()
        return [] if merged is None else [(self.head.weight_name, merged[1])]

    def clear_grad(self):
        self._parts, self._merged, self._rows = [], None, None

    # ------------------------------------------------------------------ update
    @paddle.no_grad()
    def step(self, lr):
        merged = self._merge()
        if merged is None:
            return
        index, grad = merged
        w, v, mu, wd = self.head.weight, self.velocity, self.momentum, self.weight_decay
        rows = grad.shape[0]
        for a in range(0, rows, _CHUNK):  # chunks bound the temporaries at millions of rows
            b = min(rows, a + _CHUNK)
            g = grad[a:b]
            if index is None:
                w_rows, v_rows = w[a:b], v[a:b]
            else:
                idx = paddle.to_tensor(index[a:b])
                reuse = self._rows is not None and len(self._parts) == 1
                w_rows = self._rows[a:b] if reuse else paddle.gather(w, idx)
                v_rows = paddle.gather(v, idx)
            if wd:
                g = g + wd * w_rows
            v_rows = v_rows.scale_(mu).add_(g) if index is not None else mu * v_rows + g
            w_rows = w_rows.subtract_(lr * v_rows) if index is not None else w_rows - lr * v_rows
            if index is None:
                v[a:b], w[a:b] = v_rows, w_rows
            else:
                paddle.scatter_(v, idx, v_rows, overwrite=True)
                paddle.scatter_(w, idx, w_rows, overwrite=True)

    # ------------------------------------------------------------------ checkpoints
    def shard_state(self):
        h = self.head
        arrays = {"weight": h.weight.numpy(), "momentum": self.velocity.numpy(),
                  "class_range": np.array([h.start, h.end, h.num_classes], dtype=np.int64),
                  "replicated": np.array(not h.model_parallel)}
        for k, val in h.extra_state().items():
            arrays[f"extra.{k}"] = np.array(val)
        return arrays

    def load_shards(self, shards, weights_only=False):
        """Fill this rank's rows from saved shards (an iterable of shard_state() dicts, in rank order).

        Works across world sizes: each saved shard contributes the rows that overlap this rank's
        range, so a 2-rank checkpoint resumes on 1 or 4 ranks. weights_only: keep a fresh momentum."""
        h = self.head
        w, v = h.weight.numpy(), self.velocity.numpy()
        filled = np.zeros(h.num_local, dtype=bool)
        extra = None
        for i, s in enumerate(shards):
            start, end, classes = (x.item() for x in s["class_range"])
            if classes != h.num_classes or s["weight"].shape[1] != h.num_features:
                raise CheckpointError(f"FC shard {i}: saved for {classes} classes x {s['weight'].shape[1]} "
                                      f"features, the config has {h.num_classes} x {h.num_features}")
            lo, hi = max(start, h.start), min(end, h.end)
            if lo < hi and not filled[lo - h.start: hi - h.start].all():
                w[lo - h.start: hi - h.start] = s["weight"][lo - start: hi - start]
                if not weights_only:
                    v[lo - h.start: hi - h.start] = s["momentum"][lo - start: hi - start]
                filled[lo - h.start: hi - h.start] = True
            if extra is None:
                extra = {k[len("extra."):]: s[k].item() for k in s if k.startswith("extra.")}
        if not filled.all():
            missing = np.flatnonzero(~filled)[0] + h.start
            raise CheckpointError(f"the saved FC shards do not cover class {missing} (shard files missing?)")
        paddle.assign(paddle.to_tensor(w), output=h.weight)
        if not weights_only:
            paddle.assign(paddle.to_tensor(v), output=self.velocity)
            h.load_extra_state(extra or {})
