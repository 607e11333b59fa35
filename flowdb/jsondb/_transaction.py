"""Transaction: every JsonDB read and write goes through one.

A read-write transaction holds the locks of the stores in its scope (taken
by JsonDB in sorted name order), reads the engine (no one else can write
those stores while it holds the locks, so that is the state at the moment
the locks were taken) through an overlay of its own buffered writes, and
commits them - documents, index entries, counts, key generators - as one
Engine._write_mixed batch.  A read-only transaction reads one engine
snapshot and takes no lock.

Every operation checks everything before it buffers anything, so an
operation that raises leaves the transaction as it was (and usable).

Not thread-safe: one transaction belongs to one thread at a time.
"""
import bisect
import enum
import json

import ujson

from flowdb._core import idbkey
from flowdb._core.record import NEVER, Record
from flowdb._errors import (ConstraintError, DataError, NotFoundError, ReadOnlyError,
                            TransactionInactiveError)
from flowdb.jsondb import _keys
from flowdb.jsondb._keyrange import KeyRange, as_range

index_keys = _keys.index_keys
_split_writes = idbkey.split_writes

_ABSENT = object()
_MAX_KEY = 65535


class TransactionMode(enum.Enum):
    READ_ONLY = "readonly"
    READ_WRITE = "readwrite"

    @classmethod
    def parse(cls, mode):
        if isinstance(mode, cls):
            return mode
        try:
            return cls(mode)
        except ValueError:
            raise ValueError(f"transaction mode must be 'readonly' or 'readwrite', not {mode!r}") from None


