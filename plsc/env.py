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
    tune_allocator()


TRIM_THRESHOLD = 1 << 30  # bytes free at the heap top before glibc gives memory back


def tune_allocator():
    """Keep freed memory in the heap instead of returning it to the OS (glibc only).

    Paddle's CPU allocator hands each large tensor to malloc, which serves it with a fresh mmap;
    touching those pages costs ~75 ms per 200 MB, and the PartialFC step allocates several such
    tensors (sampled rows, their gradient, logits). Serving them from the heap, trimmed only when
    more than 1 GiB is free at its top, makes the reused memory free of page faults (a 200 MB
    weight-gradient buffer: 50k page faults per step -> none). Set PLSC_MALLOC_TUNING=0 to keep
    glibc's defaults (returns memory to the OS sooner).
    """
    if os.environ.get("PLSC_MALLOC_TUNING", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        # mallopt takes a C int: pass it explicitly (a larger Python int is silently truncated)
        return bool(libc.mallopt(ctypes.c_int(m_mmap_max), ctypes.c_int(0))) and \
            bool(libc.mallopt(ctypes.c_int(m_trim_threshold), ctypes.c_int(TRIM_THRESHOLD)))
    except (OSError, AttributeError):
        return False
