# cython: language_level=3, boundscheck=False, wraparound=False
"""MergingIterator: the k-way merge of Iterators, in internal-key order.

A binary min-heap of child indices keyed by (child's current internal key,
child index).  The top of the heap is the current entry; next() advances the
top child and sifts it down, so a step costs O(log k) key comparisons.  Equal
internal keys (which only tests produce) come out earlier child first.

seek_for_prev() seeks every child backwards and publishes the greatest entry
they land on, without a heap (there is no prev() to keep one for); the first
next() after it re-seeks every child forward to that entry, so the merge
stays an ordinary forward iterator.  Reverse readers (read.Cursor with
reverse=True) chain seek_for_prev and seek and never pay for that.

Every protocol function runs without the GIL and touches only the children's
fdb_iter structs.  A child's error is sticky for the merge: the merge stops
(valid = 0, status = the child's code) and remembers which child failed, so
check() raises that child's own exception.
"""
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.stdint cimport uint8_t
from flowdb._core.cdefs cimport fdb_iter, fdb_iter_init, fdb_ikey_cmp, FDB_OK, FDB_ERR_NOMEM
from flowdb._core.iterator cimport Iterator
from flowdb._errors import CorruptionError


# -- the heap ------------------------------------------------------------------

cdef inline bint _less(MergeState *s, int a, int b) noexcept nogil:
    cdef fdb_iter *x = s.children[a]
    cdef fdb_iter *y = s.children[b]
    cdef int r = fdb_ikey_cmp(x.key, x.key_len, y.key, y.key_len)
    return r < 0 or (r == 0 and a < b)


cdef void _sift_down(MergeState *s, int i) noexcept nogil:
    cdef int *h = s.heap
    cdef int n = s.heap_n
    cdef int v = h[i]
    cdef int c
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(s, h[c + 1], h[c]):
            c += 1
        if not _less(s, h[c], v):
            break
        h[i] = h[c]
        i = c
    h[i] = v


cdef inline void _show(MergeState *s, fdb_iter *c) noexcept nogil:
    """Makes child c's entry the merge's current one."""
    s.base.key = c.key
    s.base.key_len = c.key_len
    s.base.value = c.value
    s.base.value_len = c.value_len
    s.base.valid = 1


cdef inline void _publish(MergeState *s) noexcept nogil:
    if s.heap_n == 0:
        s.base.valid = 0
        return
    _show(s, s.children[s.heap[0]])


cdef inline int _fail(MergeState *s, int child, int rc) noexcept nogil:
    s.failed = child
    s.base.status = rc
    s.base.valid = 0
    s.heap_n = 0
    return rc


# After every child was repositioned: the heap of the valid ones.
cdef int _rebuild(MergeState *s) noexcept nogil:
    cdef int i
    s.heap_n = 0
    for i in range(s.n):
        if s.children[i].valid:
            s.heap[s.heap_n] = i
            s.heap_n += 1
    i = s.heap_n // 2 - 1
    while i >= 0:
        _sift_down(s, i)
        i -= 1
    _publish(s)
    return FDB_OK


# -- the protocol ------------------------------------------------------------------

cdef int _position(MergeState *s, const uint8_t *target, size_t target_len) noexcept nogil:
    """Positions every child (at its first entry if target is NULL, else at
    the first entry >= target) and rebuilds the heap."""
    cdef fdb_iter *c
    cdef int i, rc
    if s.base.status != FDB_OK:
        return s.base.status
    s.reseek = 0
    for i in range(s.n):
        c = s.children[i]
        rc = c.seek_to_first(c) if target == NULL else c.seek(c, target, target_len)
        if rc == FDB_OK:
            rc = c.status
        if rc != FDB_OK:
            return _fail(s, i, rc)
    return _rebuild(s)


cdef int _merge_seek_to_first(fdb_iter *it) noexcept nogil:
    return _position(<MergeState *>it, NULL, 0)


cdef int _merge_seek(fdb_iter *it, const uint8_t *target, size_t target_len) noexcept nogil:
    return _position(<MergeState *>it, target, target_len)


