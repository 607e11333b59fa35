"""Engine API contract (API.md section 1): one named test per rule."""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
import tracemalloc

import pytest

from flowdb import (NEVER, Config, Engine, FlowError, KeyFilter, Op, Query, ReadOptions,
                    Record, ScanRange, StorageBackendKind, SyncMode)
from helpers.common import INT64_MAX, INT64_MIN, dump, now_us, rec, recs

import flowdb

InvalidStateError = getattr(flowdb, "InvalidStateError", None) or flowdb._errors.InvalidStateError
NotFoundError = getattr(flowdb, "NotFoundError", None) or flowdb._errors.NotFoundError

HOUR = 3600 * 1_000_000


def R(key, ts, value=b"v", expire_at=NEVER):
    return Record(key, ts, value, expire_at)


def keys_of(records):
    return [(r.key, r.ts) for r in records]


# ----------------------------------------------------------------- exports

def test_public_names_are_exported():
    for name in ["Engine", "Config", "Record", "Query", "ScanRange", "ReadOptions", "SyncMode",
                 "StorageBackendKind", "Op", "KeyFilter", "NEVER", "FlowError"]:
        assert hasattr(flowdb, name), name
    assert flowdb.NEVER == 2**63 - 1


def test_op_and_keyfilter_enums_exported():
    assert {Op.PUT, Op.DELETE, Op.DELETE_RANGE}
    KeyFilter.prefix(b"a")
    KeyFilter.range(b"a", b"b")
    KeyFilter.all()


def test_config_defaults_match_api():
    c = Config()
    assert c.data_dir == "flowdb_data"
    assert c.default_ttl_secs is None
    assert c.gc_interval_secs == 3600
    assert c.memtable_size_mb == 64
    assert c.max_frozen_memtables == 2
    assert c.block_size == 8192
    assert c.flush_interval_ms == 1000
    assert c.time_bucket_secs == 3600
    assert c.index_memory_budget_mb == 256
    assert c.block_cache_capacity_mb == 128
    assert c.bloom_bits_per_key == 10
    assert c.wal_segment_size_mb == 64
    assert c.compaction_threshold == 2
    assert c.compaction_interval_ms == 60000
    assert c.create_if_missing is True
    assert c.wal_sync_mode == SyncMode.ALWAYS
    assert c.auto_background is True
    assert c.prepopulate_block_cache is False       # an addition, off as in RocksDB
    assert c.storage_backend == StorageBackendKind.MULTI_FILE
    assert ReadOptions() == ReadOptions(fill_cache=True, verify_checksums=True)


# ----------------------------------------------------------------- open forms

def _roundtrip(engine):
    engine.write_batch([R(b"k", 1, b"x")])
    assert recs(engine.query_by_prefix(b"")) == [(b"k", 1, b"x", NEVER)]


def test_open_with_config_object(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "db"), auto_background=False)
    with Engine.open(cfg) as e:
        _roundtrip(e)
    assert (tmp_path / "db").is_dir()


def test_open_with_str_path(tmp_path):
    with Engine.open(str(tmp_path / "db"), auto_background=False) as e:
        _roundtrip(e)
    assert (tmp_path / "db").is_dir()


def test_open_with_pathlike(tmp_path):
    with Engine.open(tmp_path / "db", auto_background=False) as e:
        _roundtrip(e)
    assert (tmp_path / "db").is_dir()


def test_open_with_none_uses_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Engine.open(None, auto_background=False) as e:
        _roundtrip(e)
    assert (tmp_path / "flowdb_data").is_dir()


def test_open_without_arguments_uses_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e = Engine.open()
    try:
        _roundtrip(e)
    finally:
        e.shutdown()
    assert (tmp_path / "flowdb_data").is_dir()


def test_open_overrides_replace_config_fields(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "a"), auto_background=False)
    with Engine.open(cfg, data_dir=str(tmp_path / "b"), default_ttl_secs=100) as e:
        e.write_batch([R(b"k", now_us(), b"x")])
        [r] = e.query_by_prefix(b"")
        assert r.expire_at == r.ts + 100 * 1_000_000
    assert (tmp_path / "b").is_dir()
    assert not (tmp_path / "a").exists()
    # The caller's Config is not modified by the overrides.
    assert cfg.data_dir == str(tmp_path / "a") and cfg.default_ttl_secs is None


# ------------------------------------------------------------ lifecycle

def test_context_manager_calls_shutdown(tmp_path):
    with Engine.open(str(tmp_path / "db"), auto_background=False) as e:
        e.write_batch([R(b"k", 1)])
    with pytest.raises(InvalidStateError):
        e.get(b"k", 1)
    # The lock was released: the directory opens again, with the data.
    with Engine.open(str(tmp_path / "db"), auto_background=False) as e2:
        assert keys_of(e2.query_by_prefix(b"")) == [(b"k", 1)]


def test_context_manager_shuts_down_when_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with Engine.open(str(tmp_path / "db"), auto_background=False) as e:
            e.write_batch([R(b"k", 1)])
            raise KeyError("boom")
    with pytest.raises(InvalidStateError):
        e.get(b"k", 1)
    with Engine.open(str(tmp_path / "db"), auto_background=False) as e2:
        assert keys_of(e2.query_by_prefix(b"")) == [(b"k", 1)]


def test_context_manager_returns_the_engine(tmp_path):
    e = Engine.open(str(tmp_path / "db"), auto_background=False)
    with e as inner:
        assert inner is e


AFTER_SHUTDOWN_CALLS = {
    "write_batch": lambda e: e.write_batch([R(b"k", 2)]),
    "write_batch_owned": lambda e: e.write_batch_owned([R(b"k", 2)]),
    "write_batch_sync": lambda e: e.write_batch_sync([R(b"k", 2)]),
    "write_batch_ttl": lambda e: e.write_batch_ttl([R(b"k", 2)], 10),
    "get": lambda e: e.get(b"k", 1),
    "get_latest": lambda e: e.get_latest(b"k"),
    "query": lambda e: e.query(Query.prefix(b"")),
    "query_by_prefix": lambda e: e.query_by_prefix(b""),
    "query_by_key_range": lambda e: e.query_by_key_range(b"a", b"z"),
    "query_time_range": lambda e: e.query_time_range(0, 10),
    "query_prefix_time_range": lambda e: e.query_prefix_time_range(b"k", 0, 10),
    "query_key_time_range": lambda e: e.query_key_time_range(b"a", b"z", 0, 10),
    "scan": lambda e: list(e.scan(ScanRange.all())),
    "scan_opt": lambda e: list(e.scan_opt(ScanRange.all(), ReadOptions())),
    "scan_prefix": lambda e: list(e.scan_prefix(b"k")),
    "scan_prefix_time_range": lambda e: list(e.scan_prefix_time_range(b"k", 0, 10)),
    "delete_batch": lambda e: e.delete_batch([(b"k", 1)]),
    "delete_range": lambda e: e.delete_range(b"a", b"z"),
    "patch_record": lambda e: e.patch_record(b"k", 1, b"new"),
    "flush": lambda e: e.flush(),
    "close": lambda e: e.close(),
    "trigger_compaction": lambda e: e.trigger_compaction(),
    "trigger_gc": lambda e: e.trigger_gc(),
    "spawn_background_maintenance": lambda e: e.spawn_background_maintenance(),
    "stats": lambda e: e.stats(),
    "metrics_text": lambda e: e.metrics_text(),
    "get_sync": lambda e: e.get_sync(b"k", 1),
}


