# cython: language_level=3, boundscheck=False, wraparound=False
"""compress / decompress: the core's snappy codec (include/fdb_snappy.h)
from Python, for the tests that hold it to python-snappy and for tools.

The table builder and reader call the C functions directly (table.pyx)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t

from flowdb._core.snappy cimport (
    fdb_snappy_compress, fdb_snappy_decompress, fdb_snappy_max_compressed, fdb_snappy_ulen)


def compress(const uint8_t[::1] data not None):
    """The raw snappy stream of data (bytes)."""
    cdef size_t n = data.shape[0]
    if n > 0xFFFFFFFF:
        raise ValueError("snappy streams hold at most 4 GiB - 1")
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>fdb_snappy_max_compressed(n))
    cdef uint8_t *dst = <uint8_t *>PyBytes_AS_STRING(out)
    cdef const uint8_t *src = &data[0] if n else <const uint8_t *>dst
    with nogil:
        n = fdb_snappy_compress(src, n, dst)
    return out[:n]


def uncompressed_length(const uint8_t[::1] data not None):
    """The length a stream claims to decode to; ValueError if unreadable."""
    cdef uint64_t ulen
    cdef size_t header
    if fdb_snappy_ulen(&data[0] if data.shape[0] else NULL, data.shape[0], &ulen, &header) != 0:
        raise ValueError("not a snappy stream: bad length header")
    return ulen


def decompress(const uint8_t[::1] data not None):
    """The bytes a raw snappy stream holds; ValueError if it is malformed."""
    cdef size_t n = data.shape[0]
    ulen = uncompressed_length(data)
    out = PyBytes_FromStringAndSize(NULL, ulen)
    if fdb_snappy_decompress(&data[0], n, <uint8_t *>PyBytes_AS_STRING(out), ulen) != 0:
        raise ValueError("not a snappy stream: malformed")
    return out
