"""Schema: object stores, indexes, apply_* diffs, builders, @object_store; it survives reopen.

WPT sources: IndexedDB/idbdatabase_createObjectStore.htm,
IndexedDB/idbobjectstore_createIndex8-valid_keys.htm (backfill indexes
existing records), IndexedDB/idbobjectstore_createIndex6-event_order.htm
(a unique index over duplicates fails and leaves nothing).
"""
from dataclasses import dataclass
from typing import Annotated

import pytest

from flowdb import ConstraintError, DataError, NotFoundError
from flowdb.jsondb import Index, IndexDef, IndexSchema, StoreDef, StoreSchema, object_store
from flowdb.jsondb import _keys


def test_create_and_list(db):
    db.create_object_store("b", "id")
    db.create_object_store("a", "k.x", auto_increment=True)
    assert db.store_names() == ["a", "b"]
    assert db.get_store("a") == StoreDef("a", "k.x", True, [], 1)
    assert db.get_store("zz") is None
    with pytest.raises(ConstraintError):
        db.create_object_store("a", "id")


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", " a", 5])
def test_bad_key_path(db, path):
    with pytest.raises(DataError):
        db.create_object_store("s", path)


def test_delete_store_removes_everything(db):
    db.create_object_store("s", "id")
    db.create_index_on("s", "by_v", "v")
    for i in range(20):
        db.put("s", {"id": i, "v": i})
    db.delete_object_store("s")
    assert db.store_names() == []
    with pytest.raises(NotFoundError):
        db.delete_object_store("s")
    db.create_object_store("s", "id")                  # new id: nothing comes back
    assert db.count("s") == 0 and db.scan("s") == []
    assert list(db.engine.scan_prefix(_keys.DATA)) == []


def test_create_index_backfills(db):
    # WPT IndexedDB/idbobjectstore_createIndex8-valid_keys.htm
    db.create_object_store("s", "id")
    for i in range(10):
        db.put("s", {"id": i, "v": i % 3})
    db.put("s", {"id": 100})                           # no value: not indexed
    db.put("s", {"id": 101, "v": None})                # invalid: not indexed
    db.create_index("s", "by_v", ["v"])
    assert [d["id"] for d in db.get_by_index("s", "by_v", 1)] == [1, 4, 7]
    assert db.count("s", index="by_v") == 10


def test_unique_backfill_over_duplicates_leaves_nothing(db):
    # WPT IndexedDB/idbobjectstore_createIndex6-event_order.htm
    db.create_object_store("s", "id")
    db.put("s", {"id": 1, "e": "x"})
    db.put("s", {"id": 2, "e": "x"})
    before = [(r.key, r.value) for r in db.engine.scan_prefix(_keys.PREFIX)]
    with pytest.raises(ConstraintError):
        db.create_index("s", "by_e", ["e"], unique=True)
    assert db.get_store("s").indexes == []
    assert [(r.key, r.value) for r in db.engine.scan_prefix(_keys.PREFIX)] == before


def test_index_errors(db):
    db.create_object_store("s", "id")
    db.create_index_on("s", "i", "v")
    with pytest.raises(ConstraintError):
        db.create_index_on("s", "i", "w")
    with pytest.raises(NotFoundError):
        db.create_index_on("zz", "i", "w")
    with pytest.raises(DataError):
        db.create_index("s", "m", ["a", "b"], multi_entry=True)
    with pytest.raises(DataError):
        db.create_index("s", "m", [])
    with pytest.raises(NotFoundError):
        db.delete_index("s", "nope")
    with pytest.raises(NotFoundError):
        db.get_by_index("s", "nope", 1)


def test_delete_index(db):
    db.create_object_store("s", "id")
    db.create_index_on("s", "i", "v")
    db.put("s", {"id": 1, "v": 1})
    db.delete_index("s", "i")
    assert db.get_store("s").indexes == []
    db.create_index_on("s", "i", "w")                  # new id: old entries invisible
    assert db.get_by_index("s", "i", 1) == []


def test_schema_survives_reopen(db_factory):
    db = db_factory()
    db.apply_store(StoreSchema("u", "id").with_index("e", ["email"], True)
                   .with_index("ca", ["city", "age"]).with_auto_increment())
    db.put("u", {"email": "a", "city": "x", "age": 1})
    db = db_factory()
    d = db.get_store("u")
    assert d == StoreDef("u", "id", True, [IndexDef("ca", ["city", "age"]),
                                           IndexDef("e", ["email"], True)], 2)
    with pytest.raises(ConstraintError):
        db.put("u", {"email": "a"})


def test_apply_store_diffs(db):
    s = StoreSchema("u", "id").with_index("a", ["a"]).with_index("b", ["b"])
    db.apply_store(s)
    db.apply_store(s)                                  # idempotent
    for i in range(5):
        db.put("u", {"id": i, "a": i, "c": i})
    db.apply_store(StoreSchema("u", "id").with_index("a", ["a"]).with_index("c", ["c"]))
    assert [i.name for i in db.get_store("u").indexes] == ["a", "c"]
    assert [d["id"] for d in db.get_by_index("u", "c", 3)] == [3]   # backfilled


