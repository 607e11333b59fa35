# cython: language_level=3, boundscheck=False, wraparound=False
"""The batch payload codec (docs/FORMAT.md, "Batch payload"), bit-exact.

    batch   := count:u32le entry{count}
    entry   := kind:u8 key_len:varint key ts:i64le body
    body    := (kind = PUT       = 1) expire_at:i64le value_len:varint value
             | (kind = DELETE    = 0) <nothing>
             | (kind = RANGE_DEL = 2) end_len:varint end
    # key, end: 1..65535 bytes; value: 0..64 MiB; RANGE_DEL ts = INT64_MIN

One write_batch / delete_batch / delete_range call is encoded once; the same
bytes are the WAL record's body and MemTable.apply's input.  The entries get
seq_start .. seq_start + count - 1 in order.

Encoders validate what they write (Record fields are public and mutable, so
the constructor's checks prove nothing by the time a record is encoded);
the reader validates every length and offset before trusting it.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from cpython.sequence cimport PySequence_Fast_ITEMS
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, INT64_MIN, UINT32_MAX
from libc.string cimport memcpy
from flowdb._core.cdefs cimport (
    FDB_OK, FDB_ERR_CORRUPTION, FDB_KIND_DELETE, FDB_KIND_PUT, FDB_KIND_RANGE_DEL,
    FDB_MAX_KEY, FDB_MAX_VALUE, FDB_NEVER,
    fdb_put_u32le, fdb_get_u32le, fdb_put_u64le, fdb_get_u64le,
    fdb_put_varint, fdb_varint_len)
from flowdb._core.cdefs cimport fdb_get_varint  # refuses overlong varints
from flowdb._core.record cimport Record, check_key, check_i64
from flowdb._errors import CorruptionError

KIND_DELETE = FDB_KIND_DELETE
KIND_PUT = FDB_KIND_PUT
KIND_RANGE_DEL = FDB_KIND_RANGE_DEL

cdef extern from *:
    bint __builtin_add_overflow(long long a, long long b, long long *out) nogil
    bint __builtin_mul_overflow(long long a, long long b, long long *out) nogil

# The smallest entry: kind(1) + key_len(1) + key(1) + ts(8); bounds the count
# a payload of n bytes can announce.
cdef enum:
    MIN_ENTRY = 1 + 1 + 1 + 8
    HEADER = 4


# -- encoders ----------------------------------------------------------------

cdef inline uint8_t *_put_entry_head(uint8_t *p, unsigned kind, const char *key,
                                     size_t klen, int64_t ts) noexcept nogil:
    p[0] = <uint8_t>kind
    p += 1
    p += fdb_put_varint(p, klen)
    memcpy(p, key, klen)
    p += klen
    fdb_put_u64le(p, <uint64_t>ts)
    return p + 8


cdef inline int _check_count(Py_ssize_t n) except -1:
    if <size_t>n > UINT32_MAX:
        raise ValueError(f"a batch holds at most {UINT32_MAX} entries, not {n}")
    return 0


def encode_puts(records, ttl_secs=None, bint only_never=False):
    """Encodes PUT entries: (payload, count, raw_bytes).

    records: any iterable of Record.  ttl_secs None: each record keeps its
    expire_at.  An int: records get expire_at = ts + ttl_secs * 1_000_000 --
    all of them, or with only_never only those whose expire_at is NEVER.
    raw_bytes is the sum of key and value lengths.  TypeError for a
    non-Record item or a None field, ValueError for an empty/oversized key,
    an oversized value or an expire_at that overflows int64.  The range of
    ttl_secs is the caller's policy (flowdb._validate.as_ttl); here it only
    has to fit.
    """
    cdef object seq = records if type(records) is list or type(records) is tuple else list(records)
    cdef Py_ssize_t n = len(seq), i
    _check_count(n)
    cdef PyObject **items = PySequence_Fast_ITEMS(seq)

    cdef bint has_ttl = ttl_secs is not None
    cdef long long ttl_us = 0, ttl_c
    if has_ttl:
        ttl_c = check_i64(ttl_secs, "ttl_secs")
        if __builtin_mul_overflow(ttl_c, 1000000, &ttl_us):
            raise ValueError(f"ttl_secs={ttl_secs} overflows 64-bit microseconds")

    # Sizing pass: validate everything and compute the exact payload size,
    # so nothing is allocated for a batch that is refused.
    cdef size_t total = HEADER, raw = 0, klen, vlen
    cdef long long exp
    cdef Record r
    cdef object o
    for i in range(n):
        o = <object>items[i]
        if type(o) is not Record and not isinstance(o, Record):
            raise TypeError(f"record {i} is a {type(o).__name__}, not a Record")
        r = <Record>o
        if r.key is None or r.value is None:
            raise TypeError(f"record {i} has key or value None")
        klen = PyBytes_GET_SIZE(r.key)
        vlen = PyBytes_GET_SIZE(r.value)
        if klen == 0 or klen > FDB_MAX_KEY:
            raise ValueError(f"record {i} (key={r.key[:64]!r}, ts={r.ts}): key is "
                             f"{klen} bytes; keys are 1..{FDB_MAX_KEY} bytes")
        if vlen > FDB_MAX_VALUE:
            raise ValueError(f"record {i} (key={r.key[:64]!r}, ts={r.ts}): value is "
                             f"{vlen} bytes; the limit is {FDB_MAX_VALUE}")
        if has_ttl and (not only_never or r.expire_at == FDB_NEVER):
            if __builtin_add_overflow(r.ts, ttl_us, &exp):
                raise ValueError(f"record {i} (key={r.key[:64]!r}, ts={r.ts}): ts + "
                                 f"ttl_secs={ttl_secs} overflows the 64-bit expire_at")
        total += 1 + fdb_varint_len(klen) + klen + 8 + 8 + fdb_varint_len(vlen) + vlen
        raw += klen + vlen

    # Writing pass.  No Python code can run between the passes (a bytes
    # allocation does not trigger the cyclic GC), so the fields are the
    # ones just checked; the end check below guards the arithmetic anyway.
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint8_t *end = p + total
    fdb_put_u32le(p, <uint32_t>n)
    p += HEADER
    for i in range(n):
        r = <Record><object>items[i]
        klen = PyBytes_GET_SIZE(r.key)
        vlen = PyBytes_GET_SIZE(r.value)
        exp = r.expire_at
        if has_ttl and (not only_never or exp == FDB_NEVER):
            exp = r.ts + ttl_us
        p = _put_entry_head(p, FDB_KIND_PUT, PyBytes_AS_STRING(r.key), klen, r.ts)
        fdb_put_u64le(p, <uint64_t>exp)
        p += 8
        p += fdb_put_varint(p, vlen)
        memcpy(p, PyBytes_AS_STRING(r.value), vlen)
        p += vlen
    if p != end:
        raise RuntimeError("encode_puts: records changed while being encoded")
    return out, n, raw


def encode_deletes(pairs):
    """Encodes DELETE entries for (key, ts) pairs: (payload, count).

    key: bytes, str (UTF-8), bytearray or memoryview, 1..65535 bytes; ts: an
    int in int64 (not bool).
    """
    cdef list keys = []
    cdef list tss = []
    cdef size_t total = HEADER
    cdef Py_ssize_t klen
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"delete {len(keys)} must be a (key, ts) pair, not {pair!r:.80}")
        k = check_key(pair[0], "key")
        check_i64(pair[1], "ts")
        klen = PyBytes_GET_SIZE(k)
        total += 1 + fdb_varint_len(klen) + klen + 8
        keys.append(k)
        tss.append(pair[1])
    cdef Py_ssize_t n = len(keys), i
    _check_count(n)
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    fdb_put_u32le(p, <uint32_t>n)
    p += HEADER
    for i in range(n):
        k = keys[i]
        p = _put_entry_head(p, FDB_KIND_DELETE, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k),
                            <long long>tss[i])
    return out, n


def encode_range_delete(start, end):
    """Encodes one RANGE_DEL entry for [start, end): (payload, 1).

    Both are keys (1..65535 bytes; str is UTF-8 encoded).  Whether
    start < end is the caller's business: an inverted range deletes nothing.
    """
    cdef bytes s = check_key(start, "start")
    cdef bytes e = check_key(end, "end")
    cdef size_t slen = PyBytes_GET_SIZE(s), elen = PyBytes_GET_SIZE(e)
    cdef size_t total = HEADER + 1 + fdb_varint_len(slen) + slen + 8 + fdb_varint_len(elen) + elen
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    fdb_put_u32le(p, 1)
    p = _put_entry_head(p + HEADER, FDB_KIND_RANGE_DEL, PyBytes_AS_STRING(s), slen, INT64_MIN)
    p += fdb_put_varint(p, elen)
    memcpy(p, PyBytes_AS_STRING(e), elen)
    return out, 1


def concat_payloads(*payloads):
    """One payload holding the entries of several, in order (counts summed).

    The parts must be well formed (made by the encoders above); only their
    count fields are read.
    """
    cdef Py_ssize_t total = HEADER, count = 0
    cdef bytes part
    for part in payloads:
        if PyBytes_GET_SIZE(part) < HEADER:
            raise ValueError("a batch payload is at least its 4-byte count")
        total += PyBytes_GET_SIZE(part) - HEADER
        count += fdb_get_u32le(<const uint8_t *>PyBytes_AS_STRING(part))
    _check_count(count)
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    fdb_put_u32le(p, <uint32_t>count)
    p += HEADER
    for part in payloads:
        memcpy(p, PyBytes_AS_STRING(part) + HEADER, PyBytes_GET_SIZE(part) - HEADER)
        p += PyBytes_GET_SIZE(part) - HEADER
    return out


# -- reader ------------------------------------------------------------------

cdef inline int _fail(BatchReader *r, const char *msg, const uint8_t *at) noexcept nogil:
    r.error = msg
    r.error_offset = <size_t>(at - r.start)
    return FDB_ERR_CORRUPTION


cdef int batch_reader_init(BatchReader *r, const uint8_t *buf, size_t n) noexcept nogil:
    r.start = buf
    r.p = buf
    r.limit = buf + n
    r.count = 0
    r.index = 0
    r.error = NULL
    r.error_offset = 0
    if n < HEADER:
        return _fail(r, "truncated count", buf)
    r.count = fdb_get_u32le(buf)
    r.p = buf + HEADER
    # Refusing an impossible count up front lets callers size arrays by it.
    if <uint64_t>r.count * MIN_ENTRY > <uint64_t>(n - HEADER):
        r.count = 0
        return _fail(r, "count announces more entries than the payload can hold", buf)
    return FDB_OK


# Reads a length-prefixed byte string of lo..hi bytes.
cdef inline const uint8_t *_get_slice(BatchReader *r, const uint8_t *p, size_t lo, size_t hi,
                                      const uint8_t **out, size_t *out_len) noexcept nogil:
    cdef uint64_t v
    cdef const uint8_t *q = fdb_get_varint(p, r.limit, &v)
    if q == NULL:
        _fail(r, "truncated or overlong length varint", p)
        return NULL
    if v < lo or v > hi:
        _fail(r, "length out of range", p)
        return NULL
    if <uint64_t>(r.limit - q) < v:
        _fail(r, "length runs past the end of the payload", p)
        return NULL
    out[0] = q
    out_len[0] = <size_t>v
    return q + v


cdef int batch_reader_next(BatchReader *r, BatchEntry *e) noexcept nogil:
    if r.error != NULL:
        return FDB_ERR_CORRUPTION
    cdef const uint8_t *p = r.p
    if r.index >= r.count:
        return _fail(r, "read past the last entry", p)
    if p >= r.limit:
        return _fail(r, "truncated entry", p)
    e.kind = p[0]
    if e.kind != FDB_KIND_PUT and e.kind != FDB_KIND_DELETE and e.kind != FDB_KIND_RANGE_DEL:
        return _fail(r, "unknown entry kind", p)
    p = _get_slice(r, p + 1, 1, FDB_MAX_KEY, &e.key, &e.key_len)
    if p == NULL:
        return FDB_ERR_CORRUPTION
    if r.limit - p < 8:
        return _fail(r, "truncated ts", p)
    e.ts = <int64_t>fdb_get_u64le(p)
    p += 8
    e.expire_at = FDB_NEVER
    e.value = NULL
    e.value_len = 0
    if e.kind == FDB_KIND_PUT:
        if r.limit - p < 8:
            return _fail(r, "truncated expire_at", p)
        e.expire_at = <int64_t>fdb_get_u64le(p)
        p = _get_slice(r, p + 8, 0, FDB_MAX_VALUE, &e.value, &e.value_len)
    elif e.kind == FDB_KIND_RANGE_DEL:
        if e.ts != INT64_MIN:
            return _fail(r, "range delete with ts other than INT64_MIN", p - 8)
        p = _get_slice(r, p, 1, FDB_MAX_KEY, &e.value, &e.value_len)
    if p == NULL:
        return FDB_ERR_CORRUPTION
    r.p = p
    r.index += 1
    return FDB_OK


cdef int batch_reader_finish(BatchReader *r) noexcept nogil:
    if r.error != NULL:
        return FDB_ERR_CORRUPTION
    if r.index != r.count:
        return _fail(r, "fewer entries read than announced", r.p)
    if r.p != r.limit:
        return _fail(r, "trailing bytes after the last entry", r.p)
    return FDB_OK


cdef object batch_error(BatchReader *r):
    msg = (<bytes>r.error).decode("ascii") if r.error != NULL else "unknown error"
    err = CorruptionError(f"batch payload: {msg} (entry {r.index} of {r.count}) "
                          f"at offset {r.error_offset}")
    err.offset = r.error_offset
    return err


def decode_batch(payload):
    """Strictly decodes a batch payload (bytes-like) into a list of
    (kind, key, ts, expire_at or None, value or end or None) tuples:
    PUT (1, key, ts, expire_at, value), DELETE (0, key, ts, None, None),
    RANGE_DEL (2, start, INT64_MIN, None, end).  CorruptionError on any
    inconsistency, trailing bytes included."""
    cdef const uint8_t[::1] buf = bytes(payload) if isinstance(payload, memoryview) else payload
    cdef size_t n = buf.shape[0]
    cdef BatchReader r
    cdef BatchEntry e
    cdef list out = []
    if batch_reader_init(&r, &buf[0] if n else <const uint8_t *>"", n) != FDB_OK:
        raise batch_error(&r)
    while r.index < r.count:
        if batch_reader_next(&r, &e) != FDB_OK:
            raise batch_error(&r)
        key = (<const char *>e.key)[:e.key_len]
        if e.kind == FDB_KIND_PUT:
            out.append((FDB_KIND_PUT, key, e.ts, e.expire_at,
                        (<const char *>e.value)[:e.value_len]))
        elif e.kind == FDB_KIND_DELETE:
            out.append((FDB_KIND_DELETE, key, e.ts, None, None))
        else:
            out.append((FDB_KIND_RANGE_DEL, key, e.ts, None,
                        (<const char *>e.value)[:e.value_len]))
    if batch_reader_finish(&r) != FDB_OK:
        raise batch_error(&r)
    return out
