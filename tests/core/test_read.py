"""The read path (flowdb/_core/read.pyx): get, get_latest, Cursor, compact.

Every rule is checked against a tiny pure-Python model of API.md section 1:
a history of puts, deletes and range deletes with increasing seqs; the
version of a (key, ts) at a snapshot is its op with the greatest seq <=
snapshot; it is live when it is a put, no range delete with a seq in
(version.seq, snapshot] covers its key, and expire_at > now.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flowdb._core import read
from flowdb._core.iterator import VectorSource
from flowdb._core.read import Cursor, RangeDelIndex, compact, get, get_latest
from flowdb._core.record import Record
from flowdb._errors import CorruptionError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NEVER = INT64_MAX
MAX_SEQ = 2**56 - 1
NOW = 1_000_000

PUT, DELETE = 1, 0


def ik(key: bytes, ts: int, seq: int, kind: int = PUT) -> bytes:
    return key + struct.pack(">QQ", ts + 2**63, (seq << 8) | kind)


def put_value(value: bytes, expire_at: int = NEVER) -> bytes:
    return struct.pack("<q", expire_at) + value


# -- the model -----------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    kind: str                 # "put", "del" or "rdel"
    key: bytes                # the start key for "rdel"
    ts: int = 0
    seq: int = 0
    value: bytes = b""
    expire_at: int = NEVER
    end: bytes = b""          # "rdel" only: exclusive


def model_live(ops, snapshot, now=NOW):
    """{(key, ts): Record} of the live records at `snapshot`."""
    version = {}
    for op in ops:
        if op.kind != "rdel" and op.seq <= snapshot:
            cur = version.get((op.key, op.ts))
            if cur is None or op.seq > cur.seq:
                version[(op.key, op.ts)] = op
    rds = [op for op in ops if op.kind == "rdel" and op.seq <= snapshot]
    live = {}
    for (key, ts), op in version.items():
        if op.kind != "put" or op.expire_at <= now:
            continue
        if any(rd.key <= key < rd.end and op.seq < rd.seq for rd in rds):
            continue
        live[(key, ts)] = Record(key, ts, op.value, op.expire_at)
    return live


def model_scan(live, prefix=None, start=None, end=None, ts_lo=INT64_MIN, ts_hi=INT64_MAX):
    out = []
    for (key, ts), r in sorted(live.items()):
        if prefix is not None and not key.startswith(prefix):
            continue
        if start is not None and key < start:
            continue
        if end is not None and key > end:
            continue
        if ts_lo <= ts <= ts_hi:
            out.append(r)
    return out


def model_latest(live, key):
    tss = [ts for (k, ts) in live if k == key]
    return live[(key, max(tss))] if tss else None


def entries_of(ops):
    """(point entries, range deletes) of the ops."""
    entries = []
    rds = []
    for op in ops:
        if op.kind == "put":
            entries.append((ik(op.key, op.ts, op.seq, PUT), put_value(op.value, op.expire_at)))
        elif op.kind == "del":
            entries.append((ik(op.key, op.ts, op.seq, DELETE), b""))
        else:
            rds.append((op.key, op.end, op.seq))
    return entries, rds


def source_of(ops, **kw):
    return VectorSource(*entries_of(ops), **kw)


class History:
    """Ops with seqs in call order; flush() starts a new (newer) source."""

    def __init__(self):
        self.ops = []
        self.segments = [[]]

    def _add(self, **kw):
        op = Op(seq=len(self.ops) + 1, **kw)
        self.ops.append(op)
        self.segments[-1].append(op)
        return op.seq

    def put(self, key, ts, value=b"v", expire_at=NEVER):
        return self._add(kind="put", key=key, ts=ts, value=value, expire_at=expire_at)

    def delete(self, key, ts):
        return self._add(kind="del", key=key, ts=ts)

    def delete_range(self, start, end):
        return self._add(kind="rdel", key=start, end=end)

    def flush(self):
        self.segments.append([])

    @property
    def last_seq(self):
        return len(self.ops)

    def sources(self, **kw):
        """Newest first, as the engine orders them."""
        return [source_of(seg, **kw) for seg in reversed(self.segments)]


def scan(sources, snapshot=MAX_SEQ, now=NOW, **kw):
    return list(Cursor(sources, None, snapshot, now, **kw))


def kts(records):
    return [(r.key, r.ts) for r in records]


# -- get -------------------------------------------------------------------------------

def test_get_missing_key_is_none():
    h = History()
    h.put(b"a", 1)
    assert get(h.sources(), None, MAX_SEQ, NOW, b"b", 1) is None
    assert get(h.sources(), None, MAX_SEQ, NOW, b"a", 2) is None
    assert get([], [], MAX_SEQ, NOW, b"a", 1) is None


def test_get_returns_the_record_fields():
    h = History()
    h.put(b"k\x00ey", -7, b"value\x00", NOW + 5)
    assert get(h.sources(), None, MAX_SEQ, NOW, b"k\x00ey", -7) == Record(b"k\x00ey", -7, b"value\x00", NOW + 5)


def test_get_newest_version_wins_across_sources():
    h = History()
    h.put(b"k", 1, b"old")
    h.flush()
    h.put(b"k", 1, b"new")
    assert get(h.sources(), None, MAX_SEQ, NOW, b"k", 1).value == b"new"


def test_get_newest_version_wins_within_a_source():
    h = History()
    h.put(b"k", 1, b"old")
    h.put(b"k", 1, b"new")
    assert get(h.sources(), None, MAX_SEQ, NOW, b"k", 1).value == b"new"


def test_get_delete_in_newer_source_hides_put_in_older():
    h = History()
    h.put(b"k", 1)
    h.flush()
    h.delete(b"k", 1)
    assert get(h.sources(), None, MAX_SEQ, NOW, b"k", 1) is None


def test_get_put_after_delete_is_visible():
    h = History()
    h.put(b"k", 1, b"first")
    h.delete(b"k", 1)
    h.flush()
    h.put(b"k", 1, b"again")
    assert get(h.sources(), None, MAX_SEQ, NOW, b"k", 1).value == b"again"


def test_get_stops_at_the_first_source_holding_the_key_ts():
    h = History()
    h.put(b"k", 1, b"old")
    h.flush()
    h.put(b"k", 1, b"new")
    newer, older = h.sources()
    broken = VectorSource(older.entries, fail_after=0)   # raises if opened
    assert get([newer, broken], [], MAX_SEQ, NOW, b"k", 1).value == b"new"


def test_get_skips_sources_whose_ts_bounds_exclude_ts():
    h = History()
    h.put(b"k", 1)
    h.flush()
    h.put(b"k", 50)
    newer, older = h.sources()
    broken = VectorSource(newer.entries, fail_after=0)   # ts bounds [50, 50]
    assert get([broken, older], [], MAX_SEQ, NOW, b"k", 1) is not None


def test_get_skips_sources_whose_bloom_excludes_the_key():
    h = History()
    h.put(b"k", 1)
    h.flush()
    h.put(b"other", 1)
    newer, older = h.sources()
    broken = VectorSource(newer.entries, bloom=True, fail_after=0)
    assert get([broken, older], [], MAX_SEQ, NOW, b"k", 1) is not None


def test_get_honours_range_deletes():
    h = History()
    h.put(b"b", 1)
    h.flush()
    h.delete_range(b"a", b"c")
    assert get(h.sources(), None, MAX_SEQ, NOW, b"b", 1) is None


def test_get_range_delete_end_is_exclusive_start_inclusive():
    h = History()
    for k in (b"a", b"b", b"c"):
        h.put(k, 1)
    h.delete_range(b"b", b"c")
    srcs = h.sources()
    assert [get(srcs, None, MAX_SEQ, NOW, k, 1) is not None for k in (b"a", b"b", b"c")] == [True, False, True]


def test_get_put_after_range_delete_is_visible():
    h = History()
    h.put(b"b", 1, b"old")
    h.delete_range(b"a", b"z")
    h.put(b"b", 1, b"new")
    h.put(b"b", 2, b"other")
    srcs = h.sources()
    assert get(srcs, None, MAX_SEQ, NOW, b"b", 1).value == b"new"
    assert get(srcs, None, MAX_SEQ, NOW, b"b", 2).value == b"other"


def test_get_range_delete_newer_than_snapshot_is_ignored():
    h = History()
    s = h.put(b"b", 1)
    h.delete_range(b"a", b"c")
    assert get(h.sources(), None, s, NOW, b"b", 1) is not None
    assert get(h.sources(), None, s + 1, NOW, b"b", 1) is None


def test_get_uses_the_given_range_dels_not_the_sources():
    h = History()
    h.put(b"b", 1)
    h.delete_range(b"a", b"c")
    srcs = h.sources()
    assert get(srcs, [], MAX_SEQ, NOW, b"b", 1) is not None          # [] = none to honour
    assert get(srcs, None, MAX_SEQ, NOW, b"b", 1) is None            # None = the sources'
    idx = RangeDelIndex([(b"b", b"b\x00", 99)])
    assert get(srcs, idx, MAX_SEQ, NOW, b"b", 1) is None


def test_get_snapshot_excludes_newer_seqs():
    h = History()
    s1 = h.put(b"k", 1, b"v1")
    s2 = h.put(b"k", 1, b"v2")
    h.delete(b"k", 1)
    srcs = h.sources()
    assert get(srcs, None, 0, NOW, b"k", 1) is None
    assert get(srcs, None, s1, NOW, b"k", 1).value == b"v1"
    assert get(srcs, None, s2, NOW, b"k", 1).value == b"v2"
    assert get(srcs, None, MAX_SEQ, NOW, b"k", 1) is None


def test_get_snapshot_falls_through_to_an_older_source():
    h = History()
    s1 = h.put(b"k", 1, b"old")
    h.flush()
    h.put(b"k", 1, b"new")
    assert get(h.sources(), None, s1, NOW, b"k", 1).value == b"old"


def test_get_expiry_boundary():
    h = History()
    h.put(b"now", 1, b"x", NOW)
    h.put(b"later", 1, b"x", NOW + 1)
    h.put(b"past", 1, b"x", INT64_MIN)
    srcs = h.sources()
    assert get(srcs, None, MAX_SEQ, NOW, b"now", 1) is None
    assert get(srcs, None, MAX_SEQ, NOW, b"later", 1) is not None
    assert get(srcs, None, MAX_SEQ, NOW, b"past", 1) is None


def test_get_expired_newest_version_does_not_resurrect_older():
    h = History()
    h.put(b"k", 1, b"old", NEVER)
    h.flush()
    h.put(b"k", 1, b"new", NOW - 1)
    assert get(h.sources(), None, MAX_SEQ, NOW, b"k", 1) is None


def test_get_extreme_ts():
    h = History()
    h.put(b"k", INT64_MIN, b"min")
    h.put(b"k", INT64_MAX, b"max")
    srcs = h.sources()
    assert get(srcs, None, MAX_SEQ, NOW, b"k", INT64_MIN).value == b"min"
    assert get(srcs, None, MAX_SEQ, NOW, b"k", INT64_MAX).value == b"max"
    assert get(srcs, None, MAX_SEQ, NOW, b"k", 0) is None


def test_get_snapshot_above_max_seq_is_clamped():
    h = History()
    h.put(b"k", 1)
    assert get(h.sources(), None, 2**64 - 1, NOW, b"k", 1) is not None


def test_get_key_that_is_a_prefix_of_another():
    h = History()
    h.put(b"ab", 1, b"long")
    assert get(h.sources(), None, MAX_SEQ, NOW, b"a", 1) is None
    h.put(b"a", 1, b"short")
    assert get(h.sources(), None, MAX_SEQ, NOW, b"a", 1).value == b"short"


def test_get_corrupt_put_value_raises():
    src = VectorSource([(ik(b"k", 1, 1), b"\x01\x02")])
    with pytest.raises(CorruptionError):
        get([src], [], MAX_SEQ, NOW, b"k", 1)


def test_get_source_error_propagates():
    boom = CorruptionError("bad block", path="000009.sst", offset=7)
    src = VectorSource([(ik(b"k", 1, 1), put_value(b"v"))], fail_after=0, error=boom)
    with pytest.raises(CorruptionError) as e:
        get([src], [], MAX_SEQ, NOW, b"k", 1)
    assert e.value is boom


# -- get_latest ---------------------------------------------------------------------------

def test_get_latest_missing_key_is_none():
    h = History()
    h.put(b"a", 1)
    h.put(b"c", 1)
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"b") is None
    assert get_latest([], [], MAX_SEQ, NOW, b"b") is None


def test_get_latest_returns_the_greatest_ts():
    h = History()
    h.put(b"k", 5, b"five")
    h.flush()
    h.put(b"k", 2, b"two")
    h.flush()
    h.put(b"k", -3, b"neg")
    h.put(b"kk", 100, b"other key")
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"five"


def test_get_latest_skips_a_deleted_newest_version():
    h = History()
    h.put(b"k", 1, b"one")
    h.put(b"k", 9, b"nine")
    h.flush()
    h.delete(b"k", 9)
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"one"


def test_get_latest_skips_expired_newest_versions():
    h = History()
    h.put(b"k", 1, b"one")
    h.put(b"k", 8, b"eight", NOW)
    h.put(b"k", 9, b"nine", NOW - 1)
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"one"


def test_get_latest_skips_range_deleted_versions():
    h = History()
    h.put(b"k", 1, b"one")
    h.put(b"k", 2, b"two")
    h.delete_range(b"k", b"l")
    h.put(b"k", 0, b"zero")
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"zero"


def test_get_latest_overwritten_newest_is_decided_by_its_newest_version():
    h = History()
    h.put(b"k", 5, b"live")
    h.put(b"k", 9, b"old nine")
    h.flush()
    h.delete(b"k", 9)
    h.put(b"k", 9, b"new nine")
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"new nine"


def test_get_latest_respects_the_snapshot():
    h = History()
    s = h.put(b"k", 1, b"one")
    h.put(b"k", 9, b"nine")
    h.delete(b"k", 1)
    srcs = h.sources()
    assert get_latest(srcs, None, s, NOW, b"k").value == b"one"
    assert get_latest(srcs, None, MAX_SEQ, NOW, b"k").value == b"nine"
    assert get_latest(srcs, None, 0, NOW, b"k") is None


def test_get_latest_extreme_ts():
    h = History()
    h.put(b"k", INT64_MIN, b"min")
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"min"
    h.put(b"k", INT64_MAX, b"max")
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k").value == b"max"
    h.delete(b"k", INT64_MAX)
    h.delete(b"k", INT64_MIN)
    assert get_latest(h.sources(), None, MAX_SEQ, NOW, b"k") is None


def test_get_latest_does_not_scan_every_version():
    # 1000 versions; a VectorSource iterator that fails on its 5th move proves
    # the newest live one is found with a handful of seeks.
    entries = [(ik(b"k", ts, ts + 1), put_value(b"%d" % ts)) for ts in range(1000)]
    src = VectorSource(entries, fail_after=4)
    assert get_latest([src], [], MAX_SEQ, NOW, b"k").value == b"999"


def test_get_latest_only_newest_sources_answer_is_resolved():
    h = History()
    h.put(b"k", 3, b"three")
    h.flush()
    h.put(b"k", 7, b"seven")
    newer, older = h.sources()
    # The older source holds only ts 3 < 7: its iterator is positioned once and
    # never asked to resolve (fail_after=1 allows just the seek_for_prev).
    broken = VectorSource(older.entries, fail_after=1)
    assert get_latest([newer, broken], [], MAX_SEQ, NOW, b"k").value == b"seven"


# -- Cursor -------------------------------------------------------------------------------------

def _abc_history():
    h = History()
    for k in (b"a", b"ab", b"b", b"ba", b"c", b"\xff"):
        for ts in (-1, 0, 1):
            h.put(k, ts, k + b"%d" % ts)
    return h


def test_cursor_prefix_empty_is_everything():
    h = _abc_history()
    assert len(scan(h.sources(), prefix=b"")) == 18
    assert scan(h.sources(), prefix=b"") == scan(h.sources())


def test_cursor_returns_key_then_ts_order():
    h = History()
    h.put(b"b", 1)
    h.flush()
    h.put(b"a", 5)
    h.put(b"a", INT64_MIN)
    h.flush()
    h.put(b"a\x00", -1)
    h.put(b"a", -2)
    assert kts(scan(h.sources())) == [(b"a", INT64_MIN), (b"a", -2), (b"a", 5), (b"a\x00", -1), (b"b", 1)]


def test_cursor_prefix_filters_keys():
    h = _abc_history()
    assert {r.key for r in scan(h.sources(), prefix=b"a")} == {b"a", b"ab"}
    assert {r.key for r in scan(h.sources(), prefix=b"b")} == {b"b", b"ba"}
    assert {r.key for r in scan(h.sources(), prefix=b"\xff")} == {b"\xff"}
    assert scan(h.sources(), prefix=b"zz") == []
    assert scan(h.sources(), prefix=b"abc") == []


def test_cursor_key_range_is_inclusive_at_both_ends():
    h = _abc_history()
    assert {r.key for r in scan(h.sources(), start=b"ab", end=b"ba")} == {b"ab", b"b", b"ba"}
    assert {r.key for r in scan(h.sources(), start=b"b", end=b"b")} == {b"b"}


def test_cursor_key_range_open_ends():
    h = _abc_history()
    assert {r.key for r in scan(h.sources(), start=b"c")} == {b"c", b"\xff"}
    assert {r.key for r in scan(h.sources(), end=b"ab")} == {b"a", b"ab"}


def test_cursor_inverted_key_range_is_empty():
    h = _abc_history()
    assert scan(h.sources(), start=b"c", end=b"b") == []


def test_cursor_inverted_ts_range_is_empty():
    h = _abc_history()
    assert scan(h.sources(), ts_lo=1, ts_hi=0) == []


def test_cursor_prefix_and_range_intersect():
    h = _abc_history()
    assert {r.key for r in scan(h.sources(), prefix=b"a", start=b"aa")} == {b"ab"}
    assert scan(h.sources(), prefix=b"b", end=b"a") == []


def test_cursor_ts_bounds_are_inclusive():
    h = _abc_history()
    got = scan(h.sources(), ts_lo=0, ts_hi=1)
    assert {r.ts for r in got} == {0, 1}
    assert len(got) == 12
    assert {r.ts for r in scan(h.sources(), ts_lo=0, ts_hi=0)} == {0}


def test_cursor_negative_and_extreme_ts():
    h = History()
    for ts in (INT64_MAX, 0, -1, INT64_MIN, 1, INT64_MIN + 1, INT64_MAX - 1):
        h.put(b"k", ts)
    assert [r.ts for r in scan(h.sources())] == sorted([INT64_MAX, 0, -1, INT64_MIN, 1,
                                                        INT64_MIN + 1, INT64_MAX - 1])
    assert [r.ts for r in scan(h.sources(), ts_lo=INT64_MAX)] == [INT64_MAX]
    assert [r.ts for r in scan(h.sources(), ts_hi=INT64_MIN)] == [INT64_MIN]
    assert [r.ts for r in scan(h.sources(), ts_lo=-1, ts_hi=0)] == [-1, 0]


def test_cursor_newest_version_wins_and_versions_are_deduplicated():
    h = History()
    h.put(b"k", 1, b"v1")
    h.flush()
    h.put(b"k", 1, b"v2")
    h.flush()
    h.put(b"k", 1, b"v3")
    got = scan(h.sources())
    assert [(r.key, r.ts, r.value) for r in got] == [(b"k", 1, b"v3")]


def test_cursor_deletes_and_puts_ordered_by_seq():
    h = History()
    h.put(b"a", 1)
    h.put(b"b", 1)
    h.flush()
    h.delete(b"a", 1)
    h.delete(b"b", 1)
    h.put(b"b", 1, b"back")
    assert [(r.key, r.value) for r in scan(h.sources())] == [(b"b", b"back")]


def test_cursor_snapshot_excludes_newer_seqs():
    h = History()
    s1 = h.put(b"a", 1, b"old")
    h.put(b"a", 1, b"new")
    h.put(b"b", 1)
    h.delete(b"a", 1)
    srcs = h.sources()
    assert [(r.key, r.value) for r in scan(srcs, snapshot=s1)] == [(b"a", b"old")]
    assert [(r.key, r.value) for r in scan(srcs, snapshot=s1 + 1)] == [(b"a", b"new")]
    assert [r.key for r in scan(srcs)] == [b"b"]
    assert scan(srcs, snapshot=0) == []


def test_cursor_range_deletes_hide_older_seqs_only():
    h = History()
    for k in (b"a", b"b", b"c", b"d"):
        h.put(k, 1)
    h.delete_range(b"b", b"d")
    h.put(b"c", 2)
    h.flush()
    h.put(b"b", 1, b"again")
    got = scan(h.sources())
    assert [(r.key, r.ts, r.value) for r in got] == [
        (b"a", 1, b"v"), (b"b", 1, b"again"), (b"c", 2, b"v"), (b"d", 1, b"v")]


def test_cursor_overlapping_range_deletes_use_the_greatest_covering_seq():
    h = History()
    h.delete_range(b"a", b"z")            # seq 1
    s = h.put(b"m", 1, b"between")        # seq 2: above the first, below the next
    h.delete_range(b"l", b"n")            # seq 3
    h.put(b"k", 1, b"kept")               # seq 4
    h.delete_range(b"b", b"c")            # seq 5
    assert [(r.key, r.value) for r in scan(h.sources())] == [(b"k", b"kept")]
    assert [(r.key, r.value) for r in scan(h.sources(), snapshot=s)] == [(b"m", b"between")]


def test_cursor_expiry_boundary():
    h = History()
    h.put(b"a", 1, b"x", NOW)
    h.put(b"b", 1, b"x", NOW + 1)
    h.put(b"c", 1, b"x", NOW - 1)
    assert [r.key for r in scan(h.sources())] == [b"b"]
    assert [r.key for r in scan(h.sources(), now=NOW - 1)] == [b"a", b"b"]


def test_cursor_ts_window_seeks_instead_of_scanning():
    # 1000 versions below ts_lo per key: the cursor must seek over them.
    h = History()
    for k in (b"a", b"b", b"c"):
        for ts in range(1000):
            h.put(k, ts)
    c = Cursor(h.sources(), None, MAX_SEQ, NOW, ts_lo=998)
    assert kts(c) == [(k, ts) for k in (b"a", b"b", b"c") for ts in (998, 999)]
    assert c.records_read < 40
    assert c.records_returned == 6


def test_cursor_ts_window_skips_past_keys_above_ts_hi():
    h = History()
    for k in (b"a", b"b", b"c"):
        for ts in range(1000):
            h.put(k, ts)
    c = Cursor(h.sources(), None, MAX_SEQ, NOW, ts_hi=1)
    assert kts(c) == [(k, ts) for k in (b"a", b"b", b"c") for ts in (0, 1)]
    assert c.records_read < 40


def test_cursor_start_key_is_sought_not_scanned():
    h = History()
    for i in range(1000):
        h.put(b"k%04d" % i, 0)
    c = Cursor(h.sources(), None, MAX_SEQ, NOW, start=b"k0990", end=b"k0992")
    assert [r.key for r in c] == [b"k0990", b"k0991", b"k0992"]
    assert c.records_read == 4            # three, then the first key beyond end


def test_cursor_skips_sources_outside_the_ts_window():
    h = History()
    h.put(b"k", 1)
    h.flush()
    h.put(b"k", 100)
    newer, older = h.sources()
    broken = VectorSource(newer.entries, fail_after=0)
    assert kts(scan([broken, older], ts_hi=50)) == [(b"k", 1)]


def test_cursor_next_batch_and_next_mix():
    h = _abc_history()
    expected = scan(h.sources())
    c = Cursor(h.sources(), None, MAX_SEQ, NOW)
    got = [next(c)]
    got += c.next_batch(5)
    got.append(next(c))
    got += c.next_batch(100)
    assert got == expected
    assert c.next_batch(10) == []
    assert list(c) == []
    assert c.records_returned == len(expected)


def test_cursor_next_batch_of_zero_is_empty():
    h = _abc_history()
    c = Cursor(h.sources(), None, MAX_SEQ, NOW)
    assert c.next_batch(0) == []
    assert len(c.next_batch(1000)) == 18


def test_cursor_reuses_nothing_between_records():
    h = History()
    h.put(b"k", 1, b"one")
    h.put(b"k", 2, b"two")
    a, b = scan(h.sources())
    assert (a.key, a.value, b.key, b.value) == (b"k", b"one", b"k", b"two")
    a.value = b"changed"
    assert b.value == b"two"


def test_cursor_large_values_cross_batch_budget():
    h = History()
    for i in range(8):
        h.put(b"k%d" % i, 0, bytes([i]) * 100_000)
    got = Cursor(h.sources(), None, MAX_SEQ, NOW).next_batch(100)
    assert [r.value[:1] for r in got] == [bytes([i]) for i in range(8)]
    assert all(len(r.value) == 100_000 for r in got)


def test_cursor_is_lazy_and_close_releases():
    h = _abc_history()
    broken = VectorSource(h.sources()[0].entries, fail_after=0)
    c = Cursor([broken], None, MAX_SEQ, NOW)     # nothing read yet
    c.close()
    assert list(c) == []
    with Cursor(h.sources(), None, MAX_SEQ, NOW) as c2:
        assert next(c2).key == b"a"
    assert c2.next_batch(10) == []


def test_cursor_source_error_propagates():
    boom = CorruptionError("bad block", path="000003.sst", offset=99)
    entries = [(ik(b"k%d" % i, 0, 1), put_value(b"v")) for i in range(10)]
    src = VectorSource(entries, fail_after=5, error=boom)
    c = Cursor([src], None, MAX_SEQ, NOW)
    with pytest.raises(CorruptionError) as e:
        list(c)
    assert e.value is boom


def test_cursor_corrupt_put_value_raises():
    src = VectorSource([(ik(b"k", 1, 1), b"short")])
    with pytest.raises(CorruptionError):
        scan([src])


def test_cursor_over_memtable():
    from flowdb._core.batch import encode_deletes, encode_puts, encode_range_delete
    from flowdb._core.memtable import MemTable

    mem = MemTable()
    payload, n, _ = encode_puts([Record(b"a", 1, b"a1"), Record(b"b", 1, b"b1"),
                                 Record(b"b", 2, b"b2", NOW - 1), Record(b"c", 1, b"c1")])
    mem.apply(payload, 1)
    payload, _ = encode_deletes([(b"a", 1)])
    mem.apply(payload, 5)
    payload, _ = encode_range_delete(b"c", b"d")
    mem.apply(payload, 6)
    payload, _, _ = encode_puts([Record(b"a", 1, b"again")])
    mem.apply(payload, 7)
    assert [(r.key, r.ts, r.value) for r in Cursor([mem], None, 7, NOW)] == [
        (b"a", 1, b"again"), (b"b", 1, b"b1")]
    assert [(r.key, r.value) for r in Cursor([mem], None, 4, NOW)] == [
        (b"a", b"a1"), (b"b", b"b1"), (b"c", b"c1")]
    assert get([mem], None, 7, NOW, b"c", 1) is None
    assert get([mem], None, 5, NOW, b"c", 1).value == b"c1"
    assert get_latest([mem], None, 7, NOW, b"b").value == b"b1"
    assert get_latest([mem], None, 7, NOW, b"a").value == b"again"


def test_cursor_snapshot_is_isolated_from_concurrent_memtable_writes():
    import threading

    from flowdb._core.batch import encode_deletes, encode_puts
    from flowdb._core.memtable import MemTable

    mem = MemTable()
    payload, n, _ = encode_puts([Record(b"k%05d" % i, 0, b"v") for i in range(20_000)])
    mem.apply(payload, 1)
    snapshot = n
    stop = threading.Event()

    def writer():
        seq = snapshot + 1
        i = 0
        while not stop.is_set():
            payload, _ = encode_deletes([(b"k%05d" % (i % 20_000), 0)])
            mem.apply(payload, seq)
            payload, m, _ = encode_puts([Record(b"k%05d" % (i % 20_000), 1, b"new")])
            mem.apply(payload, seq + 1)
            seq += 2
            i += 7

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(5):
            got = []
            c = Cursor([mem], None, snapshot, NOW)
            while batch := c.next_batch(100):
                got += batch
            assert [(r.key, r.ts) for r in got] == [(b"k%05d" % i, 0) for i in range(20_000)]
    finally:
        stop.set()
        t.join()


# -- RangeDelIndex -------------------------------------------------------------------------------

def test_range_del_index_drops_empty_and_inverted_ranges():
    idx = RangeDelIndex([(b"b", b"b", 5), (b"c", b"a", 6), (b"a", b"c", 2)])
    assert idx.range_dels == [(b"a", b"c", 2)]
    assert idx.covering(b"b") == 2
    assert idx.covering(b"c") == 0


def test_range_del_index_snapshot_filter():
    idx = RangeDelIndex([(b"a", b"c", 2), (b"a", b"c", 9)], 5)
    assert idx.max_seq == 2
    assert idx.covering(b"a") == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=2), st.binary(max_size=2), st.integers(1, 30)),
                max_size=12),
       st.binary(max_size=3), st.integers(0, 40))
def test_range_del_index_matches_brute_force(rds, key, snapshot):
    idx = RangeDelIndex(rds)
    expected = max((q for s, e, q in rds if s <= key < e and q <= snapshot), default=0)
    assert idx.covering(key, snapshot) == expected


# -- the model, with hypothesis --------------------------------------------------------------

KEYS = [b"\x00", b"a", b"a\x00", b"ab", b"b", b"ba", b"\xff"]
TSS = [INT64_MIN, INT64_MIN + 1, -5, -1, 0, 1, 2, 7, INT64_MAX - 1, INT64_MAX]
EXPIRES = [NEVER, NEVER, NEVER, NOW - 1, NOW, NOW + 1, INT64_MIN]
FILTER_KEYS = [None, b"\x00", b"a", b"aa", b"ab", b"b", b"c", b"\xff"]

_put = st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from(TSS),
                 st.binary(max_size=3), st.sampled_from(EXPIRES))
_del = st.tuples(st.just("del"), st.sampled_from(KEYS), st.sampled_from(TSS))
_rdel = st.tuples(st.just("rdel"), st.sampled_from(KEYS + [b"c"]), st.sampled_from(KEYS + [b"c"]))


@st.composite
def histories(draw, max_ops=40):
    raw = draw(st.lists(st.one_of(_put, _put, _put, _del, _rdel), max_size=max_ops))
    ops = []
    for i, t in enumerate(raw, 1):
        if t[0] == "put":
            ops.append(Op("put", t[1], t[2], i, t[3], t[4]))
        elif t[0] == "del":
            ops.append(Op("del", t[1], t[2], i))
        else:
            ops.append(Op("rdel", t[1], seq=i, end=t[2]))
    nsrc = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(ops)), min_size=nsrc - 1, max_size=nsrc - 1)))
    bounds = [0] + cuts + [len(ops)]
    segments = [ops[bounds[i]:bounds[i + 1]] for i in range(nsrc)]
    return ops, segments


def sources_of(segments, bloom=False):
    return [source_of(seg, bloom=bloom) for seg in reversed(segments)]


snapshots = st.one_of(st.integers(0, 42), st.just(MAX_SEQ), st.just(2**64 - 1))


@settings(max_examples=400, deadline=None)
@given(histories(), snapshots, st.booleans(),
       st.sampled_from([None, b"", b"a", b"ab", b"b", b"\xff", b"c"]),
       st.sampled_from(FILTER_KEYS), st.sampled_from(FILTER_KEYS),
       st.sampled_from(TSS), st.sampled_from(TSS))
def test_model_cursor(history, snapshot, bloom, prefix, start, end, ts_lo, ts_hi):
    ops, segments = history
    live = model_live(ops, snapshot)
    c = Cursor(sources_of(segments, bloom), None, snapshot, NOW, prefix, start, end, ts_lo, ts_hi)
    assert list(c) == model_scan(live, prefix, start, end, ts_lo, ts_hi)


@settings(max_examples=400, deadline=None)
@given(histories(), snapshots, st.booleans(),
       st.sampled_from([None, b"", b"a", b"ab", b"b", b"\xff", b"c"]),
       st.sampled_from(FILTER_KEYS), st.sampled_from(FILTER_KEYS),
       st.sampled_from(TSS), st.sampled_from(TSS), st.integers(1, 5))
def test_model_cursor_reverse(history, snapshot, bloom, prefix, start, end, ts_lo, ts_hi, batch):
    ops, segments = history
    live = model_live(ops, snapshot)
    c = Cursor(sources_of(segments, bloom), None, snapshot, NOW, prefix, start, end, ts_lo, ts_hi,
               reverse=True)
    got = []
    while True:                       # small batches: each resumes where the last stopped
        part = c.next_batch(batch)
        if not part:
            break
        got += part
    assert got == model_scan(live, prefix, start, end, ts_lo, ts_hi)[::-1]


def test_reverse_cursor_is_lazy():
    h = History()
    for i in range(5000):
        h.put(b"k%05d" % i, 0)
        if i % 1000 == 0:
            h.flush()
    c = Cursor(h.sources(), None, MAX_SEQ, NOW, reverse=True)
    assert kts(c.next_batch(2)) == [(b"k04999", 0), (b"k04998", 0)]
    assert c.records_read <= 4            # one landing per record, not the whole range


def test_reverse_cursor_long_keys_and_many_versions():
    h = History()
    for i in range(300):
        h.put(b"k%04d" % (i % 50), i // 50, b"v%d" % i)
        if i % 7 == 0:
            h.flush()
    h.delete(b"k0049", 5)
    h.delete_range(b"k0010", b"k0020")
    want = [(r.key, r.ts) for r in scan(h.sources())][::-1]
    assert kts(scan(h.sources(), reverse=True)) == want
    assert kts(scan(h.sources(), prefix=b"k004", reverse=True)) == [kt for kt in want if kt[0].startswith(b"k004")]
    assert kts(scan(h.sources(), prefix=b"\xff", reverse=True)) == []


@settings(max_examples=200, deadline=None)
@given(histories(), snapshots, st.booleans())
def test_model_get(history, snapshot, bloom):
    ops, segments = history
    live = model_live(ops, snapshot)
    srcs = sources_of(segments, bloom)
    rds = [rd for s in srcs for rd in s.range_dels]
    for key in KEYS:
        for ts in TSS:
            assert get(srcs, rds, snapshot, NOW, key, ts) == live.get((key, ts)), (key, ts)


@settings(max_examples=300, deadline=None)
@given(histories(), snapshots, st.booleans())
def test_model_get_latest(history, snapshot, bloom):
    ops, segments = history
    live = model_live(ops, snapshot)
    srcs = sources_of(segments, bloom)
    idx = RangeDelIndex([rd for s in srcs for rd in s.range_dels])
    for key in KEYS:
        assert get_latest(srcs, idx, snapshot, NOW, key) == model_latest(live, key), key


# -- point reads over real sources (Source.find_version / find_floor) ---------------------

def real_source_of(ops, kind, directory, name, block_size=64, bloom=10):
    """The ops as a MemTable ("mem") or an SSTable ("table"), seqs kept."""
    from flowdb._core.batch import encode_deletes, encode_puts, encode_range_delete
    from flowdb._core.block_cache import BlockCache
    from flowdb._core.memtable import MemTable
    from flowdb._core.table import TableBuilder, TableReader

    if kind == "mem":
        mem = MemTable()
        for op in ops:
            if op.kind == "put":
                payload = encode_puts([Record(op.key, op.ts, op.value, op.expire_at)])[0]
            elif op.kind == "del":
                payload = encode_deletes([(op.key, op.ts)])[0]
            else:
                payload = encode_range_delete(op.key, op.end)[0]
            mem.apply(payload, op.seq)
        return mem
    path = os.path.join(directory, name)
    b = TableBuilder(path, block_size, bloom)
    points, rds = entries_of(ops)
    for k, v in sorted(points, key=lambda kv: (kv[0][:-16], kv[0][-16:-8], -fdb_seq(kv[0]))):
        b.add(k, v)
    for start, end, seq in rds:
        b.add_range_del(start, end, seq)
    b.finish()
    return TableReader(path, int(name.split(".")[0]), BlockCache(1 << 20))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories(), snapshots,
       st.lists(st.sampled_from(["mem", "table"]), min_size=4, max_size=4),
       st.sampled_from([64, 200, 4096]))
def test_model_point_reads_over_memtables_and_tables(tmp_path_factory, history, snapshot, kinds,
                                                     block_size):
    ops, segments = history
    live = model_live(ops, snapshot)
    directory = str(tmp_path_factory.mktemp("point"))
    srcs = [real_source_of(seg, kinds[i], directory, "%06d.sst" % (i + 1), block_size)
            for i, seg in reversed(list(enumerate(segments)))]
    reader = read.PointReader(srcs)
    for key in KEYS:
        for ts in TSS:
            assert get(srcs, None, snapshot, NOW, key, ts) == live.get((key, ts)), (key, ts)
        assert get_latest(srcs, None, snapshot, NOW, key) == model_latest(live, key), key
    # PointReader reads the clock itself: at any real "now", NOW +- 1 has expired.
    live = model_live(ops, snapshot, now=2**62)
    for key in KEYS:
        for ts in TSS:
            assert reader.get(key, ts, snapshot) == live.get((key, ts)), (key, ts)
        assert reader.get_latest(key, snapshot) == model_latest(live, key), key


def test_point_reader_sees_range_deletes_added_to_the_live_source_later():
    from flowdb._core.batch import encode_puts, encode_range_delete
    from flowdb._core.memtable import MemTable

    mem = MemTable()
    mem.apply(encode_puts([Record(b"b", 1, b"new")])[0], 3)
    older = source_of([Op("put", b"a", 1, 1, b"a1"), Op("put", b"b", 2, 2, b"b2")])
    reader = read.PointReader([mem, older], older.range_dels, mem)
    assert reader.get(b"a", 1, 10).value == b"a1"
    mem.apply(encode_range_delete(b"a", b"c")[0], 4)
    assert reader.get(b"a", 1, 10) is None
    assert reader.get(b"a", 1, 3).value == b"a1"          # an older snapshot does not see it
    assert reader.get_latest(b"b", 10) is None
    mem.apply(encode_puts([Record(b"b", 0, b"after")])[0], 5)
    assert reader.get_latest(b"b", 10).value == b"after"


def test_point_reader_remembers_get_latest_only_for_snapshots_that_see_every_table_entry(
        tmp_path):
    """get_latest's remembered answers (PointReader._get_latest) are the
    tables' answer at a snapshot seeing all of their entries: an older
    snapshot is answered from the tables, before and after one was kept."""
    ops = [Op("put", b"k", 1, 1, b"one"), Op("put", b"k", 2, 2, b"two")]
    reader = read.PointReader([real_source_of(ops, "table", str(tmp_path), "000001.sst")])
    for snapshot, want in [(1, b"one"), (2, b"two"), (2, b"two"), (1, b"one"), (9, b"two")]:
        assert reader.get_latest(b"k", snapshot).value == want, snapshot
    assert reader.latest_hits == 2          # the second and the last read at >= 2


def test_point_reader_remembers_no_answer_a_memtable_has_a_say_in(tmp_path):
    from flowdb._core.batch import encode_puts, encode_range_delete
    from flowdb._core.memtable import MemTable

    mem = MemTable()
    table = real_source_of([Op("put", b"k", 1, 1, b"table"), Op("put", b"j", 1, 2, b"j")],
                           "table", str(tmp_path), "000001.sst")
    reader = read.PointReader([mem, table], table.range_dels, mem)
    for _ in range(2):
        assert reader.get_latest(b"k", 10).value == b"table"
    assert reader.latest_hits == 1
    mem.apply(encode_puts([Record(b"k", 0, b"older")])[0], 3)
    assert reader.get_latest(b"k", 10).value == b"table"    # the memtable was asked
    assert reader.latest_hits == 1
    mem.apply(encode_range_delete(b"j", b"k")[0], 4)
    assert reader.get_latest(b"j", 10) is None
    assert reader.get_latest(b"j", 3).value == b"j"         # older than the range delete
    assert reader.latest_hits == 1


def test_point_reads_release_what_they_pin():
    import sys

    from flowdb._core.batch import encode_puts
    from flowdb._core.memtable import MemTable

    mem = MemTable()                    # a memtable's find_* pin the memtable itself
    mem.apply(encode_puts([Record(b"k", ts, b"v") for ts in range(5)])[0], 1)
    reader = read.PointReader([mem, source_of([Op("put", b"k", 9, 1, b"old")])])
    before = sys.getrefcount(mem)
    for _ in range(100):
        assert reader.get_latest(b"k", 3).ts == 9 and reader.get(b"k", 2, 9).value == b"v"
        assert reader.get_latest(b"absent", MAX_SEQ) is None
    assert sys.getrefcount(mem) == before


def test_point_reader_checks_its_arguments():
    reader = read.PointReader([source_of([Op("put", b"k", 1, 1, b"v")])])
    assert reader.get("k", 1, MAX_SEQ).value == b"v"       # str keys are UTF-8, as in Record
    with pytest.raises(ValueError):
        reader.get(b"", 1, MAX_SEQ)
    with pytest.raises(TypeError):
        reader.get(b"k", True, MAX_SEQ)
    with pytest.raises(TypeError):
        reader.get_latest(1, MAX_SEQ)
    with pytest.raises(TypeError):
        read.PointReader([object()])


def test_point_reader_counts_reads_and_latency():
    from flowdb._core.histogram import LatencyHistogram

    hist = LatencyHistogram()
    stats = read.ReadStats(hist)
    reader = read.PointReader([source_of([Op("put", b"k", 1, 1, b"v")])])
    assert reader.get(b"k", 1, MAX_SEQ, stats).value == b"v"
    assert reader.get(b"k", 2, MAX_SEQ, stats) is None
    assert reader.get_latest(b"k", MAX_SEQ, stats).value == b"v"
    assert reader.get(b"k", 1, MAX_SEQ) is not None        # no stats: not counted
    assert stats.records_read == 2 and hist.count == 3


def test_table_point_read_skips_a_block_outside_its_ts_bounds(tmp_path):
    ops = [Op("put", b"k", ts, ts + 1, b"v%d" % ts) for ts in range(0, 400, 10)]
    table = real_source_of(ops, "table", str(tmp_path), "000001.sst", block_size=1)
    assert table.num_data_blocks == len(ops)                    # one entry per block
    assert get([table], None, MAX_SEQ, NOW, b"k", 15) is None   # between two blocks' bounds
    assert get([table], None, MAX_SEQ, NOW, b"k", 5) is None
    assert get([table], None, MAX_SEQ, NOW, b"k", 395) is None
    assert table.blocks_loaded == 0
    assert get([table], None, MAX_SEQ, NOW, b"k", 390).value == b"v390"
    assert get_latest([table], None, MAX_SEQ, NOW, b"k").value == b"v390"
    assert get_latest([table], None, 41, NOW, b"k").value == b"v40"     # seq = ts + 1


@pytest.mark.parametrize("block_size", [1, 64, 4096])
def test_table_get_latest_versions_spanning_blocks_and_restarts(tmp_path, block_size):
    # 40 versions of (k, 5) (seqs 11..50) after k at ts 1..4 (seqs 1..4): the
    # versions cross restart points and, with small blocks, blocks; every
    # snapshot picks its own newest version, or an older ts when it sees none.
    ops = [Op("put", b"k", ts, ts, b"old%d" % ts) for ts in range(1, 5)]
    ops += [Op("put", b"k", 5, seq, b"v%d" % seq) for seq in range(11, 51)]
    ops += [Op("put", b"l", 0, 60, b"next key")]
    table = real_source_of(ops, "table", str(tmp_path), "000001.sst", block_size=block_size)
    for snapshot in [2, 4, 10, 11, 12, 27, 49, 50, MAX_SEQ]:
        want = model_latest(model_live(ops, snapshot), b"k")
        assert get_latest([table], None, snapshot, NOW, b"k") == want, snapshot
        assert read.PointReader([table]).get_latest(b"k", snapshot) == want, snapshot


def test_table_point_read_fill_cache_false_leaves_the_cache_alone(tmp_path):
    ops = [Op("put", b"k%02d" % i, 1, i + 1, b"v") for i in range(40)]
    table = real_source_of(ops, "table", str(tmp_path), "000001.sst", block_size=64)
    assert get([table], None, MAX_SEQ, NOW, b"k07", 1, fill_cache=False).value == b"v"
    assert get_latest([table], None, MAX_SEQ, NOW, b"k08", fill_cache=False).value == b"v"
    assert table.block_cache.usage == 0
    assert get([table], None, MAX_SEQ, NOW, b"k07", 1).value == b"v"
    assert table.block_cache.usage > 0


def test_table_point_read_after_release_meta(tmp_path):
    ops = [Op("put", b"k%02d" % i, 1, i + 1, b"v%d" % i) for i in range(40)]
    table = real_source_of(ops, "table", str(tmp_path), "000001.sst", block_size=64)
    table.release_meta()
    assert get([table], None, MAX_SEQ, NOW, b"k07", 1).value == b"v7"
    table.release_meta()
    assert get_latest([table], None, MAX_SEQ, NOW, b"k39").value == b"v39"


# -- compaction -----------------------------------------------------------------------------------

class Outputs:
    """new_builder() for compact(): numbered tables in a directory."""

    def __init__(self, directory, block_size=128):
        from flowdb._core.table import TableBuilder
        self._builder = TableBuilder
        self.dir = directory
        self.block_size = block_size
        self.paths = []

    def __call__(self):
        path = os.path.join(self.dir, "%06d.sst" % (len(self.paths) + 1))
        self.paths.append(path)
        return self._builder(path, self.block_size, 10)

    def readers(self):
        from flowdb._core.table import TableReader
        return [TableReader(p, i + 1) for i, p in enumerate(self.paths) if os.path.exists(p)]


def run_compact(sources, directory, bottommost, smallest=MAX_SEQ, target=1 << 30, range_dels=None,
                now=NOW):
    out = Outputs(directory)
    stats = {}
    results = compact(sources, range_dels, out, target, bottommost, now, smallest, stats)
    readers = out.readers()
    assert len(readers) == len(results)
    return readers, results, stats


def table_entries(reader):
    it = reader.new_iterator()
    it.seek_to_first()
    return list(it.entries())


def test_compact_bottommost_drops_tombstones_expired_and_shadowed(tmp_path):
    h = History()
    h.put(b"a", 1, b"old")
    h.put(b"b", 1, b"deleted")
    h.put(b"c", 1, b"expired", NOW)
    h.put(b"d", 1, b"live", NOW + 1)
    h.put(b"e", 1, b"range deleted")
    h.flush()
    h.put(b"a", 1, b"new")
    h.delete(b"b", 1)
    h.delete(b"zz", 5)                     # a tombstone of nothing
    h.delete_range(b"e", b"f")
    readers, results, stats = run_compact(h.sources(), tmp_path, bottommost=True)
    assert len(readers) == 1
    assert [(k[:-16], v[8:]) for k, v in table_entries(readers[0])] == [(b"a", b"new"), (b"d", b"live")]
    assert readers[0].range_dels == []
    assert stats == {"entries_in": 8, "entries_out": 2, "dropped_tombstones": 2,
                     "dropped_expired": 1, "dropped_versions": 2, "dropped_deleted": 1}
    assert {k: results[0][k] for k in stats} == stats


def test_compact_not_bottommost_keeps_tombstones_and_expired(tmp_path):
    h = History()
    h.put(b"a", 1, b"old")
    h.put(b"c", 1, b"expired", NOW)
    h.flush()
    h.put(b"a", 1, b"new")
    h.delete(b"b", 1)
    readers, _, stats = run_compact(h.sources(), tmp_path, bottommost=False)
    got = [(k[:-16], k[-1], v[8:]) for k, v in table_entries(readers[0])]
    assert got == [(b"a", PUT, b"new"), (b"b", DELETE, b""), (b"c", PUT, b"expired")]
    assert stats["dropped_versions"] == 1
    assert stats["dropped_tombstones"] == stats["dropped_expired"] == 0


def test_compact_not_bottommost_tombstone_still_hides_a_lower_level(tmp_path):
    h = History()
    h.put(b"k", 1, b"lower")                # stays in the lower level
    h.flush()
    h.put(b"k", 1, b"mid", NOW - 1)         # expired
    h.put(b"j", 1, b"j")
    h.flush()
    h.delete(b"j", 1)
    newest, mid, lower = h.sources()
    readers, _, _ = run_compact([newest, mid], tmp_path, bottommost=False)
    assert scan(readers + [lower]) == []


def test_compact_not_bottommost_writes_range_dels_and_drops_what_they_hide(tmp_path):
    h = History()
    h.put(b"b", 1, b"lower")                # in a lower level, outside the compaction
    h.flush()
    h.put(b"b", 2, b"hidden")
    h.put(b"x", 1, b"kept")
    h.delete_range(b"a", b"c")
    lower_src = h.sources()[1]
    upper_src = h.sources()[0]
    readers, _, stats = run_compact([upper_src], tmp_path, bottommost=False)
    assert stats["dropped_deleted"] == 1
    assert [k[:-16] for k, _ in table_entries(readers[0])] == [b"x"]
    assert readers[0].range_dels == [(b"a", b"c", 4)]
    assert kts(scan(readers + [lower_src])) == [(b"x", 1)]


def test_compact_keeps_versions_a_snapshot_needs(tmp_path):
    h = History()
    h.put(b"k", 1, b"v1")
    s = h.put(b"k", 1, b"v2")
    h.put(b"k", 1, b"v3")
    h.delete(b"k", 1)
    h.put(b"j", 1)
    h.delete_range(b"j", b"k")
    readers, _, _ = run_compact(h.sources(), tmp_path, bottommost=True, smallest=s)
    assert [v[8:] for k, v in table_entries(readers[0]) if k[-1] == PUT and k[0:1] == b"k"] == [b"v3", b"v2"]
    for snap in range(s, h.last_seq + 1):
        assert scan(readers, snapshot=snap) == model_scan(model_live(h.ops, snap))


def test_compact_cuts_outputs_between_user_keys(tmp_path):
    h = History()
    for i in range(50):
        for ts in range(3):
            h.put(b"key%03d" % i, ts, b"x" * 100)
    readers, results, stats = run_compact(h.sources(), tmp_path, bottommost=True, target=2000)
    assert len(readers) > 3
    seen = set()
    for r in readers:
        keys = {k[:-16] for k, _ in table_entries(r)}
        assert not keys & seen
        seen |= keys
    assert len(seen) == 50
    assert sum(r["entries_out"] for r in results) == stats["entries_out"] == 150
    assert scan(readers) == scan(h.sources())


def test_compact_cuts_a_huge_key_between_timestamps(tmp_path):
    h = History()
    for ts in range(200):
        h.put(b"one", ts, b"x" * 100)
        h.put(b"one", ts, b"y" * 100)           # two versions of every (key, ts)
    readers, _, _ = run_compact(h.sources(), tmp_path, bottommost=True, target=2000)
    assert len(readers) > 3
    assert sum(len(table_entries(r)) for r in readers) == 200
    assert [r.value[:1] for r in scan(readers)] == [b"y"] * 200


def test_compact_everything_dropped_returns_no_outputs(tmp_path):
    h = History()
    h.put(b"a", 1, b"x", NOW)
    h.put(b"b", 1)
    h.delete(b"b", 1)
    readers, results, stats = run_compact(h.sources(), tmp_path, bottommost=True)
    assert results == [] and readers == []
    assert stats["entries_in"] == 3
    assert stats["dropped_expired"] == 1
    assert stats["dropped_tombstones"] == 1
    assert stats["dropped_versions"] == 1
    assert os.listdir(tmp_path) == []


def test_compact_range_dels_only_output(tmp_path):
    h = History()
    h.delete_range(b"a", b"b")
    readers, results, _ = run_compact(h.sources(), tmp_path, bottommost=False)
    assert len(results) == 1
    assert readers[0].range_dels == [(b"a", b"b", 1)]
    assert table_entries(readers[0]) == []


def test_compact_of_nothing_returns_nothing(tmp_path):
    readers, results, stats = run_compact([VectorSource()], tmp_path, bottommost=True)
    assert results == [] and stats["entries_in"] == 0


def test_compact_input_error_abandons_the_output(tmp_path):
    boom = CorruptionError("bad block")
    entries = [(ik(b"k%d" % i, 0, 1), put_value(b"v")) for i in range(10)]
    out = Outputs(tmp_path)
    with pytest.raises(CorruptionError) as e:
        compact([VectorSource(entries, fail_after=6, error=boom)], None, out, 1 << 30, True, NOW, MAX_SEQ)
    assert e.value is boom
    assert os.listdir(tmp_path) == []


def test_compact_new_builder_error_propagates(tmp_path):
    def new_builder():
        raise OSError("disk full")
    h = History()
    h.put(b"a", 1)
    with pytest.raises(OSError, match="disk full"):
        compact(h.sources(), None, new_builder, 1 << 30, True, NOW, MAX_SEQ)


def test_compact_new_builder_must_return_a_table_builder(tmp_path):
    h = History()
    h.put(b"a", 1)
    with pytest.raises(TypeError):
        compact(h.sources(), None, lambda: object(), 1 << 30, True, NOW, MAX_SEQ)


def test_compact_corrupt_put_value_raises_and_abandons(tmp_path):
    src = VectorSource([(ik(b"a", 1, 1), put_value(b"ok")), (ik(b"b", 1, 1), b"bad")])
    with pytest.raises(CorruptionError):
        compact([src], None, Outputs(tmp_path), 1 << 30, True, NOW, MAX_SEQ)
    assert os.listdir(tmp_path) == []


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories(), st.booleans(), st.integers(0, 42), st.sampled_from([200, 1 << 30]))
def test_model_compact_then_read(history, bottommost, smallest, target):
    ops, segments = history
    last = len(ops)
    smallest = min(smallest, last)
    srcs = sources_of(segments)
    if bottommost:
        upper, lower = srcs, []
    else:
        # Compact the newer half; the older sources stay below, as a lower level.
        k = max(1, len(srcs) // 2)
        upper, lower = srcs[:k], srcs[k:]
    with tempfile.TemporaryDirectory() as d:
        readers, results, stats = run_compact(upper, d, bottommost, smallest, target)
        after = readers + lower
        for snap in sorted({smallest, (smallest + last) // 2, last, MAX_SEQ}):
            live = model_live(ops, snap)
            assert scan(after, snapshot=snap) == model_scan(live)
            for key in KEYS:
                assert get_latest(after, None, snap, NOW, key) == model_latest(live, key)
            for (key, ts), r in live.items():
                assert get(after, None, snap, NOW, key, ts) == r
        assert stats["entries_out"] == sum(len(table_entries(r)) for r in readers)
        if bottommost:
            assert all(k[-1] == PUT or fdb_seq(k) > smallest
                       for r in readers for k, _ in table_entries(r))


def fdb_seq(ikey):
    return struct.unpack(">Q", ikey[-8:])[0] >> 8
