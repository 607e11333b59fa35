# cython: language_level=3, boundscheck=False, wraparound=False
"""idbkey: an order-preserving binary encoding of IndexedDB keys.

Bytewise order of encoded keys is IndexedDB key order (docs/FORMAT.md,
"JsonDB key encoding"; the FoundationDB tuple layer is the model)::

    key     := number | string | array
    number  := 0x21 f64be(transform(x))         # 9 bytes
    string  := 0x30 unit* 0x00                  # unit: one UTF-16 code unit
    unit    := 0x00 0xFF                        # code unit 0 (escaped)
             | 0x01..0x7F                       # 1 byte, as UTF-8
             | 0xC2..0xDF 0x80..0xBF            # 2 bytes, as UTF-8
             | 0xE0..0xEF 0x80..0xBF 0x80..0xBF # 3 bytes, as UTF-8 (surrogates too)
    array   := 0x50 key* 0x00

    transform(x): x = +0.0 if x == 0; bits = IEEE-754 bits of x;
                  negative: flip all 64 bits, else flip the sign bit.

Type codes never renumber; 0x22 (date) and 0x40 (binary) are reserved for
IndexedDB's other key types, which JSON cannot hold.  Every encoding is
self-delimiting, so enc(a) + enc(b) orders as the pair (a, b): index
entries rely on it.  Each UTF-16 code unit is written as its UTF-8 form
(CESU-8 for characters above U+FFFF, whose surrogate halves are written one
by one), which preserves code-unit order and keeps ASCII at one byte.

Thread safety: every function is pure; safe from any thread.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport (PyUnicode_KIND, PyUnicode_DATA, PyUnicode_READ,
                              PyUnicode_GET_LENGTH, PyUnicode_FromKindAndData)
from libc.stdint cimport uint8_t, uint64_t, uint32_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy

from flowdb._core.record cimport Record, make_record
from flowdb._errors import CorruptionError, DataError

TYPE_NUMBER = 0x21
TYPE_STRING = 0x30
TYPE_ARRAY = 0x50
TERMINATOR = 0x00
ESCAPE = 0xFF
MAX_DEPTH = 64

cdef enum:
    T_NUMBER = 0x21
    T_STRING = 0x30
    T_ARRAY = 0x50
    C_MAX_DEPTH = 64

cdef extern from "Python.h":
    int PyUnicode_IS_ASCII(object o)
    int PyUnicode_4BYTE_KIND

cdef double TWO53 = 9007199254740992.0


cdef struct Buf:
    uint8_t *data
    Py_ssize_t size
    Py_ssize_t cap


cdef int buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.size + extra
    cdef Py_ssize_t cap
    cdef uint8_t *p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 64
    while cap < need:
        cap *= 2
    p = <uint8_t *>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline void put_unit(Buf *b, uint32_t u) noexcept nogil:
    # caller reserved 3 bytes
    if u == 0:
        b.data[b.size] = 0x00
        b.data[b.size + 1] = 0xFF
        b.size += 2
    elif u < 0x80:
        b.data[b.size] = <uint8_t>u
        b.size += 1
    elif u < 0x800:
        b.data[b.size] = <uint8_t>(0xC0 | (u >> 6))
        b.data[b.size + 1] = <uint8_t>(0x80 | (u & 0x3F))
        b.size += 2
    else:
        b.data[b.size] = <uint8_t>(0xE0 | (u >> 12))
        b.data[b.size + 1] = <uint8_t>(0x80 | ((u >> 6) & 0x3F))
        b.data[b.size + 2] = <uint8_t>(0x80 | (u & 0x3F))
        b.size += 3


cdef int put_number(Buf *b, double d) except -1:
    cdef uint64_t u
    cdef int i
    if d != d:
        raise DataError("NaN is not a valid key")
    if d == 0.0:
        d = 0.0                      # -0.0 and +0.0 are one key
    memcpy(&u, &d, 8)
    if u >> 63:
        u = ~u
    else:
        u ^= (<uint64_t>1) << 63
    buf_reserve(b, 9)
    b.data[b.size] = T_NUMBER
    for i in range(8):
        b.data[b.size + 1 + i] = <uint8_t>(u >> (56 - 8 * i))
    b.size += 9
    return 0


cdef int put_string(Buf *b, str s) except -1:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    cdef Py_ssize_t i
    cdef int kind
    cdef void *data
    cdef uint8_t *a
    cdef uint32_t cp
    cdef bint plain = True
    if PyUnicode_IS_ASCII(s):
        a = <uint8_t *>PyUnicode_DATA(s)
        for i in range(n):
            if a[i] == 0:
                plain = False
                break
        if plain:
            buf_reserve(b, n + 2)
            b.data[b.size] = T_STRING
            memcpy(b.data + b.size + 1, a, n)
            b.data[b.size + 1 + n] = 0
            b.size += n + 2
            return 0
    buf_reserve(b, 6 * n + 2)        # worst case: an astral char is 6 bytes
    b.data[b.size] = T_STRING
    b.size += 1
    kind = PyUnicode_KIND(s)
    data = PyUnicode_DATA(s)
    for i in range(n):
        cp = PyUnicode_READ(kind, data, i)
        if cp >= 0x10000:
            cp -= 0x10000
            put_unit(b, 0xD800 + (cp >> 10))
            put_unit(b, 0xDC00 + (cp & 0x3FF))
        else:
            put_unit(b, cp)
    b.data[b.size] = 0
    b.size += 1
    return 0


cdef int put_key(Buf *b, object key, int depth) except -1:
    cdef type t = type(key)
    if t is str:
        return put_string(b, <str>key)
    if t is int:
        try:
            return put_number(b, <double>key)
        except OverflowError:
            raise DataError(f"{key} is too large to be a key") from None
    if t is float:
        return put_number(b, <double>key)
    if t is list or t is tuple:
        if depth >= C_MAX_DEPTH:
            raise DataError(f"array keys nest at most {C_MAX_DEPTH} deep")
        buf_reserve(b, 1)
        b.data[b.size] = T_ARRAY
        b.size += 1
        for item in key:
            put_key(b, item, depth + 1)
        buf_reserve(b, 1)
        b.data[b.size] = 0
        b.size += 1
        return 0
    if isinstance(key, bool) or key is None:
        raise DataError(f"{key!r} is not a valid key")
    if isinstance(key, str):
        return put_string(b, str(key))
    if isinstance(key, int):
        return put_key(b, int(key), depth)
    if isinstance(key, float):
        return put_number(b, float(key))
    if isinstance(key, (list, tuple)):
        return put_key(b, list(key), depth)
    raise DataError(f"a {type(key).__name__} is not a valid key")


def encode(object key) -> bytes:
    """The encoding of `key`; DataError if it is not a valid key."""
    cdef Buf b
    b.data = NULL
    b.size = 0
    b.cap = 0
    try:
        put_key(&b, key, 0)
        return PyBytes_FromStringAndSize(<char *>b.data, b.size)
    finally:
        free(b.data)


def encode_prefix(object key) -> bytes:
    """encode(key) without an array's closing 0x00 (a scalar is the array
    [key]): every array key that starts with key's elements starts with it.
    For prefix matches on compound indexes."""
    if type(key) is not list and type(key) is not tuple:
        key = [key]
    cdef bytes e = encode(key)
    return e[:len(e) - 1]


def is_valid(object key) -> bool:
    """True if `key` is a valid IndexedDB key."""
    try:
        encode(key)
        return True
    except DataError:
        return False


cdef object number_at(const uint8_t *p):
    cdef uint64_t u = 0
    cdef double d
    cdef int i
    for i in range(8):
        u = (u << 8) | p[i]
    if u >> 63:
        u ^= (<uint64_t>1) << 63
    else:
        u = ~u
    memcpy(&d, &u, 8)
    if d == <double>(<long long>d) and -TWO53 <= d <= TWO53:
        return <long long>d
    return d


cdef object decode_at(const uint8_t *p, Py_ssize_t n, Py_ssize_t *pos, int depth):
    cdef Py_ssize_t i = pos[0]
    cdef uint8_t c
    cdef uint32_t *units
    cdef Py_ssize_t m, j, k
    cdef uint32_t u, lo
    cdef Py_ssize_t end = skip_at(p, n, i, depth)     # the framing, checked
    c = p[i]
    if c == T_NUMBER:
        pos[0] = end
        return number_at(p + i + 1)
    if c == T_STRING:
        i += 1
        units = <uint32_t *>malloc(sizeof(uint32_t) * (n - i + 1))
        if units == NULL:
            raise MemoryError()
        try:
            m = 0
            while True:
                if i >= n:
                    raise CorruptionError("string key without its terminator")
                c = p[i]
                if c == 0:
                    if i + 1 < n and p[i + 1] == 0xFF:
                        units[m] = 0
                        m += 1
                        i += 2
                        continue
                    i += 1
                    break
                if c < 0x80:
                    units[m] = c
                    i += 1
                elif 0xC0 <= c < 0xE0 and i + 1 < n and (p[i + 1] & 0xC0) == 0x80:
                    units[m] = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F)
                    i += 2
                elif (0xE0 <= c < 0xF0 and i + 2 < n and (p[i + 1] & 0xC0) == 0x80
                      and (p[i + 2] & 0xC0) == 0x80):
                    units[m] = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F)
                    i += 3
                else:
                    raise CorruptionError(f"bad string key byte 0x{c:02x} at {i}")
                m += 1
            # join surrogate pairs into code points
            k = 0
            j = 0
            while j < m:
                u = units[j]
                if 0xD800 <= u < 0xDC00 and j + 1 < m:
                    lo = units[j + 1]
                    if 0xDC00 <= lo < 0xE000:
                        units[k] = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                        k += 1
                        j += 2
                        continue
                units[k] = u
                k += 1
                j += 1
            pos[0] = i
            return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, units, k)
        finally:
            free(units)
    if c == T_ARRAY:
        if depth >= C_MAX_DEPTH:
            raise CorruptionError("array key nested too deep")
        i += 1
        out = []
        while True:
            if i >= n:
                raise CorruptionError("array key without its terminator")
            if p[i] == 0:
                pos[0] = i + 1
                return out
            pos[0] = i
            out.append(decode_at(p, n, pos, depth + 1))
            i = pos[0]
    raise CorruptionError(f"unknown key type code 0x{c:02x} at byte {i}")


cdef Py_ssize_t skip_at(const uint8_t *p, Py_ssize_t n, Py_ssize_t i, int depth) except -1:
    """Where the key encoded at p[i:] ends, without building it."""
    cdef uint8_t c
    if i >= n:
        raise CorruptionError(f"key ends at byte {i} where a value should start")
    c = p[i]
    if c == T_NUMBER:
        if i + 9 > n:
            raise CorruptionError(f"number key truncated at byte {i}")
        return i + 9
    if c == T_STRING:
        i += 1
        while i < n:
            if p[i] == 0:
                if i + 1 < n and p[i + 1] == 0xFF:      # an escaped code unit 0
                    i += 2
                    continue
                return i + 1
            i += 1
        raise CorruptionError("string key without its terminator")
    if c == T_ARRAY:
        if depth >= C_MAX_DEPTH:
            raise CorruptionError("array key nested too deep")
        i += 1
        while i < n:
            if p[i] == 0:
                return i + 1
            i = skip_at(p, n, i, depth + 1)
        raise CorruptionError("array key without its terminator")
    raise CorruptionError(f"unknown key type code 0x{c:02x} at byte {i}")


def key_end(bytes data, Py_ssize_t offset=0):
    """decode_from(data, offset)[1] without decoding: where the key that
    starts at offset ends (an index entry's primary key starts there)."""
    if offset < 0 or offset > PyBytes_GET_SIZE(data):
        raise ValueError("offset out of range")
    return skip_at(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), offset, 0)


