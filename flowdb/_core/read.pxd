# cython: language_level=3
"""The read path: visibility rules shared by get, get_latest, Cursor and
compaction (API.md section 1; see the module docstring of read.pyx)."""
from libc.stdint cimport uint8_t, uint64_t, int64_t
from flowdb._core.cdefs cimport fdb_iter
from flowdb._core.merge cimport MergingIterator


# One range tombstone: user keys in [start, end) lose their versions with a
# seq smaller than `seq`.  The pointers borrow from RangeDelIndex._keep.
cdef struct RangeSpan:
    const uint8_t *start
    size_t start_len
    const uint8_t *end
    size_t end_len
    uint64_t seq


# One fragment of the union of the tombstones: user keys from `start` up to
# the next fragment's start (the last one: up to every key) are covered by
# tombstones whose greatest seq is `seq` (0: none).
cdef struct RangeFragment:
    const uint8_t *start
    size_t start_len
    uint64_t seq


cdef class RangeDelIndex:
    """The range tombstones a read or a compaction applies, preprocessed.

    Built from a list of (start: bytes, end: bytes exclusive, seq: int),
    keeping those with start < end and seq <= `snapshot`.  Immutable, so one
    index may serve many reads and threads (the engine may cache one per
    view).  covering_seq() is O(log n) whenever the read's snapshot is at
    least max_seq (always true for an index built for that snapshot), and
    O(n) otherwise.
    """
    # The tombstones kept, sorted by (start, end, seq).
    cdef readonly list range_dels
    # The greatest seq among them (0 when there are none).
    cdef readonly unsigned long long max_seq
    # Owns the bytes the C arrays below point into.
    cdef list _keep
    cdef Py_ssize_t n           # tombstones in `spans`, sorted by start
    cdef RangeSpan *spans
    cdef Py_ssize_t m           # fragments, sorted by start, disjoint
    cdef RangeFragment *frags

    # The greatest seq <= snapshot of the tombstones covering user key
    # k[:kn], or 0 if none does.  A version with seq s of that key is hidden
    # iff s < covering_seq(...).
    cdef uint64_t covering_seq(self, const uint8_t *k, size_t kn,
                               uint64_t snapshot) noexcept nogil


# A Record copied out of the merge, waiting in Cursor's arena for the GIL.
cdef struct PendingRecord:
    size_t key_off
    size_t key_len
    size_t value_off
    size_t value_len
    int64_t ts
    int64_t expire_at
    bint same_key        # same user key as the previous one in the batch


cdef class Cursor:
    """Records visible at a snapshot, in (key, ts) order; see read.pyx."""
    cdef MergingIterator _merge    # None once closed
    cdef fdb_iter *_it             # _merge.it, NULL once closed
    cdef RangeDelIndex _rdi
    cdef uint64_t _snapshot
    cdef int64_t _now
    cdef int64_t _ts_lo
    cdef int64_t _ts_hi
    # Key filter: the first possible user key (None: from the first), the
    # inclusive last one (None: no bound), and the prefix (None: any); the
    # bytes objects own what the pointers beside them point at.
    cdef bytes _lo
    cdef bytes _hi
    cdef bytes _prefix
    cdef const uint8_t *_lo_p
    cdef const uint8_t *_hi_p
    cdef const uint8_t *_pre_p
    cdef size_t _lo_n
    cdef size_t _hi_n
    cdef size_t _pre_n
    cdef bint _has_lo
    cdef bint _has_hi
    cdef bint _has_pre
    cdef bint _reverse             # descending (key, ts) order
    cdef bytearray _upper          # reverse: the first seek_for_prev target
    cdef uint8_t *_upper_p
    cdef size_t _upper_n
    cdef bint _started             # the first seek was done
    cdef bint _done                # nothing more to return
    cdef bint _pending_next        # the merge is on the last returned entry
    cdef bint _found               # set by _find()
    cdef int _corrupt              # what _find() found malformed (0: nothing)
    # The user key of the current entry, and what was decided for it.
    cdef uint8_t *_cur
    cdef size_t _cur_len
    cdef size_t _cur_cap
    cdef bint _has_cur
    cdef bint _has_last_ts         # _last_ts was decided (first visible version seen)
    cdef int64_t _last_ts
    cdef uint64_t _cur_rd_seq      # covering_seq of the current user key
    cdef bint _emitted_cur         # a record of the current user key is in the batch
    cdef int _nskip                # next() calls spent skipping out-of-window ts
    # Seek targets are built here.
    cdef uint8_t *_tbuf
    cdef size_t _tcap
    # One batch of copied records (next_batch): bytes, then descriptors.
    cdef uint8_t *_arena
    cdef size_t _arena_cap
    cdef size_t _arena_used
    cdef PendingRecord *_outs
    cdef Py_ssize_t _outs_cap
    cdef Py_ssize_t _nout
    # __next__'s read-ahead: records not yet handed out, and the batch size.
    cdef list _buf
    cdef Py_ssize_t _bufpos
    cdef Py_ssize_t _batch
    # Entries examined in the merge, and records returned.
    cdef readonly unsigned long long records_read
    cdef readonly unsigned long long records_returned

    cdef int _seek(self, const uint8_t *ukey, size_t n, int64_t ts, uint64_t seq,
                   unsigned kind, bint back=*) noexcept nogil
    cdef int _reserve_target(self, size_t n) noexcept nogil
    cdef int _set_cur(self, const uint8_t *k, size_t n) noexcept nogil
    cdef _set_upper_target(self)
    cdef int _land(self, bint *new_key) noexcept nogil
    cdef int _new_ukey(self, const uint8_t *k, size_t ulen) noexcept nogil
    cdef int _find(self) noexcept nogil
    cdef int _find_back(self) noexcept nogil
    cdef int _fill(self, Py_ssize_t n, size_t budget) noexcept nogil
    cdef int _raise(self, int rc) except -1
