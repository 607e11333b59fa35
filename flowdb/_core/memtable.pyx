# cython: language_level=3, boundscheck=False, wraparound=False
"""MemTable: a concurrent skiplist over an arena (after LevelDB db/skiplist.h).

Node entry (docs/FORMAT.md, "Internal key"):

    key   := user_key | ts_be | trailer_be(seq << 8 | kind)
    value := (PUT)    expire_at:i64le user_value
           | (DELETE) <empty>

RANGE_DEL entries of a batch are not nodes: they go to `range_dels` as
(start, end, seq), as Source requires.

Concurrency: one writer (apply) and any number of lock-free readers.  A node
is fully written before it is linked; each level is linked with a release
store of the predecessor's pointer, and readers load pointers with acquire,
so a reader that reaches a node sees its key and value.  Links are made at
level 0 first, so a node reachable at any level is also in the level-0 list.
Nodes are never unlinked or freed before the memtable itself, so readers
need no reclamation scheme.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, INT64_MIN, INT64_MAX
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy
from flowdb._core.memtable cimport pthread_mutex_t, pthread_cond_t, pthread_t

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_create(pthread_t *t, const void *attr, void *(*run)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t t, void **ret)
from posix.unistd cimport getpid
from libc.errno cimport errno
import os

cdef extern from "<unistd.h>" nogil:
    int fdatasync(int fd)
from flowdb._core.cdefs cimport (
    fdb_iter, fdb_iter_init, fdb_ikey_cmp, fdb_ikey_write, fdb_put_u64le,
    FDB_OK, FDB_ERR_NOMEM, FDB_KIND_PUT, FDB_KIND_RANGE_DEL,
    FDB_MAX_SEQ, FDB_TRAILER_SIZE)
from flowdb._core.iterator cimport (Iterator, Source, EntryHit, entry_hit, HIT_SAME_TS,
                                    HIT_SAME_UKEY)
from flowdb._core.batch cimport (BatchReader, BatchEntry, batch_reader_init,
                                 batch_reader_next, batch_reader_finish, batch_error)

cdef extern from *:
    """
    #include "flowdb.h"
    /* Typed wrappers over the flowdb.h atomics (Cython cannot declare a
       type-generic macro). */
    #define mt_load_next(n, i)       fdb_load_acquire(&(n)->next[(i)])
    #define mt_store_next(n, i, x)   fdb_store_release(&(n)->next[(i)], (x))
    #define mt_init_next(n, i, x)    fdb_store_relaxed(&(n)->next[(i)], (x))
    #define mt_load_height(l)        fdb_load_relaxed(&(l)->max_height)
    #define mt_cas_next(n, i, expect, x) \
        __atomic_compare_exchange_n(&(n)->next[(i)], &(expect), (x), 0, \
                                    __ATOMIC_RELEASE, __ATOMIC_RELAXED)
    #define mt_cas_height(l, expect, h) \
        __atomic_compare_exchange_n(&(l)->max_height, (expect), (h), 0, \
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED)
    #define mt_load_tail(t)          fdb_load_relaxed(&(t))
    #define mt_store_tail(t, x)      fdb_store_relaxed(&(t), (x))

    #include <sys/mman.h>
    /* Arena memory straight from mmap, so that freeing a memtable gives its
       memory back to the system at once (1 MiB mallocs, once glibc's dynamic
       mmap threshold has risen past them, come from the heap and can stay in
       the process after free).  MAP_POPULATE faults the pages in with one
       call instead of one trap per 4 KiB page as the nodes are written.
       The mapping's length is in its first 8 bytes. */
    #ifndef MAP_POPULATE
    #define MAP_POPULATE 0
    #endif
    static void *mt_map_flags(size_t size, int flags) {
        size_t len = size + 8;
        uint8_t *p = (uint8_t *)mmap(NULL, len, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
        if (p == (uint8_t *)MAP_FAILED) return NULL;
        *(size_t *)p = len;
        return p + 8;
    }
    #define mt_map(size)      mt_map_flags((size), MAP_POPULATE)
    #define mt_map_lazy(size) mt_map_flags((size), 0)
    /* Faults in [off, off + len) of the mapping behind `mem` (as mt_map
       returned it) without one trap per page and without writing to it, so
       other threads may fill it meanwhile.  0, or -1 where the kernel has
       no MADV_POPULATE_WRITE (before Linux 5.14). */
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23
    #endif
    static int mt_populate(void *mem, size_t off, size_t len) {
        return madvise((uint8_t *)mem - 8 + off, len, MADV_POPULATE_WRITE);
    }
    static void mt_unmap(void *mem) {
        if (mem == NULL) return;
        uint8_t *p = (uint8_t *)mem - 8;
        munmap(p, *(size_t *)p);
    }
    """
    MTNode *mt_load_next(MTNode *n, int i) nogil
    void mt_store_next(MTNode *n, int i, MTNode *x) nogil
    void mt_init_next(MTNode *n, int i, MTNode *x) nogil
    int mt_load_height(MTList *l) nogil
    bint mt_cas_next(MTNode *n, int i, MTNode *expect, MTNode *x) nogil
    bint mt_cas_height(MTList *l, int *expect, int h) nogil
    MTNode *mt_load_tail(MTNode *t) nogil
    void mt_store_tail(MTNode *t, MTNode *x) nogil
    void *mt_map(size_t size) nogil
    void *mt_map_lazy(size_t size) nogil
    int mt_populate(void *mem, size_t off, size_t len) nogil
    void __builtin_prefetch(const void *p) nogil
    void mt_unmap(void *mem) nogil
    int fdb_load_relaxed(int *p) nogil
    void fdb_store_relaxed(int *p, int v) nogil

cdef enum:
    # 1 MiB mappings, less their 8-byte length header.
    CHUNK_SIZE = (1 << 20) - 8
    # Bigger nodes get their own allocation: at most a quarter chunk is wasted.
    BIG_NODE = CHUNK_SIZE >> 2
    ALIGN = 8
    # apply() prefetches the tail hint 2 * PREFETCH entries ahead, and that
    # hint's level-0 successor PREFETCH entries ahead (it is cached by then).
    PREFETCH = 4
    # Payloads this large are validated without the GIL.
    PLAN_NOGIL_BYTES = 1 << 20
    # Batches of more points are inserted without the GIL (a few microseconds
    # for fewer: less than winning the GIL back from a busy thread costs).
    INSERT_NOGIL_POINTS = 64
    # Bytes of an MTNode before its next[] array.
    NODE_HEADER = sizeof(MTNode) - sizeof(MTNode *)
    # An ApplyThread faults the spare chunk in by steps of this many bytes
    # (~20 us each), checking between steps whether the fsync is over.
    PREFAULT_STEP = 64 << 10


# -- arena -----------------------------------------------------------------

cdef int _track(MTList *l, void *mem) noexcept nogil:
    cdef void **grown
    if l.nchunks == l.cap_chunks:
        grown = <void **>realloc(l.chunks, (l.cap_chunks * 2 + 16) * sizeof(void *))
        if grown == NULL:
            return FDB_ERR_NOMEM
        l.chunks = grown
        l.cap_chunks = l.cap_chunks * 2 + 16
    l.chunks[l.nchunks] = mem
    l.nchunks += 1
    return FDB_OK


# Returns `size` bytes aligned to 8, or NULL when out of memory.
cdef uint8_t *_arena_alloc(MTList *l, size_t size) noexcept nogil:
    cdef uint8_t *mem
    size = (size + ALIGN - 1) & ~(<size_t>ALIGN - 1)
    if size <= l.alloc_left:
        mem = l.alloc_ptr
        l.alloc_ptr += size
        l.alloc_left -= size
        l.memory_used += size
        return mem
    # A big node in its own allocation keeps the current chunk's tail usable.
    if size > <size_t>BIG_NODE:
        mem = <uint8_t *>mt_map(size)
        if mem == NULL or _track(l, mem) != FDB_OK:
            mt_unmap(mem)
            return NULL
        l.memory_used += size
        return mem
    if l.spare != NULL:
        mem, l.spare = l.spare, NULL         # mapped (and tracked) by _arena_prefault
    else:
        mem = <uint8_t *>mt_map(CHUNK_SIZE)
        if mem == NULL or _track(l, mem) != FDB_OK:
            mt_unmap(mem)
            return NULL
    l.memory_used += l.alloc_left + size     # the old tail is abandoned
    l.alloc_ptr = mem + size
    l.alloc_left = CHUNK_SIZE - size
    return mem


cdef bint _populate_works = True


cdef bint _arena_prefault(MTList *l) noexcept nogil:
    """Fault in the next PREFAULT_STEP bytes of the spare chunk (mapping
    one first), which the arena takes when its chunk runs out; False when
    there was nothing left to do.

    Faulting a chunk in costs ~400 us (MAP_POPULATE), once every ~8 batches
    of 1,000 readings.  The ApplyThread calls this in the time its batch's
    fsync leaves it, so that cost stops lengthening one commit in eight."""
    global _populate_works
    cdef uint8_t *fresh
    cdef size_t off = 0, n = 0
    if not _populate_works:
        return False
    pthread_mutex_lock(&l.arena_lock)
    if l.spare == NULL:
        pthread_mutex_unlock(&l.arena_lock)
        fresh = <uint8_t *>mt_map_lazy(CHUNK_SIZE)
        if fresh == NULL:
            return False
        pthread_mutex_lock(&l.arena_lock)
        # Another ApplyThread (pipelined groups) may have made one meanwhile.
        if l.spare != NULL or _track(l, fresh) != FDB_OK:
            pthread_mutex_unlock(&l.arena_lock)
            mt_unmap(fresh)
            return False
        l.spare = fresh
        l.spare_ready = 0
    if l.spare_ready < CHUNK_SIZE + 8:
        off = l.spare_ready
        n = min(<size_t>PREFAULT_STEP, CHUNK_SIZE + 8 - off)
        l.spare_ready += n
        fresh = l.spare
    pthread_mutex_unlock(&l.arena_lock)
    # Outside the lock: the mapping lives as long as the list, even once
    # the arena has taken it and writes nodes into it.
    if n and mt_populate(fresh, off, n) != 0:
        _populate_works = False
    return n != 0


cdef size_t _memory_used(MTList *l) noexcept nogil:
    cdef size_t used
    pthread_mutex_lock(&l.arena_lock)
    used = l.memory_used
    pthread_mutex_unlock(&l.arena_lock)
    return used


cdef void _list_free(MTList *l) noexcept nogil:
    cdef size_t i
    if l == NULL:
        return
    for i in range(l.nchunks):
        mt_unmap(l.chunks[i])
    free(l.chunks)
    pthread_mutex_destroy(&l.arena_lock)
    free(l)


cdef MTList *_list_new() noexcept nogil:
    cdef MTList *l = <MTList *>calloc(1, sizeof(MTList))
    cdef int i
    if l == NULL:
        return NULL
    pthread_mutex_init(&l.arena_lock, NULL)
    l.head = <MTNode *>_arena_alloc(l, NODE_HEADER + MT_MAX_HEIGHT * sizeof(MTNode *))
    if l.head == NULL:
        _list_free(l)
        return NULL
    l.head.key = NULL
    l.head.key_len = 0
    l.head.value_len = 0
    for i in range(MT_MAX_HEIGHT):
        l.head.next[i] = NULL
    l.max_height = 1
    # Fixed seed: the same writes build the same shape (reproducible tests).
    l.rng = 0x9E3779B97F4A7C15
    return l


# -- search (readers and writer) -------------------------------------------

cdef inline int _cmp(const MTNode *n, const uint8_t *k, size_t kn) noexcept nogil:
    return fdb_ikey_cmp(n.key, n.key_len, k, kn)


# First node >= k, or NULL.  If prev is not NULL, fills prev[level] with the
# last node < k at every level (what an insert links after).
cdef MTNode *_find_ge(MTList *l, const uint8_t *k, size_t kn, MTNode **prev) noexcept nogil:
    cdef MTNode *x = l.head
    cdef MTNode *nxt
    cdef MTNode *known_ge = NULL       # already compared >= k: skip a memcmp
    cdef int level = mt_load_height(l) - 1
    while True:
        nxt = mt_load_next(x, level)
        if nxt != NULL and nxt != known_ge and _cmp(nxt, k, kn) < 0:
            x = nxt
        else:
            if prev != NULL:
                prev[level] = x
            if level == 0:
                return nxt
            known_ge = nxt
            level -= 1


# Last node <= k, or NULL.
cdef MTNode *_find_le(MTList *l, const uint8_t *k, size_t kn) noexcept nogil:
    cdef MTNode *x = l.head
    cdef MTNode *nxt
    cdef MTNode *known_gt = NULL
    cdef int level = mt_load_height(l) - 1
    while True:
        nxt = mt_load_next(x, level)
        if nxt != NULL and nxt != known_gt and _cmp(nxt, k, kn) <= 0:
            x = nxt
        else:
            if level == 0:
                return NULL if x == l.head else x
            known_gt = nxt
            level -= 1


# -- insert (writers) --------------------------------------------------

cdef inline int _random_height(MTList *l) noexcept nogil:
    cdef int h = 1
    cdef uint64_t x
    while h < MT_MAX_HEIGHT:
        # xorshift64: cheap, and its low bits are good enough for 1-in-4.
        x = l.rng
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        l.rng = x
        if (x >> 32) % MT_BRANCHING != 0:
            break
        h += 1
    return h


# A node for entry e with sequence number seq, not yet linked.
cdef MTNode *_new_node(MTList *l, BatchEntry *e, uint64_t seq, int *height) noexcept nogil:
    cdef int h = _random_height(l)
    cdef size_t klen = e.key_len + FDB_TRAILER_SIZE
    cdef size_t vlen = e.value_len + 8 if e.kind == FDB_KIND_PUT else 0
    cdef size_t links = NODE_HEADER + <size_t>h * sizeof(MTNode *)
    cdef uint8_t *mem = _arena_alloc(l, links + klen + vlen)
    if mem == NULL:
        return NULL
    cdef MTNode *n = <MTNode *>mem
    cdef uint8_t *k = mem + links
    fdb_ikey_write(k, e.key, e.key_len, e.ts, seq, e.kind)
    if e.kind == FDB_KIND_PUT:
        fdb_put_u64le(k + klen, <uint64_t>e.expire_at)
        memcpy(k + klen + 8, e.value, e.value_len)
    n.key = k
    n.key_len = <uint32_t>klen
    n.value_len = <uint32_t>vlen
    height[0] = h
    return n


cdef inline size_t _tail_slot(const uint8_t *k, size_t klen) noexcept nogil:
    # FNV-1a over the user key.
    cdef uint64_t hsh = 14695981039346656037ULL
    cdef size_t i
    for i in range(klen - FDB_TRAILER_SIZE):
        hsh = (hsh ^ k[i]) * 1099511628211ULL
    return <size_t>(hsh ^ (hsh >> 32)) & (MT_TAIL_SLOTS - 1)


# Links n (of height h) after prev[0..h-1], each a node < n (or head) on its
# level.  Another writer may have linked nodes after prev[i] meanwhile: walk
# right past those < n, then publish with a CAS, retrying if it lost a race.
# Level 0 first, so a node reachable on any level is on level 0.  n's
# internal key must not be in the list (the engine's seqs are unique).
cdef void _link(MTList *l, MTNode *n, int h, MTNode **prev) noexcept nogil:
    cdef MTNode *nxt
    cdef int i, top = mt_load_height(l)
    # Readers may see the new height before the node: they then find NULL
    # (or another writer's node) at the new levels of head, which is correct.
    while h > top and not mt_cas_height(l, &top, h):
        pass
    for i in range(h):
        while True:
            nxt = mt_load_next(prev[i], i)
            while nxt != NULL and _cmp(nxt, n.key, n.key_len) < 0:
                prev[i] = nxt
                nxt = mt_load_next(nxt, i)
            mt_init_next(n, i, nxt)
            if mt_cas_next(prev[i], i, nxt, n):
                break


# An apply's finger into the list (local to one apply call, so concurrent
# writers each have their own).
cdef struct MTSplice:
    MTNode *last               # NULL: no finger yet
    int height                 # levels of splice[] that are set
    MTNode *splice[MT_MAX_HEIGHT]


# Inserts n (of height h).  sp is the calling apply's finger: the last node it
# linked through a search, and that node's predecessor on every level.
cdef void _insert(MTList *l, MTNode *n, int h, size_t slot, MTSplice *sp) noexcept nogil:
    cdef MTNode *prev[MT_MAX_HEIGHT]
    cdef MTNode *x
    cdef MTNode *nxt
    cdef int i, level, top = mt_load_height(l)
    cdef bint moved = False
    cdef MTNode **tail = l.tail[slot]
    if h <= MT_TAIL_LEVELS:
        # The tail hint: if, at every level of n, the key's last node there
        # is directly followed by a node > n, those are n's predecessors.
        for i in range(h):
            x = mt_load_tail(tail[i])
            if x == NULL or _cmp(x, n.key, n.key_len) >= 0:
                break
            nxt = mt_load_next(x, i)
            if nxt != NULL and _cmp(nxt, n.key, n.key_len) <= 0:
                break
            prev[i] = x
        else:
            _link(l, n, h, prev)
            for i in range(h):
                mt_store_tail(tail[i], n)
            # The finger stays right for sp.last unless n, below it, took a
            # level above 0 (splice[0] is sp.last itself): then drop it.
            if h > 1 and sp.last != NULL and fdb_ikey_cmp(
                    n.key, n.key_len, sp.last.key, sp.last.key_len) < 0:
                sp.last = NULL
            return
    if sp.last != NULL and fdb_ikey_cmp(n.key, n.key_len, sp.last.key, sp.last.key_len) > 0:
        # After the finger: a finger search from its predecessors.  Climb to
        # the lowest level whose splice is directly followed by a node >= n:
        # no node between the finger and n has that level (or any higher),
        # so every splice from there up precedes n.  Below it, walk right
        # from the splice (or from where the level above ended, if that is
        # further right).  Cost: O(log gap), not O(log n).  (Another writer
        # may have inserted since: _link walks right past its nodes.)
        top = sp.height
        level = 0
        while level < top - 1:
            nxt = mt_load_next(sp.splice[level], level)
            if nxt != NULL and _cmp(nxt, n.key, n.key_len) < 0:
                level += 1
            else:
                break
        for i in range(level + 1, top):
            prev[i] = sp.splice[i]
        x = sp.splice[level]
        for level in range(level, -1, -1):
            if not moved:
                x = sp.splice[level]
            while True:
                nxt = mt_load_next(x, level)
                if nxt == NULL or _cmp(nxt, n.key, n.key_len) >= 0:
                    break
                x = nxt
                moved = True
            prev[level] = x
    else:
        _find_ge(l, n.key, n.key_len, prev)
    for i in range(top, h):
        prev[i] = l.head
    if h > top:
        top = h
    _link(l, n, h, prev)
    # The predecessors of n at every level are the finger for the next insert.
    for i in range(top):
        sp.splice[i] = n if i < h else prev[i]
    sp.height = top
    sp.last = n
    for i in range(h if h < MT_TAIL_LEVELS else MT_TAIL_LEVELS):
        mt_store_tail(tail[i], n)


# -- MemTable ----------------------------------------------------------------

cdef int _scan_batch(BatchReader *r, ApplyPlan *plan) noexcept nogil:
    """Pass 1 of an apply: validate plan's payload, counting its entries
    into plan; r is left where a problem was found (batch_error)."""
    cdef BatchEntry e
    cdef int st = batch_reader_init(r, plan.buf, plan.n)
    while st == FDB_OK and r.index < r.count:
        st = batch_reader_next(r, &e)
        if st != FDB_OK:
            break
        if e.kind == FDB_KIND_RANGE_DEL:
            plan.nranges += 1
            plan.range_bytes += e.key_len + e.value_len
        else:
            plan.npoints += 1
            if e.ts < plan.min_ts:
                plan.min_ts = e.ts
            if e.ts > plan.max_ts:
                plan.max_ts = e.ts
    if st == FDB_OK:
        st = batch_reader_finish(r)
    return st


cdef void _insert_points(ApplyPlan *plan) noexcept nogil:
    """Pass 2 of an apply: build every node first, then link them, so that
    running out of memory leaves no half-applied batch (unlinked nodes are
    only wasted arena bytes).  Sets plan.status."""
    cdef MTList *l = plan.list
    cdef size_t npoints = plan.npoints, i = 0
    cdef MTNode **nodes = <MTNode **>malloc(npoints * sizeof(MTNode *))
    cdef int *heights = <int *>malloc(npoints * sizeof(int))
    cdef size_t *slots = <size_t *>malloc(npoints * sizeof(size_t))
    cdef BatchReader r
    cdef BatchEntry e
    cdef MTNode *x
    cdef MTSplice sp
    sp.last = NULL
    sp.height = 0
    plan.status = FDB_OK
    if nodes == NULL or heights == NULL or slots == NULL:
        plan.status = FDB_ERR_NOMEM
    else:
        batch_reader_init(&r, plan.buf, plan.n)
        pthread_mutex_lock(&l.arena_lock)
        while r.index < r.count:
            batch_reader_next(&r, &e)
            if e.kind != FDB_KIND_RANGE_DEL:
                nodes[i] = _new_node(l, &e, plan.seq_start + r.index - 1, &heights[i])
                if nodes[i] == NULL:
                    plan.status = FDB_ERR_NOMEM
                    break
                i += 1
        pthread_mutex_unlock(&l.arena_lock)
    if plan.status == FDB_OK:
        for i in range(npoints):
            slots[i] = _tail_slot(nodes[i].key, nodes[i].key_len)
        for i in range(npoints):
            # The tail hints of the next entries, and their successors, are
            # cache misses: start them early.
            if i + 2 * PREFETCH < npoints:
                __builtin_prefetch(mt_load_tail(l.tail[slots[i + 2 * PREFETCH]][0]))
            if i + PREFETCH < npoints:
                x = mt_load_tail(l.tail[slots[i + PREFETCH]][0])
                if x != NULL:
                    __builtin_prefetch(mt_load_next(x, 0))
            _insert(l, nodes[i], heights[i], slots[i], &sp)
    free(nodes)
    free(heights)
    free(slots)


cdef class MemTable(Source):
    """MemTable() -> an empty memtable.  See memtable.pxd for thread safety."""

    def __cinit__(self):
        self.list = _list_new()
        if self.list == NULL:
            raise MemoryError()
        self.approximate_bytes = self.list.memory_used

    def __dealloc__(self):
        _list_free(self.list)
        self.list = NULL

    def __len__(self):
        return self.num_entries

    def arena_info(self):
        """{"chunks": allocations mapped, "spare": the spare chunk's address
        (None without one), "spare_ready": bytes of it faulted in}: what the
        tests check."""
        cdef MTList *l = self.list
        pthread_mutex_lock(&l.arena_lock)
        spare, ready, chunks = <size_t>l.spare, l.spare_ready, l.nchunks
        pthread_mutex_unlock(&l.arena_lock)
        return {"chunks": chunks, "spare": spare or None, "spare_ready": ready if spare else None}

    def apply(self, bytes payload not None, unsigned long long seq_start):
        """Applies a batch payload (docs/FORMAT.md "Batch payload") with
        sequence numbers seq_start, seq_start + 1, ...; returns the number
        of entries.

        The payload is validated whole before anything is inserted: a
        malformed one raises CorruptionError and leaves the memtable
        unchanged.  seq_start must be >= 1 and above every seq applied so
        far (ValueError), so internal keys never repeat.  Single writer: a
        concurrent second apply() raises RuntimeError.  Inserts run without
        the GIL; readers may iterate meanwhile.
        """
        if self._applying:
            raise RuntimeError("MemTable.apply() called concurrently; it has one writer")
        self._applying = True
        try:
            return self._apply(payload, seq_start, True)
        finally:
            self._applying = False

    def apply_concurrent(self, bytes payload not None, unsigned long long seq_start):
        """As apply(), callable from several threads at once (a batch of
        more than INSERT_NOGIL_POINTS points goes in without the GIL, so
        writers of one commit group fill the memtable in parallel).  The
        caller guarantees that no two batches ever applied share a seq;
        batches may arrive out of seq order.  Not to be mixed with a
        concurrent apply()."""
        return self._apply(payload, seq_start, False)

    cdef size_t _apply(self, bytes payload, uint64_t seq_start, bint strict) except? 0:
        cdef ApplyPlan plan
        self._plan(payload, seq_start, strict, &plan)
        if plan.npoints > INSERT_NOGIL_POINTS:
            with nogil:
                _insert_points(&plan)
        elif plan.npoints:
            _insert_points(&plan)
        return self._applied(payload, &plan)

    cdef int _plan(self, bytes payload, uint64_t seq_start, bint strict,
                   ApplyPlan *plan) except -1:
        """Pass 1: validate the whole payload (nothing is touched before it
        passes) and fill in plan for _insert_points and _applied."""
        cdef const uint8_t *buf = <const uint8_t *>PyBytes_AS_STRING(payload)
        cdef size_t n = PyBytes_GET_SIZE(payload)
        cdef BatchReader r
        cdef int st = FDB_OK
        plan.list = self.list
        plan.buf = buf
        plan.n = n
        plan.seq_start = seq_start
        plan.count = plan.npoints = plan.nranges = plan.range_bytes = 0
        plan.min_ts = INT64_MAX
        plan.max_ts = INT64_MIN
        plan.status = FDB_OK
        # A few microseconds for a typical batch: cheaper with the GIL held
        # than giving it away and waiting to win it back.
        if n > PLAN_NOGIL_BYTES:
            with nogil:
                st = _scan_batch(&r, plan)
        else:
            st = _scan_batch(&r, plan)
        if st != FDB_OK:
            raise batch_error(&r)
        plan.count = r.count
        if plan.count == 0:
            plan.npoints = 0
            return 0
        if seq_start == 0:
            raise ValueError("seq_start must be >= 1 (seq 0 means 'none')")
        if strict and self.last_seq != 0 and seq_start <= self.last_seq:
            raise ValueError(f"seq_start={seq_start} is not above the last applied "
                             f"seq {self.last_seq}")
        if seq_start > FDB_MAX_SEQ or plan.count - 1 > FDB_MAX_SEQ - seq_start:
            raise ValueError(f"seqs {seq_start}..{seq_start + plan.count - 1} exceed "
                             f"the 56-bit MAX_SEQ")
        return 0

    cdef size_t _applied(self, bytes payload, ApplyPlan *plan) except? 0:
        """Pass 3, with the GIL: the range deletes and the counters (concurrent
        applies update these one at a time)."""
        cdef BatchReader r
        cdef BatchEntry e
        cdef uint64_t seq_start = plan.seq_start
        cdef size_t count = plan.count
        self.approximate_bytes = _memory_used(self.list) + self._range_bytes
        if plan.status != FDB_OK:
            raise MemoryError("memtable arena allocation failed")
        if count == 0:
            return 0
        if plan.nranges:
            batch_reader_init(&r, plan.buf, plan.n)
            while r.index < r.count:
                batch_reader_next(&r, &e)
                if e.kind == FDB_KIND_RANGE_DEL:
                    self.range_dels.append(((<const char *>e.key)[:e.key_len],
                                            (<const char *>e.value)[:e.value_len],
                                            seq_start + r.index - 1))
        self._range_bytes += plan.range_bytes
        self.approximate_bytes = _memory_used(self.list) + self._range_bytes
        self.num_entries += count
        if self.first_seq == 0 or seq_start < self.first_seq:
            self.first_seq = seq_start
        if seq_start + count - 1 > self.last_seq:
            self.last_seq = seq_start + count - 1
        if plan.min_ts < self.min_ts:
            self.min_ts = plan.min_ts
        if plan.max_ts > self.max_ts:
            self.max_ts = plan.max_ts
        return count

    cpdef Iterator new_iterator(self, bint fill_cache=True, bint verify_checksums=True,
                                long long ts_lo=INT64_MIN, long long ts_hi=INT64_MAX):
        """An iterator over every entry; the arguments are accepted for the
        Source protocol and ignored (a memtable has no cache or blocks)."""
        return MemTableIterator(self)

    cdef object find_version(self, const uint8_t *target, size_t tn, bint fill_cache,
                             bint verify_checksums, EntryHit *hit):
        cdef MTNode *n
        # The GIL stays held: a search is short, and giving the GIL away
        # may cost a whole switch interval to get it back.
        hit.found = False
        n = _find_ge(self.list, target, tn, NULL)
        # RANGE_DEL nodes (ts INT64_MIN) are not versions.
        while (n != NULL and entry_hit(n.key, n.key_len, n.key + n.key_len, n.value_len,
                                       target, tn, HIT_SAME_TS, hit)
               and hit.kind == FDB_KIND_RANGE_DEL):
            hit.found = False
            n = mt_load_next(n, 0)
        return self if hit.found else None

    cdef object find_floor(self, const uint8_t *target, size_t tn, uint64_t snapshot,
                           bint fill_cache, bint verify_checksums, EntryHit *hit):
        cdef MTNode *n
        hit.found = False
        n = _find_le(self.list, target, tn)
        if n != NULL:
            entry_hit(n.key, n.key_len, n.key + n.key_len, n.value_len,
                      target, tn, HIT_SAME_UKEY, hit)
        return self if hit.found else None


# -- ApplyThread ------------------------------------------------------------

cdef enum:
    APPLY_IDLE = 0
    APPLY_PENDING = 1
    APPLY_DONE = 2
    APPLY_STOP = 3


cdef void *_apply_thread_main(void *arg) noexcept nogil:
    # Lives in the ApplyThread, whose __dealloc__ joins this thread.
    cdef ApplyShared *t = <ApplyShared *>arg
    pthread_mutex_lock(&t.mutex)
    while True:
        while t.state != APPLY_PENDING and t.state != APPLY_STOP:
            pthread_cond_wait(&t.cond, &t.mutex)
        if t.state == APPLY_STOP:
            break
        pthread_mutex_unlock(&t.mutex)
        _insert_points(&t.plan)
        # Until the caller's fsync is over (wait()), fault in the arena's
        # next chunk.
        while (t.plan.status == FDB_OK and not fdb_load_relaxed(&t.stop_prefault)
               and _arena_prefault(t.plan.list)):
            pass
        pthread_mutex_lock(&t.mutex)
        t.state = APPLY_DONE
        pthread_cond_broadcast(&t.cond)
    pthread_mutex_unlock(&t.mutex)
    return NULL


cdef class ApplyThread:
    """ApplyThread(): start(mem, payload, seq_start) begins what
    mem.apply_concurrent(payload, seq_start) does, on a C thread, and
    returns at once; wait() waits for it and returns what apply_concurrent
    would have (or raises what it would have).  One batch at a time; every
    start() must be followed by wait().  close() ends the thread."""

    def __cinit__(self):
        pthread_mutex_init(&self.shared.mutex, NULL)
        pthread_cond_init(&self.shared.cond, NULL)

    def start(self, MemTable mem not None, bytes payload not None,
              unsigned long long seq_start):
        """Validate the batch here (raising as apply_concurrent does, with
        nothing started), then insert it on the thread."""
        if self.closed:
            raise RuntimeError("the ApplyThread is closed")
        if self.mem is not None:
            raise RuntimeError("ApplyThread.start() before wait() of the previous batch")
        self._forget_if_forked()
        mem._plan(payload, seq_start, False, &self.shared.plan)
        if self.shared.plan.npoints and not self.running:
            if pthread_create(&self.thread, NULL, _apply_thread_main, &self.shared) != 0:
                raise OSError("could not start the memtable apply thread")
            self.running = True
            self.owner_pid = getpid()
        self.mem, self.payload = mem, payload
        fdb_store_relaxed(&self.shared.stop_prefault, 0)
        # The thread holds the mutex only for a few instructions: taking it
        # with the GIL held costs less than giving the GIL away.
        pthread_mutex_lock(&self.shared.mutex)
        self.shared.state = APPLY_PENDING if self.shared.plan.npoints else APPLY_DONE
        pthread_cond_broadcast(&self.shared.cond)
        pthread_mutex_unlock(&self.shared.mutex)

    def datasync(self, int fd):
        """fdatasync(fd) while the batch start() began goes in, then wait
        for that batch: one hand-over of the GIL for both (winning it back
        from a busy flush costs tens of microseconds).  OSError as
        os.fdatasync raises it; wait() must follow either way."""
        cdef int rc, err = 0
        if self.mem is None:
            raise RuntimeError("ApplyThread.datasync() without start()")
        with nogil:
            rc = fdatasync(fd)
            if rc != 0:
                err = errno
            self._await_done()
        if rc != 0:
            raise OSError(err, os.strerror(err))

    cdef void _await_done(self) noexcept nogil:
        # The caller's fsync is over: stop prefaulting, wait for the batch.
        fdb_store_relaxed(&self.shared.stop_prefault, 1)
        pthread_mutex_lock(&self.shared.mutex)
        while self.shared.state != APPLY_DONE:
            pthread_cond_wait(&self.shared.cond, &self.shared.mutex)
        pthread_mutex_unlock(&self.shared.mutex)

    def busy(self):
        """Whether the batch start() began is still going in, or the thread
        still faulting in the arena's spare chunk after it."""
        pthread_mutex_lock(&self.shared.mutex)
        busy = self.shared.state == APPLY_PENDING
        pthread_mutex_unlock(&self.shared.mutex)
        return busy

    def wait(self):
        """Wait for the batch start() began; returns its number of entries."""
        if self.mem is None:
            raise RuntimeError("ApplyThread.wait() without start()")
        pthread_mutex_lock(&self.shared.mutex)
        if self.shared.state != APPLY_DONE:
            # Still inserting: wait without the GIL.
            pthread_mutex_unlock(&self.shared.mutex)
            with nogil:
                self._await_done()
            pthread_mutex_lock(&self.shared.mutex)
        self.shared.state = APPLY_IDLE
        pthread_mutex_unlock(&self.shared.mutex)
        mem, payload = self.mem, self.payload
        self.mem = self.payload = None
        return mem._applied(payload, &self.shared.plan)

    def close(self):
        """End the thread (after the batch in progress); idempotent."""
        self.closed = True
        self._stop()

    cdef void _forget_if_forked(self) noexcept:
        # In a child forked while the thread existed, the thread stayed in
        # the parent, and the mutex may have been copied locked.
        if self.running and getpid() != self.owner_pid:
            pthread_mutex_init(&self.shared.mutex, NULL)
            pthread_cond_init(&self.shared.cond, NULL)
            self.shared.state = APPLY_IDLE
            self.running = False

    cdef void _stop(self) noexcept:
        self._forget_if_forked()
        if not self.running:
            return
        with nogil:
            pthread_mutex_lock(&self.shared.mutex)
            while self.shared.state == APPLY_PENDING:
                pthread_cond_wait(&self.shared.cond, &self.shared.mutex)
            self.shared.state = APPLY_STOP
            pthread_cond_broadcast(&self.shared.cond)
            pthread_mutex_unlock(&self.shared.mutex)
            pthread_join(self.thread, NULL)
        self.running = False

    def __dealloc__(self):
        self._stop()
        pthread_cond_destroy(&self.shared.cond)
        pthread_mutex_destroy(&self.shared.mutex)


# -- MemTableIterator --------------------------------------------------------

cdef inline int _mt_position(MTIterState *st, MTNode *n) noexcept nogil:
    st.node = n
    if n == NULL:
        st.base.valid = 0
        return FDB_OK
    st.base.key = n.key
    st.base.key_len = n.key_len
    st.base.value = n.key + n.key_len
    st.base.value_len = n.value_len
    st.base.valid = 1
    return FDB_OK


cdef int _mt_seek_to_first(fdb_iter *it) noexcept nogil:
    cdef MTIterState *st = <MTIterState *>it
    return _mt_position(st, mt_load_next(st.list.head, 0))


cdef int _mt_seek(fdb_iter *it, const uint8_t *t, size_t tn) noexcept nogil:
    cdef MTIterState *st = <MTIterState *>it
    return _mt_position(st, _find_ge(st.list, t, tn, NULL))


cdef int _mt_seek_for_prev(fdb_iter *it, const uint8_t *t, size_t tn) noexcept nogil:
    cdef MTIterState *st = <MTIterState *>it
    return _mt_position(st, _find_le(st.list, t, tn))


cdef int _mt_next(fdb_iter *it) noexcept nogil:
    cdef MTIterState *st = <MTIterState *>it
    if st.node == NULL:
        st.base.valid = 0
        return FDB_OK
    cdef MTNode *n = mt_load_next(st.node, 0)
    cdef MTNode *ahead = mt_load_next(n, 0) if n != NULL else NULL
    if ahead != NULL:
        ahead = mt_load_next(ahead, 0)
    if ahead != NULL:
        # Sorted order visits nodes in no order of address, so a flush reads
        # every node from DRAM.  Fetch the node two ahead (the link to it was
        # fetched one step ago): about 10% off building a table.
        __builtin_prefetch(ahead)
        __builtin_prefetch(<uint8_t *>ahead + 64)
        __builtin_prefetch(<uint8_t *>ahead + 128)
        __builtin_prefetch(<uint8_t *>ahead + 192)
    return _mt_position(st, n)


cdef class MemTableIterator(Iterator):

    def __cinit__(self, MemTable mem not None):
        self.mem = mem
        self.st.list = mem.list
        self.st.node = NULL
        fdb_iter_init(&self.st.base, _mt_seek_to_first, _mt_seek, _mt_seek_for_prev, _mt_next)
        self.it = &self.st.base
