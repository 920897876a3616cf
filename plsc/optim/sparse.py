"""Sparse optimizers of the PartialFC weight: each step updates only the rows the step used.

    opt = head.set_optimizer(SPARSE_OPTIMIZERS.build("Momentum", head.weight, head.store, momentum=0.9))
    head.step(lr)        # opt.step(index, grad, lr, rows): w[R], v[R] updated; every other row untouched

For the rows R of a step (all rows when every row is sampled), with g their gradient (summed over the
micro-batches, unscaled, clipped):

    Momentum   g += weight_decay * w[R];  v[R] = momentum * v[R] + g
               w[R] -= lr * v[R]                      (use_nesterov: w[R] -= lr * (g + momentum * v[R]))
    AdamW      m[R], v[R] the moments of R ("lazy" Adam), bias correction with the step count;
               w[R] *= 1 - lr * weight_decay (decoupled), then the Adam step

which are paddle.optimizer.Momentum's and AdamW's rules restricted to R. Rows outside R keep
their weight and optimizer state bit for bit: a row's momentum changes only when the row is
sampled (arcface_torch's v2 instead decays every row's momentum each step). The weight and the
slots are the only [rows, D] tensors, all in the head's storage dtype (plsc.nn.storage): per class
8 x D bytes with Momentum in float32, 4 x D in 16 bits (12 / 6 with AdamW). Rows are read as
float32, updated in float32 and written back through the storage (16 bits: stochastic rounding).

every_row (Model.pfc_config.update_rows all; PLSC's dense update, its sparse_update false): the rule is applied to every
row each step, with a zero gradient outside R (momentum decays, weight decay shrinks every row):
one pass over the shard per step, still without a dense gradient tensor.

An optimizer only updates rows: the head (plsc.nn.partial_fc) saves and loads its slots.
"""
import paddle

from plsc.errors import ConfigError
from plsc.nn.storage import RowStorage
from plsc.registry import SPARSE_OPTIMIZERS

_CHUNK = 1 << 12  # rows updated at a time: the chunk's rows, slots and gradient stay in cache


class SparseRowOptimizer:
    slot_names = ()

    def __init__(self, param, store=None, weight_decay=0.0, every_row=False):
        if not weight_decay >= 0:
            raise ConfigError(f"Optimizer.weight_decay must be >= 0, got {weight_decay}")
        self.param, self.weight_decay, self.every_row = param, float(weight_decay), bool(every_row)
        self.store = store if store is not None else RowStorage()
        self.slots = {name: paddle.zeros_like(param) for name in self.slot_names}
        self.num_steps = 0

    @paddle.no_grad()
    def step(self, index, grad, lr, rows=None):
        """Apply `grad` ([K, D] float32) to the rows `index` (int64 tensor, or None for every row).

        rows: this step's float32 copy of param[index] (PartialFC's plan.rows): updated in place and
        written back, so the rows are not gathered a second time."""
        self.num_steps += 1
        before = None
        if index is not None and self.every_row:  # R's rows as they are now, then every row
            before = (rows if rows is not None else self.store.get(self.param, index),
                      {n: self.store.get(t, index) for n, t in self.slots.items()})
            self._update_every_row_without_gradient(lr)
        for a in range(0, grad.shape[0], _CHUNK):  # cache-sized chunks: the passes of the update stay in cache
            b = min(grad.shape[0], a + _CHUNK)
            idx = None if index is None else index[a:b]
            if before is not None:
                w_rows, slot_rows = before[0][a:b], {n: t[a:b] for n, t in before[1].items()}
            else:
                w_rows = rows[a:b] if rows is not None and index is not None else self.store.get(self.param, idx, a, b)
                slot_rows = {n: self.store.get(t, idx, a, b) for n, t in self.slots.items()}
            self._write(idx, a, *self._update(w_rows, slot_rows, grad[a:b], lr))

    def _update_every_row_without_gradient(self, lr):
        for a in range(0, self.param.shape[0], _CHUNK):
            b = min(self.param.shape[0], a + _CHUNK)
            w_rows = self.store.get(self.param, None, a, b)
            slot_rows = {n: self.store.get(t, None, a, b) for n, t in self.slots.items()}
            self._write(None, a, *self._update(w_rows, slot_rows, paddle.zeros_like(w_rows), lr), salt=1)

    def _write(self, idx, start, new_w, new_slots, salt=0):
        """Rows back into storage (16 bits: stochastically rounded). salt: distinct rounding draws per step,
        per pass and per array."""
        base = (self.num_steps * 2 + salt) * 8
        for i, (n, t) in enumerate(self.slots.items()):
            self.store.put(t, idx, new_slots[n], start, salt=base + 1 + i)
        self.store.put(self.param, idx, new_w, start, salt=base)

    def _update(self, w_rows, slot_rows, g, lr):
        """-> (new weight rows, {slot: new rows}), float32; may update the given tensors in place."""
        raise NotImplementedError

    def state_dict(self):
        return {"slots": dict(self.slots), "num_steps": self.num_steps}

    def set_state_dict(self, state):
        for name, value in state["slots"].items():
            paddle.assign(value, output=self.slots[name])
        self.num_steps = int(state["num_steps"])


@SPARSE_OPTIMIZERS.register("Momentum")
class SparseMomentum(SparseRowOptimizer):
    """paddle.optimizer.Momentum (L2 weight decay added to the gradient) on the rows of a step."""

    slot_names = ("momentum",)

    def __init__(self, param, store=None, momentum=0.9, weight_decay=0.0, use_nesterov=False, every_row=False):
        super().__init__(param, store, weight_decay, every_row)
        self.momentum, self.use_nesterov = float(momentum), bool(use_nesterov)

    def _update(self, w_rows, slot_rows, g, lr):
        v = slot_rows["momentum"]
        if self.weight_decay:
            g = g + self.weight_decay * w_rows
        v = v.scale_(self.momentum).add_(g)
        delta = g + self.momentum * v if self.use_nesterov else v
        return w_rows.subtract_(lr * delta), {"momentum": v}


@SPARSE_OPTIMIZERS.register("AdamW")
class SparseAdamW(SparseRowOptimizer):
    """paddle.optimizer.AdamW (decoupled weight decay) on the rows of a step, lazily."""

    slot_names = ("moment1", "moment2")

    def __init__(self, param, store=None, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0, every_row=False):
        super().__init__(param, store, weight_decay, every_row)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)

    def _update(self, w_rows, slot_rows, g, lr):
        b1, b2, t = self.beta1, self.beta2, self.num_steps
        m = slot_rows["moment1"].scale_(b1).add_(g * (1 - b1))
        v = slot_rows["moment2"].scale_(b2).add_(g * g * (1 - b2))
        if self.weight_decay:
            w_rows = w_rows.scale_(1 - lr * self.weight_decay)
        step = lr * ((1 - b2 ** t) ** 0.5) / (1 - b1 ** t)
        w_rows = w_rows.subtract_(m * step / (paddle.sqrt(v) + self.epsilon * ((1 - b2 ** t) ** 0.5)))
        return w_rows, {"moment1": m, "moment2": v}