def dump_doc(doc):
    try:
        return ujson.dumps(doc, ensure_ascii=False, escape_forward_slashes=False,
                           allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:      # lone surrogates: escape them
        return ujson.dumps(doc, escape_forward_slashes=False, allow_nan=False).encode()
    except (TypeError, OverflowError, ValueError) as exc:
        raise DataError(f"the document is not JSON-serialisable: {exc}") from None


def load_doc(raw):
    try:
        return ujson.loads(raw)
    except ValueError:              # outside what ujson parses: the stdlib does
        return json.loads(raw)


from flowdb._core.idbkey import check_document as _check_doc  # noqa: E402


class Transaction:
    """See the module doc and API.md "Transactions"."""

    def __init__(self, db, metas, mode, reader, snapshot, locked):
        self._db = db
        self._metas = metas              # store name -> StoreMeta, fixed at start
        self.mode = mode
        self._reader = reader            # the Engine (read-write) or a Snapshot
        self._snapshot = snapshot
        self._locked = locked            # store names whose locks we hold
        self._active = True
        self._rw = mode is TransactionMode.READ_WRITE
        self._writes = {}                # engine key -> value bytes, or None: delete
        self._sorted = []                # the keys of _writes, sorted when not _dirty
        self._dirty = False
        self._cleared = []               # [lo, hi) ranges cleared by clear()
        self._counts = {}                # sid -> document count
        self._gens = {}                  # sid -> next generated key

    # ---- lifecycle ---------------------------------------------------------

    @property
    def active(self):
        return self._active

    @property
    def store_names(self):
        return sorted(self._metas)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._active:
            return False
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def commit(self):
        """Write everything as one atomic batch; the transaction ends."""
        self._check_active()
        try:
            if self._rw and (self._writes or self._cleared or self._counts or self._gens):
                self._write()
        finally:
            self._finish()

    def abort(self):
        """Drop everything; the transaction ends."""
        self._check_active()
        self._finish()

    def __del__(self):
        # a forgotten transaction must not keep its stores locked
        if getattr(self, "_active", False):
            try:
                self._finish()
            except Exception:
                pass

    def _finish(self):
        self._active = False
        self._writes = self._sorted = self._cleared = None
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
        if self._locked:
            self._db._release(self._locked)
            self._locked = ()

    def _write(self):
        writes = self._writes
        srt = self._sorted_keys()
        records, deletes = _split_writes(srt, writes, NEVER)
        for sid, n in self._counts.items():
            records.append(Record(_keys.count_key(sid), 0, str(n).encode(), NEVER))
        for sid, n in self._gens.items():
            records.append(Record(_keys.keygen_key(sid), 0, str(n).encode(), NEVER))
        ranges = []
        for lo, hi in self._cleared:
            # _write_mixed applies range deletes after the puts: a range that
            # this transaction wrote into again becomes point deletes.
            i = bisect.bisect_left(srt, lo)
            if i < len(srt) and srt[i] < hi:
                for rec in self._reader._scan_keys(lo, hi):
                    if rec.key < hi and rec.key not in writes:
                        deletes.append((rec.key, 0))
            else:
                ranges.append((lo, hi))
        self._db._engine._write_mixed(records, deletes, ranges)

    # ---- checks ------------------------------------------------------------

    def _check_active(self):
        if not self._active:
            raise TransactionInactiveError("the transaction has finished")

    def _store(self, name, write=False):
        if not self._active:
            raise TransactionInactiveError("the transaction has finished")
        meta = self._metas.get(name)
        if meta is None:
            if not isinstance(name, str):
                raise TypeError(f"a store name must be a str, not {type(name).__name__}")
            raise NotFoundError(f"store {name!r} is not in the transaction's scope")
        if write and not self._rw:
            raise ReadOnlyError("write in a read-only transaction")
        return meta

    # ---- the overlay ---------------------------------------------------------

    def _in_cleared(self, key):
        for lo, hi in self._cleared:
            if lo <= key < hi:
                return True
        return False

    def _get_raw(self, key):
        if self._rw:
            v = self._writes.get(key, _ABSENT)
            if v is not _ABSENT:
                return v
            if self._cleared and self._in_cleared(key):
                return None
        rec = self._reader.get(key, 0)
        if rec is None:
            return None
        return rec.value

    def _get_raws(self, keys):
        """[_get_raw(k) for k in keys]; a read-only transaction has no
        overlay and reads them from its snapshot in one call."""
        if self._rw:
            return [self._get_raw(k) for k in keys]
        return self._reader._get_values(keys, 0)

    def _set(self, key, value):
        writes = self._writes
        if key not in writes:
            self._sorted.append(key)
            self._dirty = True
        writes[key] = value

    def _sorted_keys(self):
        if self._dirty:
            self._sorted.sort()
            self._dirty = False
        return self._sorted

    def _iter_range(self, lo, hi, reverse=False):
        """(key, value) for engine keys in [lo, hi), ascending (descending if
        reverse), overlay applied.  Lazy both ways: the engine scans
        backwards itself."""
        if lo >= hi:
            return
        # The engine's key range is inclusive: hi itself may come (first, if reverse).
        scan = self._reader._scan_keys(lo, hi, reverse)
        if not self._rw or (not self._sorted and not self._cleared):
            for rec in scan:
                key = rec.key
                if key < hi:
                    yield key, rec.value
                elif not reverse:
                    return
            return
        scan = (rec for rec in scan if rec.key < hi)
        srt = self._sorted_keys()
        over = srt[bisect.bisect_left(srt, lo):bisect.bisect_left(srt, hi)]
        if reverse:
            over.reverse()
        writes = self._writes
        cleared = self._cleared
        oi = 0
        for rec in scan:
            key = rec.key
            # Overlay keys that come before this one in the scan's order.
            while oi < len(over) and (over[oi] > key if reverse else over[oi] < key):
                v = writes[over[oi]]
                if v is not None:
                    yield over[oi], v
                oi += 1
            if oi < len(over) and over[oi] == key:
                v = writes[key]
                oi += 1
                if v is not None:
                    yield key, v
                continue
            if cleared and self._in_cleared(key):
                continue
            yield key, rec.value
        while oi < len(over):
            v = writes[over[oi]]
            if v is not None:
                yield over[oi], v
            oi += 1

    # ---- counters --------------------------------------------------------------

    def _count_of(self, meta):
        n = self._counts.get(meta.id)
        if n is None:
            raw = self._get_raw(meta.count_key)
            n = int(raw) if raw else 0
        return n

    def _gen_of(self, meta):
        n = self._gens.get(meta.id)
        if n is None:
            raw = self._get_raw(meta.keygen_key)
            n = int(raw) if raw else 1
        return n

    # ---- writes --------------------------------------------------------------

    def put(self, store, doc):
        """Insert or replace by primary key; returns the key."""
        meta = self._metas.get(store) if self._rw and self._active else None
        if meta is None:
            meta = self._store(store, True)     # raises the right error
        return self._put(meta, doc, True, False)

    def add(self, store, doc):
        """As put, but ConstraintError if the key exists."""
        return self._put(self._store(store, True), doc, False, False)

    def put_auto(self, store, doc):
        """Store doc under the next generated key (set at the key path)."""
        return self._put(self._store(store, True), doc, False, True)

    def _put(self, meta, doc, overwrite, auto):
        _check_doc(doc)
        gen = new_gen = None
        key = _keys.MISSING if auto else _keys.extract(doc, meta.pk_parts)
        if key is _keys.MISSING:
            if not auto and not meta.auto_increment:
                raise DataError(f"the document has no primary key at {meta.key_path!r}")
            gen = self._gen_of(meta)
            if gen > _keys.MAX_GENERATED:
                raise ConstraintError(f"the key generator of {meta.name!r} is exhausted")
            key = gen
            new_gen = gen + 1
            doc = _keys.inject(doc, meta.pk_parts, key)
            overwrite = False
            pk = _keys.encode(key)
        else:
            pk = _keys.check_primary_key(key)
            if type(key) is int or type(key) is float:
                gen = self._gen_of(meta)
                new_gen = _keys.next_generator(gen, key)
        dkey = meta.docs_prefix + pk
        if len(dkey) > _MAX_KEY:
            raise DataError("the primary key is too long")
        raw = dump_doc(doc)
        get_raw = self._get_raw
        old_raw = get_raw(dkey)
        if old_raw is not None and not overwrite:
            raise ConstraintError(f"a document with key {key!r} already exists in {meta.name!r}")
        old_doc = None if old_raw is None else load_doc(old_raw)
        changes = []
        for idx in meta.indexes.values():
            new = index_keys(doc, idx.parts, idx.multi_entry)
            if old_doc is None:
                if not new:
                    continue
                old = ()
                adds = new
            else:
                old = index_keys(old_doc, idx.parts, idx.multi_entry)
                if not new and not old:
                    continue
                new = set(new)
                old = set(old)
                adds = new - old
                old = old - new
            for k in adds:
                if len(idx.prefix) + len(k) + len(pk) > _MAX_KEY:
                    raise DataError(f"the key of index {idx.name!r} is too long")
                if idx.unique:
                    other = get_raw(idx.prefix + k)
                    if other is not None and other != pk:
                        raise ConstraintError(
                            f"unique index {idx.name!r} of {meta.name!r} already has key "
                            f"{_keys.decode(k)!r}")
            changes.append((idx, old, adds))
        # checked: from here on nothing raises
        self._set(dkey, raw)
        for idx, removes, adds in changes:
            for k in removes:
                self._set(idx.entry(k, pk)[0], None)
            for k in adds:
                self._set(*idx.entry(k, pk))
        if old_raw is None:
            self._counts[meta.id] = self._count_of(meta) + 1
        if new_gen is not None and new_gen != gen:
            self._gens[meta.id] = new_gen
        return key

    def delete(self, store, key):
        """Delete the document with this key (or every one in a KeyRange);
        an absent key is not an error."""
        meta = self._store(store, True)
        if isinstance(key, KeyRange):
            lo, hi = key.byte_range(meta.docs_prefix)
            for dkey in [k for k, _ in self._iter_range(lo, hi)]:
                self._delete_doc(meta, dkey)
            return
        self._delete_doc(meta, meta.docs_prefix + _keys.encode(key))

    def _delete_doc(self, meta, dkey):
        old_raw = self._get_raw(dkey)
        if old_raw is None:
            return
        pk = dkey[len(meta.docs_prefix):]
        old_doc = load_doc(old_raw)
        for idx in meta.indexes.values():
            for k in idx.keys_of(old_doc):
                self._set(idx.entry(k, pk)[0], None)
        self._set(dkey, None)
        self._counts[meta.id] = self._count_of(meta) - 1

    def clear(self, store):
        """Remove every document of the store (the key generator stays)."""
        meta = self._store(store, True)
        lo = _keys.store_prefix(meta.id)
        hi = _keys.successor(lo)
        srt = self._sorted_keys()
        i = bisect.bisect_left(srt, lo)
        j = bisect.bisect_left(srt, hi)
        for key in srt[i:j]:
            del self._writes[key]
        del srt[i:j]
        self._cleared.append((lo, hi))
        self._counts[meta.id] = 0

    # ---- reads -------------------------------------------------------------------

    def get(self, store, key):
        """The document with this key (or the first in a KeyRange), or None."""
        meta = self._store(store)
        if isinstance(key, KeyRange):
            for _, _, doc in self.open_cursor(store, key):
                return doc
            return None
        raw = self._get_raw(meta.docs_prefix + _keys.encode(key))
        return None if raw is None else load_doc(raw)

    def count(self, store, query=None, index=None):
        """How many documents (one record read), or how many match query."""
        meta = self._store(store)
        if query is None and index is None:
            return self._count_of(meta)
        return sum(1 for _ in self._entries(meta, as_range(query), index))

    def scan(self, store):
        """Every document, in primary-key order."""
        meta = self._store(store)
        p = meta.docs_prefix
        return [load_doc(v) for _, v in self._iter_range(p, _keys.successor(p))]

    def get_all(self, store, query=None, count=None, index=None):
        """IndexedDB getAll: documents matching query (a key or KeyRange), in
        key order (index order with index), at most count."""
        out = []
        if count is not None and count <= 0:
            count = None
        for _, _, doc in self.open_cursor(store, query, "next", index):
            out.append(doc)
            if count is not None and len(out) >= count:
                break
        return out

    def get_by_index(self, store, index, value):
        """Documents whose index key is value (on a compound index: starts
        with value's elements), ordered by (index key, primary key)."""
        meta = self._store(store)
        idx = meta.index(index)
        if idx.compound:
            enc = _keys.encode_prefix(value)
        else:
            enc = _keys.encode(value)
            if idx.unique:                     # one point read
                pk = self._get_raw(idx.prefix + enc)
                raw = None if pk is None else self._get_raw(meta.docs_prefix + pk)
                return [] if raw is None else [load_doc(raw)]
        lo = idx.prefix + enc
        return [doc for _, _, doc in self._index_docs(meta, idx, lo, _keys.successor(lo))]

    def range_by_index(self, store, index, start, end):
        """Documents whose index key is in [start, end)."""
        meta = self._store(store)
        idx = meta.index(index)
        if _keys.encode(start) >= _keys.encode(end):
            return []
        lo, hi = KeyRange.bound(start, end, upper_open=True).byte_range(idx.prefix)
        return [doc for _, _, doc in self._index_docs(meta, idx, lo, hi)]

    def open_cursor(self, store, query=None, direction="next", index=None):
        """Lazy (key, primary_key, doc) in key order ("next") or reversed ("prev")."""
        meta = self._store(store)
        if direction not in ("next", "prev"):
            raise ValueError(f"direction must be 'next' or 'prev', not {direction!r}")
        return self._cursor(meta, as_range(query), direction, index)

    def _cursor(self, meta, rng, direction, index):
        entries = self._entries(meta, rng, index, direction == "prev")
        if index is None:
            n = len(meta.docs_prefix)
            for k, v in entries:
                self._check_active()
                pk = _keys.decode(k[n:])
                yield pk, pk, load_doc(v)
        else:
            idx = meta.index(index)
            for k, v in entries:
                self._check_active()
                ikey, pk = idx.split(k, v)
                raw = self._get_raw(meta.docs_prefix + pk)
                if raw is not None:
                    yield ikey, _keys.decode(pk), load_doc(raw)

    def _entries(self, meta, rng, index, reverse=False):
        base = meta.docs_prefix if index is None else meta.index(index).prefix
        if rng is None:
            lo, hi = base, _keys.successor(base)
        else:
            lo, hi = rng.byte_range(base)
        return self._iter_range(lo, hi, reverse)

    def _index_docs(self, meta, idx, lo, hi):
        for k, v in self._iter_range(lo, hi):
            ikey, pk = idx.split(k, v)
            raw = self._get_raw(meta.docs_prefix + pk)
            if raw is not None:
                yield ikey, pk, load_doc(raw)
