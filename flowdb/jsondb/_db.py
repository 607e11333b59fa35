"""JsonDB: IndexedDB-style object stores and indexes on a flowdb Engine.

Concurrency: read-write transactions take per-store locks in sorted name
order (threads wait for each other; a thread asking again for a store it
already holds gets InvalidStateError instead of a deadlock).  Schema
changes hold the schema lock and then the lock of the store they change,
so they wait for that store's writers.  Read-only work reads an engine
snapshot taken together with the catalog under the publish mutex.
"""
import threading

from flowdb._core.record import NEVER, Record
from flowdb._engine import Engine
from flowdb._errors import ConstraintError, DataError, InvalidStateError, NotFoundError
from flowdb._query import ScanRange
from flowdb.jsondb import _keys, _typed
from flowdb.jsondb._keyrange import KeyRange
from flowdb.jsondb._schema import (Catalog, IndexMeta, StoreMeta, as_store_def, check_flag,
                                   check_index_def, check_name, check_name_type)
from flowdb.jsondb._transaction import Transaction, TransactionMode, load_doc


class JsonDB:
    """A document database; see API.md section 2."""

    def __init__(self, engine):
        self._engine = engine
        self._closed = False
        # lock table, owners, catalog publication; an RLock because a
        # transaction garbage-collected while active releases its locks from
        # __del__, which may run in a thread that holds it
        self._mutex = threading.RLock()
        self._schema_lock = threading.RLock()   # one schema change at a time
        self._locks = {}                        # store name -> Lock
        self._owners = {}                       # store name -> thread ident
        rec = engine.get(_keys.CATALOG_KEY, 0)
        self._catalog = Catalog.loads(rec.value) if rec is not None else Catalog()

    @classmethod
    def open(cls, config=None, **overrides):
        return cls(Engine.open(config, **overrides))

    @classmethod
    def from_engine(cls, engine):
        if not isinstance(engine, Engine):
            raise TypeError(f"from_engine takes an Engine, not {type(engine).__name__}")
        return cls(engine)

    @property
    def engine(self):
        return self._engine

    def shutdown(self):
        """Shut the database and its engine down."""
        if self._closed:
            return
        self._closed = True
        self._engine.shutdown()

    def close(self):
        """Flush and sync the engine; the database stays usable."""
        self._check_open()
        self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def _check_open(self):
        if self._closed:
            raise InvalidStateError("the database has been shut down")

    def _check_schema_change(self):
        # Lock order is schema lock -> store lock.  A thread that holds a
        # store lock (inside a read-write transaction) and waited for the
        # schema lock could deadlock with a schema change waiting for its
        # store, so it is refused instead.
        self._check_open()
        me = threading.get_ident()
        with self._mutex:
            held = me in self._owners.values()
        if held:
            raise InvalidStateError("schema changes cannot run inside a read-write transaction")

    # ---- locks and transactions -------------------------------------------------

    def _acquire(self, names):
        me = threading.get_ident()
        taken = []
        try:
            for n in names:
                with self._mutex:
                    if self._owners.get(n) == me:
                        raise InvalidStateError(
                            f"this thread already has a read-write transaction on {n!r}")
                    lock = self._locks.setdefault(n, threading.Lock())
                lock.acquire()
                with self._mutex:
                    self._owners[n] = me
                taken.append(n)
        except BaseException:
            self._release(taken)
            raise
        return taken

    def _release(self, names):
        for n in names:
            with self._mutex:
                self._owners.pop(n, None)
            self._locks[n].release()

    def transaction(self, stores, mode=TransactionMode.READ_ONLY):
        """A transaction over `stores` (a name or a list of names)."""
        self._check_open()
        mode = TransactionMode.parse(mode)
        if isinstance(stores, str):
            stores = [stores]
        names = sorted(set(stores))
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"a store name must be a str, not {type(n).__name__}")
        if mode is TransactionMode.READ_WRITE:
            locked = self._acquire(names)
            try:
                metas = self._metas(self._catalog, names)
            except BaseException:
                self._release(locked)
                raise
            return Transaction(self, metas, mode, self._engine, None, locked)
        with self._mutex:
            catalog = self._catalog
            snap = self._engine.snapshot()
        try:
            metas = self._metas(catalog, names)
        except BaseException:
            snap.close()
            raise
        return Transaction(self, metas, mode, snap, snap, ())

    @staticmethod
    def _metas(catalog, names):
        metas = {}
        for n in names:
            m = catalog.stores.get(n)
            if m is None:
                raise NotFoundError(f"no object store named {n!r}")
            metas[n] = m
        return metas

    def _write1(self, store, fn, *args):
        tx = self.transaction([store], TransactionMode.READ_WRITE)
        try:
            out = fn(tx, store, *args)
            tx.commit()
            return out
        finally:
            if tx.active:
                tx.abort()

    def _read1(self, store, fn, *args):
        with self.transaction([store], TransactionMode.READ_ONLY) as tx:
            return fn(tx, store, *args)

    # ---- schema --------------------------------------------------------------------
    #
    # Every schema change, however many stores and indexes it touches, edits
    # a copy of the catalog in a _SchemaEdit and commits it with its data
    # (backfilled index entries, range deletes of what it dropped) as one
    # engine batch: all of it or nothing, as IndexedDB's versionchange.

    def _change_schema(self, stores, edit_fn):
        """Runs edit_fn(_SchemaEdit) holding the schema lock and the locks of
        the existing `stores`, then commits the edit as one batch."""
        self._check_schema_change()
        with self._schema_lock:
            locked = self._acquire(sorted({s for s in stores if s in self._catalog.stores}))
            try:
                edit = _SchemaEdit(self)
                edit_fn(edit)
                if edit.changed:
                    self._publish(edit.catalog, edit.records, edit.deletes, edit.ranges)
            finally:
                self._release(locked)

    def _publish(self, catalog, records=(), deletes=(), ranges=()):
        records = list(records)
        records.append(Record(_keys.CATALOG_KEY, 0, catalog.dumps(), NEVER))
        with self._mutex:
            self._engine._write_mixed(records, deletes, ranges)
            self._catalog = catalog

    def create_object_store(self, name, key_path, auto_increment=False):
        """ConstraintError if it exists; DataError for a bad key path."""
        check_name("a store", name)
        check_flag("auto_increment", auto_increment)
        _keys.parse_key_path(key_path)
        self._change_schema([], lambda e: e.create_store(name, key_path, auto_increment))

    def delete_object_store(self, name):
        """Remove the store, its documents and indexes (one atomic batch)."""
        self._store_meta(name)
        self._change_schema([name], lambda e: e.delete_store(name))

    def _store_meta(self, name):
        m = self._catalog.stores.get(name)
        if m is None:
            check_name_type("a store", name)
            raise NotFoundError(f"no object store named {name!r}")
        return m

    def create_index(self, store, name, key_paths, unique=False, multi_entry=False):
        """Create an index and index the existing documents; a unique
        violation raises ConstraintError and leaves no index."""
        check_name("an index", name)
        check_flag("unique", unique)
        check_flag("multi_entry", multi_entry)
        key_paths = check_index_def(key_paths, multi_entry)
        self._store_meta(store)
        self._change_schema([store], lambda e: e.create_index(store, name, key_paths, unique,
                                                              multi_entry))

    def create_index_on(self, store, name, key_path, unique=False, multi_entry=False):
        self.create_index(store, name, [key_path], unique, multi_entry)

    def delete_index(self, store, name):
        self._store_meta(store).index(name)
        self._change_schema([store], lambda e: e.delete_index(store, name))

    def store_names(self):
        self._check_open()
        return sorted(self._catalog.stores)

    def get_store(self, name):
        """The StoreDef of `name` (next_auto_id: the key generator), or None."""
        self._check_open()
        meta = self._catalog.stores.get(name)
        if meta is None:
            return None
        rec = self._engine.get(meta.keygen_key, 0)
        return meta.to_def(int(rec.value) if rec else 1)

    def apply_store(self, definition):
        """Make the persisted schema of one store match `definition`."""
        self.apply_schemas([definition])

    def apply_schemas(self, definitions):
        """apply_store for each, as one atomic change: every conflict is
        found, and every index backfilled, before anything is written."""
        defs = [as_store_def(d) for d in definitions]
        for d in defs:
            self._check_def(d)

        def edit(e):
            for d in defs:
                if d.name not in e.catalog.stores:
                    e.create_store(d.name, d.key_path, d.auto_increment)
                meta = e.catalog.stores[d.name]
                wanted = {i.name for i in d.indexes}
                for name in sorted(set(meta.indexes) - wanted):
                    e.delete_index(d.name, name)
                for i in d.indexes:
                    if i.name not in e.catalog.stores[d.name].indexes:
                        e.create_index(d.name, i.name, check_index_def(i.key_paths, i.multi_entry),
                                       i.unique, i.multi_entry)
        self._change_schema([d.name for d in defs], edit)

    def apply_schema(self, cls):
        """apply_store for an @object_store class."""
        self.apply_store(cls)

    def _check_def(self, d):
        check_name("a store", d.name)
        check_flag("auto_increment", d.auto_increment)
        _keys.parse_key_path(d.key_path)
        names = set()
        for i in d.indexes:
            check_name("an index", i.name)
            check_flag("unique", i.unique)
            check_flag("multi_entry", i.multi_entry)
            if i.name in names:
                raise DataError(f"index {i.name!r} is defined twice in {d.name!r}")
            names.add(i.name)
            check_index_def(i.key_paths, i.multi_entry)
        meta = self._catalog.stores.get(d.name)
        if meta is None:
            return
        if meta.key_path != d.key_path or meta.auto_increment != bool(d.auto_increment):
            raise ConstraintError(
                f"store {d.name!r} exists with key_path={meta.key_path!r}, "
                f"auto_increment={meta.auto_increment}")
        for i in d.indexes:
            have = meta.indexes.get(i.name)
            if have is not None and not have.same_as(i):
                raise ConstraintError(f"index {i.name!r} of {d.name!r} exists with another definition")

    # ---- single-operation transactions ----------------------------------------------

    def put(self, store, doc):
        return self._write1(store, Transaction.put, doc)

    def add(self, store, doc):
        return self._write1(store, Transaction.add, doc)

    def put_auto(self, store, doc):
        return self._write1(store, Transaction.put_auto, doc)

    def delete(self, store, key):
        self._write1(store, Transaction.delete, key)

    def clear(self, store):
        self._write1(store, Transaction.clear)

    def get(self, store, key):
        if isinstance(key, KeyRange):
            return self._read1(store, Transaction.get, key)
        # one point read is atomic by itself: no transaction needed
        rec = self._engine.get(self._meta_for_read(store).docs_prefix + _keys.encode(key), 0)
        return None if rec is None else load_doc(rec.value)

    def count(self, store, query=None, index=None):
        if query is None and index is None:
            rec = self._engine.get(self._meta_for_read(store).count_key, 0)
            return 0 if rec is None else int(rec.value)
        return self._read1(store, Transaction.count, query, index)

    def _meta_for_read(self, store):
        if self._closed:
            raise InvalidStateError("the database has been shut down")
        meta = self._catalog.stores.get(store)
        if meta is None:
            if not isinstance(store, str):
                raise TypeError(f"a store name must be a str, not {type(store).__name__}")
            raise NotFoundError(f"no object store named {store!r}")
        return meta

    def scan(self, store):
        return self._read1(store, Transaction.scan)

    def get_all(self, store, query=None, count=None, index=None):
        return self._read1(store, Transaction.get_all, query, count, index)

    def get_by_index(self, store, index, value):
        meta = self._meta_for_read(store)
        idx = meta.index(index)
        if idx.unique and not idx.compound:
            # two point reads on one snapshot: no transaction needed
            with self._engine.snapshot() as snap:
                rec = snap.get(idx.prefix + _keys.encode(value), 0)
                if rec is not None:
                    rec = snap.get(meta.docs_prefix + rec.value, 0)
            return [] if rec is None else [load_doc(rec.value)]
        return self._read1(store, Transaction.get_by_index, index, value)

    def range_by_index(self, store, index, start, end):
        return self._read1(store, Transaction.range_by_index, index, start, end)

    def open_cursor(self, store, query=None, direction="next", index=None):
        """Lazy (key, primary_key, doc) over a snapshot taken now."""
        tx = self.transaction([store], TransactionMode.READ_ONLY)
        try:
            cursor = tx.open_cursor(store, query, direction, index)
        except BaseException:
            tx.abort()
            raise
        return _owning(tx, cursor)

    def query(self, store):
        from flowdb.jsondb._query import QueryBuilder
        return QueryBuilder(self, store)

    # ---- typed API ----------------------------------------------------------------------

    def put_doc(self, store, obj):
        return self.put(store, _typed.to_doc(obj))

    def get_doc(self, store, key, cls=dict):
        doc = self.get(store, key)
        return None if doc is None else _typed.from_doc(cls, doc)

    def delete_doc(self, store, key):
        self.delete(store, key)


