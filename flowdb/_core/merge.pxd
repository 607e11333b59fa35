# cython: language_level=3
"""MergingIterator: the k-way merge of Iterators, in internal-key order."""
from flowdb._core.iterator cimport Iterator

cdef class MergingIterator(Iterator):
    pass
