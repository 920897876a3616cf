"""Process environment that must be set before `import paddle`.

Paddle sets OMP_NUM_THREADS=1 on import when it is unset, which leaves all but one core idle on
CPU. We set it to cores / local ranks unless the user chose a value, and on AMD CPUs ask MKL for
its AVX2 code path (MKL_DEBUG_CPU_TYPE=5, ~3x faster here) unless the user set that too.
"""
import os


def local_world_size():
    for key in ("PADDLE_LOCAL_SIZE", "PADDLE_TRAINERS_NUM_LOCAL", "LOCAL_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return max(1, int(os.environ[key]))
    endpoints = os.environ.get("PADDLE_TRAINER_ENDPOINTS")
    nnodes = os.environ.get("PADDLE_NNODES", "1")
    if endpoints:
        total = len(endpoints.split(","))
        nodes = int(nnodes) if nnodes.isdigit() else 1
        return max(1, total // max(1, nodes))
    return 1


def setup_threads():
    cores = os.cpu_count() or 1
    threads = max(1, cores // local_world_size())
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, str(threads))
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    os.environ.setdefault("GLOG_minloglevel", "2")
