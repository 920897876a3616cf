"""Processes that tests start: find them, wait for them with a deadline, and never leave them behind.

The pytest process is made a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER) when the test
session starts, so every process a test starts stays below pytest in the process tree, even once its
own parent is gone (a launcher killed by a timeout, a rank whose DataLoader workers outlive it).
`descendants()` therefore sees all of them, and the autouse fixture in conftest.py kills and reaps
whatever a test leaves, then fails that test: one failure never cascades into the next test.
"""
import ctypes
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """Orphaned descendants are re-parented to this process instead of init (Linux >= 3.4)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _table():
    """{pid: (ppid, state, command line)} of every process, read from /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
        out[int(name)] = (int(rest[1]), rest[0], cmd or stat[stat.find("(") + 1:stat.rfind(")")])
    return out


def descendants(pid=None, zombies=False):
    """{pid: command line} of every process below `pid` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    table = _table()
    children = {}
    for p, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(p)
    found, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        ppid, state, cmd = table[p]
        if zombies or state != "Z":
            found[p] = cmd
        todo.extend(children.get(p, []))
    return found


def children(pid=None):
    """Live (not zombie) direct children of `pid`, as {pid: command line}."""
    pid = os.getpid() if pid is None else pid
    return {p: cmd for p, (ppid, state, cmd) in _table().items() if ppid == pid and state != "Z"}


def wait_until(condition, timeout, what, interval=0.1):
    """Poll `condition()` until it returns something truthy (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(interval)


def reap():
    """Collect the exit status of every finished child (orphans re-parented to us included)."""
    for p, (ppid, state, _) in _table().items():
        if ppid == os.getpid() and state == "Z":
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass


def kill_all(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def settle(before, grace):
    """Wait up to `grace` s for every descendant not in `before` to end; kill and reap what remains.

    Returns {pid: command line} of the processes that had to be killed (empty when all ended by themselves)."""
    def left():
        reap()
        return {p: c for p, c in descendants().items() if p not in before}

    deadline = time.monotonic() + grace
    remaining = left()
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = left()
    if remaining:
        kill_all(remaining)
        wait_until(lambda: not left(), 30, "killed processes to end")
    return remaining
