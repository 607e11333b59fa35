"""API.md section 3 (errors) and argument validation of the Engine.

Every refused call leaves the store exactly as it was, also after reopen.
"""
from __future__ import annotations

import os
import time

import pytest

import flowdb
from flowdb import NEVER, Config, Engine, FlowError, Query, Record, ScanRange, SyncMode
from helpers.common import INT64_MAX, INT64_MIN, MAX_TTL_SECS, dump, now_us

ERROR_NAMES = ["FlowError", "NotFoundError", "ConstraintError", "DataError", "ReadOnlyError",
               "TransactionInactiveError", "InvalidStateError", "CorruptionError", "LockError"]


def _err(name):
    return getattr(flowdb, name, None) or getattr(flowdb._errors, name)


NotFoundError = _err("NotFoundError")
LockError = _err("LockError")
DataError = _err("DataError")
InvalidStateError = _err("InvalidStateError")

R = Record


# ------------------------------------------------------------ the error classes

def test_errors_are_exported_from_flowdb():
    missing = [n for n in ERROR_NAMES if not hasattr(flowdb, n)]
    assert not missing, f"flowdb does not export {missing}"


@pytest.mark.parametrize("name", ERROR_NAMES[1:])
def test_every_error_derives_from_flow_error(name):
    assert issubclass(_err(name), FlowError)


def test_error_table_also_a():
    assert issubclass(NotFoundError, LookupError)
    assert issubclass(DataError, ValueError)
    assert issubclass(FlowError, Exception)


# ------------------------------------------------------------ a store to protect

@pytest.fixture
def store(engine_factory):
    """An engine holding data in SSTables and the memtable; .check() asserts
    the store is unchanged (live and after reopen)."""
    e = engine_factory()
    e.write_batch([R(b"k%02d" % i, i, b"v%d" % i) for i in range(20)])
    e.flush()
    e.write_batch([R(b"m%02d" % i, -i, b"w%d" % i, now_us() + 3600 * 10**6) for i in range(10)])
    e.write_batch([R(b"late", INT64_MAX - 10, b"x")])
    before = dump(e)

    class Store:
        engine = e

        @staticmethod
        def check():
            assert dump(Store.engine) == before

        @staticmethod
        def check_after_reopen():
            Store.check()
            Store.engine.shutdown()
            Store.engine = engine_factory()
            Store.check()
            # and it is still writable
            Store.engine.write_batch([R(b"zz", 1, b"z")])
            assert Store.engine.get(b"zz", 1) is not None

    return Store


# ------------------------------------------------------------ TypeError