@pytest.mark.parametrize("call", sorted(AFTER_SHUTDOWN_CALLS))
def test_calls_after_shutdown_raise_invalid_state(engine_factory, call):
    e = engine_factory()
    e.write_batch([R(b"k", 1)])
    e.shutdown()
    with pytest.raises(InvalidStateError):
        AFTER_SHUTDOWN_CALLS[call](e)


def test_invalid_state_error_is_flow_error():
    assert issubclass(InvalidStateError, FlowError)


def test_second_shutdown_is_noop_or_invalid_state(engine_factory):
    e = engine_factory()
    e.shutdown()
    try:
        e.shutdown()
    except InvalidStateError:
        pass


def test_shutdown_releases_directory_lock(engine_factory, tmp_path):
    e = engine_factory()
    e.write_batch([R(b"k", 1)])
    e.shutdown()
    e2 = engine_factory()
    assert keys_of(e2.query_by_prefix(b"")) == [(b"k", 1)]


def test_shutdown_flushes_memtable(engine_factory):
    e = engine_factory()
    e.write_batch([R(b"k", i) for i in range(10)])
    e.shutdown()
    e2 = engine_factory()
    st = e2.stats()
    assert st.sstable_count >= 1
    assert st.memtable_records == 0
    assert len(e2.query_by_prefix(b"k")) == 10


def test_close_keeps_engine_usable(engine):
    engine.write_batch([R(b"a", 1)])
    engine.close()
    st = engine.stats()
    assert st.memtable_records == 0, "close() flushes the memtable"
    assert st.sstable_count >= 1
    engine.write_batch([R(b"b", 2)])
    assert keys_of(engine.query_by_prefix(b"")) == [(b"a", 1), (b"b", 2)]
    engine.close()
    engine.close()
    assert engine.get(b"b", 2) == R(b"b", 2)


# ------------------------------------------------------------ ranges and ordering

@pytest.fixture
def grid(engine):
    """Keys a..e at ts 1..5, half in SSTables, half in the memtable."""
    engine.write_batch([R(k, ts, k + bytes([48 + ts])) for k in [b"a", b"b", b"c"] for ts in range(1, 6)])
    engine.flush()
    engine.write_batch([R(k, ts, k + bytes([48 + ts])) for k in [b"d", b"e"] for ts in range(1, 6)])
    return engine


def test_query_key_range_is_inclusive_at_both_ends(grid):
    got = grid.query_by_key_range(b"b", b"d")
    assert sorted({r.key for r in got}) == [b"b", b"c", b"d"]
    assert len(got) == 15
    assert grid.query(Query.key_range(b"b", b"d")) == got


def test_query_time_range_is_inclusive_at_both_ends(grid):
    got = grid.query_time_range(2, 4)
    assert keys_of(got) == [(k, ts) for k in [b"a", b"b", b"c", b"d", b"e"] for ts in (2, 3, 4)]
    assert grid.query(Query.time_range(2, 4)) == got


def test_query_key_time_range_is_inclusive(grid):
    got = grid.query_key_time_range(b"b", b"c", 5, 5)
    assert keys_of(got) == [(b"b", 5), (b"c", 5)]
    assert grid.query(Query.key_time_range(b"b", b"c", 5, 5)) == got


def test_query_prefix_time_range_is_inclusive(grid):
    got = grid.query_prefix_time_range(b"d", 1, 2)
    assert keys_of(got) == [(b"d", 1), (b"d", 2)]
    assert grid.query(Query.prefix_time_range(b"d", 1, 2)) == got


def test_single_point_ranges(grid):
    assert keys_of(grid.query_by_key_range(b"c", b"c")) == [(b"c", ts) for ts in range(1, 6)]
    assert keys_of(grid.query_key_time_range(b"c", b"c", 3, 3)) == [(b"c", 3)]


def test_key_range_bounds_need_not_exist(grid):
    assert {r.key for r in grid.query_by_key_range(b"a\x00", b"c\x00")} == {b"b", b"c"}
    assert {r.key for r in grid.query_by_key_range(b"0", b"b")} == {b"a", b"b"}


def test_inverted_ranges_return_nothing(grid):
    assert grid.query_by_key_range(b"d", b"b") == []
    assert grid.query_time_range(4, 2) == []
    assert grid.query_key_time_range(b"d", b"b", 1, 5) == []
    assert grid.query_key_time_range(b"a", b"e", 5, 1) == []
    assert grid.query_prefix_time_range(b"a", 3, 2) == []
    assert grid.query(Query.key_range(b"d", b"b")) == []
    assert grid.query(Query.time_range(INT64_MAX, INT64_MIN)) == []
    assert list(grid.scan(ScanRange.key_range(b"d", b"b"))) == []
    assert list(grid.scan(ScanRange.time_range(4, 2))) == []
    assert list(grid.scan_prefix_time_range(b"a", 3, 2)) == []


def test_empty_prefix_matches_every_key(grid):
    everything = grid.query_by_prefix(b"")
    assert len(everything) == 25
    assert grid.query_by_prefix("") == everything
    assert grid.query(Query.prefix(b"")) == everything
    assert list(grid.scan(ScanRange.all())) == everything
    assert list(grid.scan(ScanRange.prefix(b""))) == everything
    assert list(grid.scan_prefix(b"")) == everything
    assert grid.query_time_range(INT64_MIN, INT64_MAX) == everything
    assert grid.query_prefix_time_range(b"", INT64_MIN, INT64_MAX) == everything
    for empty in ("", bytearray(), memoryview(b"")):
        assert grid.query_prefix_time_range(empty, INT64_MIN, INT64_MAX) == everything


def test_delete_range_is_half_open(engine):
    keys = [b"a", b"b", b"b\x00", b"bz\xff", b"c", b"c\x00", b"d"]
    engine.write_batch([R(k, 1) for k in keys])
    engine.delete_range(b"b", b"c")
    assert [r.key for r in engine.query_by_prefix(b"")] == [b"a", b"c", b"c\x00", b"d"]


def test_delete_range_removes_every_version(engine):
    engine.write_batch([R(b"k", ts) for ts in (INT64_MIN, -5, 0, 5, INT64_MAX)])
    engine.flush()
    engine.write_batch([R(b"k", 7), R(b"l", 1)])
    engine.delete_range(b"k", b"k\x00")
    assert keys_of(engine.query_by_prefix(b"")) == [(b"l", 1)]
    assert engine.get_latest(b"k") is None


def test_delete_range_with_str_keys(engine):
    engine.write_batch([R("é", 1), R("ê", 1), R("f", 1)])
    engine.delete_range("é", "ê")
    assert [r.key for r in engine.query_by_prefix(b"")] == [b"f", "ê".encode()]


