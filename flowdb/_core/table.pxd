# cython: language_level=3
"""SSTable builder and reader (docs/FORMAT.md, "SSTable")."""
from flowdb._core.iterator cimport Source

cdef class TableBuilder:
    # The exception behind a non-OK status returned by add().
    cdef object error
    # Appends an entry; entries must come in strictly increasing internal-key
    # order.  Runs without the GIL except when a block is cut (compression,
    # checksum and write take the GIL).  Returns FDB_OK or an FDB_ERR_* code.
    cdef int add(self, const unsigned char *ikey, size_t ikey_len,
                 const unsigned char *value, size_t value_len) noexcept nogil

cdef class TableReader(Source):
    pass