BAD_TYPE_CALLS = {
    "record_key_int": lambda e: e.write_batch([R(1, 1, b"v")]),
    "record_key_none": lambda e: e.write_batch([R(None, 1, b"v")]),
    "record_value_str": lambda e: e.write_batch([R(b"k", 1, "v")]),
    "record_value_none": lambda e: e.write_batch([R(b"k", 1, None)]),
    "record_ts_float": lambda e: e.write_batch([R(b"k", 1.0, b"v")]),
    "record_ts_bool": lambda e: e.write_batch([R(b"k", True, b"v")]),
    "record_ts_str": lambda e: e.write_batch([R(b"k", "1", b"v")]),
    "record_expire_float": lambda e: e.write_batch([R(b"k", 1, b"v", 1.5)]),
    "batch_of_tuples": lambda e: e.write_batch([(b"k", 1, b"v")]),
    "batch_of_dicts": lambda e: e.write_batch([{"key": b"k", "ts": 1, "value": b"v"}]),
    "batch_with_none": lambda e: e.write_batch([R(b"k", 1, b"v"), None]),
    "batch_not_iterable": lambda e: e.write_batch(5),
    "batch_none": lambda e: e.write_batch(None),
    "batch_owned_of_tuples": lambda e: e.write_batch_owned([(b"k", 1, b"v")]),
    "batch_sync_of_tuples": lambda e: e.write_batch_sync([(b"k", 1, b"v")]),
    "batch_ttl_of_tuples": lambda e: e.write_batch_ttl([(b"k", 1, b"v")], 10),
    "ttl_float": lambda e: e.write_batch_ttl([R(b"k", 1, b"v")], 1.5),
    "ttl_str": lambda e: e.write_batch_ttl([R(b"k", 1, b"v")], "10"),
    "get_key_int": lambda e: e.get(5, 1),
    "get_ts_float": lambda e: e.get(b"k00", 0.0),
    "get_ts_bool": lambda e: e.get(b"k01", True),
    "get_sync_key_int": lambda e: e.get_sync(5, 1),
    "get_latest_key_int": lambda e: e.get_latest(5),
    "get_latest_key_none": lambda e: e.get_latest(None),
    "query_not_a_query": lambda e: e.query("k"),
    "query_by_prefix_int": lambda e: e.query_by_prefix(5),
    "query_by_key_range_int": lambda e: e.query_by_key_range(1, 2),
    "query_time_range_float": lambda e: e.query_time_range(0.0, 10),
    "query_time_range_str": lambda e: e.query_time_range(0, "10"),
    "query_prefix_time_range_float": lambda e: e.query_prefix_time_range(b"k", 0, 1.5),
    "query_prefix_time_range_bool": lambda e: e.query_prefix_time_range(b"k", False, 10),
    "query_prefix_time_range_prefix_int": lambda e: e.query_prefix_time_range(5, 0, 10),
    "query_prefix_time_range_prefix_none": lambda e: e.query_prefix_time_range(None, 0, 10),
    "query_key_time_range_int_keys": lambda e: e.query_key_time_range(1, 2, 0, 10),
    "scan_not_a_range": lambda e: e.scan("k"),
    "scan_prefix_int": lambda e: e.scan_prefix(5),
    "scan_prefix_time_range_float": lambda e: e.scan_prefix_time_range(b"k", 0.5, 10),
    "delete_batch_key_int": lambda e: e.delete_batch([(1, 1)]),
    "delete_batch_ts_float": lambda e: e.delete_batch([(b"k00", 0.0)]),
    "delete_batch_ts_bool": lambda e: e.delete_batch([(b"k01", True)]),
    "delete_batch_not_iterable": lambda e: e.delete_batch(5),
    "delete_range_int": lambda e: e.delete_range(1, b"z"),
    "delete_range_none": lambda e: e.delete_range(b"a", None),
    "patch_value_str": lambda e: e.patch_record(b"k00", 0, "new"),
    "patch_ttl_float": lambda e: e.patch_record(b"k00", 0, None, 1.5),
    "patch_key_int": lambda e: e.patch_record(0, 0, b"x"),
    "patch_ts_float": lambda e: e.patch_record(b"k00", 0.0, b"x"),
}


@pytest.mark.parametrize("call", sorted(BAD_TYPE_CALLS))
def test_wrong_type_raises_type_error_and_changes_nothing(store, call):
    with pytest.raises(TypeError):
        BAD_TYPE_CALLS[call](store.engine)
    store.check()


def test_wrong_types_leave_store_unchanged_after_reopen(store):
    for call in BAD_TYPE_CALLS.values():
        with pytest.raises(TypeError):
            call(store.engine)
    store.check_after_reopen()


def test_open_with_wrong_config_type(tmp_path):
    with pytest.raises(TypeError):
        Engine.open(12345)
    with pytest.raises(TypeError):
        Engine.open(str(tmp_path / "db"), no_such_field=1)
    with pytest.raises(TypeError):
        Engine.open(str(tmp_path / "db"), wal_sync_mode="always")
    with pytest.raises(TypeError):
        Engine.open(str(tmp_path / "db"), memtable_size_mb="64")


# ------------------------------------------------------------ ValueError

