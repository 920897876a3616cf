"""FaceRandomDataset: deterministic synthetic faces whose identity is learnable.

Each class c owns a fixed random pattern P_c (a smooth low-frequency image). Sample i of class
c = i % num_classes is P_c plus per-sample noise and a random brightness shift, all derived from
(seed, index), so the same index always yields the same image on every rank and worker.
Used for smoke runs, tests and benchmarks; no files are read.
"""
import numpy as np

from plsc.errors import ConfigError
from plsc.registry import DATASETS


@DATASETS.register()
class FaceRandomDataset:
    def __init__(self, num_classes=100, num_samples=1000, image_size=112, noise=0.5, seed=0,
                 transform_ops=None):
        if num_classes < 1 or num_samples < 1:
            raise ConfigError(f"FaceRandomDataset: num_classes ({num_classes}) and num_samples "
                              f"({num_samples}) must be >= 1")
        if transform_ops:
            raise ConfigError("FaceRandomDataset: transform_ops are not supported (images are generated "
                              "already normalized); remove DataLoader.*.dataset.transform_ops")
        self.num_classes = int(num_classes)
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.noise = float(noise)
        self.seed = int(seed)
        self._patterns = {}

    def __len__(self):
        return self.num_samples

    def set_epoch(self, epoch):
        pass  # images depend on (seed, index) only

    def _pattern(self, c):
        p = self._patterns.get(c)
        if p is None:
            rng = np.random.default_rng([self.seed, 7919, c])
            coarse = rng.uniform(-1.0, 1.0, size=(3, 7, 7)).astype(np.float32)
            reps = -(-self.image_size // 7)
            p = np.kron(coarse, np.ones((1, reps, reps), np.float32))[:, : self.image_size, : self.image_size]
            self._patterns[c] = p = np.ascontiguousarray(p)
        return p

    def __getitem__(self, idx):
        if not 0 <= idx < self.num_samples:
            raise IndexError(idx)
        label = idx % self.num_classes
        rng = np.random.default_rng([self.seed, idx])
        img = self._pattern(label) * 0.7 + rng.normal(0.0, self.noise, size=self._pattern(label).shape)
        img += rng.uniform(-0.2, 0.2)
        return np.clip(img, -1.0, 1.0).astype(np.float32), np.int64(label)