def decode_from(bytes data, Py_ssize_t offset=0):
    """(key, end): the key encoded at data[offset:], and where it ends."""
    cdef Py_ssize_t pos = offset
    if offset < 0 or offset > PyBytes_GET_SIZE(data):
        raise ValueError("offset out of range")
    key = decode_at(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &pos, 0)
    return key, pos


def decode(bytes data):
    """The key `data` encodes; CorruptionError if it is not exactly one key."""
    key, end = decode_from(data, 0)
    if end != PyBytes_GET_SIZE(data):
        raise CorruptionError(f"{PyBytes_GET_SIZE(data) - end} bytes after the key")
    return key


def successor(bytes prefix) -> bytes:
    """The least byte string greater than every string starting with
    `prefix` (prefix must not be all 0xFF), for half-open range ends."""
    cdef bytearray b = bytearray(prefix)
    while b and b[len(b) - 1] == 0xFF:
        b.pop()
    if not b:
        raise ValueError("no successor of an all-0xFF prefix")
    b[len(b) - 1] += 1
    return bytes(b)


# ---- helpers for the document layer (flowdb.jsondb), hot on every write ----

cdef object _MISSING = object()


cdef object extract_path(object doc, tuple parts):
    cdef object v = doc
    for p in parts:
        if not isinstance(v, dict):
            return _MISSING
        v = (<dict>v).get(p, _MISSING)
        if v is _MISSING:
            return _MISSING
    return v


