"""Logging: rank 0 writes INFO to stdout and <run_dir>/<file>; other ranks only warnings; VisualDL scalars;
the step timer and ETA of the Trainer's log line."""
import logging
import os
import sys
import time

_FMT = "[%(asctime)s] %(levelname)s %(message)s"


def setup_logger(run_dir, rank, filename="train.log"):
    log = logging.getLogger("plsc")
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    if rank == 0:
        log.setLevel(logging.INFO)
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(logging.Formatter(_FMT, "%Y-%m-%d %H:%M:%S"))
        log.addHandler(out)
        if run_dir:
            fh = logging.FileHandler(os.path.join(run_dir, filename))
            fh.setFormatter(logging.Formatter(_FMT, "%Y-%m-%d %H:%M:%S"))
            log.addHandler(fh)
    else:
        log.setLevel(logging.WARNING)
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter(f"[rank {rank}] " + _FMT, "%Y-%m-%d %H:%M:%S"))
        log.addHandler(err)
    return log


class ScalarWriter:
    """VisualDL scalars on rank 0 (a no-op elsewhere or when disabled)."""

    def __init__(self, run_dir, enabled):
        self._writer = None
        if enabled:
            from visualdl import LogWriter

            self._writer = LogWriter(logdir=os.path.join(run_dir, "vdl"))

    def add(self, tag, value, step):
        if self._writer is not None:
            self._writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self):
        if self._writer is not None:
            self._writer.close()


class StepTimer:
    """Average seconds waiting for data (reader_cost) and per step (batch_cost) since the last reset."""

    def __init__(self):
        self.reset()
        self._t = time.perf_counter()

    def reset(self):
        self.reader, self.batch, self.n = 0.0, 0.0, 0

    def data_ready(self):
        self.reader += time.perf_counter() - self._t

    def step_done(self):
        now = time.perf_counter()
        self.batch += now - self._t
        self.n += 1
        self._t = now

    def averages(self):
        return (self.reader / max(1, self.n), self.batch / max(1, self.n))


def format_eta(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
