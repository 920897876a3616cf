"""Training batches from a dataset and a batch sampler, in this process or in worker processes.

    loader = build_loader(dataset, batch_sampler, num_workers=8, use_shared_memory=True)
    for images, labels[, flips] in loader: ...        # paddle Tensors on the current device

plsc has its own loader (not paddle.io.DataLoader) for what a training run must be able to rely on:
- an error inside data loading (a missing, unreadable or undecodable image, a corrupt record) ends
  the iteration with that error, message intact, in the main process, with 0 or N workers. (Paddle's
  loader leaves the main loop waiting forever when its 0-worker reading thread fails; with workers it
  turns the error into a SystemError of its queue, prints the worker's traceback, and can hang the
  interpreter's exit while shutting its workers down.)
- workers die with the process that started them, also when it is killed with SIGKILL (Linux
  PR_SET_PDEATHSIG, set first thing in each worker), and a worker that dies is reported, not waited for.

0 workers: one prefetch thread reads ahead (PREFETCH batches); its errors are raised by the iterator.
N workers: forked processes (the dataset is inherited, not pickled); batch k goes to worker k % N,
PREFETCH batches in flight per worker, results re-ordered. With use_shared_memory a worker writes its
batch into a memory-backed file (/dev/shm) that the main process maps, copies into tensors and
removes; otherwise batches travel pickled through the pipe. Workers must not use paddle (datasets here use
numpy / cv2 only).
"""
import atexit
import ctypes
import glob
import mmap
import multiprocessing as mp
import os
import queue
import signal
import tempfile
import threading
import traceback
import weakref
from multiprocessing import connection

import cv2
import numpy as np
import paddle

import plsc.errors as plsc_errors
from plsc.errors import DataError, PlscError

PREFETCH = 2          # batches read ahead: by the thread (0 workers) or per worker
STOP_SECONDS = 10.0  # how long closing waits for a reader thread's current item
POLL_SECONDS = 1.0    # how often a waiting main process checks that its workers are alive


def build_loader(dataset, batch_sampler, num_workers=0, use_shared_memory=True):
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"DataLoader.Train.loader.num_workers must be an integer >= 0, got {num_workers!r}")
    if num_workers == 0:
        return InProcessLoader(dataset, batch_sampler)
    return WorkerLoader(dataset, batch_sampler, num_workers, bool(use_shared_memory))


def collate(items):
    """[(image, label[, flip]), ...] -> list of stacked numpy arrays, one per field."""
    return [np.stack([item[k] for item in items]) for k in range(len(items[0]))]


def _tensors(arrays):
    return [paddle.to_tensor(a) for a in arrays]


def _describe(exc):
    """(error class name, message, is a plsc user error) for sending an exception to the main process."""
    if isinstance(exc, PlscError):
        return type(exc).__name__, str(exc), True
    return type(exc).__name__, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), False


def _rebuild(kind, message, is_user, where):
    if is_user:
        cls = getattr(plsc_errors, kind, None)
        return (cls if isinstance(cls, type) and issubclass(cls, PlscError) else DataError)(message)
    return RuntimeError(f"{where} failed with {kind}:\n{message}")


# ---------------------------------------------------------------- 0 workers
class InProcessLoader:
    def __init__(self, dataset, batch_sampler):
        self.dataset, self.batch_sampler = dataset, batch_sampler

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        return _ThreadIterator(self.dataset, iter(self.batch_sampler))


class _ThreadIterator:
    """Batches read ahead by one thread. The thread holds no reference to the iterator: dropping the
    iterator (a run that stops mid-epoch) stops the thread after the item it is reading, and at exit
    every live reader is stopped and joined before the interpreter shuts down (a daemon thread still
    inside a C++ decoder when Python finalizes aborts the process: "terminate called without an
    active exception")."""
    _END = object()

    def __init__(self, dataset, batches):
        self._queue, self._stop = queue.Queue(maxsize=PREFETCH), threading.Event()
        self._thread = threading.Thread(target=_read_ahead, args=(dataset, batches, self._queue, self._stop),
                                        name="plsc-loader", daemon=True)
        _READERS[self._thread] = self._stop
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        return _tensors(item)

    def close(self):
        """Stop reading ahead and wait for the reader thread to finish its current item."""
        self._stop.set()
        self._thread.join(timeout=STOP_SECONDS)

    def __del__(self):
        self._stop.set()


_END = _ThreadIterator._END
_READERS = {}  # live reader thread -> its stop event


def _read_ahead(dataset, batches, out, stop):
    try:
        for indices in batches:
            items = []
            for i in indices:
                if stop.is_set():
                    return
                items.append(dataset[i])
            _put(out, stop, collate(items))
        _put(out, stop, _END)
    except BaseException as e:  # noqa: B036  (handed to the consumer and raised there)
        _put(out, stop, e)
    finally:
        _READERS.pop(threading.current_thread(), None)


def _put(out, stop, item):
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


