"""CPU-only fast paths, all in this one place.

Every op of plsc has one body, written with Paddle's public ops: what the tests run on CPU is what a
GPU runs. Two exceptions pay for themselves on a whole CPU training run, and only they take a numpy /
cv2 body for tensors in CPU memory (zero-copy DLPack views, public APIs on both sides):

- PReLU (plsc.models.prelu): Paddle's CPU PReLU kernels take ~2x numpy's time per layer;
- the device end of the training transforms (plsc.data.device_transform): Paddle's CPU kernels
  for the uint8 -> float32 normalize / flip / transpose take ~100x cv2's time per batch.

Measured with the whole demo (`plsc-demo --quick` with these two bodies on vs off, 2 CPU ranks,
interleaved runs on a shared machine; docs/benchmarks.md): 1.29x images/s (medians 100.6 vs 78.0),
1.18x in the run's training seconds -- at the 1.25x bar by the first measure only. The FC's row gathers / scatters / updates (the former PLSC_NUMPY_ROUTE) cannot matter on a
48-class demo and did not pay on IResNet50 / 1M classes: they have one Paddle body (plsc.nn.rows).

Each fast path has one equivalence test against its Paddle body (tests/test_speed_settings.py);
the Paddle bodies are what GPUs run.
"""
import numpy as np


def host_view(t):
    """A numpy array sharing memory with the CPU tensor t, or None (not in CPU memory, or strided)."""
    if not t.place.is_cpu_place() or not t.is_contiguous():
        return None
    return np.from_dlpack(t.detach())
