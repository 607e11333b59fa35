# cython: language_level=3
"""Base class of every internal iterator, its Python wrappers, and
VectorIterator: a reference implementation over a sorted list, used by tests
and by anything that needs to feed a handful of entries into a merge."""
from libc.stdint cimport uint8_t, int64_t, INT64_MIN, INT64_MAX
from flowdb._core.cdefs cimport (fdb_iter, fdb_iter_init, fdb_ikey_cmp, fdb_ikey_ts,
                                 fdb_ikey_kind, FDB_OK, FDB_ERR_CORRUPTION,
                                 FDB_KIND_RANGE_DEL, FDB_TRAILER_SIZE)
from flowdb._errors import CorruptionError


cdef class Iterator:

    cdef int check(self) except -1:
        if self.it == NULL or self.it.status == FDB_OK:
            return 0
        if self.error is not None:
            raise self.error
        raise CorruptionError(f"iterator failed with status {self.it.status}")

    # -- Python view of the protocol (tests, orchestration) ----------------

    def seek_to_first(self):
        with nogil:
            self.it.seek_to_first(self.it)
        self.check()

    def seek(self, bytes target not None):
        if len(target) < FDB_TRAILER_SIZE:
            raise ValueError("an internal key is at least 16 bytes")
        cdef const uint8_t *p = target
        cdef size_t n = len(target)
        with nogil:
            self.it.seek(self.it, p, n)
        self.check()

    def seek_for_prev(self, bytes target not None):
        if self.it.seek_for_prev == NULL:
            raise NotImplementedError(f"{type(self).__name__} cannot seek_for_prev")
        if len(target) < FDB_TRAILER_SIZE:
            raise ValueError("an internal key is at least 16 bytes")
        cdef const uint8_t *p = target
        cdef size_t n = len(target)
        with nogil:
            self.it.seek_for_prev(self.it, p, n)
        self.check()

    def next(self):
        if not self.it.valid:
            raise ValueError("next() on an invalid iterator")
        with nogil:
            self.it.next(self.it)
        self.check()

    @property
    def valid(self):
        return bool(self.it.valid)

    def key(self):
        if not self.it.valid:
            raise ValueError("key() on an invalid iterator")
        return (<const char *>self.it.key)[:self.it.key_len]

    def value(self):
        if not self.it.valid:
            raise ValueError("value() on an invalid iterator")
        return (<const char *>self.it.value)[:self.it.value_len]

    def entries(self):
        """(internal key, value) pairs from the current position on."""
        while self.it.valid:
            yield self.key(), self.value()
            self.next()


# -- VectorIterator ----------------------------------------------------------

cdef struct VecState:
    fdb_iter base
    void *owner          # borrowed VectorIterator
    Py_ssize_t pos
    Py_ssize_t n


cdef class VectorIterator(Iterator):
    """Iterates a list of (internal key, value) pairs, sorted by this class."""
    cdef VecState st
    cdef list keys
    cdef list values

    def __cinit__(self, entries=()):
        pairs = sorted(((bytes(k), bytes(v)) for k, v in entries),
                       key=lambda kv: _IKey(kv[0]))
        for k, _ in pairs:
            if len(k) < FDB_TRAILER_SIZE:
                raise ValueError("an internal key is at least 16 bytes")
        self.keys = [k for k, _ in pairs]
        self.values = [v for _, v in pairs]
        self.st.owner = <void *>self
        self.st.n = len(pairs)
        self.st.pos = self.st.n
        fdb_iter_init(&self.st.base, _vec_seek_to_first, _vec_seek, _vec_seek_for_prev, _vec_next)
        self.it = &self.st.base


cdef class _IKey:
    """Sort key in internal-key order (used only to sort test vectors)."""
    cdef bytes k
    def __cinit__(self, bytes k):
        self.k = k
    def __lt__(self, _IKey other):
        return fdb_ikey_cmp(self.k, len(self.k), other.k, len(other.k)) < 0


