"""The whole engine against a dict model under random operations (hypothesis).

Model: {(key bytes, ts): (value, expire_at)}; a record is visible while
expire_at > now (wall clock, microseconds).  Timestamps and expiries are
chosen so that no record's visibility can change while a test runs: every
expire_at is either in the past or at least an hour ahead of the module's
BASE time (runs must stay under ~1 hour).

FLOWDB_FULL=1 runs many more examples and steps.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule)

import flowdb
from flowdb import Engine, Query, ReadOptions, Record, ScanRange, SyncMode
from helpers.common import FULL, backend, INT64_MAX, INT64_MIN, NEVER, now_us, rec, recs

NotFoundError = flowdb.NotFoundError

SEC = 1_000_000
HOUR = 3600 * SEC
BASE = now_us()

KEYS = [b"\x00", b"\x00\x00", b"\x00\xff", b"\xff", b"\xff\xff", b"a", b"a\x00b", b"a\x00",
        b"ab", b"b", "a", "é", "k1", "k\x00", "b\xff"]
PREFIXES = [b"", "", b"a", "a", b"\x00", b"\xff", b"a\x00", b"k", b"\xc3", "é", b"zz"]
TS = [INT64_MIN, INT64_MIN + 1, -10**12, -1, 0, 1, 7, 10**6,
      BASE - 3 * HOUR, BASE - HOUR // 2, BASE + HOUR, BASE + 24 * HOUR,
      INT64_MAX - 1, INT64_MAX]
# own expire_at values: never, long past, or at least hours ahead
EXPIRES = [NEVER, NEVER, NEVER, 0, -1, INT64_MIN, BASE - HOUR, BASE + 6 * HOUR, INT64_MAX - 1]
# TTLs: with the TS above, ts + ttl is never within an hour of BASE
TTLS = [1, 60, 2 * 3600, 10**6, 2**40 // SEC, (INT64_MAX // SEC)]

keys = st.sampled_from(KEYS)
tss = st.sampled_from(TS)
values = st.one_of(
    st.binary(max_size=12),
    st.builds(lambda n, b: b * n, st.integers(500, 6000), st.binary(min_size=1, max_size=2)),
)
records = st.tuples(keys, tss, values, st.sampled_from(EXPIRES))
batches = st.lists(records, min_size=0, max_size=12)


def kb(k) -> bytes:
    return k.encode("utf-8") if isinstance(k, str) else k


def overflow(ts, ttl):
    return ts + ttl * SEC > INT64_MAX


def settings_for(machine_examples, steps):
    if FULL:
        machine_examples, steps = machine_examples * 10, steps * 2
    return settings(max_examples=machine_examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


class EngineModel(RuleBasedStateMachine):
    """Drives an Engine and the model with the same operations."""

    default_ttl = None

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="flowdb-model-")
        self.config = dict(auto_background=False, wal_sync_mode=SyncMode.ALWAYS,
                           memtable_size_mb=0.05, compaction_threshold=2,
                           default_ttl_secs=self.default_ttl,
                           storage_backend=backend())
        self.engine = Engine.open(os.path.join(self.dir, "db"), **self.config)
        self.model = {}            # (key, ts) -> (value, expire_at)
        self.ever = set()          # every (key, ts) ever written, for deletes/gets
        self.scans = []            # [iterator, expected tuples, position, description]

    def teardown(self):
        try:
            self.engine.shutdown()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------- model reads

    def visible(self):
        now = now_us()
        return sorted((k, t, v, e) for (k, t), (v, e) in self.model.items() if e > now)

    def expect(self, key_pred=lambda k: True, lo=INT64_MIN, hi=INT64_MAX):
        return [r for r in self.visible() if key_pred(r[0]) and lo <= r[1] <= hi]

    def expect_get(self, key, ts):
        v = self.model.get((kb(key), ts))
        if v is None or v[1] <= now_us():
            return None
        return (kb(key), ts, v[0], v[1])

    def expect_latest(self, key):
        live = [r for r in self.visible() if r[0] == kb(key)]
        return live[-1] if live else None

    # ----------------------------------------------------------- writes

    def _expire_for_write_batch(self, ts, own):
        if own == NEVER and self.default_ttl is not None:
            return ts + self.default_ttl * SEC
        return own

    def _apply(self, batch):
        for key, ts, value, exp in batch:
            self.model[(kb(key), ts)] = (value, exp)
            self.ever.add((kb(key), ts))

    @rule(batch=batches, method=st.sampled_from(["write_batch", "write_batch_owned",
                                                  "write_batch_sync"]),
          form=st.sampled_from(["list", "tuple", "generator"]))
    def write_batch(self, batch, method, form):
        planned = [(k, t, v, self._expire_for_write_batch(t, e)) for k, t, v, e in batch]
        rs = [Record(k, t, v, e) for k, t, v, e in batch]
        arg = {"list": rs, "tuple": tuple(rs), "generator": (r for r in rs)}[form]
        if any(e > INT64_MAX for *_, e in planned):
            with pytest.raises(ValueError):
                getattr(self.engine, method)(arg)
            return
        getattr(self.engine, method)(arg)
        self._apply(planned)

    @rule(batch=batches, ttl=st.one_of(st.none(), st.sampled_from(TTLS)))
    def write_batch_ttl(self, batch, ttl):
        eff = ttl if ttl is not None else self.default_ttl
        planned = [(k, t, v, e if eff is None else t + eff * SEC) for k, t, v, e in batch]
        rs = [Record(k, t, v, e) for k, t, v, e in batch]
        if any(e > INT64_MAX for *_, e in planned):
            with pytest.raises(ValueError):
                self.engine.write_batch_ttl(rs, ttl)
            return
        self.engine.write_batch_ttl(rs, ttl)
        self._apply(planned)

    @rule(data=st.data(), n=st.integers(0, 6))
    def delete_batch(self, data, n):
        pairs = []
        for _ in range(n):
            if self.ever and data.draw(st.booleans()):
                k, t = data.draw(st.sampled_from(sorted(self.ever)))
            else:
                k, t = kb(data.draw(keys)), data.draw(tss)
            if data.draw(st.booleans()):
                try:
                    k = k.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            pairs.append((k, t))
        self.engine.delete_batch(pairs)
        for k, t in pairs:
            self.model.pop((kb(k), t), None)

    @rule(a=st.one_of(keys, st.binary(min_size=1, max_size=3)),
          b=st.one_of(keys, st.binary(min_size=1, max_size=3)))
    def delete_range(self, a, b):
        start, end = sorted([kb(a), kb(b)])
        if start == end:
            end = start + b"\x00"  # exactly the key `start`
        self.engine.delete_range(start, end)
        for (k, t) in list(self.model):
            if start <= k < end:
                del self.model[(k, t)]

    @rule(data=st.data(), new_value=st.one_of(st.none(), st.binary(max_size=10)),
          new_ttl=st.one_of(st.none(), st.sampled_from(TTLS)))
    def patch_record(self, data, new_value, new_ttl):
        if self.model and data.draw(st.booleans()):
            k, t = data.draw(st.sampled_from(sorted(self.model)))
        else:
            k, t = kb(data.draw(keys)), data.draw(tss)
        cur = self.expect_get(k, t)
        if cur is None:
            if new_ttl is not None and overflow(t, new_ttl):
                with pytest.raises((NotFoundError, ValueError)):
                    self.engine.patch_record(k, t, new_value, new_ttl)
            else:
                with pytest.raises(NotFoundError):
                    self.engine.patch_record(k, t, new_value, new_ttl)
            return
        if new_ttl is not None and overflow(t, new_ttl):
            with pytest.raises(ValueError):
                self.engine.patch_record(k, t, new_value, new_ttl)
            return
        value = cur[2] if new_value is None else new_value
        exp = cur[3] if new_ttl is None else t + new_ttl * SEC
        got = self.engine.patch_record(k, t, new_value, new_ttl)
        assert rec(got) == (k, t, value, exp)
        self.model[(k, t)] = (value, exp)

    # ----------------------------------------------------------- maintenance

    @rule()
    def flush(self):
        self.engine.flush()

    @rule()
    def trigger_compaction(self):
        assert isinstance(self.engine.trigger_compaction(), bool)

    @rule()
    def trigger_gc(self):
        n = self.engine.trigger_gc()
        assert isinstance(n, int) and n >= 0

    @rule()
    def close(self):
        self.engine.close()

    @rule()
    def reopen(self):
        self.drain_scans()
        self.engine.shutdown()
        self.engine = Engine.open(os.path.join(self.dir, "db"), **self.config)

    # ----------------------------------------------------------- reads

    @rule(a=keys, b=keys)
    def check_key_range(self, a, b):
        lo, hi = kb(a), kb(b)
        want = self.expect(lambda k: lo <= k <= hi)
        assert recs(self.engine.query_by_key_range(a, b)) == want
        assert recs(self.engine.query(Query.key_range(a, b))) == want

    @rule(s=tss, e=tss)
    def check_time_range(self, s, e):
        want = self.expect(lo=s, hi=e)
        assert recs(self.engine.query_time_range(s, e)) == want
        assert recs(self.engine.query(Query.time_range(s, e))) == want

    @rule(p=st.sampled_from(PREFIXES), s=tss, e=tss)
    def check_prefix_time_range(self, p, s, e):
        want = self.expect(lambda k: k.startswith(kb(p)), s, e)
        assert recs(self.engine.query_prefix_time_range(p, s, e)) == want
        assert recs(self.engine.query(Query.prefix_time_range(p, s, e))) == want
        assert recs(self.engine.scan_prefix_time_range(p, s, e)) == want

    @rule(a=keys, b=keys, s=tss, e=tss)
    def check_key_time_range(self, a, b, s, e):
        lo, hi = kb(a), kb(b)
        want = self.expect(lambda k: lo <= k <= hi, s, e)
        assert recs(self.engine.query_key_time_range(a, b, s, e)) == want
        assert recs(self.engine.query(Query.key_time_range(a, b, s, e))) == want

    @rule(p=st.sampled_from(PREFIXES))
    def check_prefix(self, p):
        want = self.expect(lambda k: k.startswith(kb(p)))
        assert recs(self.engine.query_by_prefix(p)) == want
        assert recs(self.engine.query(Query.prefix(p))) == want
        assert recs(self.engine.scan_prefix(p)) == want

    @rule(data=st.data())
    def check_get(self, data):
        if self.ever and data.draw(st.booleans()):
            k, t = data.draw(st.sampled_from(sorted(self.ever)))
        else:
            k, t = data.draw(keys), data.draw(tss)
        want = self.expect_get(k, t)
        got = self.engine.get(k, t)
        assert (None if got is None else rec(got)) == want
        got = self.engine.get_sync(k, t)
        assert (None if got is None else rec(got)) == want

    @rule()
    def check_every_get(self):
        for k, t in sorted(self.ever):
            want = self.expect_get(k, t)
            got = self.engine.get(k, t)
            assert (None if got is None else rec(got)) == want, (k, t)

    # ----------------------------------------------------------- lazy scans (snapshots)

    SCAN_KINDS = ["all", "prefix", "key_range", "time_range", "prefix_time_range",
                  "key_time_range"]

    @precondition(lambda self: len(self.scans) < 3)
    @rule(kind=st.sampled_from(SCAN_KINDS), p=st.sampled_from(PREFIXES), a=keys, b=keys,
          s=tss, e=tss, opt=st.booleans(), reverse=st.booleans())
    def start_scan(self, kind, p, a, b, s, e, opt, reverse):
        lo, hi = sorted([kb(a), kb(b)])
        rng, want = {
            "all": (lambda: ScanRange.all(), lambda: self.expect()),
            "prefix": (lambda: ScanRange.prefix(p), lambda: self.expect(lambda k: k.startswith(kb(p)))),
            "key_range": (lambda: ScanRange.key_range(lo, hi), lambda: self.expect(lambda k: lo <= k <= hi)),
            "time_range": (lambda: ScanRange.time_range(s, e), lambda: self.expect(lo=s, hi=e)),
            "prefix_time_range": (lambda: ScanRange.prefix_time_range(p, s, e),
                                  lambda: self.expect(lambda k: k.startswith(kb(p)), s, e)),
            "key_time_range": (lambda: ScanRange.key_time_range(lo, hi, s, e),
                               lambda: self.expect(lambda k: lo <= k <= hi, s, e)),
        }[kind]
        r = rng()
        if opt or reverse:
            it = self.engine.scan_opt(r, ReadOptions(fill_cache=not opt, reverse=reverse))
        else:
            it = self.engine.scan(r)
        self.scans.append([it, want()[::-1] if reverse else want(), 0,
                           kind + (" reversed" if reverse else "")])

    @precondition(lambda self: self.scans)
    @rule(data=st.data(), n=st.integers(1, 20))
    def advance_scan(self, data, n):
        i = data.draw(st.integers(0, len(self.scans) - 1))
        it, want, pos, kind = self.scans[i]
        got = []
        for _ in range(n):
            try:
                got.append(rec(next(it)))
            except StopIteration:
                break
        assert got == want[pos:pos + n], f"scan {kind} at {pos}"
        if pos + n >= len(want):
            assert next(it, None) is None
            del self.scans[i]
        else:
            self.scans[i][2] = pos + n

    def drain_scans(self):
        for it, want, pos, kind in self.scans:
            assert recs(it) == want[pos:], f"scan {kind} from {pos}"
        self.scans = []

    # ----------------------------------------------------------- invariants

    @invariant()
    def everything_matches(self):
        want = self.visible()
        assert recs(self.engine.query_by_prefix(b"")) == want

    @invariant()
    def latest_matches(self):
        for k in {kb(k) for k in KEYS}:
            got = self.engine.get_latest(k)
            assert (None if got is None else rec(got)) == self.expect_latest(k), k


class EngineModelDefaultTTL(EngineModel):
    """The same, with Config.default_ttl_secs set (a retention policy)."""

    default_ttl = 2 * 3600


TestEngineModel = EngineModel.TestCase
TestEngineModel.settings = settings_for(50, 40)

TestEngineModelDefaultTTL = EngineModelDefaultTTL.TestCase
TestEngineModelDefaultTTL.settings = settings_for(25, 40)


class EngineModelSmallTables(EngineModel):
    """Tiny memtable and blocks: nearly every batch flushes, many tables."""

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.dir = tempfile.mkdtemp(prefix="flowdb-model-")
        self.config = dict(auto_background=False, wal_sync_mode=SyncMode.ALWAYS,
                           memtable_size_mb=0.005, block_size=256, compaction_threshold=3,
                           default_ttl_secs=None,
                           storage_backend=backend())
        self.engine = Engine.open(os.path.join(self.dir, "db"), **self.config)
        self.model, self.ever, self.scans = {}, set(), []


TestEngineModelSmallTables = pytest.mark.slow(EngineModelSmallTables.TestCase)
TestEngineModelSmallTables.settings = settings_for(100, 60)


class EngineModelBackground(EngineModel):
    """Background maintenance on, with tiny sizes and intervals of a few ms:
    flushes, compactions and GC runs race every step, and the engine must
    still match the model after each step and each reopen."""

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.dir = tempfile.mkdtemp(prefix="flowdb-model-")
        self.config = dict(auto_background=True, wal_sync_mode=SyncMode.interval_ms(3),
                           memtable_size_mb=0.004, block_size=256, compaction_threshold=2,
                           flush_interval_ms=3, compaction_interval_ms=5, gc_interval_secs=0.01,
                           max_frozen_memtables=2, default_ttl_secs=None,
                           index_memory_budget_mb=0.002,   # indexes released and reloaded
                           storage_backend=backend())
        self.engine = Engine.open(os.path.join(self.dir, "db"), **self.config)
        self.model, self.ever, self.scans = {}, set(), []


TestEngineModelBackground = EngineModelBackground.TestCase
TestEngineModelBackground.settings = settings_for(60, 50)