def test_ordering_is_key_bytewise_then_ts(engine):
    keys = [b"\x00", b"\x00\x00", b"\x01", b"A", b"a", b"a\x00", b"a\x00b", b"ab", b"b",
            "é".encode(), b"\xff", b"\xff\x00", b"\xff\xff"]
    tss = [INT64_MIN, -1_000_000, -1, 0, 1, 1_000_000, INT64_MAX]
    import random

    pairs = [(k, t) for k in keys for t in tss]
    random.Random(1).shuffle(pairs)
    third = len(pairs) // 3
    engine.write_batch([R(k, t) for k, t in pairs[:third]])
    engine.flush()
    engine.write_batch([R(k, t) for k, t in pairs[third:2 * third]])
    engine.flush()
    engine.write_batch([R(k, t) for k, t in pairs[2 * third:]])
    expected = sorted(pairs)
    assert keys_of(engine.query_by_prefix(b"")) == expected
    assert keys_of(engine.scan(ScanRange.all())) == expected
    assert keys_of(engine.query_time_range(INT64_MIN, INT64_MAX)) == expected


def test_prefix_is_bytewise(engine):
    keys = [b"`", b"a", b"a\x00", b"a\xff", b"ab", b"b", b"\xff", b"\xff\xff"]
    engine.write_batch([R(k, 1) for k in keys])
    assert [r.key for r in engine.query_by_prefix(b"a")] == [b"a", b"a\x00", b"ab", b"a\xff"]
    assert [r.key for r in engine.query_by_prefix(b"\xff")] == [b"\xff", b"\xff\xff"]
    assert [r.key for r in engine.query_by_prefix(b"a\x00")] == [b"a\x00"]
    assert engine.query_by_prefix(b"c") == []


def test_str_keys_are_utf8_bytes(engine):
    engine.write_batch([R("é", 1, b"x")])
    [r] = engine.query_by_prefix(b"")
    assert r.key == "é".encode("utf-8") and isinstance(r.key, bytes)
    assert engine.get("é", 1) == engine.get("é".encode(), 1) == r
    assert engine.get_latest("é") == r
    assert engine.query_by_prefix("é") == [r]
    assert engine.query_by_key_range("é", "é") == [r]
    assert Record("é", 1, b"x") == Record("é".encode(), 1, b"x")
    engine.delete_batch([("é", 1)])
    assert engine.query_by_prefix(b"") == []


def test_record_key_str_decodes_utf8():
    assert Record("héllo", 1, b"").key_str() == "héllo"
    assert Record(b"a\xffb", 1, b"").key_str() == "a\ufffdb"


def test_record_fields_and_default_expire_at():
    r = Record(b"k", -5, b"val")
    assert (r.key, r.ts, r.value, r.expire_at) == (b"k", -5, b"val", NEVER)
    r2 = Record(b"k", 5, b"val", 123)
    assert r2.expire_at == 123


def test_record_equality_uses_all_four_fields():
    base = Record(b"k", 1, b"v", 10)
    assert base == Record(b"k", 1, b"v", 10)
    assert not (base != Record(b"k", 1, b"v", 10))
    assert base != Record(b"j", 1, b"v", 10)
    assert base != Record(b"k", 2, b"v", 10)
    assert base != Record(b"k", 1, b"w", 10)
    assert base != Record(b"k", 1, b"v", 11)


def test_records_read_back_equal_records_written(engine):
    written = [Record(b"k", 1, b"v"), Record(b"k\x00", -1, b"", now_us() + HOUR)]
    engine.write_batch(written)
    assert engine.query_by_prefix(b"") == written
    engine.flush()
    assert engine.query_by_prefix(b"") == written


def test_binary_keys_with_nul_and_ff_round_trip(engine):
    keys = [b"\x00", b"\xff", b"a\x00b", b"\x00\xff\x00", b"\xff" * 100]
    engine.write_batch([R(k, 3, k[::-1]) for k in keys])
    for flushed in (False, True):
        for k in keys:
            assert engine.get(k, 3) == R(k, 3, k[::-1])
            assert engine.get_latest(k) == R(k, 3, k[::-1])
        engine.flush()


def test_extreme_and_negative_timestamps_round_trip(engine):
    tss = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]
    engine.write_batch([R(b"t", ts, str(ts).encode()) for ts in tss])
    engine.flush()
    assert keys_of(engine.query_by_prefix(b"t")) == [(b"t", ts) for ts in tss]
    for ts in tss:
        assert engine.get(b"t", ts).value == str(ts).encode()
    assert engine.get_latest(b"t").ts == INT64_MAX
    assert keys_of(engine.query_time_range(INT64_MIN, -1)) == [(b"t", INT64_MIN), (b"t", INT64_MIN + 1), (b"t", -1)]


# ------------------------------------------------------------ writes

def test_write_batch_accepts_a_generator(engine):
    engine.write_batch(R(b"g", i) for i in range(5))
    assert len(engine.query_by_prefix(b"g")) == 5


def test_write_batch_accepts_any_iterable(engine):
    engine.write_batch((R(b"t", 1), R(b"t", 2)))
    engine.write_batch(iter([R(b"i", 1)]))
    engine.write_batch({1: R(b"d", 1)}.values())
    engine.write_batch(map(lambda i: R(b"m", i), range(3)))
    assert keys_of(engine.query_by_prefix(b"")) == [
        (b"d", 1), (b"i", 1), (b"m", 0), (b"m", 1), (b"m", 2), (b"t", 1), (b"t", 2)]


def test_write_batch_empty_is_noop(engine):
    engine.write_batch([])
    engine.write_batch(iter(()))
    assert engine.query_by_prefix(b"") == []


def test_write_batch_owned_same_as_write_batch(engine):
    engine.write_batch_owned([R(b"o", 1, b"x"), R(b"o", 1, b"y")])
    engine.write_batch_owned(R(b"o", i) for i in (2, 3))
    assert recs(engine.query_by_prefix(b"")) == [(b"o", 1, b"y", NEVER), (b"o", 2, b"v", NEVER),
                                                 (b"o", 3, b"v", NEVER)]


def test_write_batch_sync_writes_and_is_visible(engine_factory):
    e = engine_factory(wal_sync_mode=SyncMode.interval_ms(60_000))
    e.write_batch_sync([R(b"s", 1, b"x")])
    e.write_batch_sync(R(b"s", i) for i in (2, 3))
    assert keys_of(e.query_by_prefix(b"")) == [(b"s", 1), (b"s", 2), (b"s", 3)]


def test_duplicate_key_ts_last_write_wins_within_batch(engine):
    engine.write_batch([R(b"k", 1, b"first"), R(b"k", 1, b"second"), R(b"k", 1, b"third")])
    assert recs(engine.query_by_prefix(b"")) == [(b"k", 1, b"third", NEVER)]
    assert engine.get(b"k", 1).value == b"third"


def test_duplicate_key_ts_last_write_wins_across_batches_and_flushes(engine):
    engine.write_batch([R(b"k", 1, b"a", now_us() + HOUR)])
    engine.flush()
    engine.write_batch([R(b"k", 1, b"b")])
    assert recs(engine.query_by_prefix(b"")) == [(b"k", 1, b"b", NEVER)]
    engine.flush()
    engine.write_batch([R(b"k", 1, b"c")])
    engine.flush()
    engine.trigger_compaction()
    assert recs(engine.query_by_prefix(b"")) == [(b"k", 1, b"c", NEVER)]
    assert engine.get(b"k", 1).value == b"c"


