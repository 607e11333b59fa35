# cython: language_level=3, boundscheck=False, wraparound=False
"""The read path: which entries a read sees, and what compaction may drop.

Every read (get, get_latest, Cursor) and compaction apply the same rules
(API.md section 1, "Data model and ordering") to the entries of a list of
Sources given newest first:

    visible(entry)   := entry.seq <= snapshot
    version(key, ts) := the visible entry of (key, ts) with the greatest seq
                        (entries sort by seq descending: the first one met)
    live(key, ts)    := version exists
                        and version.kind == PUT
                        and not exists range delete rd:
                                rd.start <= key < rd.end
                                and version.seq < rd.seq <= snapshot
                        and version.expire_at > now          # i64le value[0:8]

Range deletes are never iterator entries: they come as a list of
(start, end exclusive, seq), normally the union of the sources'
`range_dels` (None means exactly that), or a prebuilt RangeDelIndex.
Entries of kind RANGE_DEL met in an iterator are ignored.

Compaction keeps, for each (key, ts), the versions a snapshot >=
smallest_snapshot may still need (with no older snapshot: only the newest),
drops what a range delete with seq <= smallest_snapshot hides, and, only at
the bottommost level, the point tombstones and expired records themselves.

The loops that skip invisible entries run over the MergingIterator's C
protocol.  Compaction runs them without the GIL (taking it per batch of
input blocks read ahead, and per batch of output blocks written).  A
Cursor keeps the GIL: every block it loads needs the GIL anyway (cache,
pread, the bytes object), and a reader that dropped the GIL around
each batch had to win it back from a running compaction at each of those
steps.  Measured (1M records, background compaction running): a 1% window
over all series took 10 ms dropping the GIL, 2.8 ms keeping it; two
reader threads gained nothing from the release (0.9x).
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memset
from libc.stdint cimport uint8_t, uint64_t, int64_t, INT64_MIN, INT64_MAX, UINT64_MAX
from flowdb._core.cdefs cimport (
    fdb_iter, fdb_ikey_write, fdb_ikey_ts, fdb_ikey_seq, fdb_ikey_kind,
    fdb_ukey_cmp, fdb_get_u64le, FDB_KIND_DELETE, FDB_KIND_PUT, FDB_KIND_RANGE_DEL,
    FDB_TRAILER_SIZE, FDB_MAX_SEQ, FDB_MAX_KEY, FDB_NEVER, FDB_OK, FDB_ERR_CORRUPTION,
    FDB_ERR_NOMEM, FDB_ERR_PYTHON, fdb_mono_ns)
from cpython.object cimport PyObject
from cpython.ref cimport Py_XINCREF, Py_XDECREF
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from flowdb._core.iterator cimport Iterator, Source, EntryHit, VERSION_FOUND, VERSION_NONE
from flowdb._core.merge cimport MergingIterator
from flowdb._core.record cimport Record, make_record, check_key, check_prefix, check_i64
from flowdb._core.histogram cimport LatencyHistogram
from flowdb._core.table cimport TableBuilder, TableReader
from flowdb._core.table import TableIterator
import heapq
from flowdb._errors import CorruptionError, InvalidStateError

__all__ = ["get", "get_latest", "PointReader", "ReadStats", "Cursor", "ScanIterator", "compact", "RangeDelIndex"]

# The greatest trailer byte: (key, ts, seq, 0xff) sorts before every entry
# of (key, ts) with that seq or a smaller one.
cdef unsigned KIND_FIRST = 0xff
# next() calls tried before a seek when skipping ts outside [ts_lo, ts_hi]:
# a seek repositions every child of the merge, a next moves one.
cdef int NEXT_BEFORE_SEEK = 4
# Cursor.next_batch copies at most this many records, and about this many
# bytes (always at least one record), per pass of the C loop.
cdef Py_ssize_t BATCH_RECORDS = 4096
cdef size_t BATCH_BYTES = 256 * 1024
# A ScanIterator's first batch, doubling up to the last.
cdef Py_ssize_t SCAN_BATCH_MIN = 16
cdef Py_ssize_t SCAN_BATCH_MAX = 1024
# Engine.query drains its cursor this many records at a time.
cdef Py_ssize_t QUERY_BATCH = 4096
# Bucket ranges a view remembers the time-filtered sources of.
cdef Py_ssize_t TIME_SOURCES_KEPT = 64

# Verdicts on the newest visible version of a (key, ts).
cdef enum:
    V_LIVE = 0
    V_DELETED = 1           # a point tombstone
    V_RANGE_DELETED = 2     # hidden by a range delete
    V_EXPIRED = 3
    V_CORRUPT = 4           # unknown kind, or a PUT value shorter than 8 bytes

# What _find/compaction found malformed.
cdef enum:
    BAD_NONE = 0
    BAD_KEY = 1             # an internal key shorter than 16 bytes
    BAD_ENTRY = 2           # V_CORRUPT


cdef inline int _verdict(unsigned kind, uint64_t seq, const uint8_t *v, size_t vn,
                         uint64_t rd_seq, int64_t now) noexcept nogil:
    """The rules above, for a version that is visible and the first of its
    (key, ts); rd_seq is RangeDelIndex.covering_seq of its user key."""
    if kind == FDB_KIND_DELETE:
        return V_DELETED
    if kind != FDB_KIND_PUT:
        return V_CORRUPT
    if seq < rd_seq:
        return V_RANGE_DELETED
    if vn < 8:
        return V_CORRUPT
    if <int64_t>fdb_get_u64le(v) <= now:
        return V_EXPIRED
    return V_LIVE


cdef inline bint _same_ukey(const uint8_t *k, size_t kn, const uint8_t *u, size_t un) noexcept nogil:
    return kn == un + FDB_TRAILER_SIZE and (un == 0 or memcmp(k, u, un) == 0)


cdef inline uint64_t _clamp_seq(unsigned long long s) noexcept nogil:
    return s if s < FDB_MAX_SEQ else FDB_MAX_SEQ


cdef str _bad_message(int bad):
    if bad == BAD_KEY:
        return "internal key shorter than 16 bytes"
    return "entry of unknown kind or PUT value shorter than its 8-byte expiry"


# -- range tombstones ------------------------------------------------------------

cdef class RangeDelIndex:

    def __init__(self, range_dels=(), unsigned long long snapshot=FDB_MAX_SEQ):
        cdef Py_ssize_t i
        cdef bytes s, e
        kept = set()
        for rd in range_dels:
            start, end, seq = rd
            if not isinstance(start, bytes) or not isinstance(end, bytes):
                raise TypeError("a range delete is (start: bytes, end: bytes, seq: int)")
            if start < end and 0 < seq <= snapshot:
                kept.add((start, end, int(seq)))
        rds = sorted(kept)
        self.range_dels = rds
        self.max_seq = max((q for _, _, q in rds), default=0)
        self.n = len(rds)
        self._keep = []
        if self.n == 0:
            return

        # Fragments: a sweep over the distinct boundaries, with a max-heap of
        # the tombstones open at each (lazily dropping those already ended).
        bounds = sorted({b for s, e, _ in rds for b in (s, e)})
        frags = []
        heap = []
        j = 0
        for b in bounds:
            while j < self.n and rds[j][0] == b:
                heapq.heappush(heap, (-rds[j][2], rds[j][1]))
                j += 1
            while heap and heap[0][1] <= b:
                heapq.heappop(heap)
            top = -heap[0][0] if heap else 0
            if not frags or frags[len(frags) - 1][1] != top:
                frags.append((b, top))

        self.spans = <RangeSpan *>malloc(self.n * sizeof(RangeSpan))
        self.frags = <RangeFragment *>malloc(len(frags) * sizeof(RangeFragment))
        if self.spans == NULL or self.frags == NULL:
            raise MemoryError()
        for i in range(self.n):
            s, e, q = rds[i]
            self._keep.append(s)
            self._keep.append(e)
            self.spans[i].start = <const uint8_t *><const char *>s
            self.spans[i].start_len = len(s)
            self.spans[i].end = <const uint8_t *><const char *>e
            self.spans[i].end_len = len(e)
            self.spans[i].seq = q
        self.m = len(frags)
        for i in range(self.m):
            s, q = frags[i]
            self._keep.append(s)
            self.frags[i].start = <const uint8_t *><const char *>s
            self.frags[i].start_len = len(s)
            self.frags[i].seq = q

    def __dealloc__(self):
        free(self.spans)
        free(self.frags)

    def __len__(self):
        return self.n

    cdef uint64_t covering_seq(self, const uint8_t *k, size_t kn,
                               uint64_t snapshot) noexcept nogil:
        cdef Py_ssize_t lo, hi, mid, i
        cdef uint64_t best = 0
        if self.n == 0:
            return 0
        if snapshot >= self.max_seq:
            lo = 0
            hi = self.m
            while lo < hi:              # first fragment starting after k
                mid = (lo + hi) // 2
                if fdb_ukey_cmp(self.frags[mid].start, self.frags[mid].start_len, k, kn) <= 0:
                    lo = mid + 1
                else:
                    hi = mid
            return self.frags[lo - 1].seq if lo > 0 else 0
        for i in range(self.n):
            if fdb_ukey_cmp(self.spans[i].start, self.spans[i].start_len, k, kn) > 0:
                break
            if (best < self.spans[i].seq <= snapshot
                    and fdb_ukey_cmp(k, kn, self.spans[i].end, self.spans[i].end_len) < 0):
                best = self.spans[i].seq
        return best

    def covering(self, bytes key not None, unsigned long long snapshot=FDB_MAX_SEQ):
        """The greatest seq <= snapshot of the tombstones covering `key` (0: none)."""
        return self.covering_seq(key, len(key), snapshot)


cdef list _all_range_dels(list sources):
    return [rd for s in sources for rd in (<Source?>s).range_dels]


# Indexes are immutable: every read without range deletes shares this one.
cdef RangeDelIndex _NO_RANGE_DELS = RangeDelIndex()


cdef RangeDelIndex _index(object range_dels, list sources, uint64_t snapshot):
    if isinstance(range_dels, RangeDelIndex):
        return <RangeDelIndex>range_dels
    if range_dels is None:
        range_dels = _all_range_dels(sources)
    if not range_dels:
        return _NO_RANGE_DELS
    return RangeDelIndex(range_dels, snapshot)


# -- point reads -------------------------------------------------------------------

# Seek targets of up to this many bytes are built on the stack.
cdef enum:
    _TARGET_STACK = 256

# `now` for a read that has not needed the clock yet: no record expires at
# INT64_MIN, and _live_record reads the clock before judging one that may.
cdef int64_t _NOW_UNREAD = INT64_MIN


cdef inline int64_t _wall_us() noexcept nogil:
    """time.time_ns() // 1000, without a Python call."""
    cdef timespec t
    clock_gettime(CLOCK_REALTIME, &t)
    return <int64_t>t.tv_sec * 1000000 + t.tv_nsec // 1000


