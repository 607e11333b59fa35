# cython: language_level=3
"""MergingIterator: the k-way merge of Iterators, in internal-key order."""
from libc.stdint cimport uint8_t
from flowdb._core.cdefs cimport fdb_iter
from flowdb._core.iterator cimport Iterator


# The C state of a MergingIterator; `base` first, as the protocol requires.
cdef struct MergeState:
    fdb_iter base
    # The children's protocol structs, in the order given (index = priority
    # on equal internal keys: the earlier child first).  Borrowed: the
    # MergingIterator's `children` list keeps their owners alive.
    fdb_iter **children
    # Binary min-heap of indices into `children`: every valid child, ordered
    # by (current key, index).  heap[0] is the current entry.
    int *heap
    int n            # number of children
    int heap_n       # number of valid children (entries of `heap` in use)
    int failed       # index of the child whose error stopped the merge, or -1
    # seek_for_prev's entry, copied: the first next() after it re-seeks here.
    uint8_t *kbuf
    size_t kcap
    size_t klen
    int reseek


cdef class MergingIterator(Iterator):
    """Merges `children` (a list of Iterators) into one Iterator.

    Implements seek_to_first, seek and next, and seek_for_prev when every
    child has one (the first next() after it re-seeks forward).  Every
    operation runs without the GIL (the children's own implementations may
    take it).  The first error of a child stops the merge: `it.status` holds
    its code and check() raises the child's exception.  Not thread-safe.
    """
    cdef MergeState st
    # The child Iterators; keeps alive what `st.children` points at.
    cdef readonly list children
