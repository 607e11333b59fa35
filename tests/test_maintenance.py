"""Compaction policy, GC, background maintenance, stats, metrics and logging
(docs/MAINTENANCE.md)."""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from flowdb import FlowError, Record, ScanRange
from flowdb import _compaction as policy
from helpers.common import NEVER, dump, now_us, rec, recs

SEC = 1_000_000


class _T:
    def __init__(self, size, n=0, **props):
        self.file_size = size
        self.file_number = n
        self.props = {"max_expire_at": NEVER, "num_range_dels": 0, **props}


def runs_of(*sizes):
    return tuple((_T(s),) for s in sizes)


# ---------------------------------------------------------------- the policy

def test_pick_merges_newest_runs_of_similar_size():
    assert policy.pick(runs_of(10, 10), 2, 8) == (0, 2)
    assert policy.pick(runs_of(10, 10, 20, 40), 2, 8) == (0, 4)       # binary counter carry


def test_pick_skips_a_small_newest_run_before_a_big_one():
    assert policy.pick(runs_of(10, 100), 2, 8) is None
    assert policy.pick(runs_of(10, 100, 100), 2, 8) == (1, 3)


def test_pick_honours_threshold():
    assert policy.pick(runs_of(10, 10), 3, 8) is None
    assert policy.pick(runs_of(10, 10, 10), 3, 8) == (0, 3)


def test_pick_merges_the_cheapest_window_past_the_run_limit():
    sizes = [1, 1000, 100000, 10**7, 10**9]
    assert policy.pick(runs_of(*sizes), 2, 8) is None
    assert policy.pick(runs_of(*sizes), 2, 4) == (0, 2)


def test_droppable_oldest_only_from_the_oldest_run():
    old = _T(1, 1, max_expire_at=5)
    new = _T(1, 2, max_expire_at=5)
    assert policy.droppable_oldest(((new,), (old,)), 10) == [old]
    assert policy.droppable_oldest(((new,), (old,)), 5) == [old]
    assert policy.droppable_oldest(((new,), (old,)), 4) == []
    rd = _T(1, 3, max_expire_at=5, num_range_dels=1)
    other = _T(1, 4, max_expire_at=50)
    assert policy.droppable_oldest(((rd, other),), 10) == []      # rd may hide `other`'s entries
    assert policy.droppable_oldest(((rd,),), 10) == [rd]


# ------------------------------------------------------------ compaction

def _write_runs(e, n, key=b"k", base=0):
    for i in range(n):
        e.write_batch([Record(key, base + i, b"v%d" % i)])
        e.flush()


def test_trigger_compaction_says_whether_it_ran(engine_factory):
    e = engine_factory()
    assert e.trigger_compaction() is False
    _write_runs(e, 1)
    assert e.trigger_compaction() is False          # one clean run: nothing to do
    _write_runs(e, 3, base=10)
    assert e.trigger_compaction() is True
    assert e.stats().total_compaction_runs == 1


def test_partial_merge_keeps_tombstones_that_hide_older_runs(engine_factory):
    e = engine_factory(compaction_threshold=2)
    e.write_batch([Record(b"a", 1, b"x" * 5000)])      # a big oldest run
    e.write_batch([Record(b"b%d" % i, 1, b"y" * 200) for i in range(100)])
    e.flush()
    e.delete_batch([(b"a", 1)])
    e.flush()
    e.write_batch([Record(b"c", 1, b"z")])
    e.flush()
    assert len(e._view.runs) == 3
    assert e._maybe_compact()                          # merges the two small newest runs
    assert len(e._view.runs) == 2
    assert e.get(b"a", 1) is None                      # the tombstone survived the merge
    assert e.stats().total_records_expired == 0
    e.trigger_compaction()
    assert len(e._view.runs) == 1
    assert e.get(b"a", 1) is None and e.get(b"c", 1) is not None


