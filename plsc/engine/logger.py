"""Logging: rank 0 writes INFO to stdout and <run_dir>/<file>; other ranks only warnings."""
import logging
import os
import sys

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
