import os
import sys

import pytest

# Must happen before paddle is imported anywhere in the test session.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plsc.env import setup_threads  # noqa: E402

import procs  # noqa: E402

setup_threads()

pytest_plugins = ["pytester"]  # tests/test_procs.py runs a small inner session to check the fixture below

# Seconds a test's processes get to end by themselves after the test; then they are killed and the test fails.
PROCESS_GRACE = float(os.environ.get("PLSC_TEST_PROCESS_GRACE", "20"))


def pytest_addoption(parser):
    parser.addoption("--repeat", type=int, default=1, metavar="N",
                     help="run every selected test N times (to hunt flaky tests: "
                          "python -m pytest tests/test_faults.py --repeat 5)")


def pytest_configure(config):
    procs.become_subreaper()


@pytest.fixture
def _repeat(request):
    return request.param


def pytest_generate_tests(metafunc):
    n = metafunc.config.getoption("repeat")
    if n > 1:
        metafunc.fixturenames.append("_repeat")
        metafunc.parametrize("_repeat", range(n), indirect=True, ids=lambda i: f"run{i + 1}")


@pytest.fixture(scope="session")
def smoke_checkpoint(tmp_path_factory):
    """The `latest` checkpoint of a 3-step plsc-train run of the smoke config (16 classes), made once for the
    session: tests/test_checkpoint.py and tests/test_finetune.py read it (copy it before changing it)."""
    from test_train import SMOKE, plsc

    out = tmp_path_factory.mktemp("smoke_checkpoint")
    plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={out}", "-o", "Global.max_train_step=3")
    return out / "IResNet18" / "latest"


@pytest.fixture(autouse=True)
def no_process_left():
    """Every process a test starts has ended when it ends: what is left gets PROCESS_GRACE seconds,
    then is killed and reaped (so the next test starts clean) and this test fails, naming it."""
    before = set(procs.descendants())
    yield
    left = procs.settle(before, PROCESS_GRACE)
    if left:
        pytest.fail(f"processes left running {PROCESS_GRACE} s after the test (killed): "
                    + "; ".join(f"{p} {cmd[:200]}" for p, cmd in sorted(left.items())), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    procs.settle(set(), 5)
