# cython: language_level=3, boundscheck=False, wraparound=False
"""BlockCache: the LRU cache of decompressed, checksum-verified SSTable blocks.

Keys are (file_number, block_offset), two unsigned 64-bit integers; values
are the block's bytes (exact ``bytes`` objects), charged by ``len``.  Beside
each block the cache keeps its BlockMeta: where its restart array starts and
how many restarts it has, as checked once when the block was read from disk
(table.pyx), so iterators over a cached block skip that check, and the restart
offsets themselves when there are few, which a reader prefetches.  Blocks put
from Python carry no meta (``trusted`` is false) and are checked on every use.

One cache is shared by every TableReader of an engine and by every thread.
Layout: an arena of CacheEntry (reused through a free list), an open
addressing hash table of arena indices (linear probing, load <= 1/2,
backward-shift deletion, so no tombstones), and a doubly linked LRU list
through the arena.  Every operation is O(1) except erase_file and clear.

Thread safety without a lock: every method, and the cdef fast paths
(lookup, insert) that table.pyx calls, runs with the GIL held and is a short
sequence of C code and C-API calls that never runs Python code and never
releases the GIL: keys are C integers (a Python key is converted before the
cache is touched), values are exact bytes (incref/decref only; freeing a
bytes object runs no Python code, unlike a subclass with __del__ could), and
memory comes from malloc.  So no other thread can observe or change the
cache half-way through an operation: the GIL serialises them.  (This relies
on the GIL: a free-threaded CPython build would need a lock here.)

Capacity 0 disables caching: nothing is ever stored.  A value larger than
the whole capacity is not stored (it would evict everything and then
itself).  Usage counts only the bytes of the values, not the ~100 bytes of
bookkeeping per entry (the bytes object header, the arena and the table).
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.bytes cimport PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.number cimport PyNumber_Index

cdef enum:
    _MIN_SLOTS = 16

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int fdb_release_free_memory(void) { return malloc_trim(0); }
    #else
    static int fdb_release_free_memory(void) { return 0; }
    #endif
    """
    int fdb_release_free_memory() nogil


cdef inline uint64_t _hash(uint64_t file, uint64_t offset) noexcept nogil:
    """A well mixed 64-bit hash of the key (splitmix64's finaliser)."""
    cdef uint64_t h = (file * <uint64_t>0x9E3779B97F4A7C15) ^ offset
    h ^= h >> 30
    h *= <uint64_t>0xBF58476D1CE4E5B9
    h ^= h >> 27
    h *= <uint64_t>0x94D049BB133111EB
    h ^= h >> 31
    return h


cdef int _key(object key, uint64_t *file, uint64_t *offset) except -1:
    """Converts a Python key (file_number, offset) to C; runs before the
    cache is touched (the conversion may run Python code: __index__)."""
    if not isinstance(key, tuple) or len(<tuple>key) != 2:
        raise TypeError(f"a BlockCache key is a (file_number, offset) pair of ints, "
                        f"not {key!r}")
    file[0] = PyNumber_Index((<tuple>key)[0])
    offset[0] = PyNumber_Index((<tuple>key)[1])
    return 0


cdef _check_restart_offsets(bytes data, const BlockMeta *meta):
    """Asserts that the restart offsets kept in a trusted meta are the
    block's own, and kept exactly when there are few and they fit (_check)."""
    cdef const unsigned char *p = data
    cdef uint32_t i, n = meta.num_restarts
    few = n <= BLOCK_META_RESTARTS and meta.data_end <= 0xFFFF
    assert meta.n_restart_offsets == (n if few else 0)
    for i in range(meta.n_restart_offsets):
        assert meta.restart_offsets[i] == int.from_bytes(
            p[meta.data_end + 4 * i:meta.data_end + 4 * i + 4], "little")


