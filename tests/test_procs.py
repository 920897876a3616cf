"""The test session's own guard: a process a test leaves behind is killed and fails that test, not the next."""
import os
import shutil

import procs

HERE = os.path.dirname(os.path.abspath(__file__))

LEAKY = """
import subprocess


def test_leaves_a_child_and_an_orphan():
    # a direct child, and an orphan whose parent (sh) exits at once: re-parented to the subreaper
    subprocess.Popen(["sleep", "{marker}"])
    subprocess.run(["sh", "-c", "sleep {marker} &"], check=True)


def test_after_it_starts_clean():
    import procs
    assert not procs.descendants()
"""


def _alive(marker):
    return [p for p in os.listdir("/proc") if p.isdigit() and _cmd(p) == f"sleep {marker}"]


def _cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_a_process_left_by_a_test_is_killed_and_fails_that_test_only(pytester, monkeypatch):
    marker = f"{600 + os.getpid() % 1000}.25"  # a sleep length no other process uses
    shutil.copy(os.path.join(HERE, "conftest.py"), pytester.path / "conftest.py")
    shutil.copy(os.path.join(HERE, "procs.py"), pytester.path / "procs.py")
    pytester.makepyfile(test_leaky=LEAKY.format(marker=marker))
    monkeypatch.setenv("PLSC_TEST_PROCESS_GRACE", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    text = result.stdout.str()
    assert "processes left running 1.0 s after the test (killed)" in text and f"sleep {marker}" in text, text
    assert text.count(f"sleep {marker}") >= 2, "both the child and the orphan are named"
    procs.wait_until(lambda: not _alive(marker), 30, "the leaked sleeps to be gone")
