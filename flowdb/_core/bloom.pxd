# cython: language_level=3
"""Bloom filter over user keys (docs/FORMAT.md, "SSTable" / "Bloom block").

Also the Cython mirror of include/fdb_table.h (hash and probe sequence).

    filter := bits[nbytes] k:u8          (empty: no filter, everything may match)

A CBloomBuilder collects the 64-bit hash of each user key (the caller adds
each distinct user key once; a repeat only wastes a little of the filter),
then writes the filter in one pass.  Everything here runs without the GIL.
Not thread-safe: one builder is used by one thread; a finished filter is
read-only and may be queried from any number of threads.
"""
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "fdb_table.h" nogil:
    unsigned FDB_BLOOM_SEED
    unsigned FDB_BLOOM_MAX_K
    uint64_t fdb_hash64(const uint8_t *p, size_t n, uint64_t seed)
    void fdb_bloom_set(uint8_t *bits, uint64_t nbits, unsigned k, uint64_t h)
    int fdb_bloom_query(const uint8_t *filter, size_t len, uint64_t h)


cdef enum:
    # The bit array of a non-empty filter has at least this many bits
    # (a table with few keys still gets a useful filter).
    BLOOM_MIN_BITS = 64


cdef struct CBloomBuilder:
    uint64_t *hashes      # malloc'd, one fdb_hash64 per key added
    size_t n              # hashes used
    size_t cap            # hashes allocated
    int bits_per_key      # <= 0: no filter (finish writes 0 bytes)


# Number of probes for bits_per_key: round(bits_per_key * ln 2), clamped to 1..30.
cdef unsigned bloom_num_probes(int bits_per_key) noexcept nogil

# The bloom hash of a user key: fdb_hash64(key, FDB_BLOOM_SEED).
cdef uint64_t bloom_hash(const uint8_t *key, size_t n) noexcept nogil

cdef void bloom_builder_init(CBloomBuilder *b, int bits_per_key) noexcept nogil
# Records one key by its bloom_hash.  FDB_OK or FDB_ERR_NOMEM.
cdef int bloom_builder_add_hash(CBloomBuilder *b, uint64_t h) noexcept nogil
# Size in bytes of the filter finish would write now (0 when disabled).
cdef size_t bloom_builder_size(const CBloomBuilder *b) noexcept nogil
# Writes the filter (bloom_builder_size(b) bytes) to out.
cdef void bloom_builder_write(const CBloomBuilder *b, uint8_t *out) noexcept nogil
# Frees the hashes; the builder may be init'ed again.
cdef void bloom_builder_free(CBloomBuilder *b) noexcept nogil

# False only if the user key is certainly not in the filter.
cdef bint bloom_may_contain(const uint8_t *filter, size_t len,
                            const uint8_t *key, size_t n) noexcept nogil
