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
PREFETCH batches in flight per worker, results re-ordered. With use_shared_memory a worker stacks its
batch into one of PREFETCH + 1 memory-backed files (/dev/shm) that it reuses batch after batch; the
main process maps each file once, removes its name at once, and copies every batch into tensors as it
arrives. Otherwise batches travel pickled through the pipe. Workers must not use paddle (datasets here use
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


def build_loader(dataset, batch_sampler, num_workers=0, use_shared_memory=True, as_numpy=False, key="Train"):
    """as_numpy: batches as numpy arrays (host memory) instead of paddle Tensors on the current device."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"DataLoader.{key}.loader.num_workers must be an integer >= 0, got {num_workers!r}")
    if num_workers == 0:
        return InProcessLoader(dataset, batch_sampler, as_numpy)
    return WorkerLoader(dataset, batch_sampler, num_workers, bool(use_shared_memory), as_numpy)


def collate(items):
    """[(image, label[, flip]), ...] -> list of stacked numpy arrays, one per field."""
    return [np.stack([item[k] for item in items]) for k in range(len(items[0]))]


def _tensors(arrays):
    return [paddle.to_tensor(a) for a in arrays]


def _copies(arrays):
    return [np.array(a) for a in arrays]


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
    def __init__(self, dataset, batch_sampler, as_numpy=False):
        self.dataset, self.batch_sampler, self.as_numpy = dataset, batch_sampler, as_numpy

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        return _ThreadIterator(self.dataset, iter(self.batch_sampler), self.as_numpy)


class _ThreadIterator:
    """Batches read ahead by one thread. The thread holds no reference to the iterator: dropping the
    iterator (a run that stops mid-epoch) stops the thread after the item it is reading, and at exit
    every live reader is stopped and joined before the interpreter shuts down (a daemon thread still
    inside a C++ decoder when Python finalizes aborts the process: "terminate called without an
    active exception")."""
    _END = object()

    def __init__(self, dataset, batches, as_numpy=False):
        self._convert = (lambda arrays: arrays) if as_numpy else _tensors  # the thread's arrays are its own
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
        return self._convert(item)

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


class _Slots:
    """A worker's ring of memory-backed files (/dev/shm), reused batch after batch: after the first
    PREFETCH + 1 batches no file is created, sized, page-faulted in or removed, and the batch is stacked
    straight into shared memory (one copy per image in the worker, one in the main process).

    Why reuse is safe: the main process copies a batch out of its slot as soon as it receives it, and
    it sends worker w a new task only after consuming one of w's batches, so at most PREFETCH of w's
    batches are sent and not yet received (the one being written included); with PREFETCH + 1 slots
    the slot written next was received, i.e. copied, before."""

    def __init__(self, prefix):
        self.prefix, self.count, self.files, self.written = prefix, PREFETCH + 1, {}, 0

    def write(self, items):
        """Stack the items' fields into the next slot -> (slot, path if the slot file is new, layout)."""
        slot, self.written = self.written % self.count, self.written + 1
        fields = [[np.asarray(item[k]) for item in items] for k in range(len(items[0]))]
        specs = []
        for values in fields:
            shape, dtype = (len(values),) + values[0].shape, np.result_type(*{v.dtype for v in values})  # as np.stack
            specs.append((shape, dtype, int(np.prod(shape)) * dtype.itemsize))
        need = sum(nbytes for _, _, nbytes in specs)
        path, buf, size = self.files.get(slot, (None, None, 0))
        new_path = None
        if need > size:  # first use of the slot, or a larger batch than it held
            if buf is not None:
                buf.close()
            size = max(1, need)
            fd, path = tempfile.mkstemp(prefix=self.prefix, dir=SHM_DIR)
            try:
                os.ftruncate(fd, size)
                buf = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            self.files[slot] = (path, buf, size)
            new_path = path
        layout, offset = [], 0
        for values, (shape, dtype, nbytes) in zip(fields, specs):
            out = np.ndarray(shape, dtype, buffer=buf, offset=offset)
            np.stack(values, out=out)  # raises, as collate does, when the items' shapes differ
            del out
            layout.append((shape, dtype.str, offset))
            offset += nbytes
        return slot, new_path, layout


class _SlotReader:
    """The main process's side of one worker's slots: maps each slot file once (and removes it from
    /dev/shm at once: the memory lives as long as the two mappings), copies batches out into tensors."""

    def __init__(self):
        self.maps = {}

    def read(self, slot, new_path, layout, convert=_tensors):
        if new_path is not None:
            fd = os.open(new_path, os.O_RDONLY)
            try:
                os.unlink(new_path)
                old = self.maps.pop(slot, None)
                if old is not None:
                    old.close()
                self.maps[slot] = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        buf = self.maps[slot]
        return convert([np.ndarray(shape, np.dtype(dt), buffer=buf, offset=off) for shape, dt, off in layout])

    def close(self):
        for buf in self.maps.values():
            try:
                buf.close()
            except BufferError:  # a view of it is still alive somewhere; the mapping goes with it
                pass
        self.maps.clear()


def _worker_main(dataset, tasks, results, parent_pid, use_shared_memory, prefix):
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    slots = _Slots(prefix)
    while True:
        task = tasks.recv()
        if task is None:
            return
        k, indices = task
        try:
            items = [dataset[i] for i in indices]
            results.send((k, "shm", slots.write(items)) if use_shared_memory else (k, "arrays", collate(items)))
        except Exception as e:  # noqa: BLE001  (sent to the main process, which raises it at batch k)
            results.send((k, "error", _describe(e)))


class WorkerLoader:
    def __init__(self, dataset, batch_sampler, num_workers, use_shared_memory, as_numpy=False):
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.num_workers, self.use_shared_memory, self.as_numpy = num_workers, use_shared_memory, as_numpy

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        return _WorkerIterator(self)


def _shutdown(procs, task_conns, readers, prefix):
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
    for reader in readers:
        reader.close()
    for path in glob.glob(prefix + "*"):  # slot files made but never received (an error, an early stop)
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
        self._readers = [_SlotReader() for _ in range(loader.num_workers)]
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
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._tasks, self._readers,
                                          os.path.join(SHM_DIR, prefix))
        self._sent = self._next = 0
        self._ready, self._exhausted = {}, False
        self._as_numpy = loader.as_numpy
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
        if kind == "shm" or self._as_numpy:  # pickled arrays (no shared memory) are already this process's own
            return payload
        return _tensors(payload)

    def _receive(self):
        worker = self._next % len(self._procs)
        conn, proc = self._results[worker], self._procs[worker]
        while True:
            if connection.wait([conn, proc.sentinel], timeout=POLL_SECONDS):
                if conn.poll():
                    k, kind, payload = conn.recv()
                    if kind == "shm":  # copied out now: the worker reuses the slot (see _Slots)
                        payload = self._readers[worker].read(*payload, convert=_copies if self._as_numpy else _tensors)
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
