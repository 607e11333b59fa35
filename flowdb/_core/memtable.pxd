# cython: language_level=3
"""MemTable: the in-memory sorted buffer of recent writes (a skiplist).

Thread safety: one writer at a time (the engine's write leader) calls
apply(); any number of readers iterate concurrently without locks (nodes are
published with release stores, read with acquire loads).  Nothing is ever
removed, so an iterator stays valid while the memtable is alive.
"""
from flowdb._core.iterator cimport Source

cdef class MemTable(Source):
    # Bytes held by the arena (keys, values, nodes): what memtable_size_mb bounds.
    cdef readonly size_t approximate_bytes
    # Entries inserted (puts, deletes, range deletes).
    cdef readonly size_t num_entries
    # Seq of the first and last entry applied (0 while empty).
    cdef readonly unsigned long long first_seq
    cdef readonly unsigned long long last_seq