cdef bytes try_encode_c(object key):
    cdef Buf b
    b.data = NULL
    b.size = 0
    b.cap = 0
    try:
        put_key(&b, key, 0)
        return PyBytes_FromStringAndSize(<char *>b.data, b.size)
    except DataError:
        return None
    finally:
        free(b.data)


def index_keys(object doc, tuple parts_list, bint multi_entry):
    """The encoded index keys of doc for an index over parts_list (a tuple
    of key paths, each a tuple of names): () when a value is missing or not
    a valid key; for a multi_entry index over an array, one per distinct
    valid element; a compound index's key is the array of its values."""
    cdef object v
    cdef bytes enc
    cdef list values
    if len(parts_list) == 1:
        v = extract_path(doc, <tuple>parts_list[0])
        if v is _MISSING:
            return ()
        if multi_entry and (type(v) is list or type(v) is tuple):
            out = set()
            for e in v:
                enc = try_encode_c(e)
                if enc is not None:
                    out.add(enc)
            return out
        enc = try_encode_c(v)
        return () if enc is None else (enc,)
    values = []
    for parts in parts_list:
        v = extract_path(doc, <tuple>parts)
        if v is _MISSING:
            return ()
        values.append(v)
    enc = try_encode_c(values)
    return () if enc is None else (enc,)


