"""The time index (docs/MAINTENANCE.md, "Time index"): time-range reads pick
tables through time buckets and skip blocks by their [min_ts, max_ts], and
never miss a record a full scan filtered by ts would return."""
from __future__ import annotations

import random

import pytest

from flowdb import Query, Record, ScanRange
from flowdb._time_index import MAX_BUCKETS_PER_BLOCK, TimeIndex
from helpers.common import INT64_MAX, INT64_MIN, recs

SEC = 1_000_000


def _blocks_loaded(engine):
    return sum(t.blocks_loaded for t in engine._view.tables)


def _fill(engine, series, points, start, step, value_size=100, batch=None, flush_every=None):
    """points per series, ts = start + i*step, all series interleaved per ts."""
    rng = random.Random(7)
    rows = []
    n = 0
    for i in range(points):
        ts = start + i * step
        for s in range(series):
            rows.append(Record(b"series-%04d" % s, ts, bytes(rng.getrandbits(8) for _ in range(8)) * (value_size // 8)))
        if batch is None or len(rows) >= batch:
            engine.write_batch(rows)
            rows = []
        n += 1
        if flush_every and n % flush_every == 0:
            engine.flush()
    if rows:
        engine.write_batch(rows)
    engine.flush()


def _filtered(engine, lo, hi):
    return [r for r in recs(engine.query(ScanRange.all())) if lo <= r[1] <= hi]


def _check_ranges(engine, ranges):
    for lo, hi in ranges:
        assert recs(engine.query_time_range(lo, hi)) == _filtered(engine, lo, hi), (lo, hi)
        assert recs(engine.scan(ScanRange.time_range(lo, hi))) == _filtered(engine, lo, hi)
        want = [r for r in _filtered(engine, lo, hi) if r[0].startswith(b"series-000")]
        assert recs(engine.query_prefix_time_range(b"series-000", lo, hi)) == want
        want = [r for r in _filtered(engine, lo, hi) if b"series-0002" <= r[0] <= b"series-0005"]
        assert recs(engine.query(Query.key_time_range(b"series-0002", b"series-0005", lo, hi))) == want


def test_bucket_unit_block_entered_in_every_bucket_it_touches():
    class T:
        file_number = 1

        def block_meta(self):
            return [(0, 1, -3 * SEC, 2 * SEC, 0, 0), (1, 1, 5 * SEC, 5 * SEC, 0, 0)]

    idx = TimeIndex(1)
    idx.add(T())
    assert sorted(idx.buckets) == [-3, -2, -1, 0, 1, 2, 5]
    assert idx.candidates(-10 * SEC, -3 * SEC) == {1}
    assert idx.candidates(3 * SEC, 4 * SEC + SEC - 1) == set()
    assert idx.candidates(2 * SEC + 1, 2 * SEC + 1) == {1}   # same bucket as the block end
    idx.remove(T())
    assert idx.num_buckets == 0 and idx.entries == 0


def test_bucket_unit_wide_block_is_always_a_candidate():
    class T:
        file_number = 9

        def block_meta(self):
            return [(0, 1, INT64_MIN, INT64_MAX, 0, 0)]

    idx = TimeIndex(3600)
    idx.add(T())
    assert idx.num_buckets == 0 and idx.wide == {9: 1}
    assert idx.candidates(0, 1) == {9}
    assert MAX_BUCKETS_PER_BLOCK > 1


def test_time_ranges_match_filtered_full_scan_across_buckets_and_negative_ts(engine_factory):
    # 1-second buckets; ts from -30 s to +30 s in steps of 0.37 s, 8 series,
    # several tables (flush every 20 points) then a compaction.
    e = engine_factory(time_bucket_secs=1, block_size=512)
    step = 370_000
    _fill(e, 8, 160, -30 * SEC, step, value_size=40, flush_every=20)
    assert e.stats().time_index_buckets > 10
    edges = [-30 * SEC, -SEC, -1, 0, 1, SEC - 1, SEC, 5 * SEC + 3, 29 * SEC]
    ranges = [(INT64_MIN, INT64_MAX), (INT64_MIN, -SEC), (SEC, INT64_MAX), (-31 * SEC, -29 * SEC),
              (29 * SEC, 40 * SEC), (-SEC - 1, -SEC + 1), (0, 0), (1, 2), (3, 2)]
    ranges += [(a, b) for a in edges for b in edges if a <= b]
    rng = random.Random(1)
    for _ in range(30):
        a = rng.randrange(-32 * SEC, 32 * SEC)
        ranges.append((a, a + rng.randrange(0, 3 * SEC)))
    # every point's exact ts, start and end
    ranges += [(-30 * SEC + k * step, -30 * SEC + k * step) for k in (0, 1, 79, 159)]
    _check_ranges(e, ranges)
    e.trigger_compaction()
    _check_ranges(e, ranges)


def test_time_range_sees_tables_of_a_pinned_snapshot_after_compaction(engine_factory):
    e = engine_factory(time_bucket_secs=1)
    _fill(e, 4, 50, 0, SEC // 10, flush_every=10)
    with e.snapshot() as snap:
        want = recs(snap.scan(ScanRange.time_range(SEC, 2 * SEC)))
        e.delete_range(b"series-0000", b"series-9999")
        e.flush()
        assert e.trigger_compaction()
        assert e.query_time_range(SEC, 2 * SEC) == []
        assert recs(snap.scan(ScanRange.time_range(SEC, 2 * SEC))) == want
    assert len(want) == 4 * 11


def test_time_sources_are_remembered_per_view_and_skips_counted_per_read(engine_factory):
    e = engine_factory(time_bucket_secs=1)
    _fill(e, 4, 50, 0, SEC // 10, flush_every=10)          # 5 tables of 1 s each

    def skipped():
        return e._tables_skipped_by_time_index

    want = recs(e.query_time_range(SEC, SEC + SEC // 2))
    per_read = skipped()
    assert per_read >= 3 and len(want) == 4 * 6
    assert recs(e.query_time_range(SEC, SEC + SEC // 2)) == want     # remembered by the view
    assert skipped() == 2 * per_read
    e.write_batch([Record(b"series-0000", SEC + 1, b"late")])
    e.flush()                                              # a new view, a new table in range
    got = e.query_time_range(SEC, SEC + SEC // 2)
    assert len(got) == len(want) + 1
    assert [(r.key, r.ts) for r in got if r.value == b"late"] == [(b"series-0000", SEC + 1)]


def test_one_percent_window_reads_under_ten_percent_of_blocks(engine_factory):
    # 50 series x 1000 points of ~100 bytes, one point per second; 10 ts = 1%.
    e = engine_factory(time_bucket_secs=60, block_size=4096, memtable_size_mb=1)
    _fill(e, 50, 1000, 1_700_000_000 * SEC, SEC, batch=1000)
    for compacted in (False, True):
        total_blocks = sum(t.num_data_blocks for t in e._view.tables)
        before = _blocks_loaded(e)
        lo = 1_700_000_000 * SEC + 500 * SEC
        got = e.query_time_range(lo, lo + 9 * SEC)
        read = _blocks_loaded(e) - before
        assert len(got) == 50 * 10
        assert read < 0.10 * total_blocks, (compacted, read, total_blocks)
        e.trigger_compaction()


def test_index_memory_budget_releases_and_reloads_on_demand(engine_factory):
    e = engine_factory(index_memory_budget_mb=0.004, block_size=256, time_bucket_secs=1)
    _fill(e, 6, 120, -SEC, SEC // 20, value_size=40, flush_every=10)
    tables = e._view.tables
    assert len(tables) >= 6
    assert sum(t.meta_bytes for t in tables) <= 0.004 * 2**20
    released = [t for t in tables if not t.meta_loaded]
    assert released and e.stats().block_meta_index_entries < sum(t.num_data_blocks for t in tables)
    want = recs(e.query(ScanRange.all()))
    assert len(want) == 6 * 120
    it = e.scan(ScanRange.all())
    head = [next(it) for _ in range(5)]
    assert any(t.meta_loads for t in released)            # the scan loaded them again
    e._enforce_meta_budget()                               # released under the open scan
    assert recs(head) + recs(it) == want
    _check_ranges(e, [(-SEC, 0), (0, SEC), (INT64_MIN, INT64_MAX)])
    for r in want[::37]:
        assert e.get(r[0], r[1]).value == r[2]
    assert e.get_latest(b"series-0003").ts == want[4 * 120 - 1][1]
    e.trigger_compaction()
    assert recs(e.query(ScanRange.all())) == want