def test_apply_refuses_conflicts_before_changing_anything(db):
    db.apply_store(StoreSchema("u", "id").with_index("a", ["a"]))
    with pytest.raises(ConstraintError):
        db.apply_schemas([StoreSchema("v", "id"),
                          StoreSchema("u", "id").with_index("a", ["a"], unique=True)])
    assert db.store_names() == ["u"]
    with pytest.raises(ConstraintError):
        db.apply_store(StoreSchema("u", "other"))
    with pytest.raises(ConstraintError):
        db.apply_store(StoreSchema("u", "id").with_auto_increment())


def test_index_schema_builder():
    d = StoreSchema("s", "id").with_index(IndexSchema("t", "tags").multi_entry()).build()
    assert d.indexes == [IndexDef("t", ["tags"], False, True)]
    assert IndexSchema("e", ["e"]).unique().build().unique


@object_store(name="users", key_path="id")
@dataclass
class User:
    id: str
    email: Annotated[str, Index(name="by_email", unique=True)]
    age: Annotated[int, Index()]
    note: str = ""


def test_object_store_decorator(db):
    db.apply_schema(User)
    d = db.get_store("users")
    assert d.key_path == "id" and not d.auto_increment
    assert d.indexes == [IndexDef("age", ["age"]), IndexDef("by_email", ["email"], True)]
    db.apply_schema(User)                              # idempotent


def test_decorator_name_defaults_to_class_name(db):
    @object_store(key_path="k", auto_increment=True)
    @dataclass
    class Thing:
        k: int = 0
    db.apply_schema(Thing)
    assert db.get_store("Thing").auto_increment


def test_argument_types_are_checked_before_anything_changes(db):
    """Wrong types are TypeError (API.md); a truthy "no" is not a flag."""
    db.create_object_store("s", "id")
    db.put("s", {"id": 1, "v": 1})
    with pytest.raises(TypeError):
        db.create_object_store(7, "id")
    with pytest.raises(TypeError):
        db.create_object_store("t", "id", auto_increment="yes")
    with pytest.raises(TypeError):
        db.create_index("s", 7, ["v"])
    with pytest.raises(TypeError):
        db.create_index("s", "by_v", ["v"], unique="no")
    with pytest.raises(TypeError):
        db.create_index("s", "by_v", ["v"], multi_entry=1)
    with pytest.raises(TypeError):
        db.get_by_index("s", 7, 1)
    with pytest.raises(TypeError):
        StoreSchema("s", "id").with_index("by_v", ["v"], "no")
    with pytest.raises(TypeError):
        StoreSchema("s", "id", auto_increment=1)
    with pytest.raises(TypeError):
        IndexSchema(None, ["v"])
    with pytest.raises(TypeError):
        db.apply_store(StoreDef("s", "id", indexes=[IndexDef("by_v", ["v"], unique="no")]))
    with pytest.raises(DataError):
        db.create_index("s", "", ["v"])
    with pytest.raises(NotFoundError):               # a lookup: any str may be absent
        db.get_by_index("s", "", 1)
    assert db.store_names() == ["s"] and db.get_store("s").indexes == []
    assert db.get("s", 1) == {"id": 1, "v": 1}


def test_tuples_are_array_keys(db):
    """JSON has no tuples: a tuple is the array it is stored as (docs/JSONDB.md)."""
    db.create_object_store("s", "id")
    db.put("s", {"id": [1, "a"], "v": 1})
    assert db.get("s", (1, "a")) == {"id": [1, "a"], "v": 1}
    assert _keys.encode((1, "a")) == _keys.encode([1, "a"])


def test_apply_schemas_is_one_atomic_change(db_factory):
    """A unique backfill failing in the last store leaves every store as it
    was, in memory and after reopen (IndexedDB's versionchange is atomic)."""
    db = db_factory()
    db.apply_schemas([StoreSchema("a", "id").with_index("old", ["v"]), StoreSchema("b", "id")])
    db.put("a", {"id": 1, "v": 1})
    db.put("b", {"id": 1, "v": 7})
    db.put("b", {"id": 2, "v": 7})
    before = ([db.get_store(n) for n in ("a", "b")], db.store_names())
    with pytest.raises(ConstraintError):
        db.apply_schemas([StoreSchema("a", "id").with_index("new", ["v"]),      # drops "old"
                          StoreSchema("c", "id"),
                          StoreSchema("b", "id").with_index("u", ["v"], unique=True)])
    assert ([db.get_store(n) for n in ("a", "b")], db.store_names()) == before
    assert db.get_by_index("a", "old", 1) == [{"id": 1, "v": 1}]
    db = db_factory()
    assert ([db.get_store(n) for n in ("a", "b")], db.store_names()) == before
    assert db.get_by_index("a", "old", 1) == [{"id": 1, "v": 1}]
    db.apply_schemas([StoreSchema("a", "id").with_index("new", ["v"]), StoreSchema("c", "id")])
    assert [i.name for i in db.get_store("a").indexes] == ["new"]
    assert db.get_by_index("a", "new", 1) == [{"id": 1, "v": 1}] and db.store_names() == ["a", "b", "c"]
