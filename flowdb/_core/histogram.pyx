# cython: language_level=3, boundscheck=False, wraparound=False
"""LatencyHistogram: HDR-style fixed buckets of microseconds.

8 buckets per power of two (a percentile is within ~12% of the true value)
up to 2**40 us, in a C array that never grows.  record() is one C call under
the GIL, so concurrent recorders need no lock and lose no sample.

    bucket(us) = us                                     if us < 8
               = (p + 1) * 8 + (us >> p) - 8            p = bit_length(us) - 4
"""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

NUM = NUM_BUCKETS


cdef inline int bucket_of(uint64_t us) noexcept nogil:
    if us < SUB:
        return <int>us
    cdef int power = 63 - __builtin_clzll(us) - SUB_BITS
    cdef int index = ((power + 1) << SUB_BITS) + <int>((us >> power) - SUB)
    return index if index < NUM_BUCKETS else NUM_BUCKETS - 1


cdef inline uint64_t bucket_upper(int index) noexcept nogil:
    if index < SUB:
        return <uint64_t>index
    cdef int power = (index >> SUB_BITS) - 1
    cdef uint64_t sub = index & (SUB - 1)
    return ((SUB + sub + 1) << power) - 1


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


def bucket_index(long long us):
    """The bucket of a value (tests)."""
    return bucket_of(<uint64_t>(us if us > 0 else 0))


def bucket_upper_bound(int index):
    """The largest value in bucket `index` (what percentiles report)."""
    return bucket_upper(index)


cdef class LatencyHistogram:
    """Durations in microseconds; percentiles, and Prometheus buckets."""

    cpdef void record(self, long long us):
        if us < 0:
            us = 0
        self.counts[bucket_of(<uint64_t>us)] += 1
        self.count += 1
        self.sum += <uint64_t>us

    def percentile(self, double p):
        """The value at or below which p percent of the samples fall (0 if empty)."""
        cdef uint64_t copy[NUM_BUCKETS]
        memcpy(copy, self.counts, sizeof(copy))
        cdef uint64_t total = 0, seen = 0, rank
        cdef int i
        for i in range(NUM_BUCKETS):
            total += copy[i]
        if total == 0:
            return 0
        rank = <uint64_t>(total * p / 100.0)
        if rank * 100 < total * p:
            rank += 1
        if rank < 1:
            rank = 1
        for i in range(NUM_BUCKETS):
            seen += copy[i]
            if seen >= rank:
                return bucket_upper(i)
        return bucket_upper(NUM_BUCKETS - 1)

    def cumulative(self, bounds):
        """[(bound, samples <= bound)] for ascending bounds (Prometheus 'le')."""
        out = []
        cdef uint64_t seen = 0
        cdef int i = 0
        for bound in bounds:
            while i < NUM_BUCKETS and bucket_upper(i) <= <uint64_t>bound:
                seen += self.counts[i]
                i += 1
            out.append((bound, seen))
        return out