BIG = 2**63
BAD_VALUE_CALLS = {
    "empty_key_bytes": lambda e: e.write_batch([R(b"", 1, b"v")]),
    "empty_key_str": lambda e: e.write_batch([R("", 1, b"v")]),
    "oversized_key": lambda e: e.write_batch([R(b"x" * 65536, 1, b"v")]),
    "oversized_key_str": lambda e: e.write_batch([R("é" * 32768, 1, b"v")]),
    "ts_above_int64": lambda e: e.write_batch([R(b"k", BIG, b"v")]),
    "ts_below_int64": lambda e: e.write_batch([R(b"k", -BIG - 1, b"v")]),
    "expire_at_above_int64": lambda e: e.write_batch([R(b"k", 1, b"v", BIG)]),
    "ttl_overflow": lambda e: e.write_batch_ttl([R(b"k", INT64_MAX - 10, b"v")], 1),
    "ttl_overflow_large_ttl": lambda e: e.write_batch_ttl([R(b"k", now_us(), b"v")], MAX_TTL_SECS),
    "ttl_above_max": lambda e: e.write_batch_ttl([R(b"k", 0, b"v")], MAX_TTL_SECS + 1),
    "ttl_negative": lambda e: e.write_batch_ttl([R(b"k", 0, b"v")], -1),
    "get_empty_key": lambda e: e.get(b"", 1),
    "get_oversized_key": lambda e: e.get(b"x" * 65536, 1),
    "get_ts_above_int64": lambda e: e.get(b"k00", BIG),
    "get_latest_empty_key": lambda e: e.get_latest(b""),
    "query_time_range_overflow": lambda e: e.query_time_range(0, BIG),
    "query_prefix_time_range_overflow": lambda e: e.query_prefix_time_range(b"k", 0, BIG),
    "query_prefix_time_range_oversized": lambda e: e.query_prefix_time_range(b"x" * 65536, 0, 1),
    "query_key_time_range_underflow": lambda e: e.query_key_time_range(b"a", b"z", -BIG - 1, 0),
    "delete_batch_empty_key": lambda e: e.delete_batch([(b"", 1)]),
    "delete_batch_oversized_key": lambda e: e.delete_batch([(b"x" * 65536, 1)]),
    "delete_batch_ts_overflow": lambda e: e.delete_batch([(b"k00", BIG)]),
    "delete_range_oversized": lambda e: e.delete_range(b"a", b"z" * 65536),
    "patch_empty_key": lambda e: e.patch_record(b"", 0, b"x"),
    "patch_ttl_overflow": lambda e: e.patch_record(b"late", INT64_MAX - 10, None, 1),
    "patch_ttl_above_max": lambda e: e.patch_record(b"k00", 0, None, MAX_TTL_SECS + 1),
    "patch_ttl_negative": lambda e: e.patch_record(b"k00", 0, None, -5),
    "patch_ts_overflow": lambda e: e.patch_record(b"k00", BIG, b"x"),
}


@pytest.mark.parametrize("call", sorted(BAD_VALUE_CALLS))
def test_out_of_range_raises_value_error_and_changes_nothing(store, call):
    with pytest.raises(ValueError):
        BAD_VALUE_CALLS[call](store.engine)
    store.check()


def test_out_of_range_leaves_store_unchanged_after_reopen(store):
    for call in BAD_VALUE_CALLS.values():
        with pytest.raises(ValueError):
            call(store.engine)
    store.check_after_reopen()


def test_oversized_value_raises_value_error(store):
    big = b"\0" * (64 * 1024 * 1024 + 1)
    with pytest.raises(ValueError):
        store.engine.write_batch([R(b"big", 1, big)])
    with pytest.raises(ValueError):
        store.engine.patch_record(b"k00", 0, big)
    del big
    store.check()


def test_value_of_exactly_64_mib_is_accepted(engine_factory):
    e = engine_factory(memtable_size_mb=1)
    big = bytes(64 * 1024 * 1024)
    e.write_batch([R(b"max", 1, big)])
    assert len(e.get(b"max", 1).value) == len(big)


def test_key_of_65535_bytes_is_accepted(engine):
    engine.write_batch([R(b"k" * 65535, 1, b"v")])
    assert engine.get(b"k" * 65535, 1).value == b"v"


def test_default_ttl_overflow_is_value_error(engine_factory):
    e = engine_factory(default_ttl_secs=10**9)
    with pytest.raises(ValueError):
        e.write_batch([R(b"ok", now_us(), b"v"), R(b"k", INT64_MAX - 5, b"v")])
    with pytest.raises(ValueError):
        e.write_batch_ttl([R(b"k", INT64_MAX - 5, b"v")])
    assert dump(e) == []
    # a record with its own expire_at is not given the default: no overflow
    e.write_batch([R(b"own", INT64_MAX - 5, b"v", now_us() + 10**9)])
    assert len(dump(e)) == 1