def test_overwrites_and_range_deletes_never_come_back(engine_factory):
    e = engine_factory(memtable_size_mb=0.01, compaction_threshold=2)
    model = {}
    for round_ in range(12):
        batch = [Record(b"k%02d" % (i % 23), i % 5, b"r%d-%d" % (round_, i)) for i in range(40)]
        e.write_batch(batch)
        for r in batch:
            model[(r.key, r.ts)] = r.value
        if round_ % 3 == 1:
            e.delete_range(b"k05", b"k09")
            model = {k: v for k, v in model.items() if not (b"k05" <= k[0] < b"k09")}
        if round_ % 4 == 2:
            e.delete_batch([(b"k01", 1), (b"k02", 2)])
            model.pop((b"k01", 1), None)
            model.pop((b"k02", 2), None)
        e.flush()
        e._maybe_compact()
        got = {(r.key, r.ts): r.value for r in e.query(ScanRange.all())}
        assert got == model
    e.trigger_gc()
    assert {(r.key, r.ts): r.value for r in e.query(ScanRange.all())} == model


def test_compaction_outputs_are_cut_at_the_target_size(engine_factory):
    e = engine_factory(memtable_size_mb=0.05, block_size=1024)
    assert e._target_file_size == 2 * int(0.05 * 1024 * 1024)
    for b in range(10):
        e.write_batch([Record(b"key-%05d" % i, b, os.urandom(100)) for i in range(200)])
        e.flush()
    while e.trigger_compaction():
        pass
    run, = e._view.runs
    assert len(run) >= 3
    assert all(t.file_size < 2 * e._target_file_size for t in run)
    keys = [(t.props["smallest_key"], t.props["largest_key"]) for t in run]
    assert all(keys[i][1] < keys[i + 1][0] for i in range(len(keys) - 1))


def test_flush_proceeds_while_a_compaction_holds_its_lock(engine_factory):
    e = engine_factory()
    _write_runs(e, 2)
    with e._compact_lock:
        e.write_batch([Record(b"x", 1, b"1")])
        t = threading.Thread(target=e.flush)
        t.start()
        t.join(5)
        assert not t.is_alive()
    assert e.get(b"x", 1).value == b"1"


def test_runs_survive_reopen(engine_factory, tmp_path):
    e = engine_factory(compaction_threshold=2)
    _write_runs(e, 4)
    e._maybe_compact()
    e.write_batch([Record(b"k", 0, b"newest")])
    e.flush()
    shape = [[t.file_number for t in r] for r in e._view.runs]
    want = dump(e)
    e.shutdown()
    e = engine_factory()
    assert [[t.file_number for t in r] for r in e._view.runs] == shape
    assert dump(e) == want and e.get(b"k", 0).value == b"newest"


# ---------------------------------------------------------------------- GC

def test_gc_drops_expired_oldest_tables_without_reading_them(engine_factory):
    e = engine_factory()
    past = now_us() - SEC
    for i in range(3):
        e.write_batch([Record(b"s%d" % j, i * 100 + j, b"v" * 50, past) for j in range(100)])
        e.flush()
    e.write_batch([Record(b"live", 1, b"v")])
    e.flush()
    tables = list(e._view.tables)
    assert e.trigger_gc() == 300
    assert sum(t.blocks_read for t in tables) == 0
    st = e.stats()
    assert st.records_purged_by_gc == 300 and st.total_records_expired == 300
    assert st.total_gc_runs == 1 and st.sstable_count == 1
    assert dump(e) == [(b"live", 1, b"v", NEVER)]


def test_gc_never_resurrects_an_older_version_hidden_by_an_expired_one(engine_factory):
    e = engine_factory()
    e.write_batch([Record(b"k", 1, b"old", NEVER)])
    e.flush()
    e.write_batch([Record(b"k", 1, b"new", now_us() - SEC)])   # newer, already expired
    e.flush()
    assert e.get(b"k", 1) is None
    n = e.trigger_gc()
    assert n >= 1
    assert e.get(b"k", 1) is None and dump(e) == []


