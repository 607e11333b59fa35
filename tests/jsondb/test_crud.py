"""CRUD on object stores: put/add/put_auto/get/delete/count/scan/clear/get_all/open_cursor,
and the key generator rules.

WPT sources: IndexedDB/keygenerator.htm, IndexedDB/keygenerator-explicit.html,
IndexedDB/keygenerator-overflow.htm, IndexedDB/idbobjectstore_add4.htm (add of an
existing key is a ConstraintError), IndexedDB/key_invalid.htm (invalid primary keys).
"""
import pytest

from flowdb import ConstraintError, DataError, InvalidStateError, NotFoundError
from flowdb.jsondb import KeyRange


@pytest.fixture
def users(db):
    db.create_object_store("users", "id")
    return db


def test_put_get_roundtrip(users):
    doc = {"id": "u1", "name": "Åsa", "n": 1.5, "tags": ["a", None, True], "o": {"x": [1, {}]}}
    assert users.put("users", doc) == "u1"
    assert users.get("users", "u1") == doc
    assert users.get("users", "nope") is None


def test_put_replaces(users):
    users.put("users", {"id": 1, "v": 1})
    users.put("users", {"id": 1.0, "v": 2})          # 1 and 1.0 are one key
    assert users.get("users", 1) == {"id": 1.0, "v": 2}
    assert users.count("users") == 1


def test_add_refuses_existing_key(users):
    # WPT IndexedDB/idbobjectstore_add4.htm
    users.add("users", {"id": "a", "v": 1})
    with pytest.raises(ConstraintError):
        users.add("users", {"id": "a", "v": 2})
    assert users.get("users", "a") == {"id": "a", "v": 1}


def test_dotted_key_path(db):
    db.create_object_store("s", "meta.id")
    db.put("s", {"meta": {"id": [1, "x"]}, "v": 1})
    assert db.get("s", [1, "x"])["v"] == 1
    with pytest.raises(DataError):
        db.put("s", {"meta": {}})
    with pytest.raises(DataError):
        db.put("s", {"meta": 5})


@pytest.mark.parametrize("bad", [None, True, {"a": 1}, float("nan"), [1, None]])
def test_invalid_primary_key(users, bad):
    with pytest.raises(DataError):
        users.put("users", {"id": bad})
    assert users.count("users") == 0


@pytest.mark.parametrize("key", ["a\x00b", ["ok", "\x00"]])
def test_nul_in_string_primary_key_refused(users, key):
    with pytest.raises(DataError):
        users.put("users", {"id": key})
    with pytest.raises(DataError):
        users.add("users", {"id": key})


@pytest.mark.parametrize("doc", [[1], "x", 5, None])
def test_document_must_be_object(users, doc):
    with pytest.raises(DataError):
        users.put("users", doc)


@pytest.mark.parametrize("doc", [{"id": 1, "x": float("nan")}, {"id": 1, "x": object()}])
def test_document_must_be_json(users, doc):
    with pytest.raises(DataError):
        users.put("users", doc)


def test_missing_store(db):
    with pytest.raises(NotFoundError):
        db.put("none", {"id": 1})
    with pytest.raises(NotFoundError):
        db.get("none", 1)


def test_delete_and_count(users):
    for i in range(10):
        users.put("users", {"id": i})
    users.delete("users", 3)
    users.delete("users", 99)                         # absent: not an error
    assert users.count("users") == 9
    users.delete("users", KeyRange.bound(5, 7))
    assert [d["id"] for d in users.scan("users")] == [0, 1, 2, 4, 8, 9]
    assert users.count("users") == 6


def test_count_reads_one_record(users):
    for i in range(50):
        users.put("users", {"id": i})
    before = users.engine.stats().total_records_read
    assert users.count("users") == 50
    assert users.engine.stats().total_records_read - before <= 1


def test_scan_in_key_order(users):
    keys = ["b", 2, ["a"], "a", -1, [1, 2], 1.5]
    for k in keys:
        users.put("users", {"id": k})
    assert [d["id"] for d in users.scan("users")] == [-1, 1.5, 2, "a", "b", [1, 2], ["a"]]