def test_value_error_for_query_objects():
    with pytest.raises(ValueError):
        Query.time_range(0, BIG)
    with pytest.raises(ValueError):
        ScanRange.key_time_range(b"a", b"b", -BIG - 1, 0)
    with pytest.raises(TypeError):
        Query.prefix(5)


# ------------------------------------------------------------ failed batches write nothing

BAD_500TH = {
    "key_int": (lambda: R(12, 1, b"v"), TypeError),
    "empty_key": (lambda: R(b"", 1, b"v"), ValueError),
    "value_str": (lambda: R(b"bad", 1, "v"), TypeError),
    "not_a_record": (lambda: (b"bad", 1, b"v"), TypeError),
    "none": (lambda: None, TypeError),
    "oversized_key": (lambda: R(b"x" * 65536, 1, b"v"), ValueError),
}


@pytest.mark.parametrize("bad", sorted(BAD_500TH))
@pytest.mark.parametrize("method", ["write_batch", "write_batch_owned", "write_batch_sync"])
def test_failed_batch_writes_nothing(engine_factory, bad, method):
    e = engine_factory()
    e.write_batch([R(b"pre", 1, b"x")])
    before = dump(e)
    make, exc = BAD_500TH[bad]

    def batch():
        for i in range(1000):
            if i == 499:
                yield make()
            else:
                yield R(b"b%04d" % i, i, b"y")

    with pytest.raises(exc):
        getattr(e, method)(list(batch()) if bad != "none" else batch())
    assert dump(e) == before
    assert e.get(b"b0000", 0) is None
    e.shutdown()
    e = engine_factory()
    assert dump(e) == before


def test_failed_ttl_batch_writes_nothing(engine_factory):
    e = engine_factory()
    batch = [R(b"b%04d" % i, i, b"y") for i in range(1000)]
    batch[499] = R(b"late", INT64_MAX - 1, b"y")
    with pytest.raises(ValueError):
        e.write_batch_ttl(batch, 3600)
    assert dump(e) == []
    e.shutdown()
    e = engine_factory()
    assert dump(e) == []


def test_generator_raising_midway_writes_nothing(engine_factory):
    e = engine_factory()

    def batch():
        for i in range(600):
            if i == 499:
                raise RuntimeError("producer failed")
            yield R(b"g%04d" % i, i, b"y")

    with pytest.raises(RuntimeError):
        e.write_batch(batch())
    assert dump(e) == []
    e.shutdown()
    e = engine_factory()
    assert dump(e) == []


def test_failed_delete_batch_deletes_nothing(store):
    with pytest.raises((TypeError, ValueError)):
        store.engine.delete_batch([(b"k00", 0), (b"k01", 1), (b"", 2), (b"k03", 3)])
    with pytest.raises(TypeError):
        store.engine.delete_batch([(b"k00", 0), (b"k01", 1.5)])
    store.check_after_reopen()


def test_engine_usable_after_refused_calls(store):
    e = store.engine
    with pytest.raises(TypeError):
        e.write_batch([R(b"k", 1, "x")])
    with pytest.raises(ValueError):
        e.write_batch([R(b"", 1, b"x")])
    e.write_batch([R(b"new", 1, b"ok")])
    assert e.get(b"new", 1).value == b"ok"


def test_patch_not_found_changes_nothing(store):
    with pytest.raises(NotFoundError):
        store.engine.patch_record(b"absent", 1, b"x")
    with pytest.raises(LookupError):
        store.engine.patch_record(b"k00", 12345, new_ttl_secs=10)
    store.check_after_reopen()


# ------------------------------------------------------------ Config validation

INVALID_CONFIG = [
    ("memtable_size_mb", -1),
    ("memtable_size_mb", 0),
    ("block_size", 0),
    ("block_size", -8192),
    ("block_cache_capacity_mb", -1),
    ("wal_segment_size_mb", -1),
    ("index_memory_budget_mb", -1),
    ("bloom_bits_per_key", -1),
    ("compaction_threshold", -1),
    ("max_frozen_memtables", -1),
    ("gc_interval_secs", -1),
    ("flush_interval_ms", -1),
    ("compaction_interval_ms", -1),
    ("time_bucket_secs", -1),
    ("time_bucket_secs", MAX_TTL_SECS + 1),
    ("default_ttl_secs", 0),
    ("default_ttl_secs", -5),
    ("default_ttl_secs", MAX_TTL_SECS + 1),
    ("default_ttl_secs", 10**13),
]


