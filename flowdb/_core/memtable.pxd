# cython: language_level=3
"""MemTable: the in-memory sorted buffer of recent writes (a skiplist).

Thread safety: apply() has one writer at a time; apply_concurrent() may run
in several threads at once (nodes are carved from the arena under a mutex,
then linked with compare-and-swap).  Any number of readers iterate
concurrently without locks (nodes are published with release stores or CAS,
read with acquire loads).  Nothing is ever removed, so an iterator stays
valid while the memtable is alive.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from flowdb._core.cdefs cimport fdb_iter
from flowdb._core.iterator cimport Iterator, Source, EntryHit

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t

# LevelDB's db/skiplist.h parameters: with branching 4, 12 levels keep
# searches O(log n) up to 4**12 = 16M entries, far above a memtable's size.
cdef enum:
    MT_MAX_HEIGHT = 12
    MT_BRANCHING = 4
    # Slots of the tail hint (direct-mapped; a power of two), and the levels
    # it keeps (a node is taller than 4 once in 256).
    MT_TAIL_SLOTS = 1 << 14
    MT_TAIL_LEVELS = 4


# A skiplist node, allocated in the arena with `height` next pointers; its
# internal key and then its value (PUT: i64le expire_at | user value;
# DELETE: empty) follow the pointers in the same allocation.
cdef struct MTNode:
    const uint8_t *key         # internal key; the value starts at key + key_len
    uint32_t key_len           # 17..65551
    uint32_t value_len         # 0 or 8..64 MiB + 8
    MTNode *next[1]            # really `height` pointers, level 0 first; written
                               # with release stores, read with acquire loads


# The skiplist and its arena; everything a nogil reader or writer needs.
cdef struct MTList:
    MTNode *head               # sentinel of height MT_MAX_HEIGHT, no key
    int max_height             # levels in use; raised by CAS, read relaxed
    # Guards the arena and rng (node creation); linking needs no lock.
    pthread_mutex_t arena_lock
    uint64_t rng               # xorshift state: node heights
    # Arena: nodes are bump-allocated from ~1 MiB chunks; a node larger than
    # a quarter chunk gets its own allocation.  Chunks are mmapped and
    # unmapped with the memtable, so its memory goes back to the system.
    uint8_t *alloc_ptr
    size_t alloc_left
    # A chunk mapped ahead and faulted in a step at a time by the
    # ApplyThread (_arena_prefault); NULL when there is none.  Tracked in
    # chunks from the start.  spare_ready: bytes of its mapping faulted in.
    uint8_t *spare
    size_t spare_ready
    void **chunks              # every allocation, for freeing
    size_t nchunks
    size_t cap_chunks
    size_t memory_used         # bytes handed out + abandoned chunk tails
    # Tail hint: per hash of a user key, the node last
    # inserted for it at each of the lowest MT_TAIL_LEVELS levels.  A series
    # appending in ts order inserts right after those nodes, so its insert
    # needs no search.  Only a hint: each level is checked against its
    # successor before use.  Concurrent writers read and write it with
    # relaxed atomics: a stale hint is refused or corrected like any other.
    MTNode *tail[MT_TAIL_SLOTS][MT_TAIL_LEVELS]


# One apply(), planned by its validating pass (MemTable._plan), carried out
# without the GIL (_insert_points) and accounted with it (MemTable._applied).
cdef struct ApplyPlan:
    MTList *list
    const uint8_t *buf         # the payload: its owner keeps it alive
    size_t n
    uint64_t seq_start
    size_t count               # entries of every kind
    size_t npoints             # PUT and DELETE entries (skiplist nodes)
    size_t nranges
    size_t range_bytes
    int64_t min_ts
    int64_t max_ts
    int status                 # FDB_OK, or FDB_ERR_NOMEM from the insert


cdef class MemTable(Source):
    # Bytes held by the arena (keys, values, nodes): what memtable_size_mb
    # bounds.  Bytes in use, alignment and abandoned chunk tails included,
    # plus the key bytes of range deletes.
    cdef readonly size_t approximate_bytes
    # Entries inserted (puts, deletes, range deletes).
    cdef readonly size_t num_entries
    # Seq of the first and last entry applied (0 while empty).
    cdef readonly unsigned long long first_seq
    cdef readonly unsigned long long last_seq
    # The skiplist; owned, freed in __dealloc__.
    cdef MTList *list
    # Set while apply() runs: a second concurrent writer is refused.
    cdef bint _applying
    # Key bytes of the range deletes (they live in range_dels, not the arena).
    cdef size_t _range_bytes

    # The body of apply() (strict: seqs above every earlier one) and of
    # apply_concurrent() (the caller guarantees disjoint seqs).
    cdef size_t _apply(self, bytes payload, uint64_t seq_start, bint strict) except? 0
    cdef int _plan(self, bytes payload, uint64_t seq_start, bint strict,
                   ApplyPlan *plan) except -1
    cdef size_t _applied(self, bytes payload, ApplyPlan *plan) except? 0
    # Source's point reads, straight on the skiplist (iterator.pxd).
    cdef object find_version(self, const uint8_t *target, size_t tn, bint fill_cache,
                             bint verify_checksums, EntryHit *hit)
    cdef object find_floor(self, const uint8_t *target, size_t tn, uint64_t snapshot,
                           bint fill_cache, bint verify_checksums, EntryHit *hit)


# What an ApplyThread and its C thread share (under mutex).
cdef struct ApplyShared:
    pthread_mutex_t mutex
    pthread_cond_t cond
    int state                  # APPLY_IDLE, APPLY_PENDING, APPLY_DONE, APPLY_STOP
    int stop_prefault          # set by wait(): the caller's fsync is over (atomic)
    ApplyPlan plan


cdef class ApplyThread:
    """A C thread that applies one batch at a time to a memtable while the
    caller does something else (the engine: the group's fsync).  It needs
    no GIL, so nothing is handed between Python threads."""
    cdef pthread_t thread
    cdef ApplyShared shared    # the thread's only view of this object
    cdef bint running          # the thread exists (in process owner_pid)
    cdef int owner_pid
    cdef bint closed
    cdef MemTable mem          # the batch in progress: kept alive until wait()
    cdef bytes payload

    cdef void _stop(self) noexcept
    cdef void _await_done(self) noexcept nogil
    cdef void _forget_if_forked(self) noexcept


# The C state of a MemTableIterator; `base` first, as the protocol requires.
cdef struct MTIterState:
    fdb_iter base
    MTList *list               # borrowed: the iterator's `mem` keeps it alive
    MTNode *node               # current node, NULL when not valid


cdef class MemTableIterator(Iterator):
    """Iterates every entry of a MemTable in internal-key order, including
    entries applied after it was created (use seqs to take a snapshot).
    seek, seek_for_prev, seek_to_first and next are pure C and need no GIL.
    """
    cdef MTIterState st
    cdef readonly MemTable mem
