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

SparseAdamW is the same idea for AdamW configs (FaceViT): the two moments of a row are updated
only when the row is sampled ("lazy" Adam), bias correction uses the global step count, and
decoupled weight decay applies to the sampled rows: 12 bytes x D per class.
"""
import numpy as np
import paddle

from plsc.errors import CheckpointError
from plsc.nn.rows import host_view, put_rows, take_rows

_CHUNK = 1 << 12  # rows updated at a time: the chunk's rows, slots and gradient stay in cache


class _SparseRows:
    """Shared machinery: gradient collection over micro-batches, row-wise update, shard state."""

    slot_names = ()

    def __init__(self, head, multi_precision=False):
        self.head = head
        self.multi_precision = multi_precision  # the FC weight is always fp32 (it is its own master copy)
        self.slots = {name: paddle.zeros_like(head.weight) for name in self.slot_names}
        self.num_steps = 0
        self._parts = []      # (index or None, grad) per accumulated micro-batch
        self._merged = None
        self._rows_copy = None  # the forward's copy of the chosen rows (CPU, one micro-batch): no re-gather

    # ------------------------------------------------------------------ gradients
    def accumulate(self):
        """Collect the gradient of the rows the last forward used (call after each backward)."""
        sampled = self.head.sampled
        if sampled is not None and sampled.grad is not None:
            self._parts.append((self.head.index, sampled.grad))
            self._rows_copy = sampled if self.head.index is not None and host_view(sampled) is not None else None
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
        self._parts, self._merged, self._rows_copy = [], None, None

    # ------------------------------------------------------------------ update
    @paddle.no_grad()
    def step(self, lr):
        merged = self._merge()
        if merged is None:
            return
        self.num_steps += 1
        index, grad = merged
        w = self.head.weight
        rows = grad.shape[0]
        copy = self._rows_copy if len(self._parts) == 1 else None
        for a in range(0, rows, _CHUNK):  # cache-sized chunks: the passes of the update stay in cache
            b = min(rows, a + _CHUNK)
            if index is None:  # all rows: update views of the shard in place
                w_rows, views = w[a:b], {n: t[a:b] for n, t in self.slots.items()}
                slot_rows = dict(views)
                new_w = self._update(w_rows, slot_rows, grad[a:b], lr)
                if new_w is not w_rows:  # written back only when the update was not in place
                    w[a:b] = new_w
                for n, t in self.slots.items():
                    if slot_rows[n] is not views[n]:
                        t[a:b] = slot_rows[n]
                continue
            idx = index[a:b]
            # the weight has not changed since the forward copied these rows: update that copy
            w_rows = copy[a:b] if copy is not None else take_rows(w, idx)
            slot_rows = {n: take_rows(t, idx) for n, t in self.slots.items()}
            w_rows = self._update(w_rows, slot_rows, grad[a:b], lr)
            for n, t in self.slots.items():
                put_rows(t, idx, slot_rows[n])
            put_rows(w, idx, w_rows)

    def _update(self, w_rows, slot_rows, g, lr):
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def shard_state(self):
        h = self.head
        arrays = {"weight": h.weight.numpy(), "class_range": np.array([h.start, h.end, h.num_classes], dtype=np.int64),
                  "replicated": np.array(not h.model_parallel), "optimizer_steps": np.array(self.num_steps)}
        arrays.update({name: t.numpy() for name, t in self.slots.items()})
        for k, val in h.extra_state().items():
            arrays[f"extra.{k}"] = np.array(val)
        return arrays

    def load_shards(self, shards, weights_only=False):
        """Fill this rank's rows from saved shards (an iterable of shard_state() dicts, in rank order).

        Works across world sizes: each saved shard contributes the rows that overlap this rank's
        range, so a 2-rank checkpoint resumes on 1 or 4 ranks. weights_only: keep fresh optimizer state."""
        h = self.head
        w = h.weight.numpy()
        slots = {name: t.numpy() for name, t in self.slots.items()}
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
                    for name, arr in slots.items():
                        if name not in s:
                            raise CheckpointError(f"FC shard {i} has no '{name}' state (saved with another "
                                                  f"optimizer?); use Global.pretrained_model to start it fresh")
                        arr[lo - h.start: hi - h.start] = s[name][lo - start: hi - start]
                filled[lo - h.start: hi - h.start] = True
            if extra is None:
                extra = {k[len("extra."):]: s[k].item() for k in s if k.startswith("extra.")}
                steps = s["optimizer_steps"].item() if "optimizer_steps" in s else 0
        if not filled.all():
            missing = np.flatnonzero(~filled)[0] + h.start
            raise CheckpointError(f"the saved FC shards do not cover class {missing} (shard files missing?)")
        paddle.assign(paddle.to_tensor(w), output=h.weight)
        if not weights_only:
            for name, arr in slots.items():
                paddle.assign(paddle.to_tensor(arr), output=self.slots[name])
            self.num_steps = steps
            h.load_extra_state(extra or {})


class SparseMomentum(_SparseRows):
    """paddle.optimizer.Momentum (L2 weight decay added to the gradient) on the sampled rows."""

    slot_names = ("momentum",)

    def __init__(self, head, momentum=0.9, weight_decay=5e-4, multi_precision=False):
        super().__init__(head, multi_precision)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    @property
    def velocity(self):
        return self.slots["momentum"]

    def _update(self, w_rows, slot_rows, g, lr):
        w_np, m_np, g_np = host_view(w_rows), host_view(slot_rows["momentum"]), host_view(g)
        if w_np is not None and m_np is not None and g_np is not None:  # CPU: numpy on the same memory
            if self.weight_decay:
                step = np.multiply(w_np, np.float32(self.weight_decay))
                step += g_np
            else:
                step = g_np.copy()
            m_np *= np.float32(self.momentum)
            m_np += step
            np.multiply(m_np, np.float32(lr), out=step)
            w_np -= step
            return w_rows
        if self.weight_decay:
            g = g + self.weight_decay * w_rows
        slot_rows["momentum"] = slot_rows["momentum"].scale_(self.momentum).add_(g)
        return w_rows.subtract_(lr * slot_rows["momentum"])


class SparseAdamW(_SparseRows):
    """paddle.optimizer.AdamW (decoupled weight decay) on the sampled rows, lazily."""

    slot_names = ("moment1", "moment2")

    def __init__(self, head, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.01, multi_precision=False):
        super().__init__(head, multi_precision)
        self.beta1, self.beta2, self.epsilon, self.weight_decay = float(beta1), float(beta2), float(epsilon), \
            float(weight_decay)

    def _update(self, w_rows, slot_rows, g, lr):
        b1, b2, t = self.beta1, self.beta2, self.num_steps
        m = slot_rows["moment1"].scale_(b1).add_(g * (1 - b1))
        v = slot_rows["moment2"].scale_(b2).add_(g * g * (1 - b2))
        slot_rows["moment1"], slot_rows["moment2"] = m, v
        if self.weight_decay:
            w_rows = w_rows.scale_(1 - lr * self.weight_decay)
        step = lr * ((1 - b2 ** t) ** 0.5) / (1 - b1 ** t)
        return w_rows.subtract_(m * step / (paddle.sqrt(v) + self.epsilon * ((1 - b2 ** t) ** 0.5)))


def build_sparse_optimizer(optimizer_cfg, head, multi_precision=False):
    """The FC shard's optimizer matching the backbone's: Momentum -> SparseMomentum, AdamW -> SparseAdamW."""
    o = optimizer_cfg
    if o["name"] == "AdamW":
        return SparseAdamW(head, beta1=o.get("beta1", 0.9), beta2=o.get("beta2", 0.999),
                           epsilon=o.get("epsilon", 1e-8), weight_decay=o.get("weight_decay", 0.01),
                           multi_precision=multi_precision)
    return SparseMomentum(head, momentum=o.get("momentum", 0.9), weight_decay=o.get("weight_decay", 5e-4),
                          multi_precision=multi_precision)
