"""Transactions: atomic commit, read-your-writes, abort leaves no trace, errors,
read-only snapshots, serialised read-write transactions.

WPT sources: IndexedDB/transaction-abort-generator-revert.html (abort reverts
the key generator), IndexedDB/idbtransaction_abort.htm (abort leaves no trace),
IndexedDB/idbobjectstore_add4.htm (a failed request leaves the transaction usable).
"""
import threading
import time

import pytest

from flowdb import (ConstraintError, NotFoundError, ReadOnlyError,
                    TransactionInactiveError)
from flowdb.jsondb import TransactionMode, _keys


@pytest.fixture
def two(db):
    db.create_object_store("a", "id")
    db.create_object_store("b", "id", auto_increment=True)
    db.create_index_on("a", "u", "u", unique=True)
    return db


def dump(db):
    return [(r.key, r.value) for r in db.engine.scan_prefix(_keys.PREFIX)]


def test_commit_and_read_your_writes(two):
    with two.transaction(["a", "b"], "readwrite") as tx:
        tx.put("a", {"id": 1, "u": "x"})
        k = tx.put_auto("b", {"v": 1})
        assert tx.get("a", 1) == {"id": 1, "u": "x"}
        assert tx.get_by_index("a", "u", "x") == [{"id": 1, "u": "x"}]
        assert tx.count("a") == 1 and tx.scan("b") == [{"v": 1, "id": k}]
        assert two.get("a", 1) is None                 # not visible outside yet
    assert two.get("a", 1) == {"id": 1, "u": "x"} and two.count("b") == 1


def test_exception_aborts_and_leaves_no_trace(two):
    two.put("a", {"id": 0, "u": "z"})
    before = dump(two)
    with pytest.raises(RuntimeError):
        with two.transaction(["a", "b"], TransactionMode.READ_WRITE) as tx:
            tx.put("a", {"id": 1, "u": "x"})
            tx.delete("a", 0)
            tx.put_auto("b", {})
            tx.clear("a")
            raise RuntimeError("boom")
    assert dump(two) == before


def test_wpt_abort_reverts_generator(two):
    # WPT IndexedDB/transaction-abort-generator-revert.html
    assert two.put("b", {}) == 1
    tx = two.transaction(["b"], "readwrite")
    assert tx.put("b", {}) == 2
    assert tx.put("b", {"id": 100}) == 100
    tx.abort()
    assert two.put("b", {}) == 2


def test_failed_operation_leaves_transaction_usable(two):
    with two.transaction(["a"], "readwrite") as tx:
        tx.put("a", {"id": 1, "u": "x"})
        with pytest.raises(ConstraintError):
            tx.put("a", {"id": 2, "u": "x"})
        with pytest.raises(ConstraintError):
            tx.add("a", {"id": 1, "u": "y"})
        tx.put("a", {"id": 2, "u": "y"})
    assert [d["id"] for d in two.scan("a")] == [1, 2]


def test_errors(two):
    with two.transaction(["a"], "readonly") as tx:
        with pytest.raises(ReadOnlyError):
            tx.put("a", {"id": 1})
        with pytest.raises(NotFoundError):
            tx.get("b", 1)
    with pytest.raises(TransactionInactiveError):
        tx.get("a", 1)
    tx = two.transaction("a", "readwrite")
    tx.commit()
    for call in (lambda: tx.put("a", {"id": 1}), tx.commit, tx.abort):
        with pytest.raises(TransactionInactiveError):
            call()
    with pytest.raises(NotFoundError):
        two.transaction(["nope"], "readwrite")
    with pytest.raises(ValueError):
        two.transaction(["a"], "sideways")
    # the failed begin released its locks
    with two.transaction(["a"], "readwrite"):
        pass


def test_readonly_reads_snapshot_and_does_not_block_writer(two):
    two.put("a", {"id": 1, "u": "x"})
    ro = two.transaction(["a"], "readonly")
    two.put("a", {"id": 2, "u": "y"})                   # not blocked
    assert ro.count("a") == 1 and ro.get("a", 2) is None
    assert ro.get_by_index("a", "u", "y") == []
    ro.commit()
    assert two.count("a") == 2