def test_gc_purges_deleted_and_expired_records_and_counts_them(engine_factory):
    e = engine_factory()
    e.write_batch([Record(b"a%d" % i, 1, b"v") for i in range(10)])
    e.write_batch([Record(b"e%d" % i, 1, b"v", now_us() - SEC) for i in range(5)])
    e.flush()
    e.delete_batch([(b"a%d" % i, 1) for i in range(4)])
    e.flush()
    assert e.trigger_gc() == 5 + 4          # expired, and deleted (one per tombstone)
    assert e.stats().sstable_count == 1
    assert len(dump(e)) == 6
    assert e.trigger_gc() == 0


def test_gc_timer_purges_in_the_background(engine_factory):
    e = engine_factory(auto_background=True, gc_interval_secs=0.02, flush_interval_ms=5)
    e.write_batch([Record(b"e%d" % i, 1, b"v", now_us() + SEC // 5) for i in range(20)])
    deadline = time.monotonic() + 10
    while e.stats().records_purged_by_gc < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert e.stats().records_purged_by_gc == 20
    assert e.stats().total_gc_runs > 1


# ------------------------------------------------------ background threads

def test_background_flush_and_compaction_run(engine_factory):
    e = engine_factory(auto_background=True, memtable_size_mb=0.01, compaction_threshold=2,
                       flush_interval_ms=5, compaction_interval_ms=5)
    for i in range(100):
        e.write_batch([Record(b"k%03d" % j, i, b"v" * 30) for j in range(20)])
    deadline = time.monotonic() + 10
    while (e.stats().total_compaction_runs == 0 or e.stats().memtable_records) and time.monotonic() < deadline:
        time.sleep(0.01)
    st = e.stats()
    assert st.total_flushes > 1 and st.total_compaction_runs > 0
    assert len(e.query(ScanRange.all())) == 2000


def test_spawn_background_maintenance_handle_stops(engine_factory):
    e = engine_factory()
    h = e.spawn_background_maintenance()
    assert h is not None and e.spawn_background_maintenance() is None
    h.stop()
    assert not any(t.is_alive() for t in h._threads)


def test_background_error_is_logged_and_surfaced(engine_factory, caplog):
    e = engine_factory(auto_background=True, compaction_threshold=2, compaction_interval_ms=5)

    def boom():
        raise OSError("disk on fire")

    e._maybe_compact = boom
    with caplog.at_level(logging.ERROR, logger="flowdb"):
        deadline = time.monotonic() + 5
        while e._background_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(FlowError, match="disk on fire"):
            e.write_batch([Record(b"a", 1, b"v")])
    assert any("background maintenance failed" in r.message for r in caplog.records)
    e.write_batch([Record(b"a", 1, b"v")])                # surfaced once


def test_writers_stall_while_compaction_is_behind(engine_factory):
    e = engine_factory(compaction_threshold=2)
    for i in range(e._stall_runs + 1):
        e.write_batch([Record(b"k", i, b"v")])
        e.flush()
    h = e.spawn_background_maintenance()
    e.write_batch([Record(b"k", -1, b"v")])
    assert e._stalls >= 1
    h.stop()


# --------------------------------------------------- stats, metrics, logs

def test_stats_are_real_measurements(engine_factory):
    e = engine_factory(block_cache_capacity_mb=1)
    for i in range(5):
        e.write_batch([Record(b"k%03d" % j, i, b"abc" * 30) for j in range(100)])
    st = e.stats()
    assert st.total_records_written == 500 and st.memtable_records == 500 and st.memtable_bytes > 0
    assert st.total_bytes_written == 500 * (4 + 90) and st.wal_bytes > st.total_bytes_written
    e.flush()
    e.get(b"k001", 1)
    e.get(b"k001", 1)
    st = e.stats()
    assert st.sstable_count == 1 and st.sstable_bytes > 0 and st.total_flushes == 1
    assert st.compression_ratio > 1.0                   # repetitive values compress
    assert 0 < st.block_cache_hit_rate < 1
    assert st.block_meta_index_entries >= 1 and st.time_index_buckets >= 1
    assert st.write_latency_p50_us <= st.write_latency_p90_us <= st.write_latency_p99_us
    assert st.write_latency_p99_us > 0 and st.flush_latency_p50_us > 0
    assert st.query_latency_p99_us > 0 and st.total_records_read == 2


@pytest.mark.parametrize("prepopulate", [False, True])
def test_prepopulate_block_cache_serves_the_first_reads_of_a_flush(engine_factory, prepopulate):
    e = engine_factory(prepopulate_block_cache=prepopulate, block_size=512)
    model = {(b"s%02d" % k, ts): b"v%d" % (ts * k) * 20 for k in range(20) for ts in range(50)}
    e.write_batch([Record(k, ts, v) for (k, ts), v in model.items()])
    e.flush()
    (table,) = e._view.tables
    assert all(e.get(k, ts).value == v for (k, ts), v in model.items())
    assert (table.blocks_read == 0) is prepopulate
    assert (e.stats().block_cache_hit_rate == 1.0) is prepopulate
    e.shutdown()
    e = engine_factory(prepopulate_block_cache=prepopulate, block_size=512)   # reopened: cold
    assert all(e.get(k, ts).value == v for (k, ts), v in model.items())
    assert e._view.tables[0].blocks_read > 0


def _warmed(e):
    (line,) = [l for l in e.metrics_text().splitlines()
               if l.startswith("flowdb_compaction_blocks_warmed_total ")]
    return float(line.split()[1])


def test_compaction_warms_the_output_where_readers_were(engine_factory):
    e = engine_factory(block_size=512)
    model = {}
    for run in range(3):                       # three runs, each a slice of every series
        batch = {(b"s%02d" % k, run * 100 + ts): b"v%d-%d" % (k, ts) * 8
                 for k in range(20) for ts in range(30)}
        e.write_batch([Record(k, ts, v) for (k, ts), v in batch.items()])
        e.flush()
        model.update(batch)
    hot = [kt for kt in model if kt[0] in (b"s03", b"s11")]        # readers used two series
    assert all(e.get(*kt).value == model[kt] for kt in hot)
    while e.trigger_compaction():
        pass
    (tables,) = e._view.runs

    def blocks_read():
        return sum(t.blocks_read for t in tables)
    live = {t.file_number for t in tables}
    cached = sum(f in live for f, _ in e._cache.keys())
    total = sum(t.num_data_blocks for t in tables)
    assert _warmed(e) >= cached > 0 and blocks_read() == 0
    assert cached < total / 4                                      # only where readers were
    assert all(e.get(*kt).value == model[kt] for kt in hot)
    assert blocks_read() == 0                                      # served warm
    assert all(e.get(*kt).value == v for kt, v in model.items())   # and the rest cold
    assert blocks_read() == total - cached
    e.shutdown()
    e = engine_factory(block_size=512)
    assert all(e.get(*kt).value == v for kt, v in model.items())


def test_compaction_warms_nothing_when_nothing_was_read(engine_factory):
    e = engine_factory(block_size=512)
    for run in range(3):
        e.write_batch([Record(b"s%02d" % k, run * 100 + ts, b"v" * 50)
                       for k in range(10) for ts in range(30)])
        e.flush()
    while e.trigger_compaction():
        pass
    assert len(e._view.runs) == 1 and _warmed(e) == 0 and e._cache.usage == 0


def test_metrics_text_parses_with_prometheus_client(engine_factory):
    parser = pytest.importorskip("prometheus_client.parser")
    e = engine_factory()
    e.write_batch([Record(b"a", 1, b"v")])
    e.flush()
    e.get(b"a", 1)
    text = e.metrics_text()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert all(name.startswith("flowdb_") for name in families)
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total")
    assert families["flowdb_records_written"].type == "counter"
    assert families["flowdb_records_written"].samples[0].value == 1
    assert families["flowdb_write_latency_seconds"].type == "histogram"
    assert families["flowdb_sstable_bytes_written"].samples[0].value > 0
    helps = [l for l in text.splitlines() if l.startswith("# HELP")]
    types = [l for l in text.splitlines() if l.startswith("# TYPE")]
    assert len(helps) == len(types) == len(families)


def test_flush_compaction_gc_and_recovery_are_logged(engine_factory, caplog):
    with caplog.at_level(logging.INFO, logger="flowdb"):
        e = engine_factory()
        _write_runs(e, 3)
        e.trigger_compaction()
        e.trigger_gc()
        e.write_batch([Record(b"w", 1, b"v")])
        e.shutdown()
        e = engine_factory()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "flowdb")
    for word in ("flushed", "compacted", "GC purged", "opened"):
        assert word in text, word


def test_pinned_scan_of_a_compacted_table_does_not_refill_the_cache(engine_factory):
    e = engine_factory(block_size=256)
    for i in range(3):
        e.write_batch([Record(b"k%03d" % j, i, b"v" * 50) for j in range(100)])
        e.flush()
    with e.snapshot() as snap:
        it = snap.scan(ScanRange.all())
        next(it)
        old = {t.file_number for t in e._view.tables}
        assert e.trigger_compaction()
        assert len(list(it)) == 299
    live = {t.file_number for t in e._view.tables}
    cached = {f for f, _off in e._cache.keys()}
    assert not (cached & old) and cached <= live


def test_writes_reads_and_flushes_go_on_during_a_compaction(engine_factory):
    e = engine_factory(memtable_size_mb=4)
    for b in range(4):
        e.write_batch([Record(b"s%04d" % j, b * 1000 + i, os.urandom(60))
                       for i in range(50) for j in range(200)])
        e.flush()
    done = threading.Event()
    t = threading.Thread(target=lambda: (e.trigger_compaction(), done.set()))
    t.start()
    while not e._compact_lock.locked() and not done.is_set():
        time.sleep(0.0005)
    during = 0
    i = 0
    while not done.is_set():
        e.write_batch([Record(b"new", i, b"v")])
        assert e.get(b"new", i).value == b"v"
        i += 1
        if i % 50 == 0:
            e.flush()
        if e._compact_lock.locked():
            during += 1
    t.join()
    assert during > 0, "no write completed while the compaction ran"
    assert len(e.query_by_prefix(b"new")) == i
    assert len(e.query_by_prefix(b"s")) == 4 * 50 * 200


def test_pick_never_merges_settled_runs():
    # 100 = settled size: runs of 100 or more are left alone.
    assert policy.pick(runs_of(10, 10, 100, 100), 2, 8, settled=100) == (0, 2)
    assert policy.pick(runs_of(10, 100, 100), 2, 8, settled=100) is None
    assert policy.pick(runs_of(*([1] + [100] * 20)), 2, 4, settled=100) is None
    assert policy.pick(runs_of(1, 1000, 1, 1), 2, 2, settled=100) == (2, 4)


def test_garbage_fraction_from_metadata(engine_factory):
    e = engine_factory(block_size=256)
    e.write_batch([Record(b"k%03d" % i, 1, b"v" * 40, now_us() - SEC) for i in range(100)])
    e.write_batch([Record(b"z%03d" % i, 1, b"v" * 40) for i in range(100)])
    e.flush()
    g = policy.garbage_fraction(e._view.tables, now_us())
    assert 0.3 < g < 0.7
    assert policy.garbage_fraction(e._view.tables, 0) == 0.0


def test_background_gc_leaves_a_store_with_little_garbage_alone(engine_factory):
    e = engine_factory()
    e.write_batch([Record(b"k%04d" % i, 1, os.urandom(50)) for i in range(1000)])
    e.flush()
    e.write_batch([Record(b"x", 1, b"v")])
    e.flush()
    e.delete_batch([(b"k0001", 1)])
    e.flush()
    before = [t.file_number for t in e._view.tables]
    assert e._gc() == 0                                # the timer's run: 0.1% garbage
    assert [t.file_number for t in e._view.tables] == before
    assert e.trigger_gc() == 1                         # an explicit run purges
    assert e.get(b"k0001", 1) is None


def test_retention_settled_runs_expire_whole_without_rewrites(engine_factory):
    """Time-series retention: old data settles into runs that the GC timer
    drops whole once expired, without reading or rewriting them."""
    e = engine_factory(compaction_threshold=2)
    e._settled = 20_000                       # tiny, so that runs settle in a test
    soon = now_us() + SEC // 2
    for b in range(8):                        # old data, expiring soon
        e.write_batch([Record(b"s%02d" % s, b * 100 + i, os.urandom(40), soon)
                       for i in range(20) for s in range(10)])
        e.flush()
        while e._maybe_compact():
            pass
    settled = [r for r in e._view.runs if policy.run_size(r) >= e._settled]
    assert settled, [policy.run_size(r) for r in e._view.runs]
    for b in range(2):                        # new data, no expiry
        e.write_batch([Record(b"s%02d" % s, 10_000 + b * 100 + i, b"new")
                       for i in range(5) for s in range(10)])
        e.flush()
    time.sleep(max(0, (soon - now_us()) / 1e6) + 0.05)
    compactions = e.stats().total_compaction_runs
    old_tables = [t for r in settled for t in r]
    reads = sum(t.blocks_read for t in old_tables)
    purged = e._gc()                          # the timer's GC run
    assert purged >= sum(t.props["num_entries"] for t in old_tables)
    assert sum(t.blocks_read for t in old_tables) == reads
    assert e.stats().total_compaction_runs == compactions
    assert len(e.query(ScanRange.all())) == 2 * 5 * 10


def _two_frozen(e, big=3000):
    """Freezes an older memtable of `big` records and a newer one that
    rewrites its first 10 keys; returns them, oldest first."""
    e.write_batch([Record(b"k%05d" % i, 1, b"old" * 30) for i in range(big)])
    with e._write_lock:
        e._freeze()
    e.write_batch([Record(b"k%05d" % i, 1, b"new") for i in range(10)])
    with e._write_lock:
        e._freeze()
    newer, older = (m for m, _ in e._view.frozen)
    return older, newer


def _wait_for(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _check_two_frozen_flushed(e, path, big):
    assert not e._view.frozen and not e._building
    newest, older = e._view.runs
    assert newest[0].props["num_entries"] == 10 and older[0].props["num_entries"] == big
    assert e.get(b"k00000", 1).value == b"new" and e.get(b"k00010", 1).value == b"old" * 30
    assert e.stats().total_flushes == 2
    want = dump(e)
    assert len(want) == big
    assert sorted(e._manifest.tables) == sorted(r[0].file_number for r in e._view.runs)
    if not e._storage.single_file:
        assert sorted(p.name for p in path.iterdir() if p.suffix == ".sst") == sorted(
            os.path.basename(r[0].path) for r in e._view.runs)


def _tables_built(e):
    """Tables built and installed so far (live or not yet), either backend."""
    return len(e._readers)


def test_two_threads_build_flushes_at_once_and_tables_go_live_in_freeze_order(engine_factory, tmp_path):
    big = 3000
    e = engine_factory(max_frozen_memtables=4)
    _two_frozen(e, big)
    errors = []

    def flush_background():                 # what the flush thread runs
        try:
            e._flush_frozen(wait=False)
        except BaseException as exc:        # pragma: no cover - reported below
            errors.append(exc)

    with e._flush_lock:                     # nothing goes live until released
        worker = threading.Thread(target=flush_background)
        worker.start()
        _wait_for(lambda: len(e._building) == 1, "the worker claimed the older memtable")
        caller = threading.Thread(target=e.flush)
        caller.start()
        # Both tables get built while neither can go live.
        _wait_for(lambda: _tables_built(e) == 2, "two tables built at once")
        assert len(e._building) == 2 and len(e._view.frozen) == 2
    worker.join(10)
    caller.join(10)
    assert not worker.is_alive() and not caller.is_alive() and not errors
    _check_two_frozen_flushed(e, tmp_path / "db", big)
    want = dump(e)
    e.shutdown()
    e = engine_factory()
    assert dump(e) == want and e.get(b"k00000", 1).value == b"new"


def test_a_flush_whose_builder_fails_is_taken_over_by_a_waiting_one(engine_factory, tmp_path):
    big = 3000
    e = engine_factory(max_frozen_memtables=4)
    older, newer = _two_frozen(e, big)
    real_write_table = e._write_table
    failed = []

    def write_table(fill):
        if threading.current_thread().name == "failing" and not failed:
            # Fail once the caller of flush() has built the newer table and
            # waits for the older one to go live.
            _wait_for(lambda: _tables_built(e) == 1, "newer table built")
            failed.append(True)
            raise OSError(28, "No space left on device")
        return real_write_table(fill)

    e._write_table = write_table
    errors = []

    def flush_background():
        try:
            e._flush_frozen(wait=False)
        except OSError as exc:
            errors.append(exc)

    worker = threading.Thread(target=flush_background, name="failing")
    worker.start()
    _wait_for(lambda: id(older) in e._building, "the failing thread claimed the older memtable")
    # The caller of flush() builds the newer one, then takes the older over.
    caller = threading.Thread(target=e.flush)
    caller.start()
    caller.join(20)
    worker.join(10)
    assert not caller.is_alive(), "flush() waited for a builder that had given up"
    assert not worker.is_alive() and failed and [x.errno for x in errors] == [28]
    _check_two_frozen_flushed(e, tmp_path / "db", big)


def test_flushed_wal_segments_are_unlinked_by_the_flush_thread_and_at_shutdown(tmp_path):
    import time as _time
    from flowdb import Config, Engine, Record, SyncMode
    from flowdb._wal import list_segments
    cfg = Config(data_dir=str(tmp_path), wal_sync_mode=SyncMode.interval_ms(50), memtable_size_mb=0.05)
    e = Engine.open(cfg)
    for b in range(20):
        e.write_batch([Record(b"k%03d" % i, b, b"v" * 50) for i in range(50)])
    e.flush()
    deadline = _time.monotonic() + 10
    while len(list_segments(str(tmp_path))) > 1 and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert list_segments(str(tmp_path)) == [e._wal.current_number]
    e.write_batch([Record(b"z", 1, b"")])
    e.shutdown()
    assert len(list_segments(str(tmp_path))) <= 1
    with Engine.open(str(tmp_path), auto_background=False) as e:
        assert len(e.query_by_prefix(b"k")) == 20 * 50


def test_flush_thread_timer_freeze_with_full_frozen_list_flushes_inline(tmp_path):
    # The flush thread's timer freeze can find max_frozen_memtables frozen
    # memtables (a writer froze them meanwhile); it must flush them itself
    # rather than wait for room that only it can make.
    import types
    from flowdb import Engine
    with Engine.open(str(tmp_path), auto_background=False, max_frozen_memtables=1) as e:
        e.write_batch([Record(b"a", 1, b"")])
        with e._write_lock:
            e._freeze()
        e.write_batch([Record(b"b", 1, b"")])
        worker = threading.Thread(target=e._freeze_if_nonempty)
        e._maintenance = types.SimpleNamespace(flush_thread=worker)
        try:
            worker.start()
            worker.join(10)
            assert not worker.is_alive(), "the flush thread waited for itself"
        finally:
            e._maintenance = None
        assert len(e._view.frozen) == 1 and e._view.tables
        assert {r.key for r in e.query_by_prefix(b"")} == {b"a", b"b"}