cdef inline int64_t _bucket(int64_t ts, int64_t width) noexcept nogil:
    """floor(ts / width), the time index's bucket of ts (width >= 1): C's
    division truncates toward zero, Python's floors."""
    cdef int64_t q = ts / width
    if ts % width < 0:
        q -= 1
    return q


cdef int _to_version(fdb_iter *it, uint8_t *t, const uint8_t *kp, size_t kn, int64_t ts,
                     uint64_t snapshot, bint *found) noexcept nogil:
    """Seeks it to the newest entry of (key, ts) with seq <= snapshot (t: a
    buffer of kn + 16 bytes for the target); found[0]: whether there is one."""
    fdb_ikey_write(t, kp, kn, ts, snapshot, KIND_FIRST)
    cdef int rc = it.seek(it, t, kn + FDB_TRAILER_SIZE)
    while (rc == FDB_OK and it.valid and _same_ukey(it.key, it.key_len, kp, kn)
           and fdb_ikey_ts(it.key, it.key_len) == ts
           and fdb_ikey_kind(it.key, it.key_len) == FDB_KIND_RANGE_DEL):
        rc = it.next(it)
    found[0] = (rc == FDB_OK and it.valid and _same_ukey(it.key, it.key_len, kp, kn)
                and fdb_ikey_ts(it.key, it.key_len) == ts)
    return rc


cdef uint64_t _list_covering(list range_dels, bytes key, uint64_t snapshot) except? 0:
    """RangeDelIndex.covering_seq over a plain list: one key does not pay
    for building an index."""
    cdef uint64_t best = 0
    for start, end, q in range_dels:
        if best < q <= snapshot and start <= key < end:
            best = q
    return best


cdef object _live_record(bytes key, EntryHit *hit, uint64_t rd_seq, int64_t now):
    """The Record of the version in *hit (the first visible one of its
    (key, ts)) if it is live, else None."""
    cdef int v
    if (now == _NOW_UNREAD and hit.kind == FDB_KIND_PUT and hit.value_len >= 8
            and <int64_t>fdb_get_u64le(hit.value) != FDB_NEVER):
        now = _wall_us()
    v = _verdict(hit.kind, hit.seq, hit.value, hit.value_len, rd_seq, now)
    if v == V_CORRUPT:
        raise CorruptionError(_bad_message(BAD_ENTRY))
    if v != V_LIVE:
        return None
    return make_record(key, hit.ts,
                       PyBytes_FromStringAndSize(<const char *>hit.value + 8, hit.value_len - 8),
                       <int64_t>fdb_get_u64le(hit.value))


# One source as get_latest sees it.
cdef struct _Candidate:
    PyObject *src           # borrowed: the PointReader's list holds it
    PyObject *pin           # owned: what keeps hit.value alive (or NULL)
    int64_t min_ts
    int64_t max_ts
    int state               # 0: to look up; 1: hit.ts is its greatest ts <= T; 2: none <= T
    bint volatile           # not an SSTable: may gain entries (a memtable)
    EntryHit hit            # find_floor's answer (state 1)


# get_latest's remembered answers (PointReader._get_latest): what one
# reader may hold, charged per answer as its key and value plus the dict
# entry, tuple and Record around them; past the budget it starts over.
cdef Py_ssize_t _LATEST_BUDGET = 4 << 20
cdef Py_ssize_t _LATEST_OVERHEAD = 256


