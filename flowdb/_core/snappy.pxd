# cython: language_level=3
"""The snappy block codec in C (include/fdb_snappy.h), and the two bytes-level
helpers every user of it goes through (snappy.pyx).

The C functions are plain C, safe without the GIL (see the header for the
format and the guarantees)."""
from libc.stdint cimport uint8_t, uint64_t


cdef extern from "fdb_snappy.h" nogil:
    size_t fdb_snappy_max_compressed(size_t n)
    size_t fdb_snappy_compress(const uint8_t *src, size_t n, uint8_t *dst)
    int fdb_snappy_ulen(const uint8_t *src, size_t n, uint64_t *ulen, size_t *header)
    int fdb_snappy_decompress(const uint8_t *src, size_t n, uint8_t *dst, size_t dst_len)


# The snappy stream of src[0:n].  Keeps the GIL unless n >= NOGIL_BYTES.
cdef bytes compress_bytes(const uint8_t *src, size_t n)
# The bytes the stream src[0:n] holds, or None if it is malformed or claims
# more than max_len bytes.  Keeps the GIL unless the result is >= NOGIL_BYTES.
cdef bytes decompress_bytes(const uint8_t *src, size_t n, uint64_t max_len)
