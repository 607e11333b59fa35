# cython: language_level=3, boundscheck=False, wraparound=False
"""Python view of include/flowdb.h: internal keys and varints.

For tests and the pure-Python modules; the Cython core calls the C helpers
directly.  Every function validates its arguments, since unlike the C
helpers it is reachable from Python with anything.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint64_t, int64_t, INT64_MAX
from flowdb._core.cdefs cimport (
    FDB_TRAILER_SIZE, FDB_MAX_SEQ, FDB_MAX_KEY, FDB_MAX_VALUE, FDB_NEVER,
    FDB_KIND_DELETE, FDB_KIND_PUT, FDB_KIND_RANGE_DEL, FDB_MAX_VARINT64,
    fdb_ikey_write, fdb_ikey_ts, fdb_ikey_seq, fdb_ikey_kind, fdb_ikey_cmp,
    fdb_put_varint)
from flowdb._core.cdefs cimport fdb_get_varint  # refuses overlong varints
from flowdb._errors import CorruptionError

TRAILER_SIZE = FDB_TRAILER_SIZE
MAX_SEQ = FDB_MAX_SEQ
MAX_KEY = FDB_MAX_KEY
MAX_VALUE = FDB_MAX_VALUE
NEVER = FDB_NEVER
MAX_VARINT64 = FDB_MAX_VARINT64
KIND_DELETE = FDB_KIND_DELETE
KIND_PUT = FDB_KIND_PUT
KIND_RANGE_DEL = FDB_KIND_RANGE_DEL


cdef int _check_int(object v, str what) except -1:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    return 0


def make_ikey(ukey, ts, seq, kind):
    """user_key | ts_be | trailer_be.  ukey: 0..65535 bytes (empty is allowed
    so that seek targets can precede every key); seq: 0..MAX_SEQ; kind: 0..255
    (seek targets may use kinds no entry has)."""
    cdef const uint8_t[::1] k = bytes(ukey) if isinstance(ukey, memoryview) else ukey
    _check_int(ts, "ts"); _check_int(seq, "seq"); _check_int(kind, "kind")
    if <size_t>k.shape[0] > FDB_MAX_KEY:
        raise ValueError(f"ukey is {k.shape[0]} bytes; the limit is {FDB_MAX_KEY}")
    if not -2**63 <= ts <= INT64_MAX:
        raise ValueError(f"ts={ts} does not fit in a signed 64-bit integer")
    if not 0 <= seq <= FDB_MAX_SEQ:
        raise ValueError(f"seq={seq} is outside 0..{FDB_MAX_SEQ}")
    if not 0 <= kind <= 255:
        raise ValueError(f"kind={kind} is outside 0..255")
    cdef size_t n = k.shape[0]
    out = PyBytes_FromStringAndSize(NULL, n + FDB_TRAILER_SIZE)
    fdb_ikey_write(<uint8_t *>PyBytes_AS_STRING(out), &k[0] if n else <const uint8_t *>"",
                   n, <int64_t>ts, <uint64_t>seq, <unsigned>kind)
    return out


def parse_ikey(ikey):
    """(ukey, ts, seq, kind) of an internal key; ValueError if < 16 bytes."""
    cdef const uint8_t[::1] k = bytes(ikey) if isinstance(ikey, memoryview) else ikey
    cdef size_t n = k.shape[0]
    if n < FDB_TRAILER_SIZE:
        raise ValueError(f"an internal key is at least {FDB_TRAILER_SIZE} bytes, not {n}")
    cdef const uint8_t *p = &k[0]
    return ((<const char *>p)[:n - FDB_TRAILER_SIZE], fdb_ikey_ts(p, n),
            fdb_ikey_seq(p, n), fdb_ikey_kind(p, n))


def compare_ikeys(a, b):
    """-1, 0 or 1 in internal-key order (ukey asc, ts asc, seq desc)."""
    cdef const uint8_t[::1] x = bytes(a) if isinstance(a, memoryview) else a
    cdef const uint8_t[::1] y = bytes(b) if isinstance(b, memoryview) else b
    if <size_t>x.shape[0] < FDB_TRAILER_SIZE or <size_t>y.shape[0] < FDB_TRAILER_SIZE:
        raise ValueError(f"an internal key is at least {FDB_TRAILER_SIZE} bytes")
    cdef int r = fdb_ikey_cmp(&x[0], x.shape[0], &y[0], y.shape[0])
    return (r > 0) - (r < 0)


def put_varint(n):
    """n (0..2**64-1) as an unsigned LEB128 varint."""
    _check_int(n, "n")
    if not 0 <= n < 2**64:
        raise ValueError(f"n={n} is outside 0..2**64-1")
    cdef uint8_t buf[10]
    cdef size_t len_ = fdb_put_varint(buf, <uint64_t>n)
    return (<const char *>buf)[:len_]


def get_varint(buf, Py_ssize_t pos=0):
    """(value, position after it) of the varint at buf[pos]; CorruptionError
    if it is truncated or longer than 64 bits."""
    cdef const uint8_t[::1] b = bytes(buf) if isinstance(buf, memoryview) else buf
    cdef Py_ssize_t n = b.shape[0]
    if pos < 0 or pos > n:
        raise ValueError(f"pos={pos} is outside 0..{n}")
    cdef uint64_t v = 0
    cdef const uint8_t *start = &b[0] if n else <const uint8_t *>""
    cdef const uint8_t *q = fdb_get_varint(start + pos, start + n, &v)
    if q == NULL:
        e = CorruptionError(f"truncated or overlong varint at offset {pos}")
        e.offset = pos
        raise e
    return v, q - start
