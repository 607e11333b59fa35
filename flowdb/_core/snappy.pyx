# cython: language_level=3, boundscheck=False, wraparound=False
"""The core's snappy codec (include/fdb_snappy.h) on bytes: compress_bytes /
decompress_bytes for the table builder and reader (table.pyx), and
compress / decompress for Python (the tests hold them to python-snappy).

Blocks are (de)compressed keeping the GIL: a flush or a reader that gave it
away per 8 KiB block would wait to win it back each time (up to the switch
interval beside a thread busy in Python).  Only big ones release it."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t

# Not format: at least this many bytes are (de)compressed with the GIL released.
NOGIL_BYTES = 1 << 18
cdef size_t _NOGIL_BYTES = NOGIL_BYTES


cdef bytes compress_bytes(const uint8_t *src, size_t n):
    cdef size_t m
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>fdb_snappy_max_compressed(n))
    cdef uint8_t *dst = <uint8_t *>PyBytes_AS_STRING(out)
    if n >= _NOGIL_BYTES:
        with nogil:
            m = fdb_snappy_compress(src, n, dst)
    else:
        m = fdb_snappy_compress(src, n, dst)
    return out[:m]


cdef bytes decompress_bytes(const uint8_t *src, size_t n, uint64_t max_len):
    cdef uint64_t ulen
    cdef size_t header
    cdef int rc
    if fdb_snappy_ulen(src, n, &ulen, &header) != 0 or ulen > max_len:
        return None
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>ulen)
    cdef uint8_t *dst = <uint8_t *>PyBytes_AS_STRING(out)
    if ulen >= _NOGIL_BYTES:
        with nogil:
            rc = fdb_snappy_decompress(src, n, dst, ulen)
    else:
        rc = fdb_snappy_decompress(src, n, dst, ulen)
    return out if rc == 0 else None


def compress(const uint8_t[::1] data not None):
    """The raw snappy stream of data (bytes)."""
    cdef size_t n = data.shape[0]
    if n > 0xFFFFFFFF:
        raise ValueError("snappy streams hold at most 4 GiB - 1")
    return compress_bytes(&data[0] if n else NULL, n)


def uncompressed_length(const uint8_t[::1] data not None):
    """The length a stream claims to decode to; ValueError if unreadable."""
    cdef uint64_t ulen
    cdef size_t header
    if fdb_snappy_ulen(&data[0] if data.shape[0] else NULL, data.shape[0], &ulen, &header) != 0:
        raise ValueError("not a snappy stream: bad length header")
    return ulen


def decompress(const uint8_t[::1] data not None):
    """The bytes a raw snappy stream holds; ValueError if it is malformed."""
    out = decompress_bytes(&data[0] if data.shape[0] else NULL, data.shape[0], 0xFFFFFFFF)
    if out is None:
        raise ValueError("not a snappy stream: malformed")
    return out


def decompress_guarded(const uint8_t[::1] data not None):
    """For the tests: decompress into a buffer with 32 guard bytes after the
    claimed length; (the bytes, whether the guard is intact).  A decoder
    that wrote past its output would leave the guard changed."""
    cdef uint64_t ulen
    cdef size_t header
    cdef const uint8_t *src = &data[0] if data.shape[0] else NULL
    if fdb_snappy_ulen(src, data.shape[0], &ulen, &header) != 0 or ulen > 1 << 20:
        raise ValueError("not a snappy stream: bad length header")
    buf = bytearray(b"\xa5" * (ulen + 32))
    cdef uint8_t *dst = <uint8_t *>(<char *>buf)
    if fdb_snappy_decompress(src, data.shape[0], dst, ulen) != 0:
        raise ValueError("not a snappy stream: malformed")
    return bytes(buf[:ulen]), buf[ulen:] == b"\xa5" * 32
