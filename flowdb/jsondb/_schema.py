"""Schema: the public definitions (StoreDef, IndexDef, the StoreSchema and
IndexSchema builders, @object_store with Annotated[..., Index()]) and the
persisted catalog.

The catalog is one engine record (CATALOG_KEY) holding JSON::

    {"version": 1, "next_store_id": n,
     "stores": {name: {"id": sid, "key_path": str, "auto_increment": bool,
                       "next_index_id": m,
                       "indexes": {name: {"id": iid, "key_paths": [str],
                                          "unique": bool, "multi_entry": bool}}}}}

It is rewritten whole, in the same atomic batch as the data a schema
change adds or removes.
"""
import dataclasses
import typing

import ujson

from flowdb._errors import CorruptionError, DataError
from flowdb.jsondb import _keys

CATALOG_VERSION = 1


@dataclasses.dataclass
class IndexDef:
    name: str
    key_paths: list
    unique: bool = False
    multi_entry: bool = False


@dataclasses.dataclass
class StoreDef:
    name: str
    key_path: str
    auto_increment: bool = False
    indexes: list = dataclasses.field(default_factory=list)
    next_auto_id: int = 1


class IndexSchema:
    """Builder of an IndexDef: IndexSchema("by_email", ["email"]).unique()."""

    def __init__(self, name, key_paths, unique=False, multi_entry=False):
        if isinstance(key_paths, str):
            key_paths = [key_paths]
        self.name = check_name("an index", name)
        self.key_paths = list(key_paths)
        self._unique = check_flag("unique", unique)
        self._multi_entry = check_flag("multi_entry", multi_entry)

    def unique(self, flag=True):
        return IndexSchema(self.name, self.key_paths, flag, self._multi_entry)

    def multi_entry(self, flag=True):
        return IndexSchema(self.name, self.key_paths, self._unique, flag)

    def build(self):
        return IndexDef(self.name, list(self.key_paths), self._unique, self._multi_entry)


class StoreSchema:
    """Builder of a StoreDef (immutable; each call returns a new builder)::

        StoreSchema("users", "id").with_index("by_email", ["email"], True).with_auto_increment()
    """

    def __init__(self, name, key_path, auto_increment=False, indexes=()):
        self.name = check_name("a store", name)
        self.key_path = key_path
        self.auto_increment = check_flag("auto_increment", auto_increment)
        self.indexes = list(indexes)

    def with_index(self, name, key_paths=None, unique=False, multi_entry=False):
        if isinstance(name, IndexSchema):
            idx = name.build()
        elif isinstance(name, IndexDef):
            idx = dataclasses.replace(name)
        else:
            idx = IndexSchema(name, key_paths, unique, multi_entry).build()
        return StoreSchema(self.name, self.key_path, self.auto_increment, self.indexes + [idx])

    def with_auto_increment(self, flag=True):
        return StoreSchema(self.name, self.key_path, flag, self.indexes)

    def build(self):
        return StoreDef(self.name, self.key_path, self.auto_increment,
                        [dataclasses.replace(i) for i in self.indexes])


def as_store_def(d):
    if isinstance(d, StoreSchema):
        return d.build()
    if isinstance(d, StoreDef):
        return d
    schema = getattr(d, "__flowdb_store__", None)
    if schema is not None:
        return schema.build()
    raise TypeError(f"expected a StoreDef, StoreSchema or @object_store class, not {type(d).__name__}")


# ---- classes as schemas -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Index:
    """Marks a field of an @object_store class as indexed:
    ``email: Annotated[str, Index(name="by_email", unique=True)]``
    (the name defaults to the field's)."""
    name: typing.Optional[str] = None
    unique: bool = False
    multi_entry: bool = False