@pytest.mark.parametrize("field,value", INVALID_CONFIG)
def test_invalid_config_raises_value_error_naming_field(tmp_path, field, value):
    path = tmp_path / "db"
    with pytest.raises(ValueError) as info:
        Engine.open(str(path), **{field: value})
    assert field in str(info.value)
    with pytest.raises(ValueError) as info:
        Engine.open(Config(data_dir=str(path), **{field: value}))
    assert field in str(info.value)
    assert not path.exists() or not any(path.glob("*.sst"))


@pytest.mark.parametrize("value", [1, "yes", None])
def test_prepopulate_block_cache_must_be_a_bool(tmp_path, value):
    with pytest.raises(TypeError, match="prepopulate_block_cache"):
        Engine.open(str(tmp_path / "db"), prepopulate_block_cache=value)
    assert not (tmp_path / "db").exists() or not any((tmp_path / "db").glob("*.sst"))


def test_valid_extreme_default_ttl_is_accepted(tmp_path):
    with Engine.open(str(tmp_path / "db"), default_ttl_secs=MAX_TTL_SECS, auto_background=False) as e:
        e.write_batch([R(b"k", 0, b"v")])
        assert e.get(b"k", 0).expire_at == MAX_TTL_SECS * 1_000_000


def test_missing_dir_without_create_raises_not_found(tmp_path):
    path = tmp_path / "missing"
    with pytest.raises(NotFoundError) as info:
        Engine.open(str(path), create_if_missing=False)
    assert isinstance(info.value, LookupError)
    assert not path.exists()
    with pytest.raises(NotFoundError):
        Engine.open(Config(data_dir=str(path), create_if_missing=False))
    assert not path.exists()


def test_existing_store_opens_without_create(engine_factory, tmp_path):
    e = engine_factory()
    e.write_batch([R(b"k", 1, b"v")])
    e.shutdown()
    e = engine_factory(create_if_missing=False)
    assert e.get(b"k", 1).value == b"v"


# ------------------------------------------------------- WAL failure: read-only until reopen

def test_failed_wal_fsync_refuses_every_later_write_until_reopen(tmp_path, monkeypatch):
    import errno

    path = str(tmp_path / "db")
    e = Engine.open(path, auto_background=False, wal_sync_mode=SyncMode.ALWAYS)
    e.write_batch([R(b"kept", 1, b"acknowledged")])

    def broken(fd):
        raise OSError(errno.EIO, "injected fdatasync failure")
    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(FlowError):
        e.write_batch([R(b"lost", 1, b"never acknowledged")])
    monkeypatch.undo()                       # the disk is fine again: still refused
    for write in (lambda: e.write_batch([R(b"after", 1, b"x")]),
                  lambda: e.delete_batch([(b"kept", 1)]),
                  lambda: e.delete_range(b"a", b"z"),
                  lambda: e.patch_record(b"kept", 1, b"y")):
        with pytest.raises(FlowError, match="reopen"):
            write()
    assert e.get(b"kept", 1) == R(b"kept", 1, b"acknowledged")   # reads still work
    e.shutdown()

    with Engine.open(path, auto_background=False) as again:
        assert again.get(b"kept", 1) == R(b"kept", 1, b"acknowledged")
        again.write_batch([R(b"after", 1, b"x")])                # reopening recovers
        assert again.get(b"after", 1) == R(b"after", 1, b"x")


# -- ALWAYS: the group's fsync overlaps its memtable insert ------------------------

def _blocking_sync(monkeypatch, engine):
    """Make the WAL's fsync wait for `release`; `entered` is set when it starts."""
    import threading
    entered, release = threading.Event(), threading.Event()
    real = engine._wal.sync

    def sync(*args):
        entered.set()
        assert release.wait(10)
        return real(*args)
    monkeypatch.setattr(engine._wal, "sync", sync)
    return entered, release


