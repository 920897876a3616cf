"""Open only regular files: a FIFO, device, directory or socket named where a data file is expected
is refused with its kind, never read (a FIFO would block for ever, a device never end).

    with open_regular(path, "image") as f: data = f.read()

The file is opened with O_NONBLOCK (opening a FIFO without a writer would block) and checked with
fstat on the open descriptor, so the check and the read see the same file.
"""
import os
import stat

from plsc.errors import DataError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode):
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path, what, error=DataError):
    """Raise `error` unless `path` is (a link to) a regular file; return its size."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file: not read")
    return st.st_size


def open_fd(path, what, error=DataError):
    """An O_RDONLY descriptor of the regular file `path` (blocking reads restored), else `error`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:  # a socket: ENXIO
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} is {kind_of(mode)}, not a regular file: not read")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path, what, error=DataError):
    """A binary file object of the regular file `path`, else `error` naming it and what it is."""
    return os.fdopen(open_fd(path, what, error), "rb")


def read_regular(path, what, error=DataError):
    with open_regular(path, what, error) as f:
        return f.read()
