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

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "fdb_io.h":
    ssize_t fdb_write_full(int fd, const void *buf, size_t n)


cdef inline int64_t _now_ns() noexcept:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


def timed_write_holding_gil(int fd, data) -> int:
    """write(2) all of `data` (bytes-like) at fd's position, looping on
    short writes and EINTR, without releasing the GIL; returns the
    nanoseconds the write took (timed here: in Python the time would include
    waiting for the GIL).  OSError as os.write raises it; some bytes may
    then be in the file."""
    cdef Py_buffer view
    cdef ssize_t got
    cdef int err
    cdef int64_t started
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        started = _now_ns()
        got = fdb_write_full(fd, view.buf, <size_t>view.len)
        if got < 0:
            err = errno
            raise OSError(err, os.strerror(err))
        return _now_ns() - started
    finally:
        PyBuffer_Release(&view)