def test_writers_queued_while_the_wal_is_busy_commit_as_one_group(tmp_path, monkeypatch):
    # A lone writer commits without the queue; the writers that arrive while
    # its WAL write is under way queue, and the first of them leads all of
    # them: one WAL write and one fsync for the three.
    import threading
    with Engine.open(str(tmp_path), wal_sync_mode=SyncMode.ALWAYS, auto_background=False) as e:
        entered, release = threading.Event(), threading.Event()
        appends, syncs = [], []
        real_append, real_sync = e._wal.append, e._wal.sync

        def append(entries):
            appends.append(len(entries))
            if len(appends) == 1:
                entered.set()
                assert release.wait(10)
            return real_append(entries)

        def sync(*args):
            syncs.append(len(appends))
            return real_sync(*args)
        monkeypatch.setattr(e._wal, "append", append)
        monkeypatch.setattr(e._wal, "sync", sync)
        first = threading.Thread(target=e.write_batch, args=([R(b"a", 1, b"first")],))
        first.start()
        assert entered.wait(10)
        others = [threading.Thread(target=e.write_batch, args=([R(b"b%d" % i, 1, b"v")],))
                  for i in range(3)]
        for t in others:
            t.start()
        deadline = time.monotonic() + 10
        while len(e._queue) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(e._queue) == 3
        release.set()
        for t in [first] + others:
            t.join(10)
        assert appends == [1, 3]
        assert len(syncs) == 2
        assert [r.key for r in e.query_by_prefix(b"")] == [b"a", b"b0", b"b1", b"b2"]
        assert not e._queue


def test_writer_interrupted_while_waiting_to_lead_leaves_the_queue(tmp_path, monkeypatch, request):
    # The head of the queue waits for the WAL a lone writer holds; a
    # KeyboardInterrupt there takes it out of the queue, so that later
    # writers are not left waiting for a leader that is gone.
    import signal
    import sys
    import threading
    # A run started in the background by a shell (nohup ... &) inherits
    # SIGINT ignored, and the signal below would then do nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with Engine.open(str(tmp_path), auto_background=False) as e:
        entered, release = threading.Event(), threading.Event()
        real_append = e._wal.append

        def append(entries):
            if not entered.is_set():
                entered.set()
                # Longer than the interrupter's deadline: its fallback
                # signal must find the main thread still waiting.
                assert release.wait(60)
            return real_append(entries)
        monkeypatch.setattr(e._wal, "append", append)
        lone = threading.Thread(target=e.write_batch, args=([R(b"a", 1, b"v")],))
        lone.start()
        assert entered.wait(10)
        main = threading.get_ident()

        def interrupt_when_waiting():
            # The main thread's innermost Python frame stays _join only
            # while it blocks in _write_lock.acquire().
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                frame = sys._current_frames().get(main)
                if frame is not None and frame.f_code.co_name == "_join" and len(e._queue) == 1:
                    time.sleep(0.02)
                    frame = sys._current_frames().get(main)
                    if frame is not None and frame.f_code.co_name == "_join":
                        break
                time.sleep(0.001)
            signal.pthread_kill(main, signal.SIGINT)
        interrupter = threading.Thread(target=interrupt_when_waiting)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            e.write_batch([R(b"b", 1, b"v")])
        interrupter.join(10)
        assert not e._queue
        release.set()
        lone.join(10)
        e.write_batch([R(b"c", 1, b"v")])
        assert [r.key for r in e.query_by_prefix(b"")] == [b"a", b"c"]


def test_always_write_is_invisible_until_its_fsync_returns(tmp_path, monkeypatch):
    import threading
    with Engine.open(str(tmp_path), wal_sync_mode=SyncMode.ALWAYS, auto_background=False) as e:
        entered, release = _blocking_sync(monkeypatch, e)
        writer = threading.Thread(target=e.write_batch, args=([R(b"k", 1, b"v")],))
        writer.start()
        assert entered.wait(10)
        assert e.get(b"k", 1) is None and writer.is_alive()
        release.set()
        writer.join(10)
        assert e.get(b"k", 1) == R(b"k", 1, b"v")


