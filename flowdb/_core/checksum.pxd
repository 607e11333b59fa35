# cython: language_level=3
"""CRC-32C in C (include/fdb_crc32c.h): every checksum flowdb writes or checks."""
from libc.stdint cimport uint32_t


# The CRC-32C of p[0:n] continuing from crc (0 to start); plain C, no GIL needed.
cdef uint32_t crc32c_extend(uint32_t crc, const void *p, size_t n) noexcept nogil
