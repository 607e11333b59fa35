# cython: language_level=3
"""CRC-32C, the checksum of every WAL record, manifest edit and table block
(docs/FORMAT.md).  One implementation in C (include/fdb_crc32c.h), so the
table builder and reader checksum blocks without the GIL; crc32c() is its
Python face, called like the crc32c package's function the tests hold it to."""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint32_t


cdef extern from "fdb_crc32c.h" nogil:
    void fdb_crc32c_init(int allow_hw)
    uint32_t fdb_crc32c(uint32_t crc, const void *p, size_t n)
    int fdb_crc32c_hw


fdb_crc32c_init(1)


cdef uint32_t crc32c_extend(uint32_t crc, const void *p, size_t n) noexcept nogil:
    return fdb_crc32c(crc, p, n)


# Below this many bytes crc32c() keeps the GIL: a MiB takes ~100 us, and
# beside a thread busy in Python winning the GIL back may cost up to the
# switch interval (5 ms).
cdef enum:
    _HOLD_GIL_MAX = 1 << 20
HOLD_GIL_MAX = _HOLD_GIL_MAX


def crc32c(data, uint32_t value=0):
    """The CRC-32C of data (any contiguous buffer), continuing from value."""
    cdef Py_buffer view
    cdef uint32_t crc
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len <= _HOLD_GIL_MAX:
            return fdb_crc32c(value, view.buf, view.len)
        with nogil:
            crc = fdb_crc32c(value, view.buf, view.len)
        return crc
    finally:
        PyBuffer_Release(&view)


def hardware():
    """True if the CPU's crc32 instruction is in use (SSE4.2)."""
    return bool(fdb_crc32c_hw)


def _use_hardware(bint allow):
    """Tests only: switch between the instruction and the table loop."""
    fdb_crc32c_init(allow)