def test_always_insert_runs_during_the_fsync(tmp_path, monkeypatch):
    # While the group's fsync is held up, its batch is already in the
    # memtable (inserted by the apply thread), but nobody can read it yet.
    import threading
    with Engine.open(str(tmp_path), wal_sync_mode=SyncMode.ALWAYS, auto_background=False) as e:
        entered, release = _blocking_sync(monkeypatch, e)
        batch = [R(b"k%04d" % i, 1, b"v") for i in range(2000)]
        writer = threading.Thread(target=e.write_batch, args=(batch,))
        writer.start()
        assert entered.wait(10)
        it = e._view.mem.new_iterator()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            it.seek_to_first()
            if sum(1 for _ in it.entries()) == len(batch):
                break
        it.seek_to_first()
        assert sum(1 for _ in it.entries()) == len(batch)
        assert e.get(b"k0000", 1) is None and writer.is_alive()
        release.set()
        writer.join(10)
        assert e.query_by_prefix(b"k") == batch


def test_always_failed_fsync_refuses_writes_and_hides_the_batch(tmp_path, monkeypatch):
    with Engine.open(str(tmp_path), wal_sync_mode=SyncMode.ALWAYS, auto_background=False) as e:
        e.write_batch([R(b"a", 1, b"ok")])

        def failing_sync(*args):
            raise OSError(5, "injected fsync failure")
        monkeypatch.setattr(e._wal, "sync", failing_sync)
        with pytest.raises(FlowError, match="reopen"):
            e.write_batch([R(b"b", 1, b"lost?")])
        assert e.get(b"b", 1) is None          # inserted, but never made visible
        assert e.get(b"a", 1) == R(b"a", 1, b"ok")
        with pytest.raises(FlowError, match="reopen"):
            e.write_batch([R(b"c", 1, b"")])
    # The failed batch's outcome is unknown (its bytes reached the WAL): whole or absent.
    with Engine.open(str(tmp_path), auto_background=False) as e:
        assert e.get(b"a", 1) == R(b"a", 1, b"ok")
        assert e.get(b"b", 1) in (None, R(b"b", 1, b"lost?"))
        assert e.get(b"c", 1) is None


@pytest.mark.parametrize("sync", [SyncMode.ALWAYS, SyncMode.interval_ms(5)], ids=["always", "interval"])
def test_parallel_writers_with_frequent_freezes_keep_every_batch_whole(tmp_path, sync):
    # Pipelined groups and parallel inserts, with a memtable so small that
    # freezes (which wait for groups in flight) happen all the time; a
    # reader checks that every batch it sees is whole.
    import threading
    writers, batches, size = 4, 60, 40
    with Engine.open(str(tmp_path), wal_sync_mode=sync, memtable_size_mb=0.05) as e:
        stop = threading.Event()
        partial = []

        def write(t):
            for b in range(batches):
                e.write_batch([R(b"w%d:%03d" % (t, i), b, b"x" * 30) for i in range(size)])

        def read():
            while not stop.is_set():
                counts = {}
                for r in e.query_by_prefix(b"w"):
                    counts[(r.key[:2], r.ts)] = counts.get((r.key[:2], r.ts), 0) + 1
                partial.extend(c for c in counts.values() if c != size)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(writers)]
        reader = threading.Thread(target=read)
        reader.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        reader.join()
        assert not partial
        assert len(e.query_by_prefix(b"w")) == writers * batches * size
    with Engine.open(str(tmp_path), auto_background=False) as e:
        assert len(e.query_by_prefix(b"w")) == writers * batches * size


def test_interrupt_while_inserting_refuses_later_writes_without_deadlock(tmp_path, monkeypatch):
    # A KeyboardInterrupt in the middle of a group: the writer sees it, the
    # group is never published, and later writes fail fast (nobody waits
    # forever for the interrupted group).
    with Engine.open(str(tmp_path), auto_background=False) as e:
        e.write_batch([R(b"a", 1, b"ok")])
        real = Engine._apply_group

        def interrupted(self, *args):
            real(self, *args)
            raise KeyboardInterrupt
        monkeypatch.setattr(Engine, "_apply_group", interrupted)
        with pytest.raises(KeyboardInterrupt):
            e.write_batch([R(b"b", 1, b"x")])
        monkeypatch.setattr(Engine, "_apply_group", real)
        assert e.get(b"b", 1) is None
        with pytest.raises(FlowError, match="reopen"):
            e.write_batch([R(b"c", 1, b"")])
        assert e.get(b"a", 1) == R(b"a", 1, b"ok")
