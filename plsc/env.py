"""Process settings that must be made before `import paddle`, applied on CPU runs only.

Paddle sets OMP_NUM_THREADS=1 on import when it is unset, which leaves all but one core idle on
CPU. On a CPU run plsc sets OMP / MKL threads to cores / local ranks (unless the user chose a
value) and, on AMD CPUs, asks MKL for its AVX2 code path (MKL_DEBUG_CPU_TYPE=5: ~3x faster on the
AMD machine plsc is developed on; MKL ignores the variable on Intel CPUs and plsc does not set it
there). After the device is known, `tune_allocator` keeps glibc from returning large freed blocks
to the OS (CPU runs only: on GPUs the large tensors live in device memory).

A GPU run (Global.device gpu, a CUDA build of Paddle and a visible GPU) keeps Paddle's and glibc's
defaults.
"""
import os

TRIM_THRESHOLD = 1 << 30  # bytes free at the heap top before glibc gives memory back


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


def cuda_paddle_installed():
    """A CUDA build of Paddle is installed (decided without importing it)."""
    from importlib import metadata

    for dist in ("paddlepaddle-gpu", "paddlepaddle_gpu"):
        try:
            metadata.distribution(dist)
            return True
        except metadata.PackageNotFoundError:
            pass
    return False


def gpu_visible():
    """An NVIDIA GPU is present and not hidden by CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or bool(os.path.isdir("/proc/driver/nvidia/gpus")
                                                 and os.listdir("/proc/driver/nvidia/gpus"))


def is_cpu_run(device="gpu"):
    """Will this process compute on the CPU? (Global.device cpu, or no CUDA Paddle, or no GPU.)"""
    return device == "cpu" or not (cuda_paddle_installed() and gpu_visible())


def cpu_vendor():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def setup_threads(device="gpu"):
    """Call before `import paddle`. device: the run's Global.device (a GPU run changes nothing)."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info logs; not a performance setting
    if not is_cpu_run(device):
        return False
    threads = max(1, (os.cpu_count() or 1) // local_world_size())
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, str(threads))
    if cpu_vendor() == "AuthenticAMD":
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return True


def tune_allocator():
    """Keep freed memory in the heap instead of returning it to the OS (glibc, CPU runs only).

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
