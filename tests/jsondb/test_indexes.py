"""Secondary indexes: unique, multi_entry, compound, missing/invalid values, updates.

WPT sources: IndexedDB/idbindex-multientry-big.htm and idbindex-multientry
(one entry per distinct element), IndexedDB/idbobjectstore_createIndex8-valid_keys.htm,
IndexedDB/idbobjectstore_add4.htm (ConstraintError changes nothing).
"""
import pytest

from flowdb import ConstraintError
from flowdb.jsondb import KeyRange, _keys


@pytest.fixture
def s(db):
    db.create_object_store("s", "id")
    return db


def entries(db, store, index):
    idx = db._catalog.stores[store].indexes[index]
    out = []
    for r in db.engine.scan_prefix(idx.prefix):
        k, pk = idx.split(r.key, r.value)
        out.append((k, _keys.decode(pk)))
    return out


def test_index_follows_updates_and_deletes(s):
    s.create_index_on("s", "v", "v")
    s.put("s", {"id": 1, "v": "a"})
    s.put("s", {"id": 2, "v": "a"})
    s.put("s", {"id": 1, "v": "b"})
    assert entries(s, "s", "v") == [("a", 2), ("b", 1)]
    s.delete("s", 2)
    assert entries(s, "s", "v") == [("b", 1)]
    s.put("s", {"id": 1})
    assert entries(s, "s", "v") == []


def test_unique_violation_changes_nothing(s):
    # WPT IndexedDB/idbobjectstore_add4.htm (ConstraintError; the store unchanged)
    s.create_index_on("s", "e", "e", unique=True)
    s.put("s", {"id": 1, "e": "x"})
    s.put("s", {"id": 2, "e": "y"})
    with pytest.raises(ConstraintError):
        s.put("s", {"id": 2, "e": "x"})
    with pytest.raises(ConstraintError):
        s.put("s", {"id": 3, "e": "x"})
    assert s.get("s", 2) == {"id": 2, "e": "y"} and s.count("s") == 2
    assert entries(s, "s", "e") == [("x", 1), ("y", 2)]
    s.put("s", {"id": 1, "e": "x", "more": 1})          # same doc, same key: fine
    s.put("s", {"id": 1, "e": "z"})
    s.put("s", {"id": 2, "e": "x"})                      # freed


def test_wpt_multientry_distinct_valid_elements(s):
    # WPT IndexedDB/idbindex-multientry-big.htm / idbindex-multientry
    s.create_index_on("s", "t", "tags", multi_entry=True)
    s.put("s", {"id": 1, "tags": ["a", "b", "a", None, {"x": 1}, True, [1]]})
    s.put("s", {"id": 2, "tags": "a"})
    s.put("s", {"id": 3, "tags": []})
    assert entries(s, "s", "t") == [("a", 1), ("a", 2), ("b", 1), ([1], 1)]
    assert [d["id"] for d in s.get_by_index("s", "t", "a")] == [1, 2]


def test_multientry_big(s):
    s.create_index_on("s", "t", "tags", multi_entry=True)
    s.put("s", {"id": 1, "tags": list(range(1000))})
    assert len(entries(s, "s", "t")) == 1000
    assert [d["id"] for d in s.get_by_index("s", "t", 999)] == [1]


def test_unique_multientry(s):
    s.create_index_on("s", "t", "tags", unique=True, multi_entry=True)
    s.put("s", {"id": 1, "tags": ["a", "a", "b"]})
    with pytest.raises(ConstraintError):
        s.put("s", {"id": 2, "tags": ["c", "b"]})
    assert entries(s, "s", "t") == [("a", 1), ("b", 1)]


def test_missing_or_invalid_value_stored_not_indexed(s):
    s.create_index_on("s", "v", "a.b")
    for i, doc in enumerate([{}, {"a": 1}, {"a": {"b": None}}, {"a": {"b": True}},
                             {"a": {"b": {"c": 1}}}, {"a": {"b": 1e308}}]):
        s.put("s", dict(doc, id=i))
    assert s.count("s") == 6
    assert entries(s, "s", "v") == [(1e308, 5)]


def test_compound_index_prefix_match(s):
    s.create_index("s", "ca", ["city", "age"])
    s.put("s", {"id": 1, "city": "Oslo", "age": 30})
    s.put("s", {"id": 2, "city": "Oslo", "age": 20})
    s.put("s", {"id": 3, "city": "Rome", "age": 20})
    s.put("s", {"id": 4, "city": "Oslo"})               # incomplete: not indexed
    assert [d["id"] for d in s.get_by_index("s", "ca", "Oslo")] == [2, 1]
    assert [d["id"] for d in s.get_by_index("s", "ca", ["Oslo"])] == [2, 1]
    assert [d["id"] for d in s.get_by_index("s", "ca", ["Oslo", 30])] == [1]
    assert [d["id"] for d in s.get_by_index("s", "ca", ["Osl"])] == []


def test_range_by_index_half_open(s):
    s.create_index_on("s", "v", "v")
    for i in range(10):
        s.put("s", {"id": i, "v": i * 10})
    assert [d["v"] for d in s.range_by_index("s", "v", 20, 50)] == [20, 30, 40]
    assert s.range_by_index("s", "v", 50, 20) == []


def test_index_order_then_primary_key(s):
    s.create_index_on("s", "v", "v")
    for i, v in [(3, "b"), (1, "b"), (2, "a"), (0, 5)]:
        s.put("s", {"id": i, "v": v})
    assert [(k, pk) for k, pk, _ in s.open_cursor("s", index="v")] == \
        [(5, 0), ("a", 2), ("b", 1), ("b", 3)]
    assert [(k, pk) for k, pk, _ in s.open_cursor("s", index="v", direction="prev")] == \
        [("b", 3), ("b", 1), ("a", 2), (5, 0)]
    assert [d["id"] for d in s.get_all("s", KeyRange.only("b"), index="v")] == [1, 3]
    assert s.count("s", KeyRange.lower_bound("a"), index="v") == 3


def test_tuples_and_dict_subclasses_index_as_stored(s):
    import collections
    s.create_index_on("s", "t", "tags", multi_entry=True)
    s.create_index_on("s", "d", "o.p")
    s.put("s", collections.OrderedDict(id=1, tags=("a", "b"), o=collections.OrderedDict(p=5)))
    assert entries(s, "s", "t") == [("a", 1), ("b", 1)] and entries(s, "s", "d") == [(5, 1)]
    s.put("s", {"id": 1, "tags": ["b"]})                # update sees the stored list
    assert entries(s, "s", "t") == [("b", 1)] and entries(s, "s", "d") == []


def test_non_str_object_keys_refused(s):
    from flowdb import DataError
    with pytest.raises(DataError):
        s.put("s", {"id": 1, "o": {1: "x"}})
    with pytest.raises(DataError):
        s.put("s", {"id": 1, "l": [{"a": {(1,): 2}}]})
    assert s.count("s") == 0


def test_schema_calls_with_a_non_str_store_name_raise_type_error(db):
    """API.md section 3: wrong argument types raise TypeError (create_index,
    delete_index and delete_object_store used to raise NotFoundError)."""
    db.create_object_store("s", "id")
    for call in (lambda: db.create_index(3, "i", ["a"]), lambda: db.create_index_on(None, "i", "a"),
                 lambda: db.delete_index(3, "i"), lambda: db.delete_object_store(3)):
        with pytest.raises(TypeError):
            call()
    assert db.store_names() == ["s"]