def _owning(tx, cursor):
    try:
        yield from cursor
    finally:
        if tx.active:
            tx.abort()


class _SchemaEdit:
    """Schema edits on a copy of the catalog, with the data they write."""

    def __init__(self, db):
        self._engine = db._engine
        self.catalog = db._catalog.copy()
        self.records = []                  # backfilled index entries
        self.deletes = []                  # (key, 0): counters of dropped stores
        self.ranges = []                   # [lo, hi) of dropped stores and indexes
        self.changed = False

    def _meta(self, store):
        """The store's meta, copied once so the published catalog is untouched."""
        meta = self.catalog.stores[store].copy()
        self.catalog.stores[store] = meta
        return meta

    def create_store(self, name, key_path, auto_increment):
        cat = self.catalog
        if name in cat.stores:
            raise ConstraintError(f"object store {name!r} already exists")
        cat.stores[name] = StoreMeta(cat.next_store_id, name, key_path, bool(auto_increment),
                                     {}, 1)
        cat.next_store_id += 1
        self.changed = True

    def delete_store(self, name):
        meta = self.catalog.stores.pop(name)
        lo = _keys.store_prefix(meta.id)
        self.ranges.append((lo, _keys.successor(lo)))   # documents and indexes
        self.deletes += [(meta.count_key, 0), (meta.keygen_key, 0)]
        self.changed = True

    def create_index(self, store, name, key_paths, unique, multi_entry):
        if name in self.catalog.stores[store].indexes:
            raise ConstraintError(f"store {store!r} already has an index {name!r}")
        meta = self._meta(store)
        idx = IndexMeta(meta.id, meta.next_index_id, name, key_paths, bool(unique),
                        bool(multi_entry))
        meta.next_index_id += 1
        seen = {}
        p = meta.docs_prefix
        n = len(p)
        for rec in self._engine.scan(ScanRange.prefix(p)):
            pk = rec.key[n:]
            for k in idx.keys_of(load_doc(rec.value)):
                if unique:
                    other = seen.setdefault(k, pk)
                    if other != pk:
                        raise ConstraintError(
                            f"cannot create unique index {name!r}: documents "
                            f"{_keys.decode(other)!r} and {_keys.decode(pk)!r} share "
                            f"the key {_keys.decode(k)!r}")
                key, value = idx.entry(k, pk)
                self.records.append(Record(key, 0, value, NEVER))
        meta.indexes[name] = idx
        self.changed = True

    def delete_index(self, store, name):
        idx = self._meta(store).indexes.pop(name)
        self.ranges.append((idx.prefix, _keys.successor(idx.prefix)))
        self.changed = True
