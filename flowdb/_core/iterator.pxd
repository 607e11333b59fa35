# cython: language_level=3
"""The one iterator protocol of the core, seen from Cython.

Every internal iterator (memtable, table, merge, and the test-only
VectorIterator) is an `Iterator` whose `it` points at an fdb_iter embedded as
the first member of the implementation's C state (include/flowdb.h).  C code
drives iterators through `it` without the GIL; Python code (tests) uses the
def methods, which raise on error.

Lifetime: an Iterator keeps alive whatever its entries point into (the
memtable, the table reader, the current block); the pointers in `it` are
valid until the next call that moves it.
"""
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memcmp
from flowdb._core.cdefs cimport (fdb_iter, fdb_ikey_ts, fdb_ikey_seq, fdb_ikey_kind,
                                 FDB_TRAILER_SIZE)


# The entry a point read found (Source.find_version / find_floor).
cdef struct EntryHit:
    bint found                # the rest is set only when found
    int64_t ts
    uint64_t seq
    unsigned kind
    const uint8_t *value      # valid while the object the call returned lives
    size_t value_len
    int version               # find_floor: VERSION_*; seq, kind and value are
                              #   the floor entry's unless VERSION_FOUND

# What find_floor learnt, on the way, of the versions of (ukey, hit.ts).
cdef enum:
    VERSION_UNKNOWN = 0       # nothing: ask find_version
    VERSION_FOUND = 1         # seq, kind, value: the newest one with seq <= snapshot
    VERSION_NONE = 2          # every one in this source has seq > snapshot

# How much of a point read's target an entry must share to be reported:
# the user key (find_floor), or the user key and ts (find_version).
cdef enum:
    HIT_SAME_UKEY = 16      # the trailer: ts and seq | kind
    HIT_SAME_TS = 8         # seq | kind


# Reports the entry (k, v) in *hit if k shares target's user key (and ts,
# with HIT_SAME_TS).  k and target are internal keys.
cdef inline bint entry_hit(const uint8_t *k, size_t kn, const uint8_t *v, size_t vn,
                           const uint8_t *target, size_t tn, size_t tail,
                           EntryHit *hit) noexcept nogil:
    if kn != tn or memcmp(k, target, tn - tail) != 0:
        return False
    hit.found = True
    hit.ts = fdb_ikey_ts(k, kn)
    hit.seq = fdb_ikey_seq(k, kn)
    hit.kind = fdb_ikey_kind(k, kn)
    hit.value = v
    hit.value_len = vn
    hit.version = VERSION_UNKNOWN
    return True


cdef class Iterator:
    # The protocol struct of the implementation; set by the subclass __cinit__.
    cdef fdb_iter *it
    # The exception that describes it.status != FDB_OK, set by the
    # implementation (with the GIL) when it records an error.
    cdef object error
    # Raise the pending error, if any.  Returns 0 when there is none.
    cdef int check(self) except -1


cdef class Source:
    """Something the read path merges: a memtable or an SSTable.

    Sources are kept in recency order by the engine (memtable, frozen
    memtables newest first, tables newest first): for any (key, ts), a newer
    source holds newer versions, so a point read may stop at the first source
    that has the (key, ts).
    """
    # Inclusive bounds of the ts of every point entry (puts and deletes);
    # min_ts > max_ts while the source is empty.
    cdef readonly long long min_ts
    cdef readonly long long max_ts
    # Range tombstones held by this source: list of (start, end, seq), end exclusive.
    cdef readonly list range_dels

    # False only if no entry of user key `ukey` can be in this source (bloom).
    cdef bint may_contain(self, const unsigned char *ukey, size_t n) noexcept nogil

    # A new iterator over every entry (all kinds, all seqs).  ts_lo/ts_hi is
    # a hint: the iterator may skip whole blocks whose ts bounds lie outside
    # [ts_lo, ts_hi], but never an entry inside it.
    cpdef Iterator new_iterator(self, bint fill_cache=*, bint verify_checksums=*,
                                long long ts_lo=*, long long ts_hi=*)

    # Point reads (read.pyx get, get_latest) without an iterator object
    # where the source can avoid one.  GIL held; each raises what the
    # source's iterators would.  They return what keeps hit.value alive
    # (None when nothing was found).  The base implementations go through
    # new_iterator().
    #
    # find_version: target = internal_key(ukey, ts, snapshot, 0xff); reports
    # the newest point entry (PUT or DELETE) of (ukey, ts) with seq <=
    # snapshot.
    cdef object find_version(self, const uint8_t *target, size_t tn, bint fill_cache,
                             bint verify_checksums, EntryHit *hit)
    # find_floor: target = internal_key(ukey, bound, 0, 0); reports the last
    # entry <= target (any kind, any seq) if its user key is ukey, and in
    # hit.version what it saw of the versions of that ts at `snapshot`.
    cdef object find_floor(self, const uint8_t *target, size_t tn, uint64_t snapshot,
                           bint fill_cache, bint verify_checksums, EntryHit *hit)


cdef class VectorSource(Source):
    """A Source over a list of (internal key, value) pairs, for tests and for
    feeding a handful of entries into the read path.

    min_ts/max_ts are computed from the point entries (kinds DELETE and PUT);
    entries of kind RANGE_DEL are not iterated: pass range deletes as
    `range_dels`.  may_contain() is exact when `bloom=True` (it then takes the
    GIL), else always True.  With fail_after=n >= 0 its iterators fail
    (status FDB_ERR_CORRUPTION, check() raises `error`) on their (n+1)-th
    positioning call: a test hook for error propagation.  Immutable after
    construction.
    """
    # The point entries, sorted in internal-key order.
    cdef readonly list entries
    # Whether may_contain() is exact, and the set of user keys it checks.
    cdef bint _bloom
    cdef object _ukeys
    # Iterators fail on their (fail_after+1)-th move with `_fail_error`; -1: never.
    cdef long long _fail_after
    cdef object _fail_error
