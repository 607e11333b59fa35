"""Child script for test_jsondb_bad_input.py (run as a script, so that a
crash in the C key code is a failed test, not a dead pytest).

usage: jsondb_bad_input_model.py DATA_DIR EXAMPLES SEED

Hypothesis generates sequences of JsonDB calls (put, add, put_auto, get,
delete, create_object_store, create_index, get_by_index, range_by_index,
KeyRange.bound) whose arguments mix valid values with non-JSON documents
(non-dicts, non-str object keys, sets, NaN/inf, bytes, objects, nested
invalids), invalid keys (None, bool, dict, NaN, bytes, strings with \\x00 as
primary keys) and invalid key paths (empty, "a..b", " a", non-str).  A plain
Python model of the stores (documents, key generators, index entries; keys
ordered as API.md "Keys" says) predicts each call: its result, or which
documented exception it raises (API.md sections 2 and 3: DataError,
ConstraintError, NotFoundError, TypeError for a non-str store name).  After
every call, and after a reopen at the end, the database equals the model.
Prints one JSON line: {"calls": n, "refused": n, "accepted": n, "by_exception": {...}}.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from collections import Counter

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from flowdb import ConstraintError, DataError, NotFoundError, SyncMode
from flowdb.jsondb import JsonDB, KeyRange

stats = Counter()


class Refuse(Exception):
    def __init__(self, exc):
        self.exc = exc


# ---- the model ---------------------------------------------------------------

def valid_key(k):
    if isinstance(k, bool):
        return False
    if isinstance(k, (int, float)):
        return not math.isnan(k)
    if isinstance(k, str):
        return True
    if isinstance(k, (list, tuple)):
        return all(valid_key(e) for e in k)
    return False


def has_nul(k):
    if isinstance(k, str):
        return "\x00" in k
    if isinstance(k, (list, tuple)):
        return any(has_nul(e) for e in k)
    return False


def mkey(k):
    """A sortable form of a valid key: number < string (UTF-16 order) < array."""
    if isinstance(k, (int, float)):
        return (0, float(k))
    if isinstance(k, str):
        return (1, k.encode("utf-16-be", "surrogatepass"))
    return (2, tuple(mkey(e) for e in k))


def json_ok(v):
    if v is None or isinstance(v, (bool, str)):
        return True
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(json_ok(e) for e in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and json_ok(e) for k, e in v.items())
    return False


def no_bad_object_keys(v):
    """No dict with a non-str key anywhere (checked before the key path is read)."""
    if isinstance(v, dict):
        return all(isinstance(k, str) and no_bad_object_keys(e) for k, e in v.items())
    if isinstance(v, (list, tuple)):
        return all(no_bad_object_keys(e) for e in v)
    return True


def valid_path(p):
    return isinstance(p, str) and bool(p) and all(q and q == q.strip() for q in p.split("."))


MISSING = object()
MAX_GENERATED = 2 ** 53     # API.md: past 2**53 the key generator is exhausted


def extract(doc, parts):
    v = doc
    for p in parts:
        if not isinstance(v, dict):
            return MISSING
        v = v.get(p, MISSING)
        if v is MISSING:
            return MISSING
    return v


def norm(doc):
    return json.loads(json.dumps(doc))


class Index:
    def __init__(self, paths, unique, multi):
        self.paths = [tuple(p.split(".")) for p in paths]
        self.unique, self.multi = unique, multi

    def keys(self, doc):
        if len(self.paths) > 1:
            vals = [extract(doc, p) for p in self.paths]
            if all(v is not MISSING and valid_key(v) for v in vals):
                return {mkey(vals)}
            return set()
        v = extract(doc, self.paths[0])
        if v is MISSING:
            return set()
        if self.multi and isinstance(v, (list, tuple)):
            return {mkey(e) for e in v if valid_key(e)}
        return {mkey(v)} if valid_key(v) else set()


class Store:
    def __init__(self, key_path, auto):
        self.parts = tuple(key_path.split("."))
        self.auto = auto
        self.gen = 1
        self.docs = {}          # mkey(pk) -> normalised doc
        self.indexes = {}       # name -> Index

    def entries(self, name):
        idx = self.indexes[name]
        return sorted((k, pk) for pk, d in self.docs.items() for k in idx.keys(d))


def store_of(model, name):
    if not isinstance(name, str):
        raise Refuse(TypeError)
    if name not in model:
        raise Refuse(NotFoundError)
    return model[name]


def m_put(model, name, doc, mode):
    s = store_of(model, name)
    if not isinstance(doc, dict) or not no_bad_object_keys(doc):
        raise Refuse(DataError)
    auto = mode == "put_auto"
    key = MISSING if auto else extract(doc, s.parts)
    if key is not MISSING and not json_ok(doc):
        raise Refuse(DataError)
    new_gen = s.gen
    if key is MISSING:
        if not auto and not s.auto:
            raise Refuse(DataError)
        if s.gen > MAX_GENERATED:
            raise Refuse(ConstraintError)           # the generator is exhausted
        key = s.gen
        node = doc
        for p in s.parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else None
            if type(node) is not dict:
                raise Refuse(DataError)
        new_gen = s.gen + 1
        doc = dict(doc)                 # the key replaces whatever was at the path
        node = doc
        for p in s.parts[:-1]:
            node[p] = dict(node.get(p, {}))
            node = node[p]
        node[s.parts[-1]] = key
        if not json_ok(doc):
            raise Refuse(DataError)
        doc = norm(doc)
        overwrite = False
    else:
        if not valid_key(key) or has_nul(key):
            raise Refuse(DataError)
        if isinstance(key, (int, float)) and key >= s.gen:
            new_gen = MAX_GENERATED + 1 if key >= MAX_GENERATED else int(math.floor(key)) + 1
        doc = norm(doc)
        overwrite = mode == "put"
    pk = mkey(key)
    if pk in s.docs and not overwrite:
        raise Refuse(ConstraintError)
    for idx in s.indexes.values():
        if idx.unique:
            for k in idx.keys(doc):
                if any(opk != pk and k in idx.keys(od) for opk, od in s.docs.items()):
                    raise Refuse(ConstraintError)
    s.docs[pk] = doc
    s.gen = new_gen
    return key


def m_get(model, name, key):
    s = store_of(model, name)
    if not valid_key(key):
        raise Refuse(DataError)
    return s.docs.get(mkey(key))


def m_delete(model, name, key):
    s = store_of(model, name)
    if not valid_key(key):
        raise Refuse(DataError)
    s.docs.pop(mkey(key), None)
    return None


def m_create_store(model, name, key_path, auto):
    if not isinstance(name, str):
        raise Refuse(TypeError)
    if not name or not valid_path(key_path):
        raise Refuse(DataError)
    if name in model:
        raise Refuse(ConstraintError)
    model[name] = Store(key_path, auto)
    return None


def m_create_index(model, name, iname, paths, unique, multi):
    if not isinstance(iname, str):
        raise Refuse(TypeError)
    if not iname:
        raise Refuse(DataError)
    if not isinstance(paths, (str, list, tuple)):
        raise Refuse(TypeError)                     # not a path nor a list of paths
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths or not all(valid_path(p) for p in paths) or (multi and len(paths) > 1):
        raise Refuse(DataError)
    s = store_of(model, name)
    if iname in s.indexes:
        raise Refuse(ConstraintError)
    idx = Index(paths, unique, multi)
    if unique:
        seen = Counter(k for d in s.docs.values() for k in idx.keys(d))
        if any(n > 1 for n in seen.values()):
            raise Refuse(ConstraintError)
    s.indexes[iname] = idx
    return None


def index_of(s, iname):
    if not isinstance(iname, str):
        raise Refuse(TypeError)
    if iname not in s.indexes:
        raise Refuse(NotFoundError)
    return s.indexes[iname]


def m_get_by_index(model, name, iname, value):
    s = store_of(model, name)
    idx = index_of(s, iname)
    if not valid_key(value):
        raise Refuse(DataError)
    v = mkey(value)
    out = []
    for k, pk in s.entries(iname):
        if k == v or (len(idx.paths) > 1 and (
                (v[0] == 2 and k[1][:len(v[1])] == v[1]) or (v[0] != 2 and k[1][:1] == (v,)))):
            out.append(s.docs[pk])
    return out


def m_range_by_index(model, name, iname, start, end):
    s = store_of(model, name)
    index_of(s, iname)
    if not valid_key(start) or not valid_key(end):
        raise Refuse(DataError)
    lo, hi = mkey(start), mkey(end)
    return [s.docs[pk] for k, pk in s.entries(iname) if lo <= k < hi]


def m_bound(lo, hi, lo_open, hi_open):
    if not valid_key(lo) or not valid_key(hi):
        raise Refuse(DataError)
    if mkey(lo) > mkey(hi) or (mkey(lo) == mkey(hi) and (lo_open or hi_open)):
        raise Refuse(DataError)
    return None


# ---- strategies --------------------------------------------------------------

text = st.text(alphabet="ab\x00é\U0001f600", max_size=3)
num = st.one_of(st.integers(-5, 5), st.sampled_from([0.5, -2.5, 1.0, 3.0, 1e300, -0.0]))
good_key = st.recursive(st.one_of(num, text), lambda c: st.lists(c, max_size=2), max_leaves=4)
bad_key = st.sampled_from([None, True, False, {}, {"a": 1}, math.nan, b"x", bytearray(b"y"),
                           frozenset(), [None], [1, math.nan], [True]])
any_key = st.one_of(good_key, good_key, good_key, bad_key)
bad_leaf = st.builds(lambda i: [{1}, math.nan, math.inf, -math.inf, b"x", object(),
                                {1: "x"}, {"a": {2}}, [1, {None: 1}], complex(1, 2)][i],
                     st.integers(0, 9))
json_val = st.recursive(st.one_of(st.none(), st.booleans(), num, text),
                        lambda c: st.one_of(st.lists(c, max_size=3),
                                            st.dictionaries(st.sampled_from("xyz"), c, max_size=2)),
                        max_leaves=6)
value = st.one_of(json_val, json_val, json_val, good_key, bad_leaf)


@st.composite
def document(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([[1], "doc", None, 5, ("id", 1), {1, 2}]))
    doc = {}
    if draw(st.integers(0, 5)):
        doc["id"] = draw(any_key)
    for f in draw(st.lists(st.sampled_from(["v", "w", "tags"]), max_size=3, unique=True)):
        doc[f] = draw(st.one_of(value, st.lists(any_key, max_size=3)) if f == "tags" else value)
    if draw(st.booleans()):
        doc["k"] = draw(st.one_of(st.fixed_dictionaries({"id": any_key}), value))
    if draw(st.integers(0, 7)) == 0:
        doc[draw(st.sampled_from([1, None, 2.5]))] = 1          # a non-str object key
    return doc


store_name = st.one_of(st.sampled_from(["a", "b"]), st.sampled_from(["a", "b", "c", "zz", "", 3, None]))
key_path = st.one_of(st.sampled_from(["id", "k.id", "v", "w", "tags", "k"]),
                     st.sampled_from(["", "a..b", ".a", "a.", " a", "id ", 3, None, ["id"]]))
index_name = st.one_of(st.sampled_from(["i1", "i2"]), st.sampled_from(["i1", "i2", "i3", "nope", "", 7]))
key_paths = st.one_of(key_path, st.lists(key_path, min_size=0, max_size=2))

ops = st.one_of(
    st.tuples(st.sampled_from(["put", "add", "put_auto"]), store_name, document()),
    st.tuples(st.just("get"), store_name, any_key),
    st.tuples(st.just("delete"), store_name, any_key),
    st.tuples(st.just("create_object_store"), store_name, key_path, st.booleans()),
    st.tuples(st.just("create_index"), store_name, index_name, key_paths, st.booleans(),
              st.booleans()),
    st.tuples(st.just("get_by_index"), store_name, index_name, any_key),
    st.tuples(st.just("range_by_index"), store_name, index_name, any_key, any_key),
    st.tuples(st.just("bound"), any_key, any_key, st.booleans(), st.booleans()),
)

MODEL = {"put": m_put, "add": m_put, "put_auto": m_put, "get": m_get, "delete": m_delete,
         "create_object_store": m_create_store, "create_index": m_create_index,
         "get_by_index": m_get_by_index, "range_by_index": m_range_by_index}


def call(db, op):
    name, args = op[0], op[1:]
    if name == "bound":
        return KeyRange.bound(*args)
    if name in ("put", "add", "put_auto"):
        return getattr(db, name)(*args)
    return getattr(db, name)(*args)


def predict(model, op):
    name, args = op[0], op[1:]
    if name == "bound":
        return m_bound(*args)
    if name in ("put", "add", "put_auto"):
        return m_put(model, args[0], args[1], name)
    return MODEL[name](model, *args)


def compare(db, model):
    assert db.store_names() == sorted(model), (db.store_names(), sorted(model))
    for name, s in model.items():
        want = [s.docs[k] for k in sorted(s.docs)]
        assert db.scan(name) == want, f"store {name!r} differs from the model"
        assert db.count(name) == len(want)
        meta = db._catalog.stores[name]
        assert sorted(meta.indexes) == sorted(s.indexes), name
        for iname in s.indexes:
            got = [(mkey(k), mkey(pk)) for k, pk, _ in db.open_cursor(name, index=iname)]
            assert got == s.entries(iname), f"index {iname!r} of {name!r} differs from the model"


def step(db, model, op):
    stats["calls"] += 1
    try:
        want = predict(model, op)
        want_exc = None
    except Refuse as r:
        want, want_exc = None, r.exc
    try:
        got = call(db, op)
    except Exception as exc:     # noqa: BLE001 -- checked below
        stats["refused"] += 1
        stats["exc:" + type(exc).__name__] += 1
        assert want_exc is not None and isinstance(exc, want_exc), \
            f"{op!r} raised {type(exc).__name__}: {exc}; the model expected {want_exc or want!r}"
        return
    stats["accepted"] += 1
    assert want_exc is None, f"{op!r} returned {got!r}; the model expected {want_exc.__name__}"
    if op[0] in ("put", "add", "put_auto"):
        assert mkey(got) == mkey(want), (op, got, want)
    elif op[0] == "get":
        assert got == want, (op, got, want)
    elif op[0] in ("get_by_index", "range_by_index"):
        assert got == want, (op, got, want)


def main():
    data_dir, examples, the_seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def open_db():
        return JsonDB.open(data_dir, auto_background=False, memtable_size_mb=0.5,
                           wal_sync_mode=SyncMode.ALWAYS)

    @seed(the_seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(ops, min_size=1, max_size=30))
    def run(sequence):
        shutil.rmtree(data_dir, ignore_errors=True)
        model = {}
        db = open_db()
        try:
            for name, kp, auto in (("a", "id", False), ("b", "k.id", True)):
                db.create_object_store(name, kp, auto)
                model[name] = Store(kp, auto)
            for name, iname, paths, unique, multi in (("a", "i1", ["v"], True, False),
                                                      ("b", "i2", ["tags"], False, True)):
                db.create_index(name, iname, paths, unique, multi)
                model[name].indexes[iname] = Index(paths, unique, multi)
            for op in sequence:
                step(db, model, op)
                compare(db, model)
        finally:
            db.shutdown()
        db = open_db()
        try:
            compare(db, model)
            for name, s in model.items():       # the key generators survived too
                if s.gen > MAX_GENERATED:
                    try:
                        db.put_auto(name, {"after": "reopen"})
                    except ConstraintError:
                        continue
                    raise AssertionError(f"the key generator of {name!r} was not exhausted")
                key = db.put_auto(name, {"after": "reopen"})
                assert mkey(key) == mkey(s.gen), (name, key, s.gen)
        finally:
            db.shutdown()

    run()
    print(json.dumps({"calls": stats["calls"], "refused": stats["refused"],
                      "accepted": stats["accepted"],
                      "by_exception": {k[4:]: v for k, v in stats.items() if k.startswith("exc:")}}))


if __name__ == "__main__":
    main()
