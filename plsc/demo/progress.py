"""Run a command and show its progress on the terminal while it runs.

    run_with_progress(cmd, log_path, follow=<rank 0's train log>, label="train")

The command's own output goes to `log_path`. Training progress is read from `follow` (a log file
the command writes, e.g. the launcher's workerlog.0) as it grows: each plsc training log line
becomes a one-line progress bar (step / total steps, epoch, loss, images/s, ETA), redrawn in place
on a terminal and printed every ~10 % otherwise. Commands without a followed log print their own
plsc log lines as they come.
"""
import os
import re
import subprocess
import sys
import time

from plsc.errors import PlscError

STEP_RE = re.compile(r"epoch (\d+) step \d+/\d+ global_step (\d+) lr [0-9.eE+-]+ loss: ([0-9.eE+-]+|nan|inf) .*"
                     r"ips: ([0-9.]+) images/sec eta: ([0-9:]+)")
PLAN_RE = re.compile(r"(\d+) steps/epoch, (\d+) epochs")


def bar(done, total, width=24):
    filled = int(width * done / total) if total else 0
    return "#" * filled + "." * (width - filled)


class TrainProgress:
    def __init__(self, label, stream=sys.stdout):
        self.label, self.stream, self.total = label, stream, None
        self.tty = stream.isatty()
        self.printed, self.last = -1.0, None

    def feed(self, line):
        plan = PLAN_RE.search(line)
        if plan:
            self.total = int(plan.group(1)) * int(plan.group(2))
        m = STEP_RE.search(line)
        if not m:
            return
        epoch, step, loss, ips, eta = m.groups()
        step = int(step)
        total = self.total or step
        text = (f"[demo] {self.label} [{bar(step, total)}] step {step}/{total}  epoch {int(epoch) + 1}  "
                f"loss {float(loss):.3f}  {float(ips):.0f} img/s  ETA {eta}")
        self.last = text
        frac = step / total
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
            self.stream.flush()
        elif frac - self.printed >= 0.1 or step == total:
            self.printed = frac
            print(text, file=self.stream, flush=True)

    def finish(self, seconds):
        if self.tty and self.last:
            self.stream.write("\n")
        print(f"[demo] {self.label} done in {seconds:.0f} s", file=self.stream, flush=True)


def run_with_progress(cmd, log_path, follow=None, label="run", env=None):
    """Run cmd to completion (stdout + stderr into log_path); raise PlscError with its output's tail if it fails."""
    print("[demo] $ " + " ".join(cmd), flush=True)
    t0 = time.time()
    progress = TrainProgress(label) if follow else None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        source = follow or log_path
        offset, pending = 0, ""
        while True:
            done = proc.poll() is not None
            if os.path.exists(source):
                with open(source, errors="replace") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset = f.tell()
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    if progress is not None:
                        progress.feed(line)
                    elif " INFO " in line or " WARNING " in line:
                        print("  | " + line.split(" INFO ", 1)[-1], flush=True)
            if done:
                break
            time.sleep(0.5)
    if progress is not None:
        progress.finish(time.time() - t0)
    if proc.returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-4000:]
        raise PlscError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    with open(log_path, errors="replace") as f:
        return f.read()