def test_clear_keeps_generator(db):
    db.create_object_store("a", "id", auto_increment=True)
    db.put("a", {})
    db.put("a", {})
    db.clear("a")
    assert db.count("a") == 0 and db.scan("a") == []
    assert db.put("a", {}) == 3


def test_get_all_and_cursor(users):
    for i in range(10):
        users.put("users", {"id": i})
    assert [d["id"] for d in users.get_all("users", KeyRange.bound(2, 6, True, True))] == [3, 4, 5]
    assert [d["id"] for d in users.get_all("users", None, 3)] == [0, 1, 2]
    assert [d["id"] for d in users.get_all("users", 4)] == [4]
    assert [k for k, _, _ in users.open_cursor("users", KeyRange.lower_bound(7), "prev")] == [9, 8, 7]
    cur = users.open_cursor("users")
    assert next(cur)[0] == 0
    users.put("users", {"id": -1})                     # the cursor reads its snapshot
    assert [k for k, _, _ in cur] == list(range(1, 10))


def test_keyrange_bound_inverted_is_data_error():
    with pytest.raises(DataError):
        KeyRange.bound(2, 1)
    with pytest.raises(DataError):
        KeyRange.bound(1, 1, lower_open=True)


# ---- key generator ---------------------------------------------------------------

def test_wpt_keygenerator_starts_at_1_and_is_never_reused(db):
    # WPT IndexedDB/keygenerator.htm
    db.create_object_store("s", "id", auto_increment=True)
    assert [db.put("s", {}) for _ in range(3)] == [1, 2, 3]
    db.delete("s", 3)
    assert db.put("s", {}) == 4
    assert db.put_auto("s", {"id": "ignored"}) == 5


def test_wpt_keygenerator_explicit_keys_move_it(db):
    # WPT IndexedDB/keygenerator-explicit.html: n >= next moves it to floor(n) + 1
    db.create_object_store("s", "id", auto_increment=True)
    db.put("s", {"id": 10.5})
    assert db.put("s", {}) == 11
    db.put("s", {"id": 3})                              # below: no move
    db.put("s", {"id": "str"})                          # not a number: no move
    db.put("s", {"id": -5})
    assert db.put("s", {}) == 12


def test_wpt_keygenerator_overflow(db):
    # WPT IndexedDB/keygenerator-overflow.htm
    db.create_object_store("s", "id", auto_increment=True)
    db.add("s", {"id": 2**53 - 1})
    assert db.add("s", {}) == 2**53
    with pytest.raises(ConstraintError):
        db.add("s", {})
    db.add("s", {"id": 2})                              # explicit keys still work
    with pytest.raises(ConstraintError):
        db.put_auto("s", {})
    assert [d["id"] for d in db.scan("s")] == [2, 2**53 - 1, 2**53]


def test_keygenerator_persists(db_factory):
    db = db_factory()
    db.create_object_store("s", "id", auto_increment=True)
    db.put("s", {})
    db.put("s", {"id": 41})
    db = db_factory()
    assert db.put("s", {}) == 42
    assert db.get_store("s").next_auto_id == 43


def test_put_auto_never_overwrites(db):
    db.create_object_store("s", "id")
    assert db.put_auto("s", {"v": 1}) == 1
    db.put("s", {"id": 2, "v": "explicit"})
    assert db.put_auto("s", {"v": 3}) == 3
    assert db.get("s", 2)["v"] == "explicit"


def test_put_auto_does_not_mutate_callers_doc(db):
    db.create_object_store("s", "a.b", auto_increment=True)
    doc = {"v": 1}
    k = db.put_auto("s", doc)
    assert doc == {"v": 1} and db.get("s", k) == {"v": 1, "a": {"b": k}}


def test_missing_key_without_generator(db):
    db.create_object_store("s", "id")
    with pytest.raises(DataError):
        db.put("s", {"v": 1})


def test_shutdown(db):
    db.create_object_store("s", "id")
    db.shutdown()
    with pytest.raises(InvalidStateError):
        db.put("s", {"id": 1})
    with pytest.raises(InvalidStateError):
        db.store_names()
