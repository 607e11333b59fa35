# cython: language_level=3
"""The batch payload reader, shared by decode_batch and MemTable.apply.

Usage (no GIL needed):

    cdef BatchReader r
    cdef BatchEntry e
    if batch_reader_init(&r, buf, n) != FDB_OK: ...    # r.error, r.error_offset
    while r.index < r.count:
        if batch_reader_next(&r, &e) != FDB_OK: ...
    if batch_reader_finish(&r) != FDB_OK: ...          # trailing bytes

Every length and offset is checked before it is trusted; after a non-OK
return the reader is not advanced further and batch_error() builds the
CorruptionError (with the GIL).  Entry pointers point into the caller's
buffer and live as long as it.
"""
from libc.stdint cimport uint8_t, uint32_t, int64_t


cdef struct BatchEntry:
    unsigned kind              # FDB_KIND_*
    const uint8_t *key         # user key (RANGE_DEL: start), 1..65535 bytes
    size_t key_len
    int64_t ts                 # RANGE_DEL: always INT64_MIN
    int64_t expire_at          # PUT only
    const uint8_t *value       # PUT: user value; RANGE_DEL: end key; DELETE: NULL
    size_t value_len


cdef struct BatchReader:
    const uint8_t *start       # first byte of the payload (for offsets)
    const uint8_t *p           # next unread byte
    const uint8_t *limit       # one past the last byte
    uint32_t count             # entries announced by the header
    uint32_t index             # entries read so far
    const char *error          # static description of the first corruption
    size_t error_offset        # byte offset in the payload where it was found


cdef int batch_reader_init(BatchReader *r, const uint8_t *buf, size_t n) noexcept nogil
cdef int batch_reader_next(BatchReader *r, BatchEntry *e) noexcept nogil
cdef int batch_reader_finish(BatchReader *r) noexcept nogil
# The CorruptionError describing r.error (call with the GIL).
cdef object batch_error(BatchReader *r)
