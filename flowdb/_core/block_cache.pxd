# cython: language_level=3
"""The block cache, seen from Cython (see block_cache.pyx)."""
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from cpython.object cimport PyObject


cdef enum:
    BLOCK_META_RESTARTS = 16


# What the table knows about a cached block besides its bytes: the result of
# checking its restart array (block.pxd: block_iter_reset), so an iterator
# over the cached block may skip the check (block_iter_reset_trusted).
cdef struct BlockMeta:
    size_t data_end           # offset of the restart array
    uint32_t num_restarts
    bint trusted              # data_end/num_restarts are valid for these bytes
    # The offsets of the restart points when there are at most
    # BLOCK_META_RESTARTS and they fit in 16 bits (else n_restart_offsets is
    # 0): a reader prefetches those entries as soon as it has the block,
    # alongside the restart array, instead of after reading it.
    uint32_t n_restart_offsets
    uint16_t restart_offsets[BLOCK_META_RESTARTS]


# The meta of a block nobody checked (a meta block, or bytes put from
# Python): iterators check it on every use, and nothing is prefetched.
cdef inline void untrusted_meta(BlockMeta *meta) noexcept nogil:
    meta.data_end = 0
    meta.num_restarts = 0
    meta.trusted = False
    meta.n_restart_offsets = 0


# One slot of the entry arena.  A live entry owns one reference to `data`;
# a free one has data == NULL and links the free list through `next`.
cdef struct CacheEntry:
    uint64_t file             # the key: (file number, block offset)
    uint64_t offset
    uint64_t hash             # _hash(file, offset), kept for probing and rehashing
    PyObject *data            # an exact bytes object (owned reference)
    size_t charge             # len(data): what the entry counts against capacity
    BlockMeta meta
    Py_ssize_t prev           # LRU list: the next more recently used entry (-1: none)
    Py_ssize_t next           # LRU list: the next less recently used entry (-1: none)


cdef class BlockCache:
    """LRU of (file_number, offset) -> bytes, bounded by the sum of len(bytes).

    No lock: every operation is a short run of C code and C-API calls that
    never runs Python code, so the GIL serialises them (block_cache.pyx)."""
    cdef readonly size_t capacity           # bytes the cache may hold
    cdef readonly size_t usage              # bytes held now
    cdef readonly unsigned long long hits   # lookups that found their key
    cdef readonly unsigned long long misses # lookups that did not
    cdef CacheEntry *entries                # the arena: ecap slots, eused handed out
    cdef Py_ssize_t ecap
    cdef Py_ssize_t eused
    cdef Py_ssize_t efree                   # head of the free list (-1: empty)
    cdef Py_ssize_t nentries                # live entries
    cdef Py_ssize_t *slots                  # open addressing (linear probing): entry or -1
    cdef size_t mask                        # len(slots) - 1 (a power of two), 0 if no table
    cdef Py_ssize_t head                    # most recently used entry (-1: none)
    cdef Py_ssize_t tail                    # least recently used entry (-1: none)

    # The block cached under (file, offset), marked most recently used, with
    # its meta in *meta; None if absent.  Counts a hit or a miss.  Never
    # raises.  Must be called with the GIL (as every method).
    cdef bytes lookup(self, uint64_t file, uint64_t offset, BlockMeta *meta)
    # Caches data (an exact bytes object) under (file, offset) with its meta,
    # replacing any previous entry, then evicts least recently used entries
    # until usage <= capacity.  Stores nothing when capacity is 0 or len(data)
    # exceeds it.  0, or -1 if out of memory (nothing changed; no exception set).
    cdef int insert(self, uint64_t file, uint64_t offset, bytes data,
                    const BlockMeta *meta) noexcept
    # Whether (file, offset) is cached, without marking it used or counting
    # a hit or a miss: for warming, which must not look like reads.
    cdef bint contains(self, uint64_t file, uint64_t offset) noexcept

    # Internals (block_cache.pyx).
    cdef void _drop_all(self) noexcept
    cdef Py_ssize_t _find(self, uint64_t file, uint64_t offset, uint64_t h,
                          size_t *slot) noexcept
    cdef void _unlink(self, Py_ssize_t e) noexcept
    cdef void _push_front(self, Py_ssize_t e) noexcept
    cdef void _delete_slot(self, size_t i) noexcept
    cdef int _grow_table(self) noexcept
    cdef Py_ssize_t _new_entry(self) noexcept
    cdef void _remove(self, Py_ssize_t e, size_t slot) noexcept
    cdef void _evict(self) noexcept
