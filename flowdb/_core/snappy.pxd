# cython: language_level=3
"""Cython mirror of include/fdb_snappy.h: the snappy block codec in C.

Every function is plain C, safe without the GIL (see the header for the
format and the guarantees)."""
from libc.stdint cimport uint8_t, uint64_t


cdef extern from "fdb_snappy.h" nogil:
    size_t fdb_snappy_max_compressed(size_t n)
    size_t fdb_snappy_compress(const uint8_t *src, size_t n, uint8_t *dst)
    int fdb_snappy_ulen(const uint8_t *src, size_t n, uint64_t *ulen, size_t *header)
    int fdb_snappy_decompress(const uint8_t *src, size_t n, uint8_t *dst, size_t dst_len)