cdef int _vec_position(VecState *st, Py_ssize_t pos) noexcept nogil:
    st.pos = pos
    if pos < 0 or pos >= st.n:
        st.base.valid = 0
        return FDB_OK
    with gil:
        self = <VectorIterator>st.owner
        k = <bytes>self.keys[pos]
        v = <bytes>self.values[pos]
        # The lists own the bytes, so the pointers outlive this call.
        st.base.key = <const uint8_t *><const char *>k
        st.base.key_len = len(k)
        st.base.value = <const uint8_t *><const char *>v
        st.base.value_len = len(v)
    st.base.valid = 1
    return FDB_OK


cdef int _vec_cmp_at(VecState *st, Py_ssize_t i, const uint8_t *t, size_t tn) noexcept nogil:
    cdef const uint8_t *k
    cdef size_t kn
    with gil:
        kb = <bytes>(<VectorIterator>st.owner).keys[i]
        k = <const uint8_t *><const char *>kb
        kn = len(kb)
    return fdb_ikey_cmp(k, kn, t, tn)


cdef int _vec_seek_to_first(fdb_iter *it) noexcept nogil:
    return _vec_position(<VecState *>it, 0)


cdef int _vec_seek(fdb_iter *it, const uint8_t *t, size_t tn) noexcept nogil:
    cdef VecState *st = <VecState *>it
    cdef Py_ssize_t lo = 0, hi = st.n, mid
    while lo < hi:                       # first index with key >= t
        mid = (lo + hi) // 2
        if _vec_cmp_at(st, mid, t, tn) < 0:
            lo = mid + 1
        else:
            hi = mid
    return _vec_position(st, lo)


cdef int _vec_seek_for_prev(fdb_iter *it, const uint8_t *t, size_t tn) noexcept nogil:
    cdef VecState *st = <VecState *>it
    cdef Py_ssize_t lo = 0, hi = st.n, mid
    while lo < hi:                       # first index with key > t
        mid = (lo + hi) // 2
        if _vec_cmp_at(st, mid, t, tn) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return _vec_position(st, lo - 1)


cdef int _vec_next(fdb_iter *it) noexcept nogil:
    cdef VecState *st = <VecState *>it
    return _vec_position(st, st.pos + 1)


cdef class Source:

    def __cinit__(self, *args, **kwargs):
        self.min_ts = INT64_MAX
        self.max_ts = INT64_MIN
        self.range_dels = []

    cdef bint may_contain(self, const unsigned char *ukey, size_t n) noexcept nogil:
        return True

    cpdef Iterator new_iterator(self, bint fill_cache=True, bint verify_checksums=True,
                                long long ts_lo=INT64_MIN, long long ts_hi=INT64_MAX):
        raise NotImplementedError

    cdef object find_version(self, const uint8_t *target, size_t tn, bint fill_cache,
                             bint verify_checksums, EntryHit *hit):
        cdef int64_t ts = fdb_ikey_ts(target, tn)
        cdef Iterator itr = self.new_iterator(fill_cache, verify_checksums, ts, ts)
        cdef fdb_iter *it = itr.it
        cdef int rc
        hit.found = False
        with nogil:
            rc = it.seek(it, target, tn)
            # RANGE_DEL entries (a memtable's, at ts INT64_MIN) are not versions.
            while (rc == FDB_OK and it.valid
                   and entry_hit(it.key, it.key_len, it.value, it.value_len, target, tn,
                                 HIT_SAME_TS, hit)
                   and hit.kind == FDB_KIND_RANGE_DEL):
                hit.found = False
                rc = it.next(it)
        _check_moved(itr, rc)
        return itr if hit.found else None

    cdef object find_floor(self, const uint8_t *target, size_t tn, uint64_t snapshot,
                           bint fill_cache, bint verify_checksums, EntryHit *hit):
        cdef Iterator itr = self.new_iterator(fill_cache, verify_checksums, INT64_MIN, INT64_MAX)
        cdef fdb_iter *it = itr.it
        cdef int rc
        hit.found = False
        if it.seek_for_prev == NULL:
            raise TypeError(f"{type(self).__name__}.new_iterator() has no seek_for_prev; "
                            "a Source's iterators must have one (include/flowdb.h)")
        with nogil:
            rc = it.seek_for_prev(it, target, tn)
        _check_moved(itr, rc)
        if it.valid and entry_hit(it.key, it.key_len, it.value, it.value_len, target, tn,
                                  HIT_SAME_UKEY, hit):
            return itr
        return None


