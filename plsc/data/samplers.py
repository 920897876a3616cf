"""Batch samplers for paddle.io.DataLoader(batch_sampler=...).

DistributedBatchSampler splits one epoch over the ranks:
- order: np.random.default_rng([seed, epoch]).permutation(N) when shuffle, else 0..N-1;
- drop_last=False: like paddle's sampler, the order is padded by wrapping around to a multiple of
  world_size, so every rank gets ceil(N / W) samples (a few samples appear twice per epoch);
  the last batch of a rank may be short. drop_last=True: the tail that does not fill W equal
  shards is cut and a short last batch is dropped;
- rank r takes positions r, r + W, r + 2W, ... so every rank has the same number of batches;
- set_epoch(epoch, start_batch=k) resumes mid-epoch: iteration skips the epoch's first k batches.
len(sampler) is always the full number of batches of an epoch on one rank.
"""
import numpy as np

from plsc import distributed
from plsc.errors import ConfigError
from plsc.registry import SAMPLERS


def _world(rank, world_size):
    if rank is None or world_size is None:
        rank = distributed.rank() if rank is None else rank
        world_size = distributed.world_size() if world_size is None else world_size
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"sampler: rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


@SAMPLERS.register()
class DistributedBatchSampler:
    equal_batches_across_ranks = True  # every rank's k-th batch has the same size (the engine relies on it)

    def __init__(self, dataset, batch_size, shuffle=True, drop_last=False, seed=0, rank=None, world_size=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"sampler.batch_size must be a positive integer, got {batch_size!r}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.rank, self.world_size = _world(rank, world_size)
        self.epoch, self.start_batch = 0, 0
        n, w = len(dataset), self.world_size
        self.num_samples = n // w if self.drop_last else -(-n // w)
        if self.drop_last:
            self.num_batches = self.num_samples // batch_size
        else:
            self.num_batches = -(-self.num_samples // batch_size)

    def set_epoch(self, epoch, start_batch=0):
        if not 0 <= start_batch <= self.num_batches:
            raise ConfigError(f"sampler: start_batch {start_batch} outside [0, {self.num_batches}]")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def local_indices(self):
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        total = self.num_samples * self.world_size
        order = order[np.arange(total) % n] if n else order  # pad by wrapping / cut for drop_last
        return order[self.rank::self.world_size]

    def __iter__(self):
        local = self.local_indices()
        bs = self.batch_size
        for b in range(self.start_batch, self.num_batches):
            yield local[b * bs:(b + 1) * bs].tolist()

    def __len__(self):
        return self.num_batches


@SAMPLERS.register()
class BatchSampler(DistributedBatchSampler):
    """Single-process sampler (evaluation): every rank iterates the whole dataset; rank and
    world_size are accepted for a uniform builder signature and do not split the data."""

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, seed=0, rank=None, world_size=None):
        super().__init__(dataset, batch_size, shuffle, drop_last, seed, rank=0, world_size=1)