cdef int _merge_seek_for_prev(fdb_iter *it, const uint8_t *target, size_t target_len) noexcept nogil:
    cdef MergeState *s = <MergeState *>it
    cdef fdb_iter *c
    cdef fdb_iter *best = NULL
    cdef int i, rc
    cdef uint8_t *p
    if s.base.status != FDB_OK:
        return s.base.status
    s.heap_n = 0
    s.reseek = 0
    for i in range(s.n):
        c = s.children[i]
        rc = c.seek_for_prev(c, target, target_len)
        if rc == FDB_OK:
            rc = c.status
        if rc != FDB_OK:
            return _fail(s, i, rc)
        # Strictly greater: on equal keys the earlier child wins, as in next().
        if c.valid and (best == NULL or fdb_ikey_cmp(c.key, c.key_len, best.key, best.key_len) > 0):
            best = c
    if best == NULL:
        s.base.valid = 0
        return FDB_OK
    if best.key_len > s.kcap:
        p = <uint8_t *>realloc(s.kbuf, best.key_len)
        if p == NULL:
            return _fail(s, -1, FDB_ERR_NOMEM)
        s.kbuf = p
        s.kcap = best.key_len
    memcpy(s.kbuf, best.key, best.key_len)
    s.klen = best.key_len
    s.reseek = 1
    _show(s, best)
    return FDB_OK


cdef int _merge_next(fdb_iter *it) noexcept nogil:
    cdef MergeState *s = <MergeState *>it
    cdef int top, rc
    cdef fdb_iter *c
    if s.base.status != FDB_OK:
        return s.base.status
    if s.reseek:
        # After seek_for_prev: build the heap at the current entry first.
        rc = _position(s, s.kbuf, s.klen)
        if rc != FDB_OK:
            return rc
    if s.heap_n == 0:
        s.base.valid = 0
        return FDB_OK
    top = s.heap[0]
    c = s.children[top]
    rc = c.next(c)
    if rc == FDB_OK:
        rc = c.status
    if rc != FDB_OK:
        return _fail(s, top, rc)
    if not c.valid:
        s.heap_n -= 1
        s.heap[0] = s.heap[s.heap_n]
    if s.heap_n > 1:
        _sift_down(s, 0)
    _publish(s)
    return FDB_OK


cdef class MergingIterator(Iterator):

    def __cinit__(self, children=()):
        cdef Iterator child
        cdef int i
        self.children = list(children)
        for c in self.children:
            if not isinstance(c, Iterator):
                raise TypeError(f"children must be Iterators, not {type(c).__name__}")
            if (<Iterator>c).it == NULL:
                raise ValueError("a child Iterator has no protocol struct")
        self.st.n = len(self.children)
        self.st.heap_n = 0
        self.st.failed = -1
        self.st.kbuf = NULL
        self.st.kcap = 0
        self.st.klen = 0
        self.st.reseek = 0
        # Room for at least one slot, so malloc(0) never returns NULL as "success".
        self.st.children = <fdb_iter **>malloc(max(self.st.n, 1) * sizeof(fdb_iter *))
        self.st.heap = <int *>malloc(max(self.st.n, 1) * sizeof(int))
        if self.st.children == NULL or self.st.heap == NULL:
            raise MemoryError()
        for i in range(self.st.n):
            child = <Iterator>self.children[i]
            self.st.children[i] = child.it
        cdef bint back = True                # seek_for_prev needs every child's
        for i in range(self.st.n):
            back = back and self.st.children[i].seek_for_prev != NULL
        fdb_iter_init(&self.st.base, _merge_seek_to_first, _merge_seek,
                      _merge_seek_for_prev, _merge_next)
        if not back:
            self.st.base.seek_for_prev = NULL
        self.it = &self.st.base

    def __dealloc__(self):
        free(self.st.children)
        free(self.st.heap)
        free(self.st.kbuf)
        self.st.kbuf = NULL
        self.st.children = NULL
        self.st.heap = NULL

    cdef int check(self) except -1:
        if self.st.base.status == FDB_OK:
            return 0
        if self.error is not None:
            raise self.error
        if self.st.base.status == FDB_ERR_NOMEM and self.st.failed < 0:
            raise MemoryError()
        if 0 <= self.st.failed < len(self.children):
            (<Iterator>self.children[self.st.failed]).check()
        raise CorruptionError(f"merging iterator failed with status {self.st.base.status}")