def test_same_key_same_ts_different_keys_are_distinct(engine):
    engine.write_batch([R(b"a", 1, b"1"), R(b"a\x00", 1, b"2"), R(b"a", 2, b"3")])
    assert len(engine.query_by_prefix(b"")) == 3



def test_small_batches_keep_the_gil_and_big_ones_give_it_away(engine_factory):
    """Another thread runs during a write only when the writer gives the GIL
    away.  A small batch must not: winning the GIL back from a thread busy
    in Python would cost the writer a switch interval (5 ms) for
    microseconds of work (flowdb._fileio.AppendWriter).  A big one must, so
    that writers insert in parallel.  Counts switches, not time.

    The spinner takes the GIL whenever it is free and gives it back at once
    (sleep(0)); with a 1 s switch interval it never forces a switch, so it
    runs during a write only if the writer gave the GIL away (a build that
    holds it: 0-0.1 of the big batches).  Mostly asleep, it is a thread the
    OS wakes at once, even on a loaded host; still a host may lend it no
    core for a while, so the big batches get up to 10 rounds.  A slow small
    write makes the WAL give the GIL away on purpose for a while: the small
    batches are tried again after one."""
    e = engine_factory(wal_sync_mode=SyncMode.interval_ms(60_000), auto_background=False,
                       memtable_size_mb=64)
    wal_writer = e._wal._writer
    ticks, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)

    def share_of_writes_during_which_spin_ran(batches):
        ran = 0
        for batch in batches:
            before = ticks[0]
            e.write_batch(batch)
            ran += ticks[0] != before
        return ran / len(batches)

    def small_batches(n):
        return [[R(b"s%d" % i, n * 1000 + k, b"v" * 20) for i in range(8)] for k in range(300)]

    def big_batches(n):
        return [[R(b"b%04d" % i, n * 1000 + k, b"v" * 100) for i in range(4000)] for k in range(10)]

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    deadline = time.monotonic() + 60
    small_rounds = big_rounds = 0
    try:
        while True:
            slow_before, held_before = wal_writer.slow, wal_writer.held
            backing_off = wal_writer._backoff
            small_rounds += 1
            share = share_of_writes_during_which_spin_ran(small_batches(small_rounds))
            if not backing_off and wal_writer.slow == slow_before or time.monotonic() > deadline:
                break
        assert not backing_off and wal_writer.slow == slow_before, "every round had a slow write"
        assert wal_writer.held - held_before == 300
        assert share < 0.05   # 0.09-0.13 when small writes give the GIL away
        shares = []
        while not shares or (shares[-1] <= 0.5 and len(shares) < 10 and time.monotonic() < deadline):
            big_rounds += 1
            shares.append(share_of_writes_during_which_spin_ran(big_batches(big_rounds)))
        assert max(shares) > 0.5, shares
    finally:
        sys.setswitchinterval(switch_interval)
        stop.set()
        spinner.join()
    assert len(e.query_by_prefix(b"s")) == 8 * 300 * small_rounds
    assert len(e.query_by_prefix(b"b")) == 4000 * 10 * big_rounds

# ------------------------------------------------------------ TTL

def test_write_batch_ttl_given_overrides_every_record(engine_factory):
    e = engine_factory(default_ttl_secs=50)
    ts = now_us()
    e.write_batch_ttl([R(b"a", ts, b"x", NEVER), R(b"b", ts, b"y", ts + 5 * HOUR)], 100)
    got = recs(e.query_by_prefix(b""))
    assert got == [(b"a", ts, b"x", ts + 100_000_000), (b"b", ts, b"y", ts + 100_000_000)]


def test_write_batch_ttl_none_uses_default_ttl(engine_factory):
    e = engine_factory(default_ttl_secs=77)
    ts = now_us()
    e.write_batch_ttl([R(b"a", ts, b"x"), R(b"b", ts, b"y", ts + 5 * HOUR)], None)
    assert [r.expire_at for r in e.query_by_prefix(b"")] == [ts + 77_000_000] * 2
    e.write_batch_ttl([R(b"c", ts)])  # ttl_secs defaults to None
    assert e.get(b"c", ts).expire_at == ts + 77_000_000


def test_write_batch_ttl_none_without_default_keeps_own_expire_at(engine):
    ts = now_us()
    engine.write_batch_ttl([R(b"a", ts, b"x"), R(b"b", ts, b"y", ts + 5 * HOUR)], None)
    assert [r.expire_at for r in engine.query_by_prefix(b"")] == [NEVER, ts + 5 * HOUR]


def test_ttl_counts_from_record_ts_not_now(engine):
    old = now_us() - 2 * HOUR
    engine.write_batch_ttl([R(b"old", old), R(b"new", now_us())], 3600)
    assert [r.key for r in engine.query_by_prefix(b"")] == [b"new"]
    assert engine.get(b"old", old) is None


def test_default_ttl_applies_only_to_never_in_write_batch(engine_factory):
    e = engine_factory(default_ttl_secs=60)
    ts = now_us()
    own = ts + 5 * HOUR
    e.write_batch([R(b"a", ts, b"x"), R(b"b", ts, b"y", own)])
    assert [r.expire_at for r in e.query_by_prefix(b"")] == [ts + 60_000_000, own]


def test_default_ttl_is_retention_every_record_expires(engine_factory):
    e = engine_factory(default_ttl_secs=3600)
    ts = now_us() - 2 * HOUR
    e.write_batch([R(b"a", ts), R(b"b", now_us())])
    assert [r.key for r in e.query_by_prefix(b"")] == [b"b"]


def test_default_ttl_survives_reopen(engine_factory):
    e = engine_factory(default_ttl_secs=60)
    ts = now_us()
    e.write_batch([R(b"a", ts)])
    e.shutdown()
    e = engine_factory(default_ttl_secs=60)
    assert e.get(b"a", ts).expire_at == ts + 60_000_000


def test_expired_record_is_invisible_immediately(engine):
    now = now_us()
    engine.write_batch([R(b"gone", 1, b"x", now - 1), R(b"gone", 2, b"x", 0),
                        R(b"gone", 3, b"x", -1), R(b"live", 1, b"y", now + HOUR)])
    for _ in range(2):
        assert keys_of(engine.query_by_prefix(b"")) == [(b"live", 1)]
        assert engine.get(b"gone", 1) is None
        assert engine.get_sync(b"gone", 1) is None
        assert engine.get_latest(b"gone") is None
        assert list(engine.scan_prefix(b"gone")) == []
        assert engine.query_time_range(INT64_MIN, INT64_MAX) == engine.query_by_prefix(b"live")
        engine.flush()


def test_expiry_by_wall_clock_with_short_ttl(engine):
    ts = now_us()
    engine.write_batch_ttl([R(b"short", ts)], 1)
    assert engine.get(b"short", ts) is not None
    time.sleep(max(0.0, (ts + 1_000_000 - now_us()) / 1e6) + 0.05)
    assert engine.get(b"short", ts) is None
    assert engine.query_by_prefix(b"") == []
    assert engine.get_latest(b"short") is None


