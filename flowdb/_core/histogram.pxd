# cython: language_level=3
"""LatencyHistogram, seen from Cython (see histogram.pyx): the read path
records into it without a Python call."""
from libc.stdint cimport uint64_t

cdef enum:
    SUB_BITS = 3                     # 8 sub-buckets per power of two
    SUB = 1 << SUB_BITS
    MAX_POWER = 40
    NUM_BUCKETS = (MAX_POWER + 1) * SUB


cdef class LatencyHistogram:
    # Samples per bucket (bucket_of in histogram.pyx).
    cdef uint64_t counts[NUM_BUCKETS]
    # Samples recorded, and the sum of their values (us).
    cdef readonly uint64_t count
    cdef readonly uint64_t sum

    # One sample of `us` microseconds (negative counts as 0).
    cpdef void record(self, long long us)
