# cython: language_level=3
"""Blocks: the unit an SSTable is read in (docs/FORMAT.md, "SSTable" / "Block").

    block   := entry* restart:u32le{num_restarts} num_restarts:u32le
    entry   := shared:varint unshared:varint value_len:varint
               key_delta[unshared] value[value_len]

An entry's key is the first `shared` bytes of the previous entry's key
followed by key_delta.  Every BLOCK_RESTART_INTERVAL-th entry (the first
included) is a restart point: shared = 0, and its offset is listed in the
restart array, strictly increasing.  num_restarts = 0 exactly when the block
holds no entry.  Keys are internal keys (>= 16 bytes), in internal-key order.

CBlockBuilder writes blocks; CBlockIter reads them through the fdb_iter
protocol.  Both are plain C state driven by the functions below, without the
GIL.  Neither is thread-safe; a block's bytes are immutable once built, and
any number of CBlockIters may read the same bytes at once.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from flowdb._core.cdefs cimport fdb_iter, FDB_OK
from flowdb._core.iterator cimport Iterator

cdef extern from *:
    """
    #ifndef FDB_PREFETCH_DEFINED
    #define FDB_PREFETCH_DEFINED
    /* A hint that *p will be read soon (no fault, no effect on results). */
    #define fdb_prefetch(p) __builtin_prefetch((const void *)(p), 0, 3)
    #endif
    """
    void fdb_prefetch(const void *p) noexcept nogil

cdef enum:
    # Keys up to this long are rebuilt inside the CBlockIter (no malloc).
    BLOCK_ITER_SMALL_KEY = 64
    # Entries between restart points (part of the format only through the
    # restart array, which the reader takes as written: changing this is safe).
    BLOCK_RESTART_INTERVAL = 16

cdef extern from "fdb_table.h" nogil:
    # Largest block the builder makes: restart offsets are u32.
    size_t FDB_BLOCK_MAX_SIZE


cdef struct CBlockBuilder:
    uint8_t *buf              # entries, then (after finish) the restart array
    size_t len                # bytes used in buf
    size_t cap                # bytes allocated in buf
    uint32_t *restarts        # offsets of the restart points so far
    size_t num_restarts
    size_t restarts_cap
    int restart_interval      # entries per restart point (>= 1)
    int counter               # entries since the last restart point
    size_t num_entries        # entries added since the last reset
    uint8_t *last_key         # copy of the last key added (prefix compression)
    size_t last_key_len
    size_t last_key_cap
    bint finished             # finish() was called; reset() before adding again


# Grows *buf (malloc'd, *cap bytes) to hold at least need bytes, doubling:
# FDB_OK, or FDB_ERR_NOMEM with *buf unchanged.
cdef int reserve_bytes(uint8_t **buf, size_t *cap, size_t need) noexcept nogil

# Prepares an empty builder (no allocation yet).
cdef void block_builder_init(CBlockBuilder *b, int restart_interval) noexcept nogil
# Appends an entry.  The caller guarantees key_len >= 16 and that keys come in
# increasing order.  FDB_OK, or FDB_ERR_NOMEM (also when the block would
# exceed FDB_BLOCK_MAX_SIZE).
cdef int block_builder_add(CBlockBuilder *b, const uint8_t *key, size_t key_len,
                           const uint8_t *value, size_t value_len) noexcept nogil
# Size the block would have if finished now.
cdef size_t block_builder_estimate(const CBlockBuilder *b) noexcept nogil
# Appends the restart array; the block is then b.buf[0 : b.len], valid until
# reset/add/free.  FDB_OK or FDB_ERR_NOMEM.
cdef int block_builder_finish(CBlockBuilder *b) noexcept nogil
# Empties the builder, keeping its buffers.
cdef void block_builder_reset(CBlockBuilder *b) noexcept nogil
# Releases the buffers; init before using again.
cdef void block_builder_free(CBlockBuilder *b) noexcept nogil


cdef struct CBlockIter:
    fdb_iter base             # the protocol (first member)
    const uint8_t *data       # the block, borrowed: the caller keeps it alive
    size_t size               # bytes of the whole block
    size_t data_end           # offset of the restart array = end of the entries
    uint32_t num_restarts
    size_t cur                # offset of the current entry (while valid)
    size_t next_off           # offset just past the current entry
    uint32_t ri               # restart region of the current entry
    size_t klen               # length of the key in keybuf
    uint8_t *keybuf           # the current key, rebuilt from the prefix: in
    size_t keycap             #   small, or on the heap once longer
    uint8_t small[BLOCK_ITER_SMALL_KEY]
    size_t err_off            # offset in the block of the corruption found
    const char *err_msg       # static text describing it (NULL: none)


# Prepares an iterator over no block (every move makes it invalid).  Sets the
# protocol's function pointers; call once before anything else.  keybuf may
# point into the struct itself: a CBlockIter is never moved or copied after
# init.
cdef void block_iter_init(CBlockIter *it) noexcept nogil
# Points the iterator at a block (invalid until positioned) after checking the
# restart array.  FDB_OK or FDB_ERR_CORRUPTION (then status is set too).  On
# FDB_OK, it.data_end and it.num_restarts hold what the check found: a caller
# that keeps the same (immutable) bytes may hand them to
# block_iter_reset_trusted later instead of checking again.
cdef int block_iter_reset(CBlockIter *it, const uint8_t *data, size_t size) noexcept nogil


# Points the iterator at a block whose restart array block_iter_reset already
# accepted: data_end and num_restarts must be the values it found for these
# very bytes (e.g. kept beside a cached block).  No check, no read of the
# block.  Every entry is still bounds-checked as it is decoded; what is
# skipped is only the O(num_restarts) walk over the restart array, whose
# invariants (restart[0] = 0, strictly increasing, < data_end, and
# data_end + 4 * num_restarts + 4 == size) the decoders rely on.
# It prefetches the restart array, which a seek reads first: a block from the
# cache is often cold in the CPU caches.
cdef inline void block_iter_reset_trusted(CBlockIter *it, const uint8_t *data, size_t size,
                                          size_t data_end, uint32_t num_restarts) noexcept nogil:
    fdb_prefetch(data + data_end)
    it.base.valid = 0
    it.base.status = FDB_OK
    it.err_msg = NULL
    it.data = data
    it.size = size
    it.data_end = data_end
    it.num_restarts = num_restarts
    it.klen = 0
# What block_iter_floor found: the last entry <= target (the floor), and of
# the versions of the floor's (user key, ts) the newest with seq <= snapshot.
cdef struct BlockFloor:
    bint found                # an entry <= target is in the block; then:
    bint same_ukey            # its user key is the target's
    int64_t ts                # its ts, seq, kind and value
    uint64_t seq
    unsigned kind
    const uint8_t *value
    size_t value_len
    bint group_whole          # every version of (ukey, ts) in the block was seen
    bint group_at_start       # the first of them is the block's first entry
    bint version_found        # one of them has seq <= snapshot: the newest such
    uint64_t version_seq
    unsigned version_kind
    const uint8_t *version_value
    size_t version_value_len

# The last entry <= target (ukey_len: the target's user key length) in one
# pass over the block, no step back.  Leaves the iterator past it: only
# *out (whose pointers are into the block) tells the result.  FDB_OK or the
# status of a corrupt entry.
cdef int block_iter_floor(CBlockIter *it, const uint8_t *target, size_t tn, size_t ukey_len,
                          uint64_t snapshot, BlockFloor *out) noexcept nogil
# The last entry of the block.
cdef int block_iter_seek_to_last(CBlockIter *it) noexcept nogil
# The entry before the current one (invalid before the first).
cdef int block_iter_prev(CBlockIter *it) noexcept nogil
# Frees the key buffer; init before using again.
cdef void block_iter_free(CBlockIter *it) noexcept nogil