cdef bint has_nul(object key):
    if type(key) is str:
        return "\x00" in <str>key
    if type(key) is list or type(key) is tuple:
        for k in key:
            if has_nul(k):
                return True
    return False


def encode_primary(object key) -> bytes:
    """encode(key) for a primary key: DataError too if a string in it
    contains \\x00 (API.md: refused in string primary keys)."""
    cdef bytes enc = encode(key)
    if b"\x00\xff" in enc and has_nul(key):
        raise DataError("string primary keys must not contain \\x00")
    return enc


cdef int _check_names(object v, int depth) except -1:
    if depth > 1000:
        raise DataError("the document nests too deep")
    if isinstance(v, dict):
        for k, x in (<dict>v).items():
            if type(k) is not str:
                raise DataError(f"object keys must be str, not {type(k).__name__} ({k!r})")
            _check_names(x, depth + 1)
    elif type(v) is list or type(v) is tuple:
        for x in v:
            _check_names(x, depth + 1)
    return 0


def check_document(object doc):
    """DataError unless doc is a dict whose objects, at every depth, have
    str keys only (what JSON can hold, so key paths see what is stored)."""
    if not isinstance(doc, dict):
        raise DataError(f"a document must be a JSON object (dict), not {type(doc).__name__}")
    _check_names(doc, 0)


def split_writes(list keys, dict writes, long long expire_at):
    """(records, deletes) of a transaction's overlay: for each key of
    `keys` (engine keys, already checked to be 1..65535 bytes), a Record
    (ts 0) when writes[key] is bytes, a (key, 0) delete when it is None.
    The batch encoder validates the records again."""
    cdef list records = []
    cdef list deletes = []
    cdef object v
    for k in keys:
        v = writes[k]
        if v is None:
            deletes.append((k, 0))
        else:
            records.append(make_record(<bytes>k, 0, <bytes>v, expire_at))
    return records, deletes
