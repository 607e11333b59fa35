# cython: language_level=3
"""System calls made with the GIL held.

Giving the GIL away around a call that takes microseconds costs more than
the call when other threads are busy in Python: the caller then waits for
the holder's switch interval (5 ms) to win it back, once per call.  A writer
appending small WAL records beside one busy thread went from 80,000 to 560
batches/s that way.  These calls keep the GIL; the caller chooses them only
for work that is short (flowdb._fileio.AppendWriter).
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.errno cimport errno
from libc.stdint cimport int64_t
import os

from flowdb._core.cdefs cimport fdb_mono_ns

cdef extern from "fdb_io.h":
    ssize_t fdb_write_full(int fd, const void *buf, size_t n)


cdef object _errno_error():
    # The OSError os.* raises for the errno a failed call left.
    cdef int err = errno
    return OSError(err, os.strerror(err))


def timed_write_holding_gil(int fd, data) -> int:
    """write(2) all of `data` (bytes-like) at fd's position, looping on
    short writes and EINTR, without releasing the GIL; returns the
    nanoseconds the write took (timed here: in Python the time would include
    waiting for the GIL).  OSError as os.write raises it; some bytes may
    then be in the file."""
    cdef Py_buffer view
    cdef ssize_t got
    cdef int64_t started
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        started = fdb_mono_ns()
        got = fdb_write_full(fd, view.buf, <size_t>view.len)
        if got < 0:
            raise _errno_error()
        return fdb_mono_ns() - started
    finally:
        PyBuffer_Release(&view)


cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, int arg)
    enum: F_DUPFD_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)


def dup_holding_gil(int fd) -> int:
    """os.dup(fd) (close-on-exec, as os.dup makes it) without releasing the GIL."""
    cdef int got = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    if got < 0:
        raise _errno_error()
    return got


def close_holding_gil(int fd) -> None:
    """os.close(fd) without releasing the GIL: for a duplicate descriptor,
    whose close only drops a reference."""
    if close(fd) != 0:
        raise _errno_error()
