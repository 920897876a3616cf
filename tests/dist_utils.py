"""Run a command under `python -m paddle.distributed.launch` with N CPU ranks (gloo)."""
import glob
import os
import socket
import subprocess
import sys


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, nproc=2, log_dir=None, timeout=300, env=None, check=True, extra_launch_args=()):
    """Run `python -m paddle.distributed.launch --nproc_per_node=nproc <args...>`.

    `args` is the script (a path or a console-script name) followed by its arguments.
    Returns the CompletedProcess; with check=True a non-zero exit raises with every rank's log.
    """
    assert log_dir is not None, "give each launch its own log_dir (tmp_path)"
    cmd = [
        sys.executable, "-m", "paddle.distributed.launch",
        "--nproc_per_node", str(nproc), "--log_dir", str(log_dir),
        "--master", f"127.0.0.1:{free_port()}",
        *extra_launch_args, *[str(a) for a in args],
    ]
    full_env = dict(os.environ)
    full_env.pop("PADDLE_TRAINER_ENDPOINTS", None)
    full_env.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    full_env["OMP_NUM_THREADS"] = "1"
    if env:
        full_env.update(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}): {' '.join(cmd)}\n{rank_logs(log_dir)}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def rank_logs(log_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(str(log_dir), "workerlog.*"))):
        with open(path, errors="replace") as f:
            out.append(f"--- {os.path.basename(path)} ---\n{f.read()[-6000:]}")
    return "\n".join(out)
