# cython: language_level=3, boundscheck=False, wraparound=False
"""Blocks of an SSTable (docs/FORMAT.md, "SSTable" / "Block").

    block   := entry* restart:u32le{num_restarts} num_restarts:u32le
    entry   := shared:varint unshared:varint value_len:varint
               key_delta[unshared] value[value_len]
    key     := previous_key[0 : shared] | key_delta
    restart := offset of an entry with shared = 0; restart[0] = 0, strictly
               increasing; one every 16 entries; num_restarts = 0 iff no entry

The reader distrusts every byte: each varint, length and restart offset is
checked against the block bounds before use, so a malformed block gives
FDB_ERR_CORRUPTION (with the offset of the bad byte), never a read outside it.
The one shortcut is block_iter_reset_trusted (block.pxd): for bytes whose
restart array block_iter_reset already accepted (a block in the block cache),
it takes that result instead of walking the array again; the entries are
still checked as they are decoded.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp
from flowdb._core.cdefs cimport (fdb_iter, fdb_ikey_cmp, fdb_ikey_ts, fdb_ikey_seq, fdb_ikey_kind,
                                 fdb_put_varint,
                                 fdb_get_varint, fdb_put_u32le, fdb_get_u32le,
                                 FDB_OK, FDB_ERR_CORRUPTION, FDB_ERR_NOMEM,
                                 FDB_TRAILER_SIZE, FDB_MAX_VARINT64)
from flowdb._core.iterator cimport Iterator
from flowdb._errors import CorruptionError

#: Entries between restart points in the blocks this version writes.
RESTART_INTERVAL = BLOCK_RESTART_INTERVAL


# -- builder -------------------------------------------------------------------

cdef int reserve_bytes(uint8_t **buf, size_t *cap, size_t need) noexcept nogil:
    """Grows *buf to hold at least need bytes (amortised doubling)."""
    if need <= cap[0]:
        return FDB_OK
    cdef size_t n = cap[0] * 2 if cap[0] else 256
    while n < need:
        n *= 2
    cdef uint8_t *p = <uint8_t *>realloc(buf[0], n)
    if p == NULL:
        return FDB_ERR_NOMEM
    buf[0] = p
    cap[0] = n
    return FDB_OK


cdef void block_builder_init(CBlockBuilder *b, int restart_interval) noexcept nogil:
    b.buf = NULL
    b.len = 0
    b.cap = 0
    b.restarts = NULL
    b.num_restarts = 0
    b.restarts_cap = 0
    b.restart_interval = restart_interval if restart_interval >= 1 else 1
    b.counter = 0
    b.num_entries = 0
    b.last_key = NULL
    b.last_key_len = 0
    b.last_key_cap = 0
    b.finished = False


cdef int block_builder_add(CBlockBuilder *b, const uint8_t *key, size_t key_len,
                           const uint8_t *value, size_t value_len) noexcept nogil:
    cdef size_t shared = 0, limit, need, ncap
    cdef uint32_t *r
    if b.finished:
        block_builder_reset(b)
    if b.counter < b.restart_interval and b.num_entries > 0:
        limit = b.last_key_len if b.last_key_len < key_len else key_len
        while shared < limit and b.last_key[shared] == key[shared]:
            shared += 1
    else:
        if b.num_restarts == b.restarts_cap:
            ncap = b.restarts_cap * 2 if b.restarts_cap else 16
            r = <uint32_t *>realloc(b.restarts, ncap * sizeof(uint32_t))
            if r == NULL:
                return FDB_ERR_NOMEM
            b.restarts = r
            b.restarts_cap = ncap
        if b.len > FDB_BLOCK_MAX_SIZE:
            return FDB_ERR_NOMEM
        b.restarts[b.num_restarts] = <uint32_t>b.len
        b.num_restarts += 1
        b.counter = 0
    need = b.len + 3 * FDB_MAX_VARINT64 + (key_len - shared) + value_len
    # The finished block (entries, restarts, count) must stay addressable by u32.
    if need + 4 * (b.num_restarts + 1) > FDB_BLOCK_MAX_SIZE:
        return FDB_ERR_NOMEM
    if reserve_bytes(&b.buf, &b.cap, need) != FDB_OK:
        return FDB_ERR_NOMEM
    if reserve_bytes(&b.last_key, &b.last_key_cap, key_len) != FDB_OK:
        return FDB_ERR_NOMEM
    cdef uint8_t *p = b.buf + b.len
    p += fdb_put_varint(p, shared)
    p += fdb_put_varint(p, key_len - shared)
    p += fdb_put_varint(p, value_len)
    memcpy(p, key + shared, key_len - shared)
    p += key_len - shared
    if value_len:
        memcpy(p, value, value_len)
        p += value_len
    b.len = p - b.buf
    memcpy(b.last_key + shared, key + shared, key_len - shared)
    b.last_key_len = key_len
    b.counter += 1
    b.num_entries += 1
    return FDB_OK


cdef size_t block_builder_estimate(const CBlockBuilder *b) noexcept nogil:
    return b.len + 4 * b.num_restarts + 4


cdef int block_builder_finish(CBlockBuilder *b) noexcept nogil:
    cdef size_t i
    if b.finished:
        return FDB_OK
    if reserve_bytes(&b.buf, &b.cap, b.len + 4 * b.num_restarts + 4) != FDB_OK:
        return FDB_ERR_NOMEM
    for i in range(b.num_restarts):
        fdb_put_u32le(b.buf + b.len, b.restarts[i])
        b.len += 4
    fdb_put_u32le(b.buf + b.len, <uint32_t>b.num_restarts)
    b.len += 4
    b.finished = True
    return FDB_OK


cdef void block_builder_reset(CBlockBuilder *b) noexcept nogil:
    b.len = 0
    b.num_restarts = 0
    b.counter = 0
    b.num_entries = 0
    b.last_key_len = 0
    b.finished = False


cdef void block_builder_free(CBlockBuilder *b) noexcept nogil:
    free(b.buf)
    free(b.restarts)
    free(b.last_key)
    block_builder_init(b, b.restart_interval)


# -- iterator ------------------------------------------------------------------

cdef enum:
    # Bytes of a restart region _blk_seek prefetches before scanning it.
    _SCAN_PREFETCH = 2048
    # Blocks with at most this many restarts + 1 get every restart entry
    # prefetched before the binary search.
    _PREFETCH_ALL_RESTARTS = 16

cdef inline size_t _restart(const CBlockIter *it, uint32_t i) noexcept nogil:
    return fdb_get_u32le(it.data + it.data_end + 4 * <size_t>i)


cdef int _corrupt(CBlockIter *it, size_t off, const char *msg) noexcept nogil:
    it.base.valid = 0
    it.base.status = FDB_ERR_CORRUPTION
    it.err_off = off
    it.err_msg = msg
    return FDB_ERR_CORRUPTION


cdef int _invalid(CBlockIter *it) noexcept nogil:
    it.base.valid = 0
    return FDB_OK


cdef int _parse(const CBlockIter *it, size_t off, uint64_t *shared,
                uint64_t *unshared, uint64_t *vlen, const uint8_t **delta) noexcept nogil:
    """Decodes the header of the entry at off and checks that key_delta and
    value lie inside the entries.  0 on success, else -1."""
    cdef const uint8_t *limit = it.data + it.data_end
    cdef const uint8_t *p = it.data + off
    p = fdb_get_varint(p, limit, shared)
    if p == NULL:
        return -1
    p = fdb_get_varint(p, limit, unshared)
    if p == NULL:
        return -1
    p = fdb_get_varint(p, limit, vlen)
    if p == NULL:
        return -1
    cdef uint64_t avail = <uint64_t>(limit - p)
    if unshared[0] > avail or vlen[0] > avail - unshared[0]:
        return -1
    delta[0] = p
    return 0


cdef int _grow_key(CBlockIter *it, size_t need, size_t keep) noexcept nogil:
    """Moves the key buffer to the heap with room for need bytes, keeping
    its first `keep` bytes."""
    cdef size_t n = 2 * it.keycap
    if n < need:
        n = need
    cdef uint8_t *p = <uint8_t *>malloc(n)
    if p == NULL:
        return FDB_ERR_NOMEM
    memcpy(p, it.keybuf, keep)
    if it.keybuf != <uint8_t *>it.small:
        free(it.keybuf)
    it.keybuf = p
    it.keycap = n
    return FDB_OK


cdef int _decode_at(CBlockIter *it, size_t off, bint at_restart) noexcept nogil:
    """Makes the entry at off current; keybuf holds the previous key."""
    cdef uint64_t shared, unshared, vlen
    cdef const uint8_t *delta
    if off >= it.data_end:
        return _corrupt(it, off, "entry offset outside the entries")
    if _parse(it, off, &shared, &unshared, &vlen, &delta) != 0:
        return _corrupt(it, off, "entry header or lengths overrun the block")
    if at_restart and shared != 0:
        return _corrupt(it, off, "restart entry shares a key prefix")
    if shared > it.klen:
        return _corrupt(it, off, "entry shares more bytes than the previous key has")
    cdef size_t klen = <size_t>(shared + unshared)
    if klen < FDB_TRAILER_SIZE:
        return _corrupt(it, off, "key shorter than an internal key")
    if klen > it.keycap and _grow_key(it, klen, <size_t>shared) != FDB_OK:
        it.base.valid = 0
        it.base.status = FDB_ERR_NOMEM
        return FDB_ERR_NOMEM
    memcpy(it.keybuf + shared, delta, unshared)
    it.klen = klen
    it.cur = off
    it.next_off = <size_t>(delta + unshared + vlen - it.data)
    it.base.key = it.keybuf
    it.base.key_len = klen
    it.base.value = delta + unshared
    it.base.value_len = vlen
    it.base.valid = 1
    return FDB_OK


cdef int _seek_restart(CBlockIter *it, uint32_t i) noexcept nogil:
    it.ri = i
    it.klen = 0
    return _decode_at(it, _restart(it, i), True)


cdef int _advance(CBlockIter *it) noexcept nogil:
    """Moves from the current entry to the following one."""
    cdef size_t off = it.next_off, r
    cdef bint at_restart = False
    if off == it.data_end:
        return _invalid(it)
    if it.ri + 1 < it.num_restarts:
        r = _restart(it, it.ri + 1)
        if off == r:
            it.ri += 1
            at_restart = True
        elif off > r:
            return _corrupt(it, off, "entry crosses a restart point")
    return _decode_at(it, off, at_restart)


cdef int _restart_key(CBlockIter *it, uint32_t i, const uint8_t **key,
                      size_t *klen) noexcept nogil:
    """The full key of restart point i, read in place."""
    cdef uint64_t shared, unshared, vlen
    cdef const uint8_t *delta
    cdef size_t off = _restart(it, i)
    if _parse(it, off, &shared, &unshared, &vlen, &delta) != 0:
        return _corrupt(it, off, "entry header or lengths overrun the block")
    if shared != 0:
        return _corrupt(it, off, "restart entry shares a key prefix")
    if unshared < FDB_TRAILER_SIZE:
        return _corrupt(it, off, "key shorter than an internal key")
    key[0] = delta
    klen[0] = <size_t>unshared
    return FDB_OK


cdef int _blk_seek_to_first(fdb_iter *base) noexcept nogil:
    cdef CBlockIter *it = <CBlockIter *>base
    if base.status != FDB_OK:
        return base.status
    if it.num_restarts == 0:
        return _invalid(it)
    return _seek_restart(it, 0)


cdef inline void _prefetch_restart(const CBlockIter *it, uint32_t lo, uint32_t hi) noexcept nogil:
    """Prefetches the entry of the restart point a binary search over
    [lo, hi] probes first (nothing if the range is empty)."""
    if lo < hi:
        fdb_prefetch(it.data + _restart(it, lo + (hi - lo + 1) // 2))


cdef int _blk_seek(fdb_iter *base, const uint8_t *target, size_t tn) noexcept nogil:
    cdef CBlockIter *it = <CBlockIter *>base
    if _seek_region(it, target, tn) != FDB_OK:
        return base.status
    while base.valid and fdb_ikey_cmp(it.keybuf, it.klen, target, tn) < 0:
        if _advance(it) != FDB_OK:
            return base.status
    return FDB_OK


cdef int _seek_region(CBlockIter *it, const uint8_t *target, size_t tn) noexcept nogil:
    """Positions on the last restart point whose key is < target (the first
    one if none is): the first entry >= target, and the last one < target,
    are at or after it.  Invalid if the block holds no entry."""
    cdef fdb_iter *base = &it.base
    cdef uint32_t lo, hi, mid
    cdef const uint8_t *k
    cdef size_t kn, start, end
    if base.status != FDB_OK:
        return base.status
    if it.num_restarts == 0:
        return _invalid(it)
    # Last restart point whose key is < target: the answer is at or after it.
    # A block read from the block cache is usually not in the CPU caches, and
    # each probe's address depends on the previous comparison, so the misses
    # would come one after the other.  Prefetching overlaps them: every
    # restart entry up front when there are few, else the entries of both
    # possible next probes at each step.
    lo = 0
    hi = it.num_restarts - 1
    if hi <= _PREFETCH_ALL_RESTARTS:
        for mid in range(1, hi + 1):
            fdb_prefetch(it.data + _restart(it, mid))
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if hi > _PREFETCH_ALL_RESTARTS:
            _prefetch_restart(it, mid, hi)
            _prefetch_restart(it, lo, mid - 1)
        if _restart_key(it, mid, &k, &kn) != FDB_OK:
            return base.status
        if fdb_ikey_cmp(k, kn, target, tn) < 0:
            lo = mid
        else:
            hi = mid - 1
    # The linear scan reads the entries of restart region lo one after the
    # other, each address known only once the previous entry is decoded:
    # prefetch the region (up to _SCAN_PREFETCH bytes) so the misses overlap.
    start = _restart(it, lo)
    end = _restart(it, lo + 1) if lo + 1 < it.num_restarts else it.data_end
    if end > start + _SCAN_PREFETCH:
        end = start + _SCAN_PREFETCH
    while start < end:
        fdb_prefetch(it.data + start)
        start += 64
    return _seek_restart(it, lo)


cdef int block_iter_floor(CBlockIter *it, const uint8_t *target, size_t tn, size_t ukey_len,
                          uint64_t snapshot, BlockFloor *out) noexcept nogil:
    cdef fdb_iter *base = &it.base
    cdef bint first = True, same
    cdef int64_t ts
    cdef uint64_t seq
    out.found = False
    out.group_whole = False
    out.version_found = False
    if _seek_region(it, target, tn) != FDB_OK:
        return base.status
    # One pass: each entry <= target becomes the floor; for the floor's
    # (user key, ts) -- when its user key is the target's -- remember the
    # first version with seq <= snapshot, and whether the pass saw where the
    # versions of that (user key, ts) begin.
    while base.valid and fdb_ikey_cmp(it.keybuf, it.klen, target, tn) <= 0:
        same = it.klen == ukey_len + FDB_TRAILER_SIZE and memcmp(it.keybuf, target, ukey_len) == 0
        ts = fdb_ikey_ts(it.keybuf, it.klen)
        seq = fdb_ikey_seq(it.keybuf, it.klen)
        if not (same and out.found and out.same_ukey and ts == out.ts):
            # A new (user key, ts): its first version is here, unless this is
            # the first entry looked at and others may come before it.
            out.group_whole = not first or it.cur == 0
            out.group_at_start = it.cur == 0
            out.version_found = False
        out.found = True
        out.same_ukey = same
        out.ts = ts
        out.seq = seq
        out.kind = fdb_ikey_kind(it.keybuf, it.klen)
        out.value = base.value
        out.value_len = base.value_len
        if same and not out.version_found and seq <= snapshot:
            out.version_found = True
            out.version_seq = seq
            out.version_kind = out.kind
            out.version_value = base.value
            out.version_value_len = base.value_len
        first = False
        if _advance(it) != FDB_OK:
            return base.status
    return FDB_OK


cdef int block_iter_seek_to_last(CBlockIter *it) noexcept nogil:
    if it.base.status != FDB_OK:
        return it.base.status
    if it.num_restarts == 0:
        return _invalid(it)
    if _seek_restart(it, it.num_restarts - 1) != FDB_OK:
        return it.base.status
    while it.next_off < it.data_end:
        if _advance(it) != FDB_OK:
            return it.base.status
    return FDB_OK


cdef int block_iter_prev(CBlockIter *it) noexcept nogil:
    cdef size_t orig = it.cur
    cdef uint32_t start
    if it.base.status != FDB_OK:
        return it.base.status
    if not it.base.valid:
        return FDB_OK
    if _restart(it, it.ri) == orig:
        if it.ri == 0:
            return _invalid(it)
        start = it.ri - 1
    else:
        start = it.ri
    if _seek_restart(it, start) != FDB_OK:
        return it.base.status
    while it.next_off < orig:
        if _advance(it) != FDB_OK:
            return it.base.status
        if not it.base.valid:
            return _corrupt(it, it.cur, "entries do not chain")
    if it.next_off != orig:
        return _corrupt(it, it.cur, "entries do not chain")
    return FDB_OK


cdef int _blk_seek_for_prev(fdb_iter *base, const uint8_t *target, size_t tn) noexcept nogil:
    cdef CBlockIter *it = <CBlockIter *>base
    if _blk_seek(base, target, tn) != FDB_OK:
        return base.status
    if not base.valid:
        return block_iter_seek_to_last(it)
    if fdb_ikey_cmp(it.keybuf, it.klen, target, tn) > 0:
        return block_iter_prev(it)
    return FDB_OK


cdef int _blk_next(fdb_iter *base) noexcept nogil:
    cdef CBlockIter *it = <CBlockIter *>base
    if base.status != FDB_OK:
        return base.status
    if not base.valid:
        return FDB_OK
    return _advance(<CBlockIter *>base)


cdef void block_iter_init(CBlockIter *it) noexcept nogil:
    it.base.key = NULL
    it.base.key_len = 0
    it.base.value = NULL
    it.base.value_len = 0
    it.base.valid = 0
    it.base.status = FDB_OK
    it.base.seek_to_first = _blk_seek_to_first
    it.base.seek = _blk_seek
    it.base.seek_for_prev = _blk_seek_for_prev
    it.base.next = _blk_next
    it.data = NULL
    it.size = 0
    it.data_end = 0
    it.num_restarts = 0
    it.cur = 0
    it.next_off = 0
    it.ri = 0
    it.klen = 0
    it.keybuf = <uint8_t *>it.small
    it.keycap = BLOCK_ITER_SMALL_KEY
    it.err_off = 0
    it.err_msg = NULL


cdef int block_iter_reset(CBlockIter *it, const uint8_t *data, size_t size) noexcept nogil:
    cdef size_t n, i, r, prev = 0
    it.base.valid = 0
    it.base.status = FDB_OK
    it.err_msg = NULL
    it.data = data
    it.size = size
    it.data_end = 0
    it.num_restarts = 0
    it.klen = 0
    if size < 4:
        return _corrupt(it, 0, "block shorter than its restart count")
    n = fdb_get_u32le(data + size - 4)
    if n > (size - 4) // 4:
        return _corrupt(it, size - 4, "restart count larger than the block")
    cdef size_t data_end = size - 4 - 4 * n
    if n == 0:
        if data_end != 0:
            return _corrupt(it, size - 4, "entries without a restart point")
    else:
        for i in range(n):
            r = fdb_get_u32le(data + data_end + 4 * i)
            if (i == 0 and r != 0) or (i > 0 and r <= prev) or r >= data_end:
                return _corrupt(it, data_end + 4 * i, "bad restart offset")
            prev = r
    it.data_end = data_end
    it.num_restarts = <uint32_t>n
    return FDB_OK


cdef void block_iter_free(CBlockIter *it) noexcept nogil:
    if it.keybuf != <uint8_t *>it.small:
        free(it.keybuf)
    it.keybuf = <uint8_t *>it.small
    it.keycap = BLOCK_ITER_SMALL_KEY
    it.klen = 0
    it.base.valid = 0


# -- Python view (tests, tools) --------------------------------------------------

cdef class BlockBuilder:
    """Builds one block from (internal key, value) pairs in increasing order."""
    cdef CBlockBuilder b

    def __cinit__(self, int restart_interval=BLOCK_RESTART_INTERVAL):
        block_builder_init(&self.b, restart_interval)

    def __dealloc__(self):
        block_builder_free(&self.b)

    def add(self, bytes key not None, bytes value not None):
        if len(key) < FDB_TRAILER_SIZE:
            raise ValueError("an internal key is at least 16 bytes")
        if block_builder_add(&self.b, key, len(key), value, len(value)) != FDB_OK:
            raise MemoryError("block too large")

    def estimated_size(self):
        """Size of the block if finished now."""
        return block_builder_estimate(&self.b)

    def __len__(self):
        return self.b.num_entries

    def finish(self):
        """The block's bytes; the builder is then empty again."""
        if block_builder_finish(&self.b) != FDB_OK:
            raise MemoryError()
        out = (<const char *>self.b.buf)[:self.b.len] if self.b.len else b""
        block_builder_reset(&self.b)
        return out

    def reset(self):
        block_builder_reset(&self.b)


cdef class BlockIterator(Iterator):
    """Iterates the entries of one block (bytes).  Corruption found at
    construction or while moving raises CorruptionError(msg, None, offset)."""
    cdef CBlockIter st
    cdef bytes data

    def __cinit__(self, bytes data not None):
        self.data = data
        block_iter_init(&self.st)
        self.it = &self.st.base
        block_iter_reset(&self.st, data, len(data))
        self.check()

    def __dealloc__(self):
        block_iter_free(&self.st)

    cdef int check(self) except -1:
        if self.st.base.status == FDB_OK:
            return 0
        if self.error is None:
            if self.st.err_msg != NULL:
                self.error = CorruptionError(
                    "corrupt block: " + (<bytes>self.st.err_msg).decode(),
                    None, self.st.err_off)
            else:
                self.error = MemoryError()
        raise self.error

    def seek_to_last(self):
        with nogil:
            block_iter_seek_to_last(&self.st)
        self.check()

    def prev(self):
        if not self.st.base.valid:
            raise ValueError("prev() on an invalid iterator")
        with nogil:
            block_iter_prev(&self.st)
        self.check()
