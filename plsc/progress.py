"""Progress lines for long commands (packing a .rec, embedding eval sets and IJB).

    p = Progress(total=2_000_000, what="images", label="packed", log=print)
    p(done)        # prints about every 5 % of the work and at least every 30 s: count, rate and ETA
"""
import time


def fmt_seconds(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total, what="images", label="done", log=print, every_frac=0.05, every_s=30.0, note=""):
        self.total, self.what, self.label, self.log, self.note = total, what, label, log, note
        self.every_frac, self.every_s = every_frac, every_s
        self.t0 = self.last_t = time.time()
        self.next_frac = every_frac

    def __call__(self, done, total=None):
        total = total or self.total
        now = time.time()
        frac = done / total if total else 1.0
        if done < total and frac < self.next_frac and now - self.last_t < self.every_s:
            return
        self.next_frac, self.last_t = frac + self.every_frac, now
        rate = done / max(now - self.t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        self.log(f"{self.label} {done}/{total} {self.what}{self.note} ({100 * frac:.0f}%), {rate:.0f} {self.what}/s, "
                 f"elapsed {fmt_seconds(now - self.t0)}, ETA {fmt_seconds(eta)}")