@atexit.register
def _stop_readers():
    readers = list(_READERS.items())
    for _, stop in readers:
        stop.set()
    for thread, _ in readers:
        thread.join(timeout=STOP_SECONDS)


# ---------------------------------------------------------------- N workers
def _die_with_parent(parent_pid):
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _to_shared(arrays, prefix):
    """Write arrays into one new memory-backed file -> (path, [(shape, dtype, offset)])."""
    sizes = [a.nbytes for a in arrays]
    fd, path = tempfile.mkstemp(prefix=prefix, dir=SHM_DIR)
    try:
        os.ftruncate(fd, max(1, sum(sizes)))
        with mmap.mmap(fd, max(1, sum(sizes))) as buf:
            layout, offset = [], 0
            for a, n in zip(arrays, sizes):
                np.ndarray(a.shape, a.dtype, buffer=buf, offset=offset)[...] = a
                layout.append((a.shape, a.dtype.str, offset))
                offset += n
    finally:
        os.close(fd)
    return path, layout


def _from_shared(path, layout):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as buf:
            return _tensors([np.ndarray(shape, np.dtype(dt), buffer=buf, offset=off) for shape, dt, off in layout])
    finally:
        os.close(fd)


def _worker_main(dataset, tasks, results, parent_pid, use_shared_memory, prefix):
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    while True:
        task = tasks.recv()
        if task is None:
            return
        k, indices = task
        try:
            arrays = collate([dataset[i] for i in indices])
            results.send((k, "shm", _to_shared(arrays, prefix)) if use_shared_memory else (k, "arrays", arrays))
        except Exception as e:  # noqa: BLE001  (sent to the main process, which raises it at batch k)
            results.send((k, "error", _describe(e)))


class WorkerLoader:
    def __init__(self, dataset, batch_sampler, num_workers, use_shared_memory):
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.num_workers, self.use_shared_memory = num_workers, use_shared_memory

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        return _WorkerIterator(self)


def _shutdown(procs, task_conns, prefix):
    for conn in task_conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=2.0)
    for path in glob.glob(prefix + "*"):  # batches written but never read (an error, an early stop)
        try:
            os.unlink(path)
        except OSError:
            pass


class _WorkerIterator:
    def __init__(self, loader):
        # cv2 single-threaded before forking: a child that touches cv2's thread pool inherited from a parent
        # that used it deadlocks (its per-image work on 112x112 faces gains nothing from threads anyway)
        cv2.setNumThreads(1)
        ctx = mp.get_context("fork")
        self._batches = enumerate(iter(loader.batch_sampler))
        prefix = f"plsc-batch-{os.getpid()}-{id(self):x}-"
        self._procs, self._tasks, self._results = [], [], []
        for _ in range(loader.num_workers):
            task_r, task_w = ctx.Pipe(duplex=False)
            res_r, res_w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_main, args=(loader.dataset, task_r, res_w, os.getpid(),
                                                       loader.use_shared_memory, prefix), daemon=True)
            p.start()
            task_r.close()
            res_w.close()
            self._procs.append(p)
            self._tasks.append(task_w)
            self._results.append(res_r)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._tasks, os.path.join(SHM_DIR, prefix))
        self._sent = self._next = 0
        self._ready, self._exhausted = {}, False
        for _ in range(PREFETCH * loader.num_workers):
            self._send_one()

    def _send_one(self):
        if self._exhausted:
            return
        try:
            k, indices = next(self._batches)
        except StopIteration:
            self._exhausted = True
            return
        try:
            self._tasks[k % len(self._procs)].send((k, list(indices)))
        except OSError:  # the worker is gone: _receive reports how it died
            pass
        self._sent += 1

    def __iter__(self):
        return self

    def __next__(self):
        if self._next >= self._sent:
            self.close()
            raise StopIteration
        while self._next not in self._ready:
            self._receive()
        kind, payload = self._ready.pop(self._next)
        self._next += 1
        self._send_one()
        if kind == "error":
            self.close()
            raise _rebuild(*payload, where=f"DataLoader worker (batch {self._next - 1})") from None
        return _from_shared(*payload) if kind == "shm" else _tensors(payload)

    def _receive(self):
        worker = self._next % len(self._procs)
        conn, proc = self._results[worker], self._procs[worker]
        while True:
            if connection.wait([conn, proc.sentinel], timeout=POLL_SECONDS):
                if conn.poll():
                    k, kind, payload = conn.recv()
                    self._ready[k] = (kind, payload)
                    return
                self.close()
                code = proc.exitcode
                how = f"signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0 else \
                    f"exit code {code}"
                raise DataError(f"DataLoader worker {worker} (pid {proc.pid}) died ({how}) while reading "
                                f"batch {self._next}; if it ran out of memory, lower "
                                f"DataLoader.Train.loader.num_workers")

    def close(self):
        self._finalizer()

    def __del__(self):
        self._finalizer()
