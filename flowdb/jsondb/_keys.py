"""Key paths, key validation and the JsonDB key-space layout.

Layout in the engine's key space (docs/FORMAT.md, "JsonDB key space");
every record has ts = 0 and expire_at = NEVER::

    PREFIX                   = 00 4A                      # "\\x00J": reserved for JsonDB
    catalog                  = PREFIX 01                  -> JSON schema (see _schema)
    count(store)             = PREFIX 02 u32be(sid) 01    -> ASCII decimal
    key generator(store)     = PREFIX 02 u32be(sid) 02    -> ASCII decimal: next key
    document                 = PREFIX 03 u32be(sid) u32be(0)   idbkey(pk) -> JSON
    index entry              = PREFIX 03 u32be(sid) u32be(iid) idbkey(index key) idbkey(pk) -> b""

Store ids and index ids are given once (the catalog keeps the next ones)
and never reused, so a deleted store's or index's leftovers can never be
read as a new one's.  Never renumber these bytes.
"""
import math
import struct

from flowdb._core import idbkey
from flowdb._errors import DataError

PREFIX = b"\x00J"
CATALOG_KEY = PREFIX + b"\x01"
META = PREFIX + b"\x02"
DATA = PREFIX + b"\x03"
META_COUNT = b"\x01"
META_KEYGEN = b"\x02"
DOCS_ID = 0                       # the "index id" of the documents themselves

MAX_GENERATED = 2 ** 53           # IndexedDB: the generator is exhausted past this
MISSING = object()

_u32 = struct.Struct(">I").pack
encode = idbkey.encode
encode_prefix = idbkey.encode_prefix
decode = idbkey.decode
decode_from = idbkey.decode_from
key_end = idbkey.key_end
successor = idbkey.successor


def store_prefix(sid):
    return DATA + _u32(sid)


def docs_prefix(sid):
    return DATA + _u32(sid) + _u32(DOCS_ID)


def index_prefix(sid, iid):
    return DATA + _u32(sid) + _u32(iid)


def count_key(sid):
    return META + _u32(sid) + META_COUNT


def keygen_key(sid):
    return META + _u32(sid) + META_KEYGEN


# ---- key paths -------------------------------------------------------------

_PATHS = {}             # valid key path -> its parts (queries parse the same few)


def parse_key_path(path):
    """'a.b.c' -> ('a', 'b', 'c'); DataError if it is not a valid key path."""
    if not isinstance(path, str):
        raise DataError(f"a key path must be a str, not {type(path).__name__}")
    parts = _PATHS.get(path)
    if parts is not None:
        return parts
    parts = tuple(path.split("."))
    if not path or any(not p or p != p.strip() for p in parts):
        raise DataError(f"{path!r} is not a valid key path")
    if len(_PATHS) < 4096:
        _PATHS[path] = parts
    return parts


def extract(doc, parts):
    """The value at the key path `parts` in doc, or MISSING."""
    v = doc
    for p in parts:
        if not isinstance(v, dict):
            return MISSING
        v = v.get(p, MISSING)
        if v is MISSING:
            return MISSING
    return v


def inject(doc, parts, key):
    """A copy of doc with `key` at `parts` (intermediate objects created and
    copied, the caller's document untouched); DataError if a non-object is
    in the way."""
    out = dict(doc)
    node = out
    for p in parts[:-1]:
        child = node.get(p, MISSING)
        if child is MISSING:
            child = {}
        elif type(child) is not dict:
            raise DataError(f"cannot set the key: {p!r} is not an object")
        else:
            child = dict(child)
        node[p] = child
        node = child
    node[parts[-1]] = key
    return out


def try_encode(value):
    """encode(value), or None if value is not a valid key."""
    try:
        return encode(value)
    except DataError:
        return None


# encoded primary key; DataError if invalid or if a string in it contains \x00
check_primary_key = idbkey.encode_primary


def next_generator(current, key):
    """The generator after an explicit key: floor(key) + 1 if that is larger."""
    if isinstance(key, bool) or not isinstance(key, (int, float)):
        return current
    if key >= current:
        if key >= MAX_GENERATED or math.isinf(key):
            return MAX_GENERATED + 1
        return int(math.floor(key)) + 1
    return current


# index_keys(doc, parts_list, multi_entry): the encoded index keys of doc for
# an index over parts_list (a tuple of parsed key paths): none when a value is
# missing or invalid; with multi_entry one per distinct valid element of an
# array; a compound index's key is the array of its values.  (In C: hot.)
index_keys = idbkey.index_keys