def test_readwrite_transactions_serialise(two):
    two.put("a", {"id": "n", "v": 0})
    errors = []

    def worker():
        try:
            for _ in range(20):
                with two.transaction(["a"], "readwrite") as tx:
                    d = tx.get("a", "n")
                    time.sleep(0)
                    d["v"] += 1
                    tx.put("a", d)
        except Exception as exc:                       # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and two.get("a", "n")["v"] == 80


def test_overlapping_scopes_no_deadlock(two):
    done = []

    def w(scope):
        for _ in range(30):
            with two.transaction(scope, "readwrite") as tx:
                for s in scope:
                    tx.count(s)
        done.append(scope)

    ts = [threading.Thread(target=w, args=(s,)) for s in (["a", "b"], ["b", "a"], ["a"], ["b"])]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(done) == 4


def test_same_thread_nested_readwrite_refused(two):
    from flowdb import InvalidStateError
    with two.transaction(["a"], "readwrite"):
        with pytest.raises(InvalidStateError):
            two.put("a", {"id": 1})


def test_clear_then_put_in_one_transaction(two):
    for i in range(5):
        two.put("a", {"id": i, "u": i})
    with two.transaction(["a"], "readwrite") as tx:
        tx.clear("a")
        tx.put("a", {"id": 3, "u": "new"})
        assert tx.scan("a") == [{"id": 3, "u": "new"}]
    assert two.scan("a") == [{"id": 3, "u": "new"}] and two.count("a") == 1
    assert two.get_by_index("a", "u", "new") == [{"id": 3, "u": "new"}]
    assert two.get_by_index("a", "u", 3) == []
    with two.transaction(["a"], "readwrite") as tx:
        tx.clear("a")
    assert two.scan("a") == [] and two.count("a") == 0


def test_commit_survives_reopen(db_factory):
    db = db_factory()
    db.create_object_store("a", "id")
    with db.transaction(["a"], "readwrite") as tx:
        for i in range(100):
            tx.put("a", {"id": i})
    db = db_factory()
    assert db.count("a") == 100


def test_forgotten_transaction_releases_its_locks(two):
    import gc
    tx = two.transaction(["a"], "readwrite")
    tx.put("a", {"id": 1, "u": 1})
    del tx
    gc.collect()
    two.put("a", {"id": 2, "u": 2})                    # would deadlock otherwise
    assert two.get("a", 1) is None


def test_wpt_abort_reverts_generator_books(db_factory):
    # WPT IndexedDB/transaction-abort-generator-revert.html ("books" store
    # whose generator stands at 345679 after an explicit key 345678)
    db = db_factory()
    db.create_object_store("books", "isbn", auto_increment=True)
    db.put("books", {"isbn": 345678, "title": "Bedrock Nights"})
    tx = db.transaction(["books"], "readwrite")
    assert tx.put("books", {"title": "Bedrock Nights II", "author": "Barney"}) == 345679
    tx.abort()
    db = db_factory()                                  # reverted, also on disk
    with db.transaction(["books"], "readwrite") as tx:
        assert tx.put("books", {"title": "again"}) == 345679


def test_readonly_not_blocked_by_open_writer(two):
    two.put("a", {"id": 1, "u": 1})
    rw = two.transaction(["a"], "readwrite")
    rw.put("a", {"id": 2, "u": 2})
    result = []
    t = threading.Thread(target=lambda: result.append(two.count("a")))
    t.start()
    t.join(5)
    assert result == [1]
    rw.commit()
    assert two.count("a") == 2


def test_schema_change_inside_readwrite_transaction_refused(two):
    from flowdb import InvalidStateError
    with two.transaction(["a"], "readwrite") as tx:
        tx.put("a", {"id": 1, "u": 1})
        for call in (lambda: two.create_object_store("c", "id"),
                     lambda: two.create_index_on("b", "i", "x"),
                     lambda: two.delete_object_store("b")):
            with pytest.raises(InvalidStateError):
                call()
    assert two.store_names() == ["a", "b"] and two.count("a") == 1


def test_schema_change_waits_for_writer(two):
    tx = two.transaction(["a"], "readwrite")
    tx.put("a", {"id": 1, "u": "x", "v": 5})
    t = threading.Thread(target=lambda: two.create_index_on("a", "v", "v"))
    t.start()
    time.sleep(0.1)
    assert t.is_alive()                                # waits for the store's writer
    tx.commit()
    t.join(5)
    assert two.get_by_index("a", "v", 5) == [{"id": 1, "u": "x", "v": 5}]
