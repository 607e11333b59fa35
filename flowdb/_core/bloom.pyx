# cython: language_level=3, boundscheck=False, wraparound=False
"""Bloom filter over user keys, one per SSTable (docs/FORMAT.md, "Bloom block").

    filter := bits[nbytes] k:u8
    nbits  := 8 * nbytes = 8 * ceil(max(64, num_keys * bits_per_key) / 8)
    k      := round(bits_per_key * ln 2) clamped to 1..30
    h      := MurmurHash64A(user_key, seed = 0xbc9f1d34)   (include/fdb_table.h)
    delta  := rotate_right_64(h, 33)
    key is set/tested at bits (h + i*delta) mod 2**64 mod nbits, i = 0..k-1
             (bit b is byte b / 8, mask 1 << (b % 8))

An empty filter (bits_per_key <= 0) means "no filter": everything may match.
A k outside 1..30 is reserved for future filter kinds and also matches
everything, as in LevelDB util/bloom.cc.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset
from flowdb._core.cdefs cimport FDB_OK, FDB_ERR_NOMEM

#: Smallest bit array of a non-empty filter.
MIN_FILTER_BITS = BLOOM_MIN_BITS
#: Largest probe count; larger k values are reserved.
MAX_PROBES = FDB_BLOOM_MAX_K
#: Seed of the bloom hash.
BLOOM_SEED = FDB_BLOOM_SEED

cdef double _LN2 = 0.6931471805599453


cdef unsigned bloom_num_probes(int bits_per_key) noexcept nogil:
    cdef double k = bits_per_key * _LN2 + 0.5
    if k < 1:
        return 1
    if k > FDB_BLOOM_MAX_K:
        return FDB_BLOOM_MAX_K
    return <unsigned>k


cdef uint64_t bloom_hash(const uint8_t *key, size_t n) noexcept nogil:
    return fdb_hash64(key, n, FDB_BLOOM_SEED)


cdef void bloom_builder_init(CBloomBuilder *b, int bits_per_key) noexcept nogil:
    b.hashes = NULL
    b.n = 0
    b.cap = 0
    b.bits_per_key = bits_per_key


cdef int bloom_builder_add_hash(CBloomBuilder *b, uint64_t h) noexcept nogil:
    cdef size_t cap
    cdef uint64_t *p
    if b.bits_per_key <= 0:
        return FDB_OK
    if b.n == b.cap:
        cap = b.cap * 2 if b.cap else 1024
        p = <uint64_t *>realloc(b.hashes, cap * sizeof(uint64_t))
        if p == NULL:
            return FDB_ERR_NOMEM
        b.hashes = p
        b.cap = cap
    b.hashes[b.n] = h
    b.n += 1
    return FDB_OK


cdef size_t bloom_builder_size(const CBloomBuilder *b) noexcept nogil:
    if b.bits_per_key <= 0:
        return 0
    cdef uint64_t nbits = <uint64_t>b.n * <uint64_t>b.bits_per_key
    if nbits < BLOOM_MIN_BITS:
        nbits = BLOOM_MIN_BITS
    return <size_t>((nbits + 7) // 8) + 1


cdef void bloom_builder_write(const CBloomBuilder *b, uint8_t *out) noexcept nogil:
    cdef size_t total = bloom_builder_size(b)
    if total == 0:
        return
    cdef size_t nbytes = total - 1
    cdef uint64_t nbits = <uint64_t>nbytes * 8
    cdef unsigned k = bloom_num_probes(b.bits_per_key)
    cdef size_t i
    memset(out, 0, nbytes)
    for i in range(b.n):
        fdb_bloom_set(out, nbits, k, b.hashes[i])
    out[nbytes] = <uint8_t>k


cdef void bloom_builder_free(CBloomBuilder *b) noexcept nogil:
    free(b.hashes)
    b.hashes = NULL
    b.n = 0
    b.cap = 0


cdef bint bloom_may_contain(const uint8_t *filter, size_t len,
                            const uint8_t *key, size_t n) noexcept nogil:
    return fdb_bloom_query(filter, len, fdb_hash64(key, n, FDB_BLOOM_SEED)) != 0


# -- Python view (tests, tools) ------------------------------------------------

def num_probes(int bits_per_key):
    """k for bits_per_key: round(bits_per_key * ln 2) clamped to 1..30."""
    return bloom_num_probes(bits_per_key)


def hash64(data, unsigned long long seed=FDB_BLOOM_SEED):
    """MurmurHash64A of data (bytes-like), as the filter uses it."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef const uint8_t *p = &view[0] if view.shape[0] else <const uint8_t *>b""
    return fdb_hash64(p, view.shape[0], seed)


cdef class BloomFilterBuilder:
    """Builds one filter: add() each distinct user key once, then finish()."""
    cdef CBloomBuilder b

    def __cinit__(self, int bits_per_key=10):
        bloom_builder_init(&self.b, bits_per_key)

    def __dealloc__(self):
        bloom_builder_free(&self.b)

    def add(self, bytes key not None):
        if bloom_builder_add_hash(&self.b, bloom_hash(key, len(key))) != FDB_OK:
            raise MemoryError()

    def __len__(self):
        return self.b.n

    def finish(self):
        """The filter bytes (bits | k); b"" when bits_per_key <= 0."""
        cdef size_t n = bloom_builder_size(&self.b)
        out = bytearray(n)
        cdef uint8_t[::1] view
        if n:
            view = out
            with nogil:
                bloom_builder_write(&self.b, &view[0])
        return bytes(out)


def may_contain(bytes filter not None, bytes key not None):
    """False only if key was certainly not added to filter."""
    return bool(bloom_may_contain(filter, len(filter), key, len(key)))