@cython.final
cdef class ReadStats:
    """What reads add to the engine's metrics (API.md): the query latency
    histogram and the count of records returned."""
    cdef readonly LatencyHistogram query_hist
    cdef readonly unsigned long long records_read

    def __init__(self, LatencyHistogram query_hist not None):
        self.query_hist = query_hist

    cdef inline void done(self, int64_t started_ns, Py_ssize_t records) noexcept:
        """A read that began at started_ns (fdb_mono_ns) returned `records`."""
        self.records_read += records
        self.query_hist.record((fdb_mono_ns() - started_ns) // 1000)


@cython.final
cdef class PointReader:
    """PointReader(sources, range_dels=None, live=None): get and get_latest
    over a fixed list of sources (newest first), without iterator objects
    (Source.find_version / find_floor).

    range_dels: the range tombstones to honour: a RangeDelIndex, a list of
    (start, end, seq) (indexed on first use), or None for the union of the
    sources' range_dels.  live: a source whose range_dels list may still grow
    (the engine's active memtable); it is read on every use, and is not part
    of range_dels.  Immutable otherwise, so one reader serves every thread
    (the engine keeps one per view)."""
    cdef list _sources
    cdef object _rds                # range_dels while not yet indexed
    cdef RangeDelIndex _rdi         # their index once built (_fixed), else None
    cdef Source _live               # or None
    # get_latest's answers from the SSTables alone: key -> (Record or None,
    # the wall clock it was judged at, bytes charged); see _get_latest.
    cdef dict _latest
    cdef readonly Py_ssize_t latest_bytes
    # The greatest seq of the SSTables' entries and of range_dels: a
    # snapshot at or above it sees all of them.
    cdef uint64_t _settled_seq
    # get_latest calls answered from _latest (for tests and profiling).
    cdef readonly unsigned long long latest_hits

    def __init__(self, list sources not None, range_dels=None, Source live=None):
        cdef uint64_t settled = 0
        for s in sources:
            if not isinstance(s, Source):
                raise TypeError(f"a source must be a Source, not {type(s).__name__}")
        self._sources = list(sources)
        self._live = live
        if range_dels is None:
            range_dels = _all_range_dels(self._sources)
        if isinstance(range_dels, RangeDelIndex):
            self._rdi = <RangeDelIndex>range_dels
            settled = self._rdi.max_seq
        elif range_dels:
            self._rds = list(range_dels)
            for _, _, q in self._rds:
                if q > settled:
                    settled = q
        for s in self._sources:
            if isinstance(s, TableReader):
                q = (<TableReader>s).props.get("max_seq")
                if q is None:
                    settled = UINT64_MAX      # never remember answers
                elif q > settled:
                    settled = q
        self._settled_seq = settled
        self._latest = {}

    cdef uint64_t _covering(self, bytes key, uint64_t snapshot) except? 0:
        cdef uint64_t best = 0, live_seq
        cdef list live
        best = self._fixed().covering_seq(key, len(key), snapshot)
        if self._live is not None:
            live = self._live.range_dels
            if live:
                live_seq = _list_covering(live, key, snapshot)
                if live_seq > best:
                    best = live_seq
        return best

    cpdef RangeDelIndex range_del_index(self):
        """A RangeDelIndex of the tombstones this reader honours now (the
        live source's included), for a Cursor over the same sources."""
        cdef list live = self._live.range_dels if self._live is not None else None
        cdef RangeDelIndex fixed = self._fixed()
        if live:
            return RangeDelIndex(fixed.range_dels + live)
        return fixed

    cdef RangeDelIndex _fixed(self):
        """The index of range_dels, built on first use."""
        if self._rdi is None:
            self._rdi = RangeDelIndex(self._rds) if self._rds else _NO_RANGE_DELS
            self._rds = None
        return self._rdi

    cdef object _resolve(self, bytes key, EntryHit *hit, uint64_t snapshot, int64_t now):
        return _live_record(key, hit, self._covering(key, snapshot)
                            if hit.kind == FDB_KIND_PUT else 0, now)

    cdef object _find_version(self, const uint8_t *t, size_t tn, int64_t ts, bint fill_cache,
                              bint verify_checksums, EntryHit *hit):
        """The newest visible version of (key, ts): the first source holding
        one decides (older sources are not read).  Returns the pin of *hit."""
        cdef Source src
        cdef size_t kn = tn - FDB_TRAILER_SIZE
        for s in self._sources:
            src = <Source>s
            if ts < src.min_ts or ts > src.max_ts or not src.may_contain(t, kn):
                continue
            pin = src.find_version(t, tn, fill_cache, verify_checksums, hit)
            if hit.found:
                return pin
        hit.found = False
        return None

    cdef object _get(self, bytes key, int64_t ts, uint64_t snapshot, int64_t now,
                     bint fill_cache, bint verify_checksums):
        cdef EntryHit hit
        cdef uint8_t small[_TARGET_STACK]
        cdef size_t kn = len(key), tn = kn + FDB_TRAILER_SIZE
        cdef uint8_t *t = <uint8_t *>small if tn <= _TARGET_STACK else <uint8_t *>malloc(tn)
        if t == NULL:
            raise MemoryError()
        try:
            fdb_ikey_write(t, key, kn, ts, snapshot, KIND_FIRST)
            pin = self._find_version(t, tn, ts, fill_cache, verify_checksums, &hit)
            if not hit.found:
                return None
            return self._resolve(key, &hit, snapshot, now)
        finally:
            if t != <uint8_t *>small:
                free(t)

    cdef int _probe(self, _Candidate *ci, int64_t T, const uint8_t *kp, size_t kn,
                    uint8_t *t, size_t tn, uint64_t snapshot, bint fill_cache,
                    bint verify_checksums) except -1:
        """Sets ci.state and ci.hit to the source's greatest entry of the key
        with ts <= T (find_floor)."""
        cdef int64_t bound = T if T < ci.max_ts else ci.max_ts
        if bound < ci.min_ts or not (<Source>ci.src).may_contain(kp, kn):
            ci.state = 2
            return 0
        # (key, bound, seq 0, kind 0) sorts after every entry of (key, <= bound).
        fdb_ikey_write(t, kp, kn, bound, 0, 0)
        pin = (<Source>ci.src).find_floor(t, tn, snapshot, fill_cache, verify_checksums, &ci.hit)
        Py_XDECREF(ci.pin)
        Py_XINCREF(<PyObject *>pin)
        ci.pin = <PyObject *>pin
        if not ci.hit.found:
            ci.state = 2
        elif ci.hit.ts > bound:     # T would not decrease: never loop
            raise CorruptionError("a source's keys are out of order")
        else:
            ci.state = 1
        return 0

    cdef object _get_latest(self, bytes key, uint64_t snapshot, int64_t now,
                            bint fill_cache, bint verify_checksums):
        """Finds, per source, the greatest ts <= T of the key (find_floor),
        resolves the greatest over all sources as get() does, and only if
        that version is not live lowers T below it and repeats.  A source's
        answer is reused while it stays <= T.

        When no memtable holds an entry of the key and the snapshot sees
        every entry of the SSTables, the answer is the SSTables' alone, and
        it stays the answer for as long as this reader serves (its tables
        never change) but for the clock: it is remembered with the time it
        was judged at, and given again while the clock has not gone back
        and the record has not expired (a newer version dead then is dead
        still).  A dashboard asking for the latest value of its series
        then costs a dict lookup instead of a block search per call."""
        cdef uint8_t small[_TARGET_STACK]
        cdef _Candidate few[16]
        cdef Py_ssize_t few_order[16]
        cdef _Candidate *c = <_Candidate *>few
        cdef Py_ssize_t *order = <Py_ssize_t *>few_order
        cdef Source src
        cdef size_t kn = len(key), tn = kn + FDB_TRAILER_SIZE
        cdef const uint8_t *kp = key
        cdef uint8_t *t = <uint8_t *>small if tn <= _TARGET_STACK else <uint8_t *>malloc(tn)
        cdef Py_ssize_t i, j, n = 0, nsrc = len(self._sources)
        cdef bint remember = False
        cdef list live
        cdef tuple known
        cdef Record r
        if nsrc > 16:
            c = <_Candidate *>malloc(nsrc * sizeof(_Candidate))
            order = <Py_ssize_t *>malloc(nsrc * sizeof(Py_ssize_t))
        try:
            if t == NULL or c == NULL or order == NULL:
                raise MemoryError()
            # The sources that are not empty (c: in recency order), and
            # `order`: by descending max_ts (ties in recency order).  Once the
            # best candidate is above every remaining source's max_ts, none
            # of them can beat it (time-series tables split by time, so this
            # is usually one lookup; the bloom filters of the others are not
            # even asked).
            for s in self._sources:
                src = <Source>s
                if src.min_ts <= src.max_ts:
                    c[n].src = <PyObject *>src
                    c[n].pin = NULL
                    c[n].min_ts = src.min_ts
                    c[n].max_ts = src.max_ts
                    c[n].state = 0
                    c[n].volatile = not isinstance(src, TableReader)
                    j = n
                    while j > 0 and c[order[j - 1]].max_ts < c[n].max_ts:
                        order[j] = order[j - 1]
                        j -= 1
                    order[j] = n
                    n += 1
            # (Only for reads on the real clock: `now` not given.)
            if fill_cache and now == _NOW_UNREAD and snapshot >= self._settled_seq:
                live = self._live.range_dels if self._live is not None else None
                remember = not (live and _list_covering(live, key, snapshot))
                # The memtables are asked first (as the search below would:
                # it reuses their answers); one holding the key decides.
                for i in range(n):
                    if remember and c[i].volatile:
                        self._probe(&c[i], INT64_MAX, kp, kn, t, tn, snapshot,
                                    fill_cache, verify_checksums)
                        remember = c[i].state == 2
                if remember:
                    now = _wall_us()
                    known = self._latest.get(key)
                    if known is not None and now >= <int64_t>known[1]:
                        if known[0] is None:
                            self.latest_hits += 1
                            return None
                        r = <Record>known[0]
                        if r.expire_at > now:
                            self.latest_hits += 1
                            return make_record(r.key, r.ts, r.value, r.expire_at)
            record = self._latest_search(key, c, order, n, kp, kn, t, tn, snapshot, now,
                                         fill_cache, verify_checksums)
            if remember:
                self._remember(key, record, now)
            return record
        finally:
            for i in range(n):
                Py_XDECREF(c[i].pin)
            if t != <uint8_t *>small:
                free(t)
            if c != <_Candidate *>few:
                free(c)
                free(order)

    cdef object _latest_search(self, bytes key, _Candidate *c, Py_ssize_t *order, Py_ssize_t n,
                               const uint8_t *kp, size_t kn, uint8_t *t, size_t tn,
                               uint64_t snapshot, int64_t now, bint fill_cache,
                               bint verify_checksums):
        """_get_latest's search over the candidates c (the pins they take
        are the caller's to drop)."""
        cdef EntryHit hit
        cdef Py_ssize_t i, o
        cdef int64_t T = INT64_MAX, best = 0
        cdef bint has_best
        while True:
            has_best = False
            for o in range(n):
                i = order[o]
                if has_best and c[i].max_ts < best:
                    break
                if c[i].state == 1 and c[i].hit.ts > T:
                    c[i].state = 0
                if c[i].state == 0:
                    self._probe(&c[i], T, kp, kn, t, tn, snapshot, fill_cache, verify_checksums)
                if c[i].state == 1 and (not has_best or c[i].hit.ts > best):
                    has_best = True
                    best = c[i].hit.ts
            if not has_best:
                return None
            # The newest source holding a visible version of (key, best)
            # decides; only the candidates at best can hold one.
            for i in range(n):
                if c[i].state != 1 or c[i].hit.ts != best or c[i].hit.version == VERSION_NONE:
                    continue
                if c[i].hit.version == VERSION_FOUND:
                    hit = c[i].hit
                else:
                    fdb_ikey_write(t, kp, kn, best, snapshot, KIND_FIRST)
                    pin = (<Source>c[i].src).find_version(t, tn, fill_cache,
                                                          verify_checksums, &hit)
                    if not hit.found:
                        continue
                record = self._resolve(key, &hit, snapshot, now)
                if record is not None:
                    return record
                break
            if best == INT64_MIN:
                return None
            T = best - 1

    cdef int _remember(self, bytes key, record, int64_t now) except -1:
        """Keeps get_latest's answer for key, judged at wall clock `now`
        (a copy: the caller's Record may be changed)."""
        cdef Record r
        cdef Py_ssize_t charge = _LATEST_OVERHEAD + len(key)
        if record is not None:
            r = <Record>record
            charge += len(r.value)
            record = make_record(r.key, r.ts, r.value, r.expire_at)
        known = self._latest.pop(key, None)      # one it replaces (expired since)
        if known is not None:
            self.latest_bytes -= <Py_ssize_t>(<tuple>known)[2]
        if charge > _LATEST_BUDGET // 16:
            return 0
        if self.latest_bytes + charge > _LATEST_BUDGET:
            self._latest.clear()
            self.latest_bytes = 0
        self._latest[key] = (record, now, charge)
        self.latest_bytes += charge
        return 0

    def get(self, key, ts, unsigned long long snapshot, ReadStats stats=None):
        """The live Record at exactly (key, ts) as of `snapshot`, or None.
        key and ts are checked as Record() checks them; stats, if given,
        counts the read (ReadStats)."""
        return self._counted_get(key, ts, _clamp_seq(snapshot), stats)

    cdef object _counted_get(self, key, ts, uint64_t snapshot, ReadStats stats):
        cdef bytes k = check_key(key, "key")
        cdef int64_t t = check_i64(ts, "ts")
        cdef int64_t started = fdb_mono_ns() if stats is not None else 0
        record = self._get(k, t, snapshot, _NOW_UNREAD, True, True)
        if stats is not None:
            stats.done(started, record is not None)
        return record

    def get_values(self, list keys not None, long long ts, unsigned long long snapshot):
        """[the value of the live record at (key, ts), or None] for each key
        (bytes): get() for many keys in one call, for layers on the engine
        (a JsonDB query fetches its documents with it)."""
        cdef uint64_t snap = _clamp_seq(snapshot)
        cdef list out = []
        for key in keys:
            if not isinstance(key, bytes) or not 0 < len(<bytes>key) <= FDB_MAX_KEY:
                raise TypeError("get_values takes a list of keys as bytes of 1..65535 bytes")
            record = self._get(<bytes>key, ts, snap, _NOW_UNREAD, True, True)
            out.append(None if record is None else (<Record>record).value)
        return out

    def get_latest(self, key, unsigned long long snapshot, ReadStats stats=None):
        """The live Record of `key` with the greatest ts as of `snapshot`, or None."""
        return self._counted_get_latest(key, _clamp_seq(snapshot), stats)

    cdef object _counted_get_latest(self, key, uint64_t snapshot, ReadStats stats):
        cdef bytes k = check_key(key, "key")
        cdef int64_t started = fdb_mono_ns() if stats is not None else 0
        record = self._get_latest(k, snapshot, _NOW_UNREAD, True, True)
        if stats is not None:
            stats.done(started, record is not None)
        return record


cdef class EngineReads:
    """The base class of flowdb.Engine: its point reads and queries as C
    methods, so that a get or a short query costs no Python frame.  The
    engine keeps here what they read: its current view (flowdb._engine._View:
    .reader is a PointReader), the last published seq, whether it is closed,
    and the stats reads count into.  The time-index lookup also reads the
    engine's _time_index and _mutex."""
    cdef object _current_view
    # _current_view.reader.  A read must hold its own reference while it runs:
    # a block read releases the GIL, and a flush may meanwhile publish a new
    # view, dropping the last reference to this one.
    cdef PointReader _reader
    cdef public unsigned long long _visible_seq
    cdef public bint _closed
    cdef public ReadStats _read_stats
    cdef public unsigned long long _tables_skipped_by_time_index

    def __cinit__(self, *args, **kwargs):
        self._closed = True                # until the engine has opened

    @property
    def _view(self):
        return self._current_view

    @_view.setter
    def _view(self, view):
        self._reader = None if view is None else view.reader
        self._current_view = view

    def get(self, key, ts):
        """The record at exactly (key, ts), or None."""
        if self._closed:                   # a background failure is a writer's news
            self._check_open()
        cdef uint64_t seq = self._visible_seq    # before the view: see flowdb._engine
        cdef PointReader reader = self._reader   # our own reference: see _reader
        return reader._counted_get(key, ts, _clamp_seq(seq), self._read_stats)

    def get_latest(self, key):
        """The live record of key with the greatest ts, or None."""
        if self._closed:
            self._check_open()
        cdef uint64_t seq = self._visible_seq
        cdef PointReader reader = self._reader   # our own reference: see _reader
        return reader._counted_get_latest(key, _clamp_seq(seq), self._read_stats)

    def query_prefix_time_range(self, prefix, start, end):
        """Every record whose key starts with prefix and start <= ts <= end,
        in (key, ts) order: ScanRange.prefix_time_range's checks without
        building one, for the hot query of a time-series store."""
        cdef bytes p = check_prefix(prefix)
        return self._query(p, None, None, check_i64(start, "start"), check_i64(end, "end"))

    def _query(self, bytes prefix, bytes start, bytes end, int64_t ts_lo, int64_t ts_hi):
        """Engine.query of a ScanRange's fields (already checked)."""
        cdef int64_t started = fdb_mono_ns()
        if self._closed:                   # a background failure is a writer's news
            self._check_open()
        cdef uint64_t seq = self._visible_seq    # before the view: see flowdb._engine
        view = self._current_view
        cdef Cursor cursor = self._new_cursor(view, seq, prefix, start, end, ts_lo, ts_hi,
                                              True, True, False)
        # Whole batches, not a Python call per record as iterating would.
        cdef list records = cursor.next_batch(QUERY_BATCH)
        cdef list batch = records
        while len(batch) == QUERY_BATCH:        # fewer: the end
            if self._closed:
                raise InvalidStateError("the engine was shut down during this query")
            batch = cursor.next_batch(QUERY_BATCH)
            records += batch
        self._read_stats.done(started, len(records))
        return records

    def _cursor_over(self, view, unsigned long long seq, bytes prefix, bytes start, bytes end,
                     int64_t ts_start, int64_t ts_end, bint fill_cache=True,
                     bint verify_checksums=True, bint reverse=False):
        """A Cursor over `view` at `seq` (Cursor's arguments)."""
        return self._new_cursor(view, seq, prefix, start, end, ts_start, ts_end,
                                fill_cache, verify_checksums, reverse)

    cdef Cursor _new_cursor(self, view, uint64_t seq, bytes prefix, bytes start, bytes end,
                            int64_t ts_lo, int64_t ts_hi, bint fill_cache,
                            bint verify_checksums, bint reverse):
        cdef list sources = view.sources
        if (ts_lo > INT64_MIN or ts_hi < INT64_MAX) and view.tables:
            sources = self._time_sources(view, ts_lo, ts_hi)
        return Cursor(sources, (<PointReader?>view.reader).range_del_index(), seq, _wall_us(),
                      prefix, start, end, ts_lo, ts_hi, fill_cache, verify_checksums, reverse)

    cdef list _time_sources(self, view, int64_t ts_lo, int64_t ts_hi):
        """The view's sources a read over [ts_lo, ts_hi] needs (flowdb._time_index).

        Memtables always; a table if the time index has a block of it in a
        bucket the range touches, or if the index does not know it (a table
        of an older, pinned view).  Order is kept: recency order matters.
        The answer depends only on the buckets the range touches, and is a
        superset of what the view needs whenever it was computed (blocks'
        bounds never change), so the view keeps it for the next read."""
        index = self._time_index
        cdef int64_t width = index.width
        bucket_range = (_bucket(ts_lo, width), _bucket(ts_hi, width))
        cdef dict kept = view.time_sources
        found = kept.get(bucket_range)
        if found is None:
            with self._mutex:
                cands = index.candidates(ts_lo, ts_hi)
                if cands is None:
                    found = (view.sources, 0)
                else:
                    tables = view.tables
                    keep = [t for t in tables
                            if t.file_number in cands or not index.knows(t.file_number)]
                    found = (view.sources[:1 + len(view.frozen)] + keep, len(tables) - len(keep))
            if len(kept) < TIME_SOURCES_KEPT:
                kept[bucket_range] = found
        self._tables_skipped_by_time_index += <unsigned long long>found[1]
        return found[0]


def get(list sources not None, range_dels, unsigned long long snapshot, long long now_us,
        bytes key not None, long long ts, bint fill_cache=True, bint verify_checksums=True):
    """The live Record at exactly (key, ts) as of `snapshot`, or None.

    sources: newest first.  range_dels: every range tombstone to honour, a
    list of (start, end, seq) or a RangeDelIndex; None = the union of the
    sources' range_dels.  The first source holding a version of (key, ts)
    with seq <= snapshot decides; older sources are not read.
    """
    return PointReader(sources, range_dels)._get(key, ts, _clamp_seq(snapshot), now_us,
                                                 fill_cache, verify_checksums)


def get_latest(list sources not None, range_dels, unsigned long long snapshot,
               long long now_us, bytes key not None, bint fill_cache=True,
               bint verify_checksums=True):
    """The live Record of `key` with the greatest ts as of `snapshot`, or None
    (PointReader._get_latest).  A stray RANGE_DEL entry found resolves to
    "no version", so the search just moves below it."""
    return PointReader(sources, range_dels)._get_latest(key, _clamp_seq(snapshot), now_us,
                                                        fill_cache, verify_checksums)


cdef object _prefix_successor(bytes p):
    """The least key greater than every key starting with p (None: none)."""
    cdef Py_ssize_t n
    p = p.rstrip(b"\xff")
    n = len(p)                          # (no negative indexes: wraparound=False)
    return p[:n - 1] + bytes([p[n - 1] + 1]) if n else None


# -- Cursor -------------------------------------------------------------------------

@cython.final
cdef class Cursor:
    """Cursor(sources, range_dels, snapshot, now_us, prefix=None, start=None,
    end=None, ts_lo=INT64_MIN, ts_hi=INT64_MAX, fill_cache=True,
    verify_checksums=True, reverse=False)

    Iterates the live Records of `sources` (newest first) as of `snapshot`,
    in (key bytewise, ts) ascending order, or descending with reverse=True.
    Keys: starting with `prefix`
    (b"" or None: any) and within the inclusive [start, end] (None:
    unbounded); ts within the inclusive [ts_lo, ts_hi].  An inverted range
    yields nothing.  range_dels as for get().

    Reverse steps go (key, ts) group by group: seek_for_prev to the last
    entry before the group just returned, then a forward seek to the newest
    visible version of the group it landed in.  Each step repositions every
    child, so a reverse scan costs a few seeks per record where a forward
    one costs a next(): fine for the "last N" reads it is for.

    Lazy: nothing is read before the first next()/next_batch(); memory stays
    bounded by the children's current blocks plus one batch.  The cursor
    holds iterators on the sources, so they must stay alive (the engine's
    view keeps them).  Not thread-safe: one thread at a time.
    """

    def __init__(self, list sources not None, range_dels, unsigned long long snapshot,
                 long long now_us, bytes prefix=None, bytes start=None, bytes end=None,
                 long long ts_lo=INT64_MIN, long long ts_hi=INT64_MAX,
                 bint fill_cache=True, bint verify_checksums=True, bint reverse=False):
        cdef Source src
        self._reverse = reverse
        self._snapshot = _clamp_seq(snapshot)
        self._now = now_us
        self._ts_lo = ts_lo
        self._ts_hi = ts_hi
        self._prefix = prefix if prefix else None
        self._hi = end
        self._lo = start
        if self._prefix is not None and (self._lo is None or self._lo < self._prefix):
            self._lo = self._prefix
        self._buf = []
        self._bufpos = 0
        self._batch = 16
        self._rdi = _index(range_dels, sources, self._snapshot)
        if self._lo is not None:
            self._has_lo = True
            self._lo_p = <const uint8_t *><const char *>self._lo
            self._lo_n = len(self._lo)
        if self._hi is not None:
            self._has_hi = True
            self._hi_p = <const uint8_t *><const char *>self._hi
            self._hi_n = len(self._hi)
        if self._prefix is not None:
            self._has_pre = True
            self._pre_p = <const uint8_t *><const char *>self._prefix
            self._pre_n = len(self._prefix)
        if ts_lo > ts_hi or (self._has_lo and self._has_hi and self._lo > self._hi):
            self._done = True
            return
        children = []
        for s in sources:
            src = <Source?>s
            if src.min_ts > src.max_ts or src.max_ts < ts_lo or src.min_ts > ts_hi:
                continue
            children.append(src.new_iterator(fill_cache, verify_checksums, ts_lo, ts_hi))
        self._merge = MergingIterator(children)
        self._it = self._merge.it
        if reverse:
            if self._it.seek_for_prev == NULL:
                raise TypeError("reverse=True needs sources whose iterators have seek_for_prev")
            self._set_upper_target()

    cdef _set_upper_target(self):
        """The first reverse seek: the last entry a forward scan could return."""
        succ = _prefix_successor(self._prefix) if self._prefix is not None else None
        if self._has_hi and (succ is None or self._hi < succ):
            # (hi, ts_hi, seq 0, kind 0): after every entry of (hi, <= ts_hi).
            self._upper = bytearray(self._hi_n + FDB_TRAILER_SIZE)
            self._upper_p = self._upper
            self._upper_n = len(self._upper)
            fdb_ikey_write(self._upper_p, self._hi_p, self._hi_n, self._ts_hi, 0, 0)
            return
        # (u, INT64_MIN, max seq, KIND_FIRST) sorts before every entry of u,
        # and no user key exceeds FDB_MAX_KEY bytes of 0xff.
        u = succ if succ is not None else b"\xff" * (FDB_MAX_KEY + 1)
        self._upper = bytearray(len(u) + FDB_TRAILER_SIZE)
        self._upper_p = self._upper
        self._upper_n = len(self._upper)
        fdb_ikey_write(self._upper_p, <bytes>u, len(u), INT64_MIN, FDB_MAX_SEQ, KIND_FIRST)

    def __dealloc__(self):
        free(self._cur)
        free(self._tbuf)
        free(self._arena)
        free(self._outs)

    def close(self):
        """Releases the iterators (and what they pin); later reads return nothing."""
        self._done = True
        self._it = NULL
        self._merge = None
        self._buf = []
        self._bufpos = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the nogil core ----------------------------------------------------

    cdef int _seek(self, const uint8_t *ukey, size_t n, int64_t ts, uint64_t seq,
                   unsigned kind, bint back=False) noexcept nogil:
        """seek (back: seek_for_prev) to the internal key (ukey, ts, seq, kind)."""
        cdef size_t need = n + FDB_TRAILER_SIZE
        cdef int rc = self._reserve_target(n)
        if rc != FDB_OK:
            return rc
        fdb_ikey_write(self._tbuf, ukey, n, ts, seq, kind)
        if back:
            return self._it.seek_for_prev(self._it, self._tbuf, need)
        return self._it.seek(self._it, self._tbuf, need)

    cdef int _reserve_target(self, size_t n) noexcept nogil:
        """Room in _tbuf for an internal key of an n-byte user key."""
        cdef size_t need = n + FDB_TRAILER_SIZE
        cdef uint8_t *p
        if need > self._tcap:
            p = <uint8_t *>realloc(self._tbuf, need)
            if p == NULL:
                return FDB_ERR_NOMEM
            self._tbuf = p
            self._tcap = need
        return FDB_OK

    cdef int _set_cur(self, const uint8_t *k, size_t n) noexcept nogil:
        cdef uint8_t *p
        if n > self._cur_cap:
            p = <uint8_t *>realloc(self._cur, n)
            if p == NULL:
                return FDB_ERR_NOMEM
            self._cur = p
            self._cur_cap = n
        if n:
            memcpy(self._cur, k, n)
        self._cur_len = n
        self._has_cur = True
        return FDB_OK

    cdef int _find(self) noexcept nogil:
        """Moves the merge to the next live record (self._found) or to the end."""
        cdef fdb_iter *it = self._it
        cdef const uint8_t *k
        cdef size_t kn, ulen
        cdef int64_t ts
        cdef uint64_t seq
        cdef unsigned kind
        cdef int rc, v
        cdef bint new_key
        self._found = False
        if self._done:
            return FDB_OK
        if self._reverse:
            return self._find_back()
        if not self._started:
            self._started = True
            if self._has_lo:
                rc = self._seek(self._lo_p, self._lo_n, self._ts_lo, FDB_MAX_SEQ, KIND_FIRST)
            else:
                rc = it.seek_to_first(it)
            if rc != FDB_OK:
                return rc
        elif self._pending_next:
            self._pending_next = False
            rc = it.next(it)
            if rc != FDB_OK:
                return rc
        while True:
            rc = self._land(&new_key)
            if rc != FDB_OK or self._done:
                return rc
            k = it.key
            kn = it.key_len
            ulen = kn - FDB_TRAILER_SIZE
            if new_key:
                # A new user key: the key filter, then its range tombstones.
                if self._has_hi and fdb_ukey_cmp(k, ulen, self._hi_p, self._hi_n) > 0:
                    self._done = True
                    return FDB_OK
                if self._has_pre and (ulen < self._pre_n
                                      or memcmp(k, self._pre_p, self._pre_n) != 0):
                    self._done = True
                    return FDB_OK
                rc = self._new_ukey(k, ulen)
                if rc != FDB_OK:
                    return rc
            ts = fdb_ikey_ts(k, kn)
            if ts < self._ts_lo:
                if self._nskip < NEXT_BEFORE_SEEK:
                    self._nskip += 1
                    rc = it.next(it)
                else:
                    self._nskip = 0
                    rc = self._seek(self._cur, self._cur_len, self._ts_lo, FDB_MAX_SEQ, KIND_FIRST)
                if rc != FDB_OK:
                    return rc
                continue
            if ts > self._ts_hi:
                if self._nskip < NEXT_BEFORE_SEEK:
                    self._nskip += 1
                    rc = it.next(it)
                else:
                    # (key, INT64_MAX, seq 0, kind 0) is the last possible entry of the key.
                    self._nskip = 0
                    rc = self._seek(self._cur, self._cur_len, INT64_MAX, 0, 0)
                if rc != FDB_OK:
                    return rc
                continue
            self._nskip = 0
            if self._has_last_ts and ts == self._last_ts:
                rc = it.next(it)            # an older version of a decided (key, ts)
                if rc != FDB_OK:
                    return rc
                continue
            seq = fdb_ikey_seq(k, kn)
            kind = fdb_ikey_kind(k, kn)
            if seq > self._snapshot or kind == FDB_KIND_RANGE_DEL:
                rc = it.next(it)
                if rc != FDB_OK:
                    return rc
                continue
            self._has_last_ts = True
            self._last_ts = ts
            v = _verdict(kind, seq, it.value, it.value_len, self._cur_rd_seq, self._now)
            if v == V_LIVE:
                self._found = True
                self._pending_next = True
                return FDB_OK
            if v == V_CORRUPT:
                self._corrupt = BAD_ENTRY
                return FDB_ERR_CORRUPTION
            rc = it.next(it)
            if rc != FDB_OK:
                return rc

    cdef int _land(self, bint *new_key) noexcept nogil:
        """Checks the merge's current entry: sets _done at the end, else
        new_key[0] = whether its user key differs from _cur."""
        cdef fdb_iter *it = self._it
        cdef size_t ulen
        if not it.valid:
            if it.status != FDB_OK:
                return it.status
            self._done = True
            return FDB_OK
        if it.key_len < FDB_TRAILER_SIZE:
            self._corrupt = BAD_KEY
            return FDB_ERR_CORRUPTION
        ulen = it.key_len - FDB_TRAILER_SIZE
        self.records_read += 1
        new_key[0] = not (self._has_cur and ulen == self._cur_len
                          and (ulen == 0 or memcmp(it.key, self._cur, ulen) == 0))
        return FDB_OK

    cdef int _new_ukey(self, const uint8_t *k, size_t ulen) noexcept nogil:
        """Makes k[:ulen] the current user key, with its range tombstones."""
        cdef int rc = self._set_cur(k, ulen)
        if rc != FDB_OK:
            return rc
        self._has_last_ts = False
        self._emitted_cur = False
        self._nskip = 0
        self._cur_rd_seq = self._rdi.covering_seq(k, ulen, self._snapshot)
        return FDB_OK

    cdef int _find_back(self) noexcept nogil:
        """_find for reverse=True: the previous live record, or the end."""
        cdef fdb_iter *it = self._it
        cdef const uint8_t *k
        cdef size_t kn, ulen
        cdef int64_t ts
        cdef uint64_t seq
        cdef unsigned kind
        cdef int rc, v
        cdef bint new_key, found
        if not self._started:
            self._started = True
            rc = it.seek_for_prev(it, self._upper_p, self._upper_n)
        else:
            # Before every entry of the (key, ts) group returned last.
            rc = self._seek(self._cur, self._cur_len, self._last_ts, FDB_MAX_SEQ, KIND_FIRST, True)
        while True:
            if rc != FDB_OK:
                return rc
            rc = self._land(&new_key)
            if rc != FDB_OK or self._done:
                return rc
            # On the oldest entry of a (key, ts) group.
            k = it.key
            kn = it.key_len
            ulen = kn - FDB_TRAILER_SIZE
            if new_key:
                # Every key below the prefix or below lo is out of range.
                if self._has_lo and fdb_ukey_cmp(k, ulen, self._lo_p, self._lo_n) < 0:
                    self._done = True
                    return FDB_OK
                if self._has_pre and (ulen < self._pre_n
                                      or memcmp(k, self._pre_p, self._pre_n) != 0):
                    self._done = True
                    return FDB_OK
                rc = self._new_ukey(k, ulen)
                if rc != FDB_OK:
                    return rc
            ts = fdb_ikey_ts(k, kn)
            if ts > self._ts_hi:
                rc = self._seek(self._cur, self._cur_len, self._ts_hi, 0, 0, True)
                continue
            if ts < self._ts_lo:
                rc = self._seek(self._cur, self._cur_len, INT64_MIN, FDB_MAX_SEQ, KIND_FIRST, True)
                continue
            # The group's newest visible version (a forward seek, as get() does).
            self._has_last_ts = True
            self._last_ts = ts
            rc = self._reserve_target(self._cur_len)
            if rc == FDB_OK:
                rc = _to_version(it, self._tbuf, self._cur, self._cur_len, ts, self._snapshot,
                                 &found)
            if rc != FDB_OK:
                return rc
            if found:
                seq = fdb_ikey_seq(it.key, it.key_len)
                kind = fdb_ikey_kind(it.key, it.key_len)
                v = _verdict(kind, seq, it.value, it.value_len, self._cur_rd_seq, self._now)
                if v == V_LIVE:
                    self._found = True
                    return FDB_OK
                if v == V_CORRUPT:
                    self._corrupt = BAD_ENTRY
                    return FDB_ERR_CORRUPTION
            elif it.status != FDB_OK:
                return it.status
            rc = self._seek(self._cur, self._cur_len, ts, FDB_MAX_SEQ, KIND_FIRST, True)

    cdef int _fill(self, Py_ssize_t n, size_t budget) noexcept nogil:
        """Copies up to n live records (about `budget` bytes) into the arena."""
        cdef fdb_iter *it
        cdef PendingRecord *o
        cdef size_t ulen, vlen, need, cap
        cdef uint8_t *p
        cdef int rc
        cdef bint same
        self._nout = 0
        self._arena_used = 0
        while self._nout < n and (self._nout == 0 or self._arena_used < budget):
            rc = self._find()
            if rc != FDB_OK:
                return rc
            if not self._found:
                break
            it = self._it
            ulen = it.key_len - FDB_TRAILER_SIZE
            vlen = it.value_len - 8
            same = self._emitted_cur and self._nout > 0
            need = self._arena_used + vlen + (0 if same else ulen)
            if need > self._arena_cap:
                cap = self._arena_cap * 2 if self._arena_cap else 4096
                while cap < need:
                    cap *= 2
                p = <uint8_t *>realloc(self._arena, cap)
                if p == NULL:
                    return FDB_ERR_NOMEM
                self._arena = p
                self._arena_cap = cap
            o = &self._outs[self._nout]
            o.same_key = same
            if same:
                o.key_off = self._outs[self._nout - 1].key_off
                o.key_len = ulen
            else:
                o.key_off = self._arena_used
                o.key_len = ulen
                memcpy(self._arena + self._arena_used, it.key, ulen)
                self._arena_used += ulen
            o.value_off = self._arena_used
            o.value_len = vlen
            if vlen:
                memcpy(self._arena + self._arena_used, it.value + 8, vlen)
            self._arena_used += vlen
            o.ts = fdb_ikey_ts(it.key, it.key_len)
            o.expire_at = <int64_t>fdb_get_u64le(it.value)
            self._emitted_cur = True
            self._nout += 1
        return FDB_OK

    # -- Python API -------------------------------------------------------------

    cdef int _raise(self, int rc) except -1:
        cdef int bad = self._corrupt
        self._done = True
        if bad != BAD_NONE:
            raise CorruptionError(_bad_message(bad))
        if rc == FDB_ERR_NOMEM:
            raise MemoryError()
        if self._merge is not None:
            self._merge.check()
        raise CorruptionError(f"scan failed with status {rc}")

    def next_batch(self, Py_ssize_t n=256):
        """Up to n next records (fewer only at the end: [] once exhausted)."""
        cdef list out = []
        cdef PendingRecord *o
        cdef Py_ssize_t i
        cdef int rc
        cdef bytes key = None
        cdef PendingRecord *p
        cdef Py_ssize_t per_fill
        if n <= 0:
            return out
        # Read-ahead of __next__ comes first, so the two may be mixed.
        if self._bufpos < len(self._buf):
            out = self._buf[self._bufpos:self._bufpos + n]
            self._bufpos += len(out)
            if len(out) == n:
                return out
            n -= len(out)
        while n > 0 and not self._done:
            per_fill = n if n < BATCH_RECORDS else BATCH_RECORDS
            if per_fill > self._outs_cap:
                p = <PendingRecord *>realloc(self._outs, per_fill * sizeof(PendingRecord))
                if p == NULL:
                    raise MemoryError()
                self._outs = p
                self._outs_cap = per_fill
            rc = self._fill(per_fill, BATCH_BYTES)
            if rc != FDB_OK:
                self._raise(rc)
            for i in range(self._nout):
                o = &self._outs[i]
                if not o.same_key or key is None:
                    key = PyBytes_FromStringAndSize(<const char *>self._arena + o.key_off, o.key_len)
                out.append(make_record(
                    key, o.ts,
                    PyBytes_FromStringAndSize(<const char *>self._arena + o.value_off, o.value_len),
                    o.expire_at))
            self.records_returned += self._nout
            n -= self._nout
            if self._nout == 0:
                break
        return out

    def __iter__(self):
        return self

    def __next__(self):
        if self._bufpos >= len(self._buf):
            self._buf = []
            self._bufpos = 0
            self._buf = self.next_batch(self._batch)
            if self._batch < 1024:
                self._batch *= 2
            if not self._buf:
                raise StopIteration
        r = self._buf[self._bufpos]
        self._bufpos += 1
        return r


@cython.final
cdef class ScanIterator:
    """A lazy scan over a snapshot (Engine.scan); memory stays bounded by a
    few blocks.

    Records come from the Cursor in batches that start small (a caller that
    stops after a few records reads a few) and double up to SCAN_BATCH_MAX
    (a long scan crosses into the merge once per batch).  Before each batch
    it checks that the engine is still open; at the end it adds what it
    returned to the engine's records_read.
    """
    cdef EngineReads _engine
    cdef object _view              # keeps the snapshot's sources alive
    cdef Cursor _cursor            # None once exhausted
    cdef list _buffer
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _batch

    def __init__(self, engine, view, Cursor cursor not None):
        self._engine = engine
        self._view = view
        self._cursor = cursor
        self._buffer = []
        self._pos = 0
        self._batch = SCAN_BATCH_MIN

    def __iter__(self):
        return self

    def __next__(self):
        if self._pos >= len(self._buffer):
            if self._cursor is None:
                raise StopIteration
            if self._engine._closed:
                raise InvalidStateError("the engine was shut down during this scan")
            self._buffer = self._cursor.next_batch(self._batch)
            self._batch = min(self._batch * 2, SCAN_BATCH_MAX)
            self._pos = 0
            if not self._buffer:
                self._engine._read_stats.records_read += self._cursor.records_returned
                self._cursor = None
                self._view = None
                raise StopIteration
        record = self._buffer[self._pos]
        self._pos += 1
        return record


# -- compaction -----------------------------------------------------------------------

# Counters, per output table and in total.
cdef struct Counters:
    unsigned long long entries_in          # entries read from the merge
    unsigned long long entries_out         # entries written
    unsigned long long dropped_tombstones  # point DELETEs dropped (bottommost)
    unsigned long long dropped_expired     # expired PUTs dropped (bottommost)
    unsigned long long dropped_versions    # versions shadowed by a newer one of their (key, ts)
    unsigned long long dropped_deleted     # entries hidden by a range delete


cdef dict _counters_dict(Counters *c):
    return {"entries_in": c.entries_in, "entries_out": c.entries_out,
            "dropped_tombstones": c.dropped_tombstones, "dropped_expired": c.dropped_expired,
            "dropped_versions": c.dropped_versions, "dropped_deleted": c.dropped_deleted}


cdef void _counters_add(Counters *into, Counters *c) noexcept nogil:
    into.entries_in += c.entries_in
    into.entries_out += c.entries_out
    into.dropped_tombstones += c.dropped_tombstones
    into.dropped_expired += c.dropped_expired
    into.dropped_versions += c.dropped_versions
    into.dropped_deleted += c.dropped_deleted


@cython.final
cdef class _Compaction:
    cdef MergingIterator merge
    cdef fdb_iter *it
    cdef RangeDelIndex rdi          # the tombstones allowed to drop entries
    cdef list rds_out               # tombstones still to write (to the first output)
    cdef object new_builder
    cdef TableBuilder builder       # the output being written, or None
    cdef list outputs               # finish() dicts
    cdef object error               # a Python exception raised with the GIL
    cdef int bad                    # BAD_* found in the input
    cdef bint builder_failed        # builder.add() returned an error
    cdef int64_t target
    cdef int64_t now
    cdef bint bottommost
    cdef uint64_t smallest
    # The current user key / (key, ts) group.
    cdef uint8_t *cur
    cdef size_t cur_len
    cdef size_t cur_cap
    cdef bint has_cur
    cdef int64_t cur_ts
    cdef uint64_t newer_seq         # seq of the previous version of the group (UINT64_MAX: none)
    cdef uint64_t rd_seq            # covering_seq of the current user key
    # Cutting outputs: only where the key (or, past twice the target, the
    # (key, ts)) differs from the last entry written.
    cdef bint ukey_changed
    cdef bint group_changed
    cdef bint want_cut
    cdef bint must_cut
    cdef size_t raw_since_check
    cdef size_t check_every
    cdef unsigned long long builder_entries
    cdef bint builder_has_rds
    cdef Counters pending           # counted since the current output began
    cdef Counters total

    def __dealloc__(self):
        free(self.cur)

    cdef int _next_builder(self) noexcept with gil:
        try:
            self._finish_current()
            b = self.new_builder()
            if not isinstance(b, TableBuilder):
                raise TypeError(f"new_builder() returned {type(b).__name__}, not a TableBuilder")
            self.builder = <TableBuilder>b
            self.builder_entries = 0
            self.builder_has_rds = False
            self.want_cut = False
            self.must_cut = False
            self.raw_since_check = 0
            if self.rds_out:
                for s, e, q in self.rds_out:
                    self.builder.add_range_del(s, e, q)
                self.rds_out = None
                self.builder_has_rds = True
            return FDB_OK
        except BaseException as e:
            self.error = e
            return FDB_ERR_PYTHON

    cdef int _size_check(self) noexcept nogil:
        # Without the GIL: a take every 64 KiB would cost a compaction up to a
        # switch interval (5 ms) each beside a thread busy in Python.
        cdef int64_t est = <int64_t>self.builder.size_estimate()
        if est >= self.target:
            self.want_cut = True
            if est >= 2 * self.target:
                self.must_cut = True
        return FDB_OK

    cdef _finish_current(self):
        if self.builder is None:
            return
        b = self.builder
        self.builder = None
        if self.builder_entries == 0 and not self.builder_has_rds:
            b.abandon()
            return
        info = b.finish()
        info = dict(info) if info is not None else {}
        info.update(_counters_dict(&self.pending))
        _counters_add(&self.total, &self.pending)
        memset(&self.pending, 0, sizeof(Counters))
        self.outputs.append(info)

    cdef int run(self) noexcept nogil:
        cdef fdb_iter *it = self.it
        cdef const uint8_t *k
        cdef const uint8_t *v
        cdef size_t kn, vn, ulen
        cdef int64_t ts
        cdef uint64_t seq
        cdef unsigned kind
        cdef int rc, verdict
        cdef bint drop
        cdef uint8_t *p
        rc = it.seek_to_first(it)
        if rc != FDB_OK:
            return rc
        while it.valid:
            k = it.key
            kn = it.key_len
            v = it.value
            vn = it.value_len
            if kn < FDB_TRAILER_SIZE:
                self.bad = BAD_KEY
                return FDB_ERR_CORRUPTION
            self.pending.entries_in += 1
            ulen = kn - FDB_TRAILER_SIZE
            ts = fdb_ikey_ts(k, kn)
            seq = fdb_ikey_seq(k, kn)
            kind = fdb_ikey_kind(k, kn)
            if kind == FDB_KIND_RANGE_DEL:      # carried by range_dels, not here
                rc = it.next(it)
                if rc != FDB_OK:
                    return rc
                continue
            if not (self.has_cur and ulen == self.cur_len
                    and (ulen == 0 or memcmp(k, self.cur, ulen) == 0)):
                if ulen > self.cur_cap:
                    p = <uint8_t *>realloc(self.cur, ulen)
                    if p == NULL:
                        return FDB_ERR_NOMEM
                    self.cur = p
                    self.cur_cap = ulen
                if ulen:
                    memcpy(self.cur, k, ulen)
                self.cur_len = ulen
                self.has_cur = True
                self.rd_seq = self.rdi.covering_seq(k, ulen, self.smallest)
                self.ukey_changed = True
                self.group_changed = True
                self.cur_ts = ts
                self.newer_seq = UINT64_MAX
            elif ts != self.cur_ts:
                self.group_changed = True
                self.cur_ts = ts
                self.newer_seq = UINT64_MAX
            drop = False
            if self.newer_seq <= self.smallest:
                # Every snapshot that could read this version sees the newer one.
                self.pending.dropped_versions += 1
                drop = True
            else:
                verdict = _verdict(kind, seq, v, vn, self.rd_seq, self.now)
                if verdict == V_CORRUPT:
                    self.bad = BAD_ENTRY
                    return FDB_ERR_CORRUPTION
                if verdict == V_RANGE_DELETED:
                    self.pending.dropped_deleted += 1
                    drop = True
                elif self.bottommost and seq <= self.smallest:
                    if verdict == V_DELETED:
                        self.pending.dropped_tombstones += 1
                        drop = True
                    elif verdict == V_EXPIRED:
                        self.pending.dropped_expired += 1
                        drop = True
            self.newer_seq = seq
            if not drop:
                if self.builder is None or (self.want_cut and self.ukey_changed) or (
                        self.must_cut and self.group_changed):
                    rc = self._next_builder()
                    if rc != FDB_OK:
                        return rc
                rc = self.builder.add(k, kn, v, vn)
                if rc != FDB_OK:
                    self.builder_failed = True
                    return rc
                self.builder_entries += 1
                self.pending.entries_out += 1
                self.ukey_changed = False
                self.group_changed = False
                self.raw_since_check += kn + vn
                if self.raw_since_check >= self.check_every:
                    self.raw_since_check = 0
                    rc = self._size_check()
                    if rc != FDB_OK:
                        return rc
            rc = it.next(it)
            if rc != FDB_OK:
                return rc
        return it.status


def compact(list sources not None, range_dels, new_builder, long long target_file_size,
            bint bottommost, long long now_us, unsigned long long smallest_snapshot,
            dict stats=None):
    """Merges `sources` into new tables; returns their finish() dicts.

    new_builder(): a fresh TableBuilder, called when the first entry (or
    range delete) is to be written and whenever the current output's
    file_size_estimate reached target_file_size, at a user-key boundary (or,
    past twice the target, at a (key, ts) boundary: the versions of one
    (key, ts) never span two outputs).

    For each (key, ts) a version is dropped when a newer one has seq <=
    smallest_snapshot, or when a range delete from `range_dels` with
    entry.seq < rd.seq <= smallest_snapshot covers it.  bottommost: point
    tombstones and expired PUTs with seq <= smallest_snapshot are dropped
    too, and only the range deletes with seq > smallest_snapshot are
    written; otherwise every range delete is written (to the first output)
    and tombstones and expired PUTs are kept (an older version may lie in a
    lower level).  range_dels: a list (None = the sources' union).

    Each dict returned gains the counters entries_in, entries_out,
    dropped_tombstones, dropped_expired, dropped_versions (shadowed by a
    newer version) and dropped_deleted (hidden by a range delete), counted
    while that output was current, so their sums are the totals; `stats`,
    if given, receives the totals (also when every entry was dropped and
    nothing was written).  On an error the output being written is
    abandoned, and the outputs already finished are left for the caller to
    delete; the exception propagates.
    """
    cdef _Compaction c = _Compaction.__new__(_Compaction)
    cdef Source src
    cdef RangeDelIndex all_rds
    cdef int rc
    cdef uint64_t smallest = _clamp_seq(smallest_snapshot)
    if target_file_size <= 0:
        raise ValueError("target_file_size must be positive")
    if not callable(new_builder):
        raise TypeError("new_builder must be callable")
    all_rds = _index(range_dels, sources, FDB_MAX_SEQ)
    c.rdi = RangeDelIndex(all_rds.range_dels, smallest)
    if bottommost:
        c.rds_out = [rd for rd in all_rds.range_dels if rd[2] > smallest]
    else:
        c.rds_out = list(all_rds.range_dels)
    c.new_builder = new_builder
    c.outputs = []
    c.target = target_file_size
    c.now = now_us
    c.bottommost = bottommost
    c.smallest = smallest
    c.check_every = <size_t>max(1, min(target_file_size // 4, 64 * 1024))
    children = []
    for s in sources:
        src = <Source?>s
        it = src.new_iterator(False, True, INT64_MIN, INT64_MAX)
        if isinstance(it, TableIterator):
            it.read_ahead = True            # a GIL take per batch of blocks, not per block
        children.append(it)
    c.merge = MergingIterator(children)
    c.it = c.merge.it
    try:
        with nogil:
            rc = c.run()
        if rc == FDB_OK and c.builder is None and c.rds_out:
            rc = c._next_builder()              # range deletes and no entry
        if rc != FDB_OK:
            if c.error is not None:
                raise c.error
            if c.builder_failed:
                if c.builder is not None and c.builder.error is not None:
                    raise c.builder.error
                raise CorruptionError(f"TableBuilder.add failed with status {rc}")
            if c.bad != BAD_NONE:
                raise CorruptionError(_bad_message(c.bad))
            if rc == FDB_ERR_NOMEM:
                raise MemoryError()
            c.merge.check()
            raise CorruptionError(f"compaction input failed with status {rc}")
        c._finish_current()
    except BaseException:
        if c.builder is not None:
            b = c.builder
            c.builder = None
            try:
                b.abandon()
            except Exception:
                pass
        raise
    _counters_add(&c.total, &c.pending)   # drops after the last output, if any
    if stats is not None:
        stats.update(_counters_dict(&c.total))
    return c.outputs