def test_expired_overwrite_hides_older_live_version(engine):
    engine.write_batch([R(b"k", 1, b"live")])
    engine.flush()
    engine.write_batch([R(b"k", 1, b"dead", now_us() - HOUR)])
    assert engine.get(b"k", 1) is None
    assert engine.query_by_prefix(b"") == []
    engine.flush()
    engine.trigger_compaction()
    engine.trigger_gc()
    assert engine.get(b"k", 1) is None


def test_get_latest_returns_greatest_live_ts(engine):
    now = now_us()
    engine.write_batch([R(b"k", 1, b"1"), R(b"k", 2, b"2"), R(b"k", 3, b"3", now - HOUR),
                        R(b"k\x00", 9, b"other")])
    assert engine.get_latest(b"k") == R(b"k", 2, b"2")
    engine.delete_batch([(b"k", 2)])
    assert engine.get_latest(b"k") == R(b"k", 1, b"1")
    engine.flush()
    assert engine.get_latest(b"k") == R(b"k", 1, b"1")
    engine.delete_range(b"k", b"k\x00")
    assert engine.get_latest(b"k") is None
    assert engine.get_latest(b"k\x00").value == b"other"
    assert engine.get_latest(b"absent") is None


# ------------------------------------------------------------ deletes

def test_get_honours_range_deletes(engine):
    engine.write_batch([R(b"b", 1), R(b"c", 1)])
    engine.flush()
    engine.delete_range(b"a", b"c")
    assert engine.get(b"b", 1) is None
    assert engine.get_sync(b"b", 1) is None
    assert engine.get_latest(b"b") is None
    assert engine.get(b"c", 1) is not None
    engine.flush()
    assert engine.get(b"b", 1) is None
    engine.trigger_compaction()
    assert engine.get(b"b", 1) is None


def test_range_delete_in_sstable_hides_memtable_older_data(engine):
    engine.write_batch([R(b"b", 1)])
    engine.delete_range(b"a", b"z")
    engine.flush()
    assert engine.get(b"b", 1) is None and engine.query_by_prefix(b"") == []


def test_put_after_delete_is_visible(engine):
    engine.write_batch([R(b"k", 1, b"old")])
    engine.delete_batch([(b"k", 1)])
    assert engine.get(b"k", 1) is None
    engine.write_batch([R(b"k", 1, b"new")])
    assert engine.get(b"k", 1).value == b"new"
    engine.delete_range(b"k", b"l")
    engine.flush()
    engine.write_batch([R(b"k", 1, b"newer"), R(b"k", 0, b"zero")])
    assert keys_of(engine.query_by_prefix(b"")) == [(b"k", 0), (b"k", 1)]
    assert engine.get(b"k", 1).value == b"newer"
    engine.flush()
    engine.trigger_compaction()
    engine.trigger_gc()
    assert recs(engine.query_by_prefix(b"")) == [(b"k", 0, b"zero", NEVER), (b"k", 1, b"newer", NEVER)]


def test_delete_hides_only_earlier_writes(engine):
    engine.write_batch([R(b"a", 1)])
    engine.delete_range(b"a", b"b")
    engine.write_batch([R(b"a", 2)])
    assert keys_of(engine.query_by_prefix(b"")) == [(b"a", 2)]


def test_deleted_records_never_come_back(engine):
    engine.write_batch([R(b"k", i, b"v%d" % i) for i in range(20)])
    engine.flush()
    engine.write_batch([R(b"k", i, b"w%d" % i) for i in range(10)])
    engine.flush()
    engine.delete_batch([(b"k", i) for i in range(0, 20, 2)])
    expected = [(b"k", i, (b"w%d" if i < 10 else b"v%d") % i, NEVER) for i in range(1, 20, 2)]
    assert recs(engine.query_by_prefix(b"")) == expected
    for step in (engine.flush, engine.trigger_compaction, engine.trigger_gc, engine.flush,
                 engine.trigger_compaction):
        step()
        assert recs(engine.query_by_prefix(b"")) == expected


def test_delete_of_absent_record_is_not_an_error(engine):
    engine.delete_batch([(b"nothing", 1), ("nope", -5)])
    engine.delete_batch([])
    engine.delete_range(b"x", b"y")
    assert engine.query_by_prefix(b"") == []


def test_delete_batch_mixed_key_types(engine):
    engine.write_batch([R(b"a", 1), R("b", 2), R(b"c", 3)])
    engine.delete_batch([("a", 1), (b"b", 2)])
    assert keys_of(engine.query_by_prefix(b"")) == [(b"c", 3)]


def test_delete_batch_accepts_iterable(engine):
    engine.write_batch([R(b"a", i) for i in range(4)])
    engine.delete_batch(((b"a", i) for i in range(2)))
    assert keys_of(engine.query_by_prefix(b"")) == [(b"a", 2), (b"a", 3)]


def test_inverted_delete_range_deletes_nothing(engine):
    engine.write_batch([R(b"a", 1), R(b"b", 1), R(b"c", 1)])
    before = dump(engine)
    try:
        engine.delete_range(b"c", b"a")
    except ValueError:
        pass
    assert dump(engine) == before


# ------------------------------------------------------------ patch_record

def test_patch_record_replaces_value(engine):
    engine.write_batch([R(b"k", 5, b"old", now_us() + HOUR)])
    exp = engine.get(b"k", 5).expire_at
    r = engine.patch_record(b"k", 5, b"new")
    assert r == Record(b"k", 5, b"new", exp)
    assert engine.get(b"k", 5) == r


def test_patch_record_ttl_resets_from_ts(engine):
    ts = now_us()
    engine.write_batch([R(b"k", ts, b"v")])
    r = engine.patch_record(b"k", ts, new_ttl_secs=60)
    assert r == Record(b"k", ts, b"v", ts + 60_000_000)
    assert engine.get(b"k", ts) == r
    r = engine.patch_record(b"k", ts, b"w", 120)
    assert r == Record(b"k", ts, b"w", ts + 120_000_000)


def test_patch_record_ttl_in_the_past_makes_record_invisible(engine):
    ts = now_us() - 2 * HOUR
    engine.write_batch([R(b"k", ts, b"v")])
    engine.patch_record(b"k", ts, new_ttl_secs=3600)
    assert engine.get(b"k", ts) is None


def test_patch_record_none_keeps_value_and_expiry(engine):
    exp = now_us() + HOUR
    engine.write_batch([R(b"k", 1, b"v", exp)])
    r = engine.patch_record(b"k", 1, None, None)
    assert r == Record(b"k", 1, b"v", exp)
    assert engine.get(b"k", 1) == r
    r = engine.patch_record(b"k", 1, new_value=b"w")
    assert r.expire_at == exp
    r = engine.patch_record(b"k", 1, new_ttl_secs=10)
    assert r.value == b"w"


def test_patch_record_str_key(engine):
    engine.write_batch([R("é", 1, b"v")])
    assert engine.patch_record("é", 1, b"w").key == "é".encode()


def test_patch_record_on_flushed_record_persists(engine_factory):
    e = engine_factory()
    e.write_batch([R(b"k", 1, b"v")])
    e.flush()
    e.patch_record(b"k", 1, b"patched")
    e.shutdown()
    e = engine_factory()
    assert e.get(b"k", 1).value == b"patched"


