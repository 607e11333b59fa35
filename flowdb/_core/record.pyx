# cython: language_level=3, boundscheck=False, wraparound=False
"""Record: one time-series record, (key, ts) -> value with an expiry.

The constructor validates (API.md "Data model"); make_record() does not and
is for the read path, whose data was validated when it was written.  The
fields stay public and mutable, so every encoder re-checks them
(batch.encode_puts) instead of trusting the constructor.
"""
cimport cython
from cpython.bytes cimport PyBytes_GET_SIZE
from libc.stdint cimport INT64_MAX
from flowdb._core.cdefs cimport FDB_MAX_KEY, FDB_MAX_VALUE

NEVER = INT64_MAX


cdef bytes check_key(object key, str what):
    cdef bytes b
    if type(key) is bytes:
        b = <bytes>key
    elif isinstance(key, str):
        b = (<str>key).encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
    else:
        raise TypeError(f"{what} must be bytes or str, not {type(key).__name__}")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if n == 0:
        raise ValueError(f"{what} must not be empty")
    if <size_t>n > FDB_MAX_KEY:
        raise ValueError(f"{what} is {n} bytes; the limit is {FDB_MAX_KEY}")
    return b


cdef bytes check_prefix(object prefix):
    if type(prefix) is bytes:
        if PyBytes_GET_SIZE(prefix) == 0:
            return b""
    elif prefix == b"" or prefix == "":
        return b""
    return check_key(prefix, "prefix")


cdef inline bytes _value(object value):
    cdef bytes b
    if type(value) is bytes:
        b = <bytes>value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
    else:
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if <size_t>n > FDB_MAX_VALUE:
        raise ValueError(f"value is {n} bytes; the limit is {FDB_MAX_VALUE}")
    return b


cdef long long check_i64(object v, str what) except? -1:
    # bool is an int subclass but never a time; the exact-int test keeps the
    # common case to one pointer comparison.
    if type(v) is not int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    try:
        return v
    except OverflowError:
        raise ValueError(f"{what}={v} does not fit in a signed 64-bit integer") from None


@cython.freelist(256)
cdef class Record:
    """Record(key, ts, value, expire_at=NEVER).

    key: bytes (str is UTF-8 encoded; bytearray/memoryview copied), 1..65535
    bytes.  ts: signed 64-bit int.  value: bytes-like, at most 64 MiB.
    expire_at: signed 64-bit absolute microseconds; NEVER = 2**63 - 1.
    Unhashable (the fields are mutable); equal when all four fields are.
    """

    def __init__(self, key, ts, value, expire_at=NEVER):
        self.key = check_key(key, "key")
        self.ts = check_i64(ts, "ts")
        self.value = _value(value)
        self.expire_at = check_i64(expire_at, "expire_at")

    def key_str(self):
        """The key decoded as UTF-8, with U+FFFD for bytes that are not."""
        return self.key.decode("utf-8", "replace")

    def __eq__(self, other):
        if not isinstance(other, Record):
            return NotImplemented
        cdef Record o = <Record>other
        return (self.ts == o.ts and self.expire_at == o.expire_at
                and self.key == o.key and self.value == o.value)

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __repr__(self):
        exp = "NEVER" if self.expire_at == INT64_MAX else str(self.expire_at)
        return (f"Record(key={self.key!r}, ts={self.ts}, value={self.value!r}, "
                f"expire_at={exp})")

    def __reduce__(self):
        return (Record, (self.key, self.ts, self.value, self.expire_at))


cdef Record make_record(bytes key, long long ts, bytes value, long long expire_at):
    # __new__ skips __init__ (and its checks) and takes from the freelist.
    cdef Record r = Record.__new__(Record)
    r.key = key
    r.ts = ts
    r.value = value
    r.expire_at = expire_at
    return r


# Python entry points of the same checks, for the engine's scalar arguments
# (flowdb._validate re-exports them), so a key means the same everywhere.

def as_key(key, what="key"):
    """A record key as bytes: bytes/str(UTF-8)/bytearray/memoryview, 1..65535 bytes."""
    return check_key(key, what)


def as_prefix(prefix):
    """A key prefix: like a key, but b"" (every key) is allowed."""
    return check_prefix(prefix)


def as_ts(ts, what="ts"):
    """A signed 64-bit int (bool refused): TypeError or ValueError otherwise."""
    return check_i64(ts, what)


def as_value(value, what="value"):
    """A record value as bytes, at most 64 MiB."""
    try:
        return _value(value)
    except TypeError:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}") from None
