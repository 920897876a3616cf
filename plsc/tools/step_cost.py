"""What a block of code costs the host: device-to-host synchronisations and collectives.

Instrumentation for tests/test_step_cost.py, tests/test_equivalence.py and tools/bench_step.py; nothing in the
engine imports or hooks it (it patches paddle.Tensor's read methods and paddle.distributed's collectives for the
duration of a `with` block).

    with StepCost() as cost:
        engine.train_step(micro_batches)
    cost.syncs              # reads of device memory by the host (each stalls until the device drains)
    cost.sync_sites         # {"file:line (Tensor.item)": count}: where they happen
    cost.collectives        # [(name, bytes sent by this rank)] of every collective issued from Python
    cost.collectives_shaped # the same with the tensor's shape: [(name, bytes, shape)]

A host synchronisation is any call that hands a tensor's *values* to Python: `Tensor.item`, `numpy`,
`tolist`, `__bool__` / `__float__` / `__int__` / `__index__` (an `if t:` or `float(t)`), and
`__array__` (numpy reading a tensor). Reading a shape or dtype is not one. Nested calls (an `item`
implemented with `numpy`) count once. Collectives are counted at the `paddle.distributed` API
(all_reduce, all_gather, broadcast, ...); paddle.DataParallel's bucketed all-reduce runs inside
Paddle's C++ reducer and is accounted for separately (`dp_buckets`).
"""
import sys
import threading

import paddle
import paddle.distributed as dist

_READS = ("item", "numpy", "tolist", "__bool__", "__float__", "__int__", "__index__", "__array__")
_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce", "reduce_scatter",
                "alltoall", "scatter", "barrier", "send", "recv")


def _nbytes(t):
    if isinstance(t, paddle.Tensor):
        return int(t.size) * t.element_size()
    return 0


class StepCost:
    """Context manager counting host syncs and Python-level collectives in its block (this thread)."""

    def __init__(self):
        self.syncs, self.sync_sites, self.collectives, self.collectives_shaped = 0, {}, [], []
        self._saved, self._depth = [], threading.local()

    # ------------------------------------------------------------------ patching
    def _wrap_read(self, name, fn):
        cost = self

        def read(t, *args, **kwargs):
            depth = getattr(cost._depth, "n", 0)
            if depth == 0 and threading.current_thread() is cost._thread:
                cost.syncs += 1
                frame = sys._getframe(1)
                site = f"{frame.f_code.co_filename.rsplit('/', 2)[-2:][-1]}:{frame.f_lineno} (Tensor.{name})"
                cost.sync_sites[site] = cost.sync_sites.get(site, 0) + 1
            cost._depth.n = depth + 1
            try:
                return fn(t, *args, **kwargs)
            finally:
                cost._depth.n = depth

        return read

    def _wrap_collective(self, name, fn):
        cost = self

        def collective(*args, **kwargs):
            depth = getattr(cost._depth, "n", 0)
            if depth == 0:
                tensor = args[1] if name == "all_gather" and len(args) > 1 else (args[0] if args else None)
                cost.collectives.append((name, _nbytes(tensor)))
                shape = list(tensor.shape) if isinstance(tensor, paddle.Tensor) else []
                cost.collectives_shaped.append((name, _nbytes(tensor), shape))
            cost._depth.n = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                cost._depth.n = depth

        return collective

    def __enter__(self):
        self._thread = threading.current_thread()
        for name in _READS:
            fn = getattr(paddle.Tensor, name, None)
            if fn is not None:
                self._saved.append((paddle.Tensor, name, fn))
                setattr(paddle.Tensor, name, self._wrap_read(name, fn))
        for name in _COLLECTIVES:
            fn = getattr(dist, name, None)
            if fn is not None:
                self._saved.append((dist, name, fn))
                setattr(dist, name, self._wrap_collective(name, fn))
        return self

    def __exit__(self, *exc):
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved = []
        return False

    # ------------------------------------------------------------------ summaries
    def collective_summary(self):
        """{name: (count, bytes)} of the collectives issued from Python."""
        out = {}
        for name, nbytes in self.collectives:
            count, total = out.get(name, (0, 0))
            out[name] = (count + 1, total + nbytes)
        return out


def dp_buckets(params, comm_buffer_mb=25, last_comm_buffer_mb=1):
    """Sizes in bytes of the gradient all-reduces paddle.DataParallel issues per step for `params`.

    Paddle groups trainable parameters by dtype into buckets, in reverse order of registration (the
    order gradients become ready in backward): the first bucket up to `last_comm_buffer_size` MB,
    the others up to `comm_buffer_size` MB; each bucket is one fused all-reduce."""
    by_dtype = {}
    for p in reversed([p for p in params if not p.stop_gradient]):
        by_dtype.setdefault(str(p.dtype), []).append(p.size * p.element_size())
    buckets = []
    for sizes in by_dtype.values():
        limit, current = last_comm_buffer_mb << 20, 0
        for nbytes in sizes:
            if current and current + nbytes > limit:
                buckets.append(current)
                current, limit = 0, comm_buffer_mb << 20
            current += nbytes
        if current:
            buckets.append(current)
    return buckets