def object_store(name=None, key_path="id", auto_increment=False):
    """Class decorator: the class's StoreSchema becomes ``cls.__flowdb_store__``
    (for JsonDB.apply_schema), built from its Annotated[..., Index()] fields."""

    def wrap(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        schema = StoreSchema(name or cls.__name__, key_path, auto_increment)
        for field, hint in hints.items():
            if typing.get_origin(hint) is typing.Annotated:
                for meta in hint.__metadata__:
                    if isinstance(meta, Index):
                        schema = schema.with_index(meta.name or field, [field], meta.unique,
                                                   meta.multi_entry)
        cls.__flowdb_store__ = schema
        return cls

    return wrap


# ---- the persisted catalog ---------------------------------------------------

class IndexMeta:
    __slots__ = ("id", "name", "key_paths", "parts", "unique", "multi_entry", "prefix")

    def __init__(self, sid, iid, name, key_paths, unique, multi_entry):
        self.id = iid
        self.name = name
        self.key_paths = list(key_paths)
        self.parts = tuple(_keys.parse_key_path(p) for p in key_paths)
        self.unique = unique
        self.multi_entry = multi_entry
        self.prefix = _keys.index_prefix(sid, iid)

    @property
    def compound(self):
        return len(self.parts) > 1

    def keys_of(self, doc):
        return _keys.index_keys(doc, self.parts, self.multi_entry)

    def entry(self, k, pk):
        """(engine key, value) of the entry for encoded index key k and
        encoded primary key pk: a unique index keeps pk in the value, so
        its uniqueness check and lookups are point reads."""
        if self.unique:
            return self.prefix + k, pk
        return self.prefix + k + pk, b""

    def split(self, key, value):
        """(index key, encoded primary key) of an entry."""
        ikey, end = _keys.decode_from(key, len(self.prefix))
        return ikey, (value if self.unique else key[end:])

    def pk_of(self, key, value):
        """The encoded primary key of an entry."""
        if self.unique:
            return value
        return key[_keys.key_end(key, len(self.prefix)):]

    def to_def(self):
        return IndexDef(self.name, list(self.key_paths), self.unique, self.multi_entry)

    def same_as(self, d):
        return (list(d.key_paths) == self.key_paths and bool(d.unique) == self.unique
                and bool(d.multi_entry) == self.multi_entry)


class StoreMeta:
    """One store of the catalog.  Treated as immutable once published: a
    schema change replaces the StoreMeta, so a transaction keeps the one it
    started with."""
    __slots__ = ("id", "name", "key_path", "pk_parts", "auto_increment", "indexes",
                 "next_index_id", "docs_prefix", "count_key", "keygen_key")

    def __init__(self, sid, name, key_path, auto_increment, indexes, next_index_id):
        self.id = sid
        self.name = name
        self.key_path = key_path
        self.pk_parts = _keys.parse_key_path(key_path)
        self.auto_increment = auto_increment
        self.indexes = indexes                  # name -> IndexMeta
        self.next_index_id = next_index_id
        self.docs_prefix = _keys.docs_prefix(sid)
        self.count_key = _keys.count_key(sid)
        self.keygen_key = _keys.keygen_key(sid)

    def copy(self):
        return StoreMeta(self.id, self.name, self.key_path, self.auto_increment,
                         dict(self.indexes), self.next_index_id)

    def index(self, name):
        from flowdb._errors import NotFoundError
        idx = self.indexes.get(name)
        if idx is None:
            check_name_type("an index", name)
            raise NotFoundError(f"store {self.name!r} has no index {name!r}")
        return idx

    def to_def(self, next_auto_id=1):
        return StoreDef(self.name, self.key_path, self.auto_increment,
                        [i.to_def() for i in sorted(self.indexes.values(), key=lambda i: i.name)],
                        next_auto_id)


def check_name_type(what, name):
    """Lookups: a name that is not a str is a TypeError, any str may be absent."""
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__}")


def check_name(what, name):
    """A new store or index name: a non-empty str."""
    check_name_type(what, name)
    if not name:
        raise DataError(f"{what} name must not be empty")
    return name


def check_flag(what, flag):
    """auto_increment, unique, multi_entry: a bool (a truthy "no" is a bug)."""
    if not isinstance(flag, bool):
        raise TypeError(f"{what} must be a bool, not {type(flag).__name__}")
    return flag


def check_index_def(key_paths, multi_entry):
    if isinstance(key_paths, str):
        key_paths = [key_paths]
    key_paths = list(key_paths)
    if not key_paths:
        raise DataError("an index needs at least one key path")
    for p in key_paths:
        _keys.parse_key_path(p)
    if multi_entry and len(key_paths) > 1:
        raise DataError("a multi_entry index cannot have several key paths (IndexedDB rule)")
    return key_paths


class Catalog:
    def __init__(self, stores=None, next_store_id=1):
        self.stores = stores or {}
        self.next_store_id = next_store_id

    def copy(self):
        return Catalog(dict(self.stores), self.next_store_id)

    def dumps(self):
        return ujson.dumps({
            "version": CATALOG_VERSION,
            "next_store_id": self.next_store_id,
            "stores": {
                s.name: {"id": s.id, "key_path": s.key_path, "auto_increment": s.auto_increment,
                         "next_index_id": s.next_index_id,
                         "indexes": {i.name: {"id": i.id, "key_paths": i.key_paths,
                                              "unique": i.unique, "multi_entry": i.multi_entry}
                                     for i in s.indexes.values()}}
                for s in self.stores.values()}}, ensure_ascii=False).encode()

    @classmethod
    def loads(cls, raw):
        try:
            d = ujson.loads(raw)
            if d.get("version") != CATALOG_VERSION:
                raise CorruptionError(f"JsonDB catalog version {d.get('version')!r} is not {CATALOG_VERSION}")
            stores = {}
            for name, s in d["stores"].items():
                sid = s["id"]
                idx = {n: IndexMeta(sid, i["id"], n, i["key_paths"], i["unique"], i["multi_entry"])
                       for n, i in s["indexes"].items()}
                stores[name] = StoreMeta(sid, name, s["key_path"], s["auto_increment"], idx,
                                         s["next_index_id"])
            return cls(stores, d["next_store_id"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptionError(f"JsonDB catalog is unreadable: {exc}") from exc
