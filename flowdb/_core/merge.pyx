# cython: language_level=3, boundscheck=False, wraparound=False
"""MergingIterator: the k-way merge of Iterators, in internal-key order.

A binary min-heap of child indices keyed by (child's current internal key,
child index).  The top of the heap is the current entry; next() advances the
top child and sifts it down, so a step costs O(log k) key comparisons.  Equal
internal keys (which only tests produce) come out earlier child first.

Every protocol function runs without the GIL and touches only the children's
fdb_iter structs.  A child's error is sticky for the merge: the merge stops
(valid = 0, status = the child's code) and remembers which child failed, so
check() raises that child's own exception.
"""
from libc.stdlib cimport malloc, free
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


cdef inline void _publish(MergeState *s) noexcept nogil:
    cdef fdb_iter *top
    if s.heap_n == 0:
        s.base.valid = 0
        return
    top = s.children[s.heap[0]]
    s.base.key = top.key
    s.base.key_len = top.key_len
    s.base.value = top.value
    s.base.value_len = top.value_len
    s.base.valid = 1


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


cdef int _merge_next(fdb_iter *it) noexcept nogil:
    cdef MergeState *s = <MergeState *>it
    cdef int top, rc
    cdef fdb_iter *c
    if s.base.status != FDB_OK:
        return s.base.status
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
        # Room for at least one slot, so malloc(0) never returns NULL as "success".
        self.st.children = <fdb_iter **>malloc(max(self.st.n, 1) * sizeof(fdb_iter *))
        self.st.heap = <int *>malloc(max(self.st.n, 1) * sizeof(int))
        if self.st.children == NULL or self.st.heap == NULL:
            raise MemoryError()
        for i in range(self.st.n):
            child = <Iterator>self.children[i]
            self.st.children[i] = child.it
        fdb_iter_init(&self.st.base, _merge_seek_to_first, _merge_seek, NULL, _merge_next)
        self.it = &self.st.base

    def __dealloc__(self):
        free(self.st.children)
        free(self.st.heap)
        self.st.children = NULL
        self.st.heap = NULL

    cdef int check(self) except -1:
        if self.st.base.status == FDB_OK:
            return 0
        if self.error is not None:
            raise self.error
        if 0 <= self.st.failed < len(self.children):
            (<Iterator>self.children[self.st.failed]).check()
        raise CorruptionError(f"merging iterator failed with status {self.st.base.status}")