cdef class BlockCache:
    """BlockCache(capacity_bytes): LRU of (file_number, offset) -> bytes,
    bounded by the sum of len(value).  Thread-safe (see the module doc)."""

    def __cinit__(self, capacity_bytes):
        self.entries = NULL
        self.ecap = 0
        self.eused = 0
        self.efree = -1
        self.nentries = 0
        self.slots = NULL
        self.mask = 0
        self.head = -1
        self.tail = -1
        capacity_bytes = int(capacity_bytes)
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self.capacity = capacity_bytes

    def __dealloc__(self):
        self._drop_all()

    # -- internals (GIL held; no Python code) -----------------------------------

    cdef void _drop_all(self) noexcept:
        """Releases every entry and the arrays: the cache is then empty."""
        cdef CacheEntry *entries = self.entries
        cdef Py_ssize_t i, n = self.eused
        free(self.slots)
        self.entries = NULL
        self.slots = NULL
        self.ecap = self.eused = self.nentries = 0
        self.efree = self.head = self.tail = -1
        self.mask = 0
        self.usage = 0
        # The cache is consistent (empty) before the first decref.
        for i in range(n):
            if entries[i].data != NULL:
                Py_DECREF(<object>entries[i].data)
        free(entries)

    cdef Py_ssize_t _find(self, uint64_t file, uint64_t offset, uint64_t h,
                          size_t *slot) noexcept:
        """The entry of the key, or -1; *slot is its slot, or the empty slot
        where it would go.  The table must exist (mask > 0)."""
        cdef size_t i = <size_t>h & self.mask
        cdef Py_ssize_t e
        cdef CacheEntry *ent
        while True:
            e = self.slots[i]
            if e < 0:
                slot[0] = i
                return -1
            ent = &self.entries[e]
            if ent.hash == h and ent.file == file and ent.offset == offset:
                slot[0] = i
                return e
            i = (i + 1) & self.mask

    cdef void _unlink(self, Py_ssize_t e) noexcept:
        cdef CacheEntry *ent = &self.entries[e]
        if ent.prev >= 0:
            self.entries[ent.prev].next = ent.next
        else:
            self.head = ent.next
        if ent.next >= 0:
            self.entries[ent.next].prev = ent.prev
        else:
            self.tail = ent.prev

    cdef void _push_front(self, Py_ssize_t e) noexcept:
        cdef CacheEntry *ent = &self.entries[e]
        ent.prev = -1
        ent.next = self.head
        if self.head >= 0:
            self.entries[self.head].prev = e
        else:
            self.tail = e
        self.head = e

    cdef void _delete_slot(self, size_t i) noexcept:
        """Empties slot i, shifting back the entries of its probe run that
        may move (so lookups never need tombstones)."""
        cdef size_t j = i, k
        cdef Py_ssize_t e
        while True:
            j = (j + 1) & self.mask
            e = self.slots[j]
            if e < 0:
                break
            k = <size_t>self.entries[e].hash & self.mask
            # The entry at j may fill the hole at i iff i lies on its probe
            # path [k, j), i.e. iff k is not in the cyclic interval (i, j].
            if (k <= i or k > j) if i < j else (k <= i and k > j):
                self.slots[i] = e
                i = j
        self.slots[i] = -1

    cdef int _grow_table(self) noexcept:
        """Doubles the hash table (or makes the first one).  0 or -1 (no memory)."""
        cdef size_t n = (self.mask + 1) * 2 if self.slots != NULL else _MIN_SLOTS
        cdef Py_ssize_t *slots = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        cdef size_t i, mask = n - 1
        cdef Py_ssize_t e
        if slots == NULL:
            return -1
        for i in range(n):
            slots[i] = -1
        e = self.head
        while e >= 0:
            i = <size_t>self.entries[e].hash & mask
            while slots[i] >= 0:
                i = (i + 1) & mask
            slots[i] = e
            e = self.entries[e].next
        free(self.slots)
        self.slots = slots
        self.mask = mask
        return 0

    cdef Py_ssize_t _new_entry(self) noexcept:
        """An unused arena index, or -1 (no memory)."""
        cdef Py_ssize_t e, n
        cdef CacheEntry *p
        if self.efree >= 0:
            e = self.efree
            self.efree = self.entries[e].next
            return e
        if self.eused == self.ecap:
            n = self.ecap * 2 if self.ecap else 64
            p = <CacheEntry *>realloc(self.entries, n * sizeof(CacheEntry))
            if p == NULL:
                return -1
            self.entries = p
            self.ecap = n
        e = self.eused
        self.eused += 1
        return e

    cdef void _remove(self, Py_ssize_t e, size_t slot) noexcept:
        """Drops entry e (found at slot): consistent before its bytes are released."""
        cdef CacheEntry *ent = &self.entries[e]
        cdef PyObject *data = ent.data
        self._unlink(e)
        self._delete_slot(slot)
        self.usage -= ent.charge
        self.nentries -= 1
        ent.data = NULL
        ent.next = self.efree
        self.efree = e
        Py_DECREF(<object>data)

    cdef void _evict(self) noexcept:
        """Drops least recently used entries until usage <= capacity."""
        cdef Py_ssize_t e
        cdef size_t slot
        cdef CacheEntry *ent
        while self.usage > self.capacity and self.tail >= 0:
            e = self.tail
            ent = &self.entries[e]
            self._find(ent.file, ent.offset, ent.hash, &slot)
            self._remove(e, slot)

    # -- fast paths (table.pyx) -----------------------------------------------------

    cdef bytes lookup(self, uint64_t file, uint64_t offset, BlockMeta *meta):
        cdef uint64_t h
        cdef size_t slot
        cdef Py_ssize_t e
        if self.nentries == 0:
            self.misses += 1
            return None
        h = _hash(file, offset)
        e = self._find(file, offset, h, &slot)
        if e < 0:
            self.misses += 1
            return None
        self.hits += 1
        if self.head != e:
            self._unlink(e)
            self._push_front(e)
        meta[0] = self.entries[e].meta
        return <bytes>self.entries[e].data

    cdef bint contains(self, uint64_t file, uint64_t offset) noexcept:
        cdef size_t slot
        if self.nentries == 0:
            return False
        return self._find(file, offset, _hash(file, offset), &slot) >= 0

    cdef int insert(self, uint64_t file, uint64_t offset, bytes data,
                    const BlockMeta *meta) noexcept:
        cdef size_t size, slot
        cdef uint64_t h
        cdef Py_ssize_t e
        cdef CacheEntry *ent
        cdef PyObject *old
        if data is None or not PyBytes_CheckExact(data):
            return -1                    # only exact bytes: freeing them runs no Python code
        size = <size_t>PyBytes_GET_SIZE(data)
        if self.capacity == 0 or size > self.capacity:
            return 0
        if <size_t>(self.nentries + 1) * 2 > self.mask + 1 or self.slots == NULL:
            if self._grow_table() != 0:
                return -1
        h = _hash(file, offset)
        e = self._find(file, offset, h, &slot)
        Py_INCREF(data)
        if e >= 0:                       # replace: recharge, refresh
            ent = &self.entries[e]
            old = ent.data
            self.usage -= ent.charge
            ent.data = <PyObject *>data
            ent.charge = size
            ent.meta = meta[0]
            self.usage += size
            if self.head != e:
                self._unlink(e)
                self._push_front(e)
            Py_DECREF(<object>old)
        else:
            e = self._new_entry()
            if e < 0:
                Py_DECREF(data)
                return -1
            ent = &self.entries[e]
            ent.file = file
            ent.offset = offset
            ent.hash = h
            ent.data = <PyObject *>data
            ent.charge = size
            ent.meta = meta[0]
            self.slots[slot] = e
            self._push_front(e)
            self.nentries += 1
            self.usage += size
        self._evict()
        return 0

    # -- Python API -----------------------------------------------------------------

    def __len__(self):
        return self.nentries

    def get(self, key):
        """The cached bytes of key (and mark them recently used), or None."""
        cdef uint64_t file, offset
        cdef BlockMeta meta
        _key(key, &file, &offset)
        return self.lookup(file, offset, &meta)

    def __contains__(self, key):
        """Whether key is cached; unlike get, neither a use nor a hit."""
        cdef uint64_t file, offset
        _key(key, &file, &offset)
        return self.contains(file, offset)

    def put(self, key, value):
        """Caches value (bytes) under key, evicting least recently used entries.
        A value put here is not trusted: iterators check it on every use."""
        cdef uint64_t file, offset
        cdef BlockMeta meta
        if not PyBytes_CheckExact(value):
            raise TypeError(f"a BlockCache value is bytes, not {type(value).__name__}")
        _key(key, &file, &offset)
        untrusted_meta(&meta)
        if self.insert(file, offset, value, &meta) != 0:
            raise MemoryError()

    def erase_file(self, file_number):
        """Drops every block of one table (after it is deleted); returns how many."""
        cdef uint64_t file = PyNumber_Index(file_number)
        cdef Py_ssize_t e, n = 0
        cdef size_t slot
        cdef CacheEntry *ent
        for e in range(self.eused):
            ent = &self.entries[e]
            if ent.data != NULL and ent.file == file:
                self._find(file, ent.offset, ent.hash, &slot)
                self._remove(e, slot)
                n += 1
        return n

    def release_free_memory(self):
        """Hands the pages of freed blocks back to the OS (glibc's
        malloc_trim; elsewhere nothing).  glibc gives each thread its own
        malloc arena and reuses a freed block only in the arena it came
        from: after erase_file dropped blocks that readers had allocated,
        blocks a maintenance thread allocates (TableReader.warm) would sit
        beside them, and the process hold both.  True if any was returned."""
        cdef int released
        with nogil:
            released = fdb_release_free_memory()
        return released != 0

    def clear(self):
        """Drops every entry (and frees the cache's arrays)."""
        self._drop_all()

    def hit_rate(self):
        """hits / (hits + misses), 0.0 before any lookup."""
        cdef unsigned long long total = self.hits + self.misses
        return <double>self.hits / <double>total if total else 0.0

    def keys(self):
        """The cached keys, most recently used first (tests, tools)."""
        cdef Py_ssize_t e = self.head
        out = []
        while e >= 0:
            out.append((self.entries[e].file, self.entries[e].offset))
            e = self.entries[e].next
        return out

    def _check(self):
        """Asserts the internal invariants (tests): the LRU list, the hash
        table and the arena agree, and usage is the sum of the charges."""
        cdef Py_ssize_t e = self.head, prev = -1, n = 0, live = 0, nfree = 0
        cdef size_t total = 0, slot, i
        while e >= 0:
            ent = &self.entries[e]
            assert ent.data != NULL and ent.prev == prev
            assert ent.charge == <size_t>PyBytes_GET_SIZE(<object>ent.data)
            assert self._find(ent.file, ent.offset, ent.hash, &slot) == e
            assert ent.hash == _hash(ent.file, ent.offset)
            if ent.meta.trusted:
                _check_restart_offsets(<bytes>ent.data, &ent.meta)
            total += ent.charge
            n += 1
            prev = e
            e = ent.next
        assert self.tail == prev and n == self.nentries
        assert total == self.usage <= self.capacity or self.capacity == 0 and total == 0
        for i in range(self.mask + 1 if self.slots != NULL else 0):
            if self.slots[i] >= 0:
                live += 1
        assert live == n and (self.slots == NULL or <size_t>(2 * live) <= self.mask + 1)
        e = self.efree
        while e >= 0:
            assert self.entries[e].data == NULL
            nfree += 1
            e = self.entries[e].next
        assert nfree + n == self.eused
        return True

    def __repr__(self):
        return (f"BlockCache(capacity={self.capacity}, usage={self.usage}, "
                f"entries={self.nentries}, hits={self.hits}, misses={self.misses})")