cdef int _check_moved(Iterator itr, int rc) except -1:
    if rc != FDB_OK or itr.it.status != FDB_OK:
        itr.check()
        raise CorruptionError(f"iterator failed with status {rc}")
    return 0


# -- VectorSource ----------------------------------------------------------------


cdef class VectorSource(Source):

    def __init__(self, entries=(), range_dels=(), bint bloom=False,
                 long long fail_after=-1, error=None):
        cdef bytes k
        cdef long long ts
        points = []
        for key, value in entries:
            k = bytes(key)
            if len(k) < FDB_TRAILER_SIZE:
                raise ValueError("an internal key is at least 16 bytes")
            if fdb_ikey_kind(k, len(k)) == FDB_KIND_RANGE_DEL:
                continue
            points.append((k, bytes(value)))
        points.sort(key=lambda kv: _IKey(kv[0]))
        self.entries = points
        for k, _ in points:
            ts = fdb_ikey_ts(k, len(k))
            if ts < self.min_ts:
                self.min_ts = ts
            if ts > self.max_ts:
                self.max_ts = ts
        self.range_dels = [(bytes(s), bytes(e), int(q)) for s, e, q in range_dels]
        self._fail_after = fail_after
        self._fail_error = error if error is not None else CorruptionError("injected failure")
        self._bloom = bloom
        self._ukeys = {k[:len(k) - FDB_TRAILER_SIZE] for k, _ in points} if bloom else None

    cdef bint may_contain(self, const unsigned char *ukey, size_t n) noexcept nogil:
        if not self._bloom:
            return True
        with gil:
            return (<const char *>ukey)[:n] in self._ukeys

    cpdef Iterator new_iterator(self, bint fill_cache=True, bint verify_checksums=True,
                                long long ts_lo=INT64_MIN, long long ts_hi=INT64_MAX):
        cdef _FailingVectorIterator f
        if self._fail_after < 0:
            return VectorIterator(self.entries)
        f = _FailingVectorIterator(self.entries)
        f.moves_left = self._fail_after
        f.error = self._fail_error
        return f

    def __len__(self):
        return len(self.entries)


cdef class _FailingVectorIterator(VectorIterator):
    """A VectorIterator whose (moves_left+1)-th positioning call fails."""
    cdef long long moves_left

    def __cinit__(self, entries=()):
        self.moves_left = -1
        fdb_iter_init(&self.st.base, _fvec_seek_to_first, _fvec_seek, _fvec_seek_for_prev,
                      _fvec_next)


cdef int _fvec_tick(fdb_iter *it) noexcept nogil:
    # Nonzero when this move must fail; the failure is sticky.
    cdef VecState *st = <VecState *>it
    if st.base.status != FDB_OK:
        return st.base.status
    with gil:
        self = <_FailingVectorIterator>st.owner
        if self.moves_left == 0:
            st.base.status = FDB_ERR_CORRUPTION
            st.base.valid = 0
            return FDB_ERR_CORRUPTION
        if self.moves_left > 0:
            self.moves_left -= 1
    return FDB_OK


cdef int _fvec_seek_to_first(fdb_iter *it) noexcept nogil:
    cdef int rc = _fvec_tick(it)
    return rc if rc != FDB_OK else _vec_seek_to_first(it)


cdef int _fvec_seek(fdb_iter *it, const uint8_t *t, size_t tn) noexcept nogil:
    cdef int rc = _fvec_tick(it)
    return rc if rc != FDB_OK else _vec_seek(it, t, tn)


cdef int _fvec_seek_for_prev(fdb_iter *it, const uint8_t *t, size_t tn) noexcept nogil:
    cdef int rc = _fvec_tick(it)
    return rc if rc != FDB_OK else _vec_seek_for_prev(it, t, tn)


cdef int _fvec_next(fdb_iter *it) noexcept nogil:
    cdef int rc = _fvec_tick(it)
    return rc if rc != FDB_OK else _vec_next(it)
