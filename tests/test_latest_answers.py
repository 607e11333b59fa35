"""get_latest's remembered answers (PointReader._get_latest, read.pyx).

A reader keeps the SSTables' answer of get_latest per key and gives it again
while nothing can have changed it.  Each test first checks that the answer
really was given from memory (the reader's latest_hits grew), then changes
the store in one way that must replace it, and compares with what the
store holds.  tests/test_engine_model.py checks get_latest after every
random step, which covers the same rules at random.
"""
from __future__ import annotations

import os
import time

import pytest

from flowdb import Engine, Record, SyncMode
from helpers.common import NEVER, backend, now_us

SEC = 1_000_000


def R(key, ts, value=b"v", expire_at=NEVER):
    return Record(key, ts, value, expire_at)


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(os.path.join(tmp_path, "db"), auto_background=False,
                    wal_sync_mode=SyncMode.ALWAYS, storage_backend=backend())
    yield e
    e.shutdown()


def hits(engine):
    return engine._view.reader.latest_hits


def answered_from_memory(engine, key, want):
    """get_latest(key) == want twice, the second time from memory."""
    assert engine.get_latest(key) == want
    before = hits(engine)
    assert engine.get_latest(key) == want
    assert hits(engine) == before + 1, "not answered from memory"


def test_a_settled_answer_is_given_from_memory(engine):
    engine.write_batch([R(b"k", ts, b"%d" % ts) for ts in range(100)] + [R(b"j", 5)])
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 99, b"99"))
    answered_from_memory(engine, b"absent", None)
    answered_from_memory(engine, b"j", R(b"j", 5))


def test_a_newer_write_replaces_it_and_an_older_one_does_not(engine):
    engine.write_batch([R(b"k", 10, b"ten")])
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 10, b"ten"))
    engine.write_batch([R(b"k", 5, b"five")])       # older: not the latest
    assert engine.get_latest(b"k") == R(b"k", 10, b"ten")
    engine.write_batch([R(b"k", 11, b"eleven")])
    assert engine.get_latest(b"k") == R(b"k", 11, b"eleven")
    engine.write_batch([R(b"k", 10, b"ten again")])  # overwrites an older ts
    assert engine.get_latest(b"k") == R(b"k", 11, b"eleven")
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 11, b"eleven"))


def test_an_overwrite_of_the_remembered_record_replaces_it(engine):
    engine.write_batch([R(b"k", 10, b"old")])
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 10, b"old"))
    engine.write_batch([R(b"k", 10, b"new")])
    assert engine.get_latest(b"k") == R(b"k", 10, b"new")


def test_deleting_the_remembered_record_reveals_the_one_before(engine):
    engine.write_batch([R(b"k", 1, b"one"), R(b"k", 2, b"two")])
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 2, b"two"))
    engine.delete_batch([(b"k", 2)])
    assert engine.get_latest(b"k") == R(b"k", 1, b"one")
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 1, b"one"))
    engine.delete_batch([(b"k", 1)])
    assert engine.get_latest(b"k") is None


def test_a_range_delete_hides_it_and_a_later_write_shows_again(engine):
    engine.write_batch([R(b"b", 1), R(b"c", 1)])
    engine.flush()
    answered_from_memory(engine, b"b", R(b"b", 1))
    answered_from_memory(engine, b"c", R(b"c", 1))
    engine.delete_range(b"a", b"c")
    assert engine.get_latest(b"b") is None
    assert engine.get_latest(b"c") == R(b"c", 1)
    engine.write_batch([R(b"b", 0, b"after")])
    assert engine.get_latest(b"b") == R(b"b", 0, b"after")
    engine.flush()
    answered_from_memory(engine, b"b", R(b"b", 0, b"after"))


def test_a_remembered_none_is_replaced_by_a_first_write(engine):
    engine.write_batch([R(b"a", 1)])
    engine.flush()
    answered_from_memory(engine, b"k", None)
    engine.write_batch([R(b"k", 1)])
    assert engine.get_latest(b"k") == R(b"k", 1)


def test_a_remembered_record_that_expires_gives_way_to_the_one_before(engine):
    soon = now_us() + SEC // 2
    engine.write_batch([R(b"k", 1, b"lasting"), R(b"k", 2, b"brief", soon)])
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 2, b"brief", soon))
    while now_us() <= soon:
        time.sleep(0.05)
    assert engine.get_latest(b"k") == R(b"k", 1, b"lasting")
    answered_from_memory(engine, b"k", R(b"k", 1, b"lasting"))


def test_changing_a_returned_record_changes_no_later_answer(engine):
    engine.write_batch([R(b"k", 1, b"value")])
    engine.flush()
    for _ in range(3):
        got = engine.get_latest(b"k")
        assert got == R(b"k", 1, b"value")
        got.value, got.ts, got.key = b"changed", 7, b"other"
    assert hits(engine) >= 2


def test_a_snapshot_reads_as_of_its_seq(engine):
    # (A reader never gives a snapshot older than its tables a kept answer:
    # tests/core/test_read.py checks that rule where it can be arranged.)
    engine.write_batch([R(b"k", 1, b"one")])
    engine.flush()
    snap = engine.snapshot()
    engine.write_batch([R(b"k", 2, b"two")])
    engine.flush()
    answered_from_memory(engine, b"k", R(b"k", 2, b"two"))
    for _ in range(3):
        assert snap.get_latest(b"k") == R(b"k", 1, b"one")
    snap.close()


def test_flush_and_compaction_start_afresh_with_the_same_answers(engine):
    for i in range(4):
        engine.write_batch([R(b"s%d" % s, 100 * i + j, b"%d" % j) for s in range(5)
                            for j in range(10)])
        engine.flush()
    want = {b"s%d" % s: R(b"s%d" % s, 309, b"9") for s in range(5)}
    for key, rec in want.items():
        answered_from_memory(engine, key, rec)
    engine.trigger_compaction()
    for key, rec in want.items():
        answered_from_memory(engine, key, rec)
    engine.shutdown()
    reopened = Engine.open(engine._config)
    try:
        for key, rec in want.items():
            answered_from_memory(reopened, key, rec)
    finally:
        reopened.shutdown()


def test_memory_for_answers_stays_within_its_budget(engine):
    value = b"x" * 1000
    engine.write_batch([R(b"key%05d" % i, 1, value) for i in range(10_000)])
    engine.flush()
    reader = engine._view.reader
    for i in range(10_000):
        assert engine.get_latest(b"key%05d" % i).value == value
        assert reader.latest_bytes <= 4 << 20
    # Far more than the budget went through it: it started over on the way.
    assert reader.latest_bytes < 10_000 * 1000
    big = b"y" * (1 << 20)                            # over a sixteenth: never kept
    engine.write_batch([R(b"big", 1, big)])
    engine.flush()
    reader = engine._view.reader
    for _ in range(2):
        assert engine.get_latest(b"big").value == big
    assert reader.latest_hits == 0 and reader.latest_bytes == 0