def test_patch_record_missing_raises_not_found(engine):
    with pytest.raises(NotFoundError):
        engine.patch_record(b"absent", 1, b"x")
    assert engine.query_by_prefix(b"") == []


def test_patch_record_deleted_raises_not_found(engine):
    engine.write_batch([R(b"a", 1), R(b"b", 1)])
    engine.delete_batch([(b"a", 1)])
    engine.delete_range(b"b", b"c")
    for key in (b"a", b"b"):
        with pytest.raises(NotFoundError):
            engine.patch_record(key, 1, b"x")
    assert engine.query_by_prefix(b"") == []


def test_patch_record_expired_raises_not_found(engine):
    engine.write_batch([R(b"a", 1, b"v", now_us() - 1)])
    with pytest.raises(NotFoundError):
        engine.patch_record(b"a", 1, b"x")
    with pytest.raises(NotFoundError):
        engine.patch_record(b"a", 1, new_ttl_secs=10**9)
    assert engine.query_by_prefix(b"") == []


def test_patch_record_other_ts_raises_not_found(engine):
    engine.write_batch([R(b"a", 1)])
    with pytest.raises(NotFoundError):
        engine.patch_record(b"a", 2, b"x")


def test_not_found_error_is_lookup_error():
    assert issubclass(NotFoundError, LookupError) and issubclass(NotFoundError, FlowError)


