"""A dead or stuck rank must end the job, not hang it forever inside a collective.

Each rank records a heartbeat (the step it last entered or finished) in <run_dir>/.heartbeat/rank<r>. The
engine arms the watchdog around every phase that contains collectives; if a phase lasts longer
than DistributedStrategy.collective_timeout seconds, the watchdog names the ranks whose heartbeat
is behind, logs it, and exits the process with code 3, so the launcher exits non-zero.
"""
import logging
import os
import sys
import threading
import time

EXIT_CODE = 3


class Watchdog:
    def __init__(self, run_dir, rank, world_size, timeout):
        self.rank, self.world_size, self.timeout = rank, world_size, float(timeout)
        self.enabled = world_size > 1 and self.timeout > 0
        self.dir = os.path.join(run_dir, ".heartbeat")
        self._lock = threading.Lock()
        self._armed_at, self._what = None, ""
        if self.enabled:
            os.makedirs(self.dir, exist_ok=True)
            self.beat(-1)
            threading.Thread(target=self._watch, name="plsc-watchdog", daemon=True).start()

    def beat(self, step):
        if not self.enabled:
            return
        tmp = os.path.join(self.dir, f".rank{self.rank}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{step} {time.time():.3f}")
        os.replace(tmp, os.path.join(self.dir, f"rank{self.rank}"))

    def arm(self, what, step=None):
        if step is not None:
            self.beat(step)  # "entered step k": a rank that never gets there is named as stalled
        with self._lock:
            self._armed_at, self._what = time.monotonic(), what

    def disarm(self):
        with self._lock:
            self._armed_at = None

    def __call__(self, what, step=None):
        """Context manager: `with watchdog("train step 12", step=12): ...`."""
        return _Armed(self, what, step)

    def heartbeats(self):
        out = {}
        for r in range(self.world_size):
            try:
                with open(os.path.join(self.dir, f"rank{r}")) as f:
                    step, stamp = f.read().split()
                out[r] = (int(step), float(stamp))
            except (OSError, ValueError):
                out[r] = None
        return out

    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self._lock:
                armed, what = self._armed_at, self._what
            if armed is None or time.monotonic() - armed < self.timeout:
                continue
            beats = self.heartbeats()
            mine = beats.get(self.rank)
            behind = [r for r, b in beats.items() if b is None or (mine is not None and b[0] < mine[0])]
            now = time.time()
            detail = ", ".join(f"rank {r}: " + ("no heartbeat" if b is None else f"step {b[0]}, {now - b[1]:.0f}s ago")
                               for r, b in sorted(beats.items()))
            msg = (f"rank {self.rank} waited more than {self.timeout:g}s in {what} for the other ranks; "
                   f"{'rank(s) ' + ', '.join(map(str, behind)) + ' stopped responding' if behind else 'no rank progressed'}"
                   f" ({detail}). Ending the job (DistributedStrategy.collective_timeout).")
            logging.getLogger("plsc").error(msg)
            print(f"plsc: error: {msg}", file=sys.stderr, flush=True)
            os._exit(EXIT_CODE)


class _Armed:
    def __init__(self, wd, what, step):
        self.wd, self.what, self.step = wd, what, step

    def __enter__(self):
        if self.wd.enabled:
            self.wd.arm(self.what, self.step)

    def __exit__(self, *exc):
        if self.wd.enabled:
            self.wd.disarm()
        return False
