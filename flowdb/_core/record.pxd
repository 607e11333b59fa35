# cython: language_level=3
"""Record: one time-series record, (key, ts) -> value with an expiry."""

cdef class Record:
    # 1..65535 bytes, any bytes.
    cdef public bytes key
    # Signed 64-bit, microseconds since the epoch by convention.
    cdef public long long ts
    # At most 64 MiB.
    cdef public bytes value
    # Absolute microseconds; NEVER (2**63 - 1) means no expiry.
    cdef public long long expire_at


# Builds a Record without validation: for the read path, whose data was
# validated when it was written.
cdef Record make_record(bytes key, long long ts, bytes value, long long expire_at)

# The argument checks of Record(), shared with the batch encoders so that a
# key or a timestamp means the same everywhere.  check_key: bytes (exact
# type) from bytes/str (UTF-8)/bytearray/memoryview, 1..65535 bytes, else
# TypeError/ValueError naming `what`.  check_i64: an int (not bool) in int64,
# else TypeError/ValueError.  check_prefix: as check_key, but an empty
# prefix (b"", "", or an empty bytearray/memoryview) is b"": every key.
cdef bytes check_key(object key, str what)
cdef bytes check_prefix(object prefix)
cdef long long check_i64(object v, str what) except? -1