def test_concurrent_patches_never_lose_an_update(engine):
    """Four threads patch only the value, four only the TTL, of one record.

    patch_record reads the record and writes it back with one field
    replaced; unless read+write are serialised, a TTL patch can write back a
    stale value (or a value patch a stale expiry), losing an update.  In a
    serial history nothing ever goes back: every thread's later reads never
    show an older version of another thread's field, and the final record
    holds some value-thread's last value and some TTL-thread's last expiry.
    """
    ts = now_us()
    engine.write_batch([R(b"ctr", ts, b"init")])
    n_each, per_thread = 4, 60
    ttl_base = 10_000
    results = {}
    errors = []
    barrier = threading.Barrier(2 * n_each)

    def value_worker(i):
        out = []
        try:
            barrier.wait()
            for j in range(per_thread):
                out.append(engine.patch_record(b"ctr", ts, new_value=b"%d:%d" % (i, j)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        results[("v", i)] = out

    def ttl_worker(i):
        out = []
        try:
            barrier.wait()
            for j in range(per_thread):
                out.append(engine.patch_record(b"ctr", ts, new_ttl_secs=ttl_base + i * 1000 + j))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        results[("t", i)] = out

    threads = [threading.Thread(target=value_worker, args=(i,)) for i in range(n_each)]
    threads += [threading.Thread(target=ttl_worker, args=(i,)) for i in range(n_each)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    def value_version(v):  # (thread, j) of a value, None for the initial one
        if v == b"init":
            return None
        i, j = v.split(b":")
        return int(i), int(j)

    def ttl_version(exp):
        if exp == NEVER:
            return None
        secs = (exp - ts) // 1_000_000 - ttl_base
        return secs // 1000, secs % 1000

    for (kind, i), out in results.items():
        assert len(out) == per_thread
        for j, r in enumerate(out):
            assert r.key == b"ctr" and r.ts == ts
            if kind == "v":
                assert r.value == b"%d:%d" % (i, j)
            else:
                assert r.expire_at == ts + (ttl_base + i * 1000 + j) * 1_000_000
        # Monotonic: once a version j of thread k's field was seen, never an older one.
        seen = {}
        for r in out:
            other = ttl_version(r.expire_at) if kind == "v" else value_version(r.value)
            if other is None:
                assert not seen, f"{kind}{i} saw the initial field after {seen}: lost update"
                continue
            k, j = other
            assert j >= seen.get(k, -1), f"{kind}{i} saw {k}:{j} after {k}:{seen[k]}: lost update"
            seen[k] = j
    final = engine.get(b"ctr", ts)
    assert value_version(final.value) in {(i, per_thread - 1) for i in range(n_each)}, final
    assert ttl_version(final.expire_at) in {(i, per_thread - 1) for i in range(n_each)}, final


def test_concurrent_patches_are_serialised(engine):
    """Eight threads each patch the same record 50 times; every patch returns
    the record as written, and the patches form one serial history: the set
    of values returned equals the set of values ever stored, with no two
    patches returning the same resulting value (a lost update would)."""
    engine.write_batch([R(b"ctr", 1, b"0")])
    n_threads, per_thread = 8, 50
    results = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)

    def worker(i):
        barrier.wait()
        for j in range(per_thread):
            val = b"%d:%d" % (i, j)
            results[i].append(engine.patch_record(b"ctr", 1, val).value)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(n_threads):
        assert results[i] == [b"%d:%d" % (i, j) for j in range(per_thread)]
    final = engine.get(b"ctr", 1).value
    assert final in {b"%d:%d" % (i, per_thread - 1) for i in range(n_threads)}


# ------------------------------------------------------------ snapshots and scans

def _snapshot_setup(engine):
    engine.write_batch([R(b"k%02d" % i, ts, b"%d.%d" % (i, ts)) for i in range(30) for ts in (1, 2)])
    engine.flush()
    engine.write_batch([R(b"m%02d" % i, 1) for i in range(10)])
    return recs(engine.query_by_prefix(b""))


@pytest.mark.parametrize("mutation", ["write", "overwrite", "delete", "delete_range", "flush",
                                      "compaction", "gc", "close", "all"])
def test_scan_iterator_is_a_snapshot(engine, mutation):
    expected = _snapshot_setup(engine)
    it = engine.scan(ScanRange.all())
    first = [rec(next(it)) for _ in range(5)]

    def mutate(kind):
        if kind == "write":
            engine.write_batch([R(b"k00\x00", 5), R(b"zzz", 1), R(b"a", 1)])
        elif kind == "overwrite":
            engine.write_batch([R(b"k%02d" % i, 1, b"changed") for i in range(30)])
        elif kind == "delete":
            engine.delete_batch([(b"k%02d" % i, 2) for i in range(30)])
        elif kind == "delete_range":
            engine.delete_range(b"k", b"z")
        elif kind == "flush":
            engine.write_batch([R(b"k10", 3)])
            engine.flush()
        elif kind == "compaction":
            for i in range(3):
                engine.write_batch([R(b"k%02d" % j, 1, b"c%d" % i) for j in range(30)])
                engine.flush()
            engine.trigger_compaction()
        elif kind == "gc":
            engine.delete_range(b"k", b"l")
            engine.flush()
            engine.trigger_gc()
        elif kind == "close":
            engine.write_batch([R(b"k10", 4)])
            engine.close()

    for kind in (["write", "overwrite", "delete", "flush", "compaction", "delete_range", "gc"]
                 if mutation == "all" else [mutation]):
        mutate(kind)
    rest = recs(it)
    assert first + rest == expected
    assert list(it) == []  # exhausted stays exhausted


def test_scan_created_before_write_does_not_see_it(engine):
    engine.write_batch([R(b"a", 1)])
    it = engine.scan_prefix(b"")
    engine.write_batch([R(b"b", 1)])
    assert keys_of(it) == [(b"a", 1)]
    assert keys_of(engine.scan_prefix(b"")) == [(b"a", 1), (b"b", 1)]


def test_scan_on_empty_store(engine):
    assert list(engine.scan(ScanRange.all())) == []
    it = engine.scan(ScanRange.all())
    engine.write_batch([R(b"a", 1)])
    assert list(it) == []


def test_many_concurrent_scans(engine):
    expected = _snapshot_setup(engine)
    its = [engine.scan(ScanRange.all()) for _ in range(10)]
    engine.delete_range(b"a", b"z")
    engine.flush()
    for it in its:
        assert recs(it) == expected


def test_scan_forms_match_queries(grid):
    assert list(grid.scan(ScanRange.prefix(b"a"))) == grid.query_by_prefix(b"a")
    assert list(grid.scan(ScanRange.key_range(b"b", b"c"))) == grid.query_by_key_range(b"b", b"c")
    assert list(grid.scan(ScanRange.time_range(2, 3))) == grid.query_time_range(2, 3)
    assert list(grid.scan(ScanRange.prefix_time_range(b"d", 2, 3))) == grid.query_prefix_time_range(b"d", 2, 3)
    assert list(grid.scan(ScanRange.key_time_range(b"a", b"b", 4, 9))) == grid.query_key_time_range(b"a", b"b", 4, 9)
    assert list(grid.scan_prefix(b"e")) == grid.query_by_prefix(b"e")
    assert list(grid.scan_prefix_time_range(b"e", 1, 1)) == grid.query_prefix_time_range(b"e", 1, 1)
    for opts in (ReadOptions(), ReadOptions(fill_cache=False, verify_checksums=False)):
        assert list(grid.scan_opt(ScanRange.all(), opts)) == grid.query_by_prefix(b"")


def test_scan_iterator_is_an_iterator(grid):
    it = grid.scan(ScanRange.all())
    assert iter(it) is it
    r = next(it)
    assert isinstance(r, Record)
    rest = list(it)
    assert len(rest) == 24
    with pytest.raises(StopIteration):
        next(it)


def test_scan_memory_stays_bounded(engine_factory):
    e = engine_factory(memtable_size_mb=2, block_cache_capacity_mb=1)
    value = bytes(range(256)) * 8  # 2 KiB
    n = 8000  # ~16 MiB of values
    for start in range(0, n, 1000):
        e.write_batch([R(b"big%06d" % i, i, value) for i in range(start, start + 1000)])
    e.flush()
    tracemalloc.start()
    try:
        count = 0
        for r in e.scan_opt(ScanRange.all(), ReadOptions(fill_cache=False)):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 6 * 1024 * 1024, f"scan of {n} records peaked at {peak} traced bytes"


# ------------------------------------------------------------ maintenance and stats

STATS_FIELDS = [
    "total_records_written", "total_bytes_written", "total_records_read", "total_records_expired",
    "total_flushes", "total_gc_runs", "total_compaction_runs", "records_purged_by_gc",
    "memtable_records", "memtable_bytes", "frozen_memtable_count", "sstable_count",
    "sstable_bytes", "wal_bytes", "block_meta_index_entries", "time_index_buckets",
    "block_cache_hit_rate", "compression_ratio",
    "write_latency_p50_us", "write_latency_p90_us", "write_latency_p99_us",
    "query_latency_p50_us", "query_latency_p90_us", "query_latency_p99_us",
    "flush_latency_p50_us", "flush_latency_p90_us", "flush_latency_p99_us",
    "uptime_secs", "http_requests", "http_errors", "udp_packets", "udp_records", "udp_errors",
]


def test_stats_has_every_field(engine):
    st = engine.stats()
    assert dataclasses.is_dataclass(st)
    names = {f.name for f in dataclasses.fields(st)}
    missing = [f for f in STATS_FIELDS if f not in names]
    assert not missing, f"EngineStats lacks {missing}"
    for f in STATS_FIELDS:
        v = getattr(st, f)
        assert isinstance(v, (int, float)) and not isinstance(v, bool), (f, v)
        assert v >= 0, (f, v)
    assert isinstance(st.block_cache_hit_rate, float) and 0.0 <= st.block_cache_hit_rate <= 1.0
    assert isinstance(st.compression_ratio, float)


def test_stats_counters_move(engine):
    s0 = engine.stats()
    engine.write_batch([R(b"k%03d" % i, i, b"x" * 100) for i in range(50)])
    s1 = engine.stats()
    assert s1.total_records_written - s0.total_records_written == 50
    assert s1.total_bytes_written > s0.total_bytes_written
    assert s1.memtable_records == 50
    assert s1.memtable_bytes > 0
    assert s1.wal_bytes > 0
    assert s1.write_latency_p99_us >= s1.write_latency_p50_us
    engine.flush()
    s2 = engine.stats()
    assert s2.total_flushes == s1.total_flushes + 1
    assert s2.sstable_count >= 1
    assert s2.sstable_bytes > 0
    assert s2.memtable_records == 0
    assert s2.flush_latency_p99_us >= s2.flush_latency_p50_us
    got = engine.query_by_prefix(b"")
    assert len(got) == 50
    s3 = engine.stats()
    assert s3.total_records_read >= s2.total_records_read + 50
    assert s3.query_latency_p99_us >= s3.query_latency_p50_us
    engine.trigger_gc()
    assert engine.stats().total_gc_runs == s3.total_gc_runs + 1


def test_stats_compaction_counter_moves(engine):
    for i in range(4):
        engine.write_batch([R(b"k%03d" % j, i) for j in range(20)])
        engine.flush()
    before = engine.stats()
    assert before.sstable_count >= 4
    ran = engine.trigger_compaction()
    after = engine.stats()
    assert ran is True
    assert after.total_compaction_runs > before.total_compaction_runs
    assert after.sstable_count < before.sstable_count
    assert len(engine.query_by_prefix(b"")) == 80


def test_stats_uptime(engine):
    assert engine.stats().uptime_secs >= 0


def test_trigger_compaction_returns_bool(engine):
    assert isinstance(engine.trigger_compaction(), bool)
    engine.write_batch([R(b"a", 1)])
    engine.flush()
    assert isinstance(engine.trigger_compaction(), bool)


def test_trigger_gc_returns_int_and_keeps_live_data(engine):
    now = now_us()
    engine.write_batch([R(b"e%d" % i, i, b"x", now - HOUR) for i in range(10)])
    engine.write_batch([R(b"l%d" % i, i, b"y") for i in range(10)])
    engine.flush()
    engine.write_batch([R(b"d", 1)])
    engine.flush()
    engine.delete_batch([(b"d", 1)])
    engine.flush()
    before = dump(engine)
    n = engine.trigger_gc()
    assert isinstance(n, int) and not isinstance(n, bool) and n >= 0
    assert dump(engine) == before
    assert len(before) == 10


def test_spawn_background_maintenance(engine):
    h = engine.spawn_background_maintenance()
    assert h is not None
    try:
        assert engine.spawn_background_maintenance() is None
        engine.write_batch([R(b"a", 1)])
        assert engine.get(b"a", 1) is not None
    finally:
        h.stop()


def test_metrics_text_is_prometheus_with_flowdb_prefix(engine):
    engine.write_batch([R(b"a", 1)])
    text = engine.metrics_text()
    assert isinstance(text, str) and text.strip()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                assert parts[2].startswith("flowdb_"), line
            continue
        assert line.startswith("flowdb_"), line
        float(line.rsplit(None, 1)[-1])  # the sample value parses


# ------------------------------------------------------------ persistence and sizes

def test_flush_then_reopen_preserves_everything(engine_factory):
    e = engine_factory()
    now = now_us()
    written = [R(b"k%d" % i, i - 50, b"v%d" % i, now + HOUR if i % 3 else NEVER) for i in range(100)]
    e.write_batch(written[:60])
    e.flush()
    e.write_batch(written[60:])
    e.delete_batch([(b"k5", -45)])
    e.delete_range(b"k7", b"k8")
    expected = dump(e)
    e.flush()
    assert dump(e) == expected
    e.shutdown()
    e = engine_factory()
    assert dump(e) == expected
    e.write_batch([R(b"after", 1)])
    e.shutdown()
    e = engine_factory()
    assert dump(e) == sorted(expected + [(b"after", 1, b"v", NEVER)])


def test_reopen_without_explicit_flush(engine_factory):
    e = engine_factory()
    e.write_batch([R(b"a", 1)])
    e.delete_range(b"b", b"c")
    e.write_batch([R(b"b", 1)])
    e.shutdown()
    e = engine_factory()
    assert keys_of(e.query_by_prefix(b"")) == [(b"a", 1), (b"b", 1)]


def test_large_value_round_trip(engine_factory):
    e = engine_factory()
    big = bytes(range(256)) * 4096  # 1 MiB
    e.write_batch([R(b"big", 1, big), R(b"small", 1, b"s")])
    assert e.get(b"big", 1).value == big
    e.flush()
    assert e.get(b"big", 1).value == big
    e.shutdown()
    e = engine_factory()
    assert e.get(b"big", 1).value == big
    assert [r.value for r in e.query_by_prefix(b"")] == [big, b"s"]


def test_max_size_key_round_trip(engine_factory):
    e = engine_factory()
    key = bytes((i * 7) % 256 for i in range(65535))
    e.write_batch([R(key, 1, b"v"), R(key[:-1], 1, b"w")])
    assert e.get(key, 1).value == b"v"
    e.flush()
    assert e.get(key, 1).value == b"v"
    e.shutdown()
    e = engine_factory()
    assert e.get(key, 1).value == b"v"
    assert e.get_latest(key).value == b"v"
    assert [r.key for r in e.query_by_prefix(key[:10])] == sorted([key, key[:-1]])


def test_ten_thousand_records_across_flushes_and_reopen(engine_factory):
    e = engine_factory(memtable_size_mb=0.1)
    n = 10_000
    for start in range(0, n, 500):
        e.write_batch([R(b"r%05d" % i, i % 97, b"val%d-" % i + b"x" * 40) for i in range(start, start + 500)])
    assert e.stats().total_flushes >= 3
    expected = sorted((b"r%05d" % i, i % 97, b"val%d-" % i + b"x" * 40, NEVER) for i in range(n))
    assert dump(e) == expected
    e.shutdown()
    e = engine_factory(memtable_size_mb=0.1)
    assert dump(e) == expected
    assert e.get(b"r01234", 1234 % 97).value == b"val1234-" + b"x" * 40
    assert len(e.query_time_range(0, 0)) == len([i for i in range(n) if i % 97 == 0])


def test_get_sync_returns_none_for_missing_or_expired(engine):
    engine.write_batch([R(b"a", 1, b"x"), R(b"b", 1, b"y", now_us() - 1)])
    assert engine.get_sync(b"a", 1) == R(b"a", 1, b"x")
    assert engine.get_sync(b"a", 2) is None
    assert engine.get_sync(b"b", 1) is None
    assert engine.get_sync(b"zzz", 1) is None


def test_get_exact_key_and_ts(engine):
    engine.write_batch([R(b"a", 1, b"x"), R(b"a\x00", 1, b"y"), R(b"a", 2, b"z")])
    assert engine.get(b"a", 1) == R(b"a", 1, b"x")
    assert engine.get(b"a", 3) is None
    assert engine.get(b"a", 0) is None
    assert engine.get(b"b", 1) is None


def test_interval_sync_mode_works(engine_factory):
    e = engine_factory(wal_sync_mode=SyncMode.interval_ms(5))
    e.write_batch([R(b"a", 1)])
    time.sleep(0.02)
    assert e.get(b"a", 1) is not None
    e.shutdown()
    e = engine_factory(wal_sync_mode=SyncMode.interval_ms(5))
    assert e.get(b"a", 1) is not None


def test_auto_background_engine_flushes_and_stays_consistent(engine_factory):
    e = engine_factory(auto_background=True, memtable_size_mb=0.05, flush_interval_ms=10,
                       compaction_interval_ms=20)
    for b in range(20):
        e.write_batch([R(b"bg%03d" % i, b, b"x" * 200) for i in range(50)])
    time.sleep(0.2)
    assert len(e.query_by_prefix(b"bg")) == 1000
    e.shutdown()
    e = engine_factory()
    assert len(e.query_by_prefix(b"bg")) == 1000


def test_write_mixed_is_one_atomic_batch_of_puts_deletes_and_range_deletes(engine):
    engine.write_batch([R(b"a", 1, b"x"), R(b"b", 1, b"y"), R(b"c1", 1, b"z"), R(b"c2", 1, b"w")])
    engine._write_mixed([R(b"d", 1, b"new")], [(b"a", 1)], [(b"c", b"d")])
    after = [(b"b", 1, b"y", NEVER), (b"d", 1, b"new", NEVER)]
    assert dump(engine) == after
    # A bad record anywhere refuses the whole batch and changes nothing.
    with pytest.raises(TypeError):
        engine._write_mixed([R(b"e", 1, b"v"), "not a record"], [(b"b", 1)])
    assert dump(engine) == after


def test_snapshot_reads_do_not_see_later_writes(engine):
    engine.write_batch([R(b"a", 1, b"old")])
    with engine.snapshot() as snap:
        engine.write_batch([R(b"a", 1, b"new"), R(b"b", 1, b"x")])
        engine.delete_batch([(b"a", 1)])
        engine.flush()
        engine.trigger_compaction()
        assert snap.get(b"a", 1) == R(b"a", 1, b"old")
        assert snap.get_latest(b"b") is None
        assert list(snap.scan(ScanRange.all())) == [R(b"a", 1, b"old")]
    with pytest.raises(flowdb.InvalidStateError):
        snap.get(b"a", 1)


def test_write_mixed_range_delete_comes_first_so_a_batch_can_clear_and_refill(engine):
    engine.write_batch([R(b"s:1", 1, b"old"), R(b"s:2", 1, b"old")])
    engine._write_mixed([R(b"s:2", 1, b"new")], (), [(b"s:", b"s;")])
    assert dump(engine) == [(b"s:2", 1, b"new", NEVER)]
    engine.flush()
    engine.trigger_compaction()
    assert dump(engine) == [(b"s:2", 1, b"new", NEVER)]
