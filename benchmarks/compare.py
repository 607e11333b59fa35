"""flowdb against RocksDB, LevelDB, LMDB and SQLite on the sensor workload.

    pip install -e '.[bench]'          # rocksdict, plyvel, lmdb (sqlite3 is in the stdlib)
    python benchmarks/compare.py [--records N] [--repeats R]
                                 [--engines flowdb,rocksdb,leveldb,lmdb,sqlite] [--json out.json]
                                 [--flowdb-config FIELD=VALUE ...]

The workload is flowdb's own (flowdb/_demo.py, SensorWorkload; the one
`python -m flowdb.bench` runs): N readings of 1,000 series (b"sensor:000123"),
one per series per second, timestamps in microseconds, interleaved across
series as an ingest is, ~100-byte JSON-like values, batches of 1,000.  Every
engine is given the identical records, and record generation is never inside
a timed region (each batch is built before its write is timed).

Method
- Each (engine, repeat, phase) runs in a fresh process (this file with the
  hidden `--worker ENGINE --phase PHASE`, the result as JSON on stdout) in a
  fresh temporary directory; the engine order rotates from one repeat to the
  next, so no engine always runs first or last on a shared machine.  The
  report gives the median, min and max over the repeats.
- Phases: `main` (ingest with interval sync, then every read row, then
  compaction and bytes on disk, then the peak RSS of that process), `fsync`
  (ingest with an fsync per batch, `--fsync-records`, the full workload by
  default), `threads` (ingest with interval sync by 2 writer threads, each
  writing the batches of its own half of the series; batches built up front;
  then the small-batch row below).
- Every timed read is checked against the data written, after timing:
  counts, (key, ts) order, and values (every one for gets and get_latest,
  spot checks for scans).  A wrong or empty answer fails the worker (non-zero
  exit) and its rows show FAILED: an engine that returns nothing cannot look
  fast.
- Ingest time is the time in the write calls plus a final flush (flowdb:
  flush(), RocksDB: flush(), LMDB: env.sync(); LevelDB has no flush call and
  SQLite's commits are already in its WAL), as `python -m flowdb.bench` does.

Each engine through its ordinary public API, default settings otherwise
- flowdb: Engine.write_batch with SyncMode.interval_ms(100) / SyncMode.ALWAYS;
  get, get_latest, scan_prefix, query_prefix_time_range, query_time_range
  (its time index), flush + trigger_compaction.  `--flowdb-config
  FIELD=VALUE` (a Python literal; repeatable) changes a Config field from its
  default, to measure a setting's trade-off; the report names it.
- Peers store (key, ts) as key + b"\\x00" + 8-byte big-endian ts (all the
  workload's timestamps are positive, so byte order is ts order).
  RocksDB (rocksdict, raw mode): WriteBatch + Rdict.write, WriteOptions
  sync=False (WAL on) / sync=True; get_latest by seek_for_prev; ranges with
  Rdict.items(from_key=...); compact_range.  LevelDB (plyvel): write_batch
  with sync=False / True; iterator(prefix=..., reverse=True) for get_latest,
  iterator(start, stop, include_stop) for ranges; compact_range.  LMDB: one
  write transaction per batch with Cursor.putmulti, Environment sync=False /
  sync=True (default); reads in one read transaction, set_range + prev for
  get_latest; no compaction (the file size is reported).  SQLite: a WITHOUT
  ROWID table keyed by (key, ts), WAL mode, executemany in one BEGIN
  IMMEDIATE transaction per batch, synchronous=NORMAL / FULL; VACUUM after a
  checkpoint for the disk row.
- Interval sync: flowdb fsyncs its WAL every 100 ms itself; for RocksDB
  (flush_wal(sync=True)), LevelDB (an empty write with sync=True) and LMDB
  (env.sync()) a background thread of the worker does the same every 100 ms
  during the ingest; SQLite's synchronous=NORMAL in WAL mode syncs at its
  checkpoints.
- Peers are timed up to their native answer: the composite key of a request
  is built inside the timed region (a caller has to), but splitting
  key + ts of the answers is done after timing, for the check.  flowdb's
  times include building its Record objects, so this favours the peers.
- The all-series window is one query_time_range for flowdb and a seek per
  series for the peers (they have no time index).
- Point gets: 100,000 random hits right after the ingest (cold caches; the
  target applies to this pass), the same gets again (warm), then 100,000
  with one miss in ten (SensorWorkload.lookups).
- get_latest: 100 passes over the 1,000 series (100,000 calls, as many as
  the gets).  Ten passes lasted about 7 ms, and on this VM passes of 1,000
  calls speed up from 0.5M to 1.5M/s over the first several milliseconds
  of work (0.35M/s throughout when each pass follows a 0.3 s sleep): a
  row that short measured the VM's warm-up more than the engine.
- Small batches beside a busy thread: one writer thread writes batches of 10
  new readings (10 series, the next second) for SMALL_BATCH_SECONDS while
  another thread of the same process runs pure Python; batches/s.  An app
  that ingests while it computes is like this: each time a write gives the
  GIL away, winning it back costs the writer up to the busy thread's switch
  interval (5 ms).  Every batch written is read back after timing.
- flowdb compacts in the background, and a compaction that ends during a
  read row makes the blocks it rewrote cold again.  The report lists, for
  each read row and repeat, how many flowdb compactions finished while it
  ran (stats().total_compaction_runs before and after the row); the peers
  give no such count.
- Peak RSS is ru_maxrss of the `main` worker at its end: the engine, the
  workload's generator and whatever answers are held at once (gets are timed
  in chunks of 10,000 so no engine holds 100,000 answers).  LMDB's includes
  the pages of its memory-mapped file that the process touched.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import namedtuple
from importlib import metadata

try:
    import flowdb
except ImportError:   # run from a checkout where flowdb is built in place, not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import flowdb
from flowdb import Config, Engine, Record, SyncMode
from flowdb._demo import (SensorWorkload, VerificationError, compact, dir_bytes, fmt_count,
                          ingest)

SERIES = 1000
BATCH = 1000
SMALL_BATCH_SECONDS = 2.0
SYNC_INTERVAL_S = 0.1
# Answers are held and checked this many at a time (bounds the memory of the get rows).
GET_CHUNK = 10_000
# get_latest passes over every series held and checked at a time (10,000 answers).
LATEST_CHUNK = GET_CHUNK // SERIES
WORKER_TIMEOUT_S = 3600

# An answer of a peer after decoding, for the workload's checks (they read .key, .ts, .value).
Rec = namedtuple("Rec", "key ts value")


# -- the engines --------------------------------------------------------------

class Flowdb:
    """flowdb through its public API; reads return Records already."""

    name = "flowdb"
    module = "flowdb"
    dist = "flowdb"
    make = Record
    periodic_sync = False   # SyncMode.interval_ms(100) syncs on its own timer

    # Config fields changed from their defaults (--flowdb-config), set by the worker.
    overrides = {}

    def __init__(self, path, sync):
        mode = SyncMode.ALWAYS if sync == "always" else SyncMode.interval_ms(100)
        self.engine = e = Engine.open(Config(data_dir=path, wal_sync_mode=mode, **self.overrides))
        self.write_batch, self.flush = e.write_batch, e.flush
        self.get, self.get_latest = e.get, e.get_latest

    def scan_series(self, key):
        return list(self.engine.scan_prefix(key))

    def window(self, key, t0, t1):
        return self.engine.query_prefix_time_range(key, t0, t1)

    def window_all(self, keys, t0, t1):
        return self.engine.query_time_range(t0, t1)

    @staticmethod
    def hit(key, ts, got):
        return got

    @staticmethod
    def rec(got):
        return got

    def compact(self):
        compact(self.engine)

    def compactions(self):
        """Compactions finished so far (a background one may end during a read row)."""
        return self.engine.stats().total_compaction_runs

    def close(self):
        self.engine.shutdown()


def _ck(key, ts):
    """A peer's composite key: key, NUL, big-endian ts."""
    return key + b"\x00" + ts.to_bytes(8, "big")


def _fill(write_batch, pairs):
    put = write_batch.put
    for k, v in pairs:
        put(k, v)


class _KVPeer:
    """A sorted key-value store holding (key, ts) as _ck(key, ts)."""

    periodic_sync = True

    @staticmethod
    def make(key, ts, value):
        return (key + b"\x00" + ts.to_bytes(8, "big"), value)

    @staticmethod
    def hit(key, ts, got):
        return None if got is None else Rec(key, ts, got)

    @staticmethod
    def rec(got):
        ck, value = got
        return Rec(ck[:-9], int.from_bytes(ck[-8:], "big"), value)

    def get(self, key, ts):
        return self._get(key + b"\x00" + ts.to_bytes(8, "big"))

    def _range(self, start, prefix, stop=None):
        """The pairs from `start` on that have `prefix` (and are <= `stop`)."""
        out = []
        for ck, v in self._from(start):
            if not ck.startswith(prefix) or (stop is not None and ck > stop):
                break
            out.append((ck, v))
        return out

    def scan_series(self, key):
        prefix = key + b"\x00"
        return self._range(prefix, prefix)

    def window(self, key, t0, t1):
        return self._range(_ck(key, t0), key + b"\x00", _ck(key, t1))

    def window_all(self, keys, t0, t1):
        out = []
        window = self.window
        for key in keys:
            out += window(key, t0, t1)
        return out

    def flush(self):
        pass


class RocksDB(_KVPeer):
    name = "rocksdb"
    module = "rocksdict"
    dist = "rocksdict"

    def __init__(self, path, sync):
        import rocksdict
        self._WriteBatch = rocksdict.WriteBatch
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = rocksdict.Rdict(path, opts)
        self._wopt = rocksdict.WriteOptions()
        self._wopt.sync = sync == "always"
        self._get = self.db.get

    def write_batch(self, batch):
        wb = self._WriteBatch(raw_mode=True)
        _fill(wb, batch)
        self.db.write(wb, self._wopt)

    def flush(self):
        self.db.flush()

    def sync(self):
        self.db.flush_wal(True)

    def get_latest(self, key):
        it = self.db.iter()
        it.seek_for_prev(key + b"\x01")
        if it.valid():
            ck = it.key()
            if len(ck) == len(key) + 9 and ck.startswith(key):
                return ck, it.value()
        return None

    def _from(self, start):
        return self.db.items(from_key=start)

    def compact(self):
        self.db.flush()
        self.db.compact_range(None, None)

    def close(self):
        self.db.close()


class LevelDB(_KVPeer):
    name = "leveldb"
    module = "plyvel"
    dist = "plyvel"

    def __init__(self, path, sync):
        import plyvel
        self.db = plyvel.DB(path, create_if_missing=True)
        self._sync = sync == "always"
        self._get = self.db.get

    def write_batch(self, batch):
        wb = self.db.write_batch(sync=self._sync)
        _fill(wb, batch)
        wb.write()

    def sync(self):
        # LevelDB has no fsync call of its own: an empty synced write syncs the log.
        self.db.write_batch(sync=True).write()

    def get_latest(self, key):
        for item in self.db.iterator(prefix=key + b"\x00", reverse=True):
            return item
        return None

    def scan_series(self, key):
        return list(self.db.iterator(prefix=key + b"\x00"))

    def window(self, key, t0, t1):
        return list(self.db.iterator(start=_ck(key, t0), stop=_ck(key, t1), include_stop=True))

    def compact(self):
        self.db.compact_range()

    def close(self):
        self.db.close()


class LMDB(_KVPeer):
    name = "lmdb"
    module = "lmdb"
    dist = "lmdb"

    def __init__(self, path, sync):
        import lmdb
        # map_size only reserves address space; the file grows with the data.
        self.env = lmdb.open(path, map_size=1 << 36, sync=sync == "always")
        self._txn = self._cur = None

    def write_batch(self, batch):
        if self._txn is not None:       # the reads after this write must see it
            self._txn.abort()
            self._txn = self._cur = None
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(batch)

    def flush(self):
        self.env.sync(True)

    def sync(self):
        self.env.sync(True)

    def _reader(self):
        # One read transaction for the reads between two writes.
        if self._txn is None:
            self._txn = self.env.begin()
            self._cur = self._txn.cursor()
        return self._txn, self._cur

    def get(self, key, ts):
        txn = self._txn or self._reader()[0]
        return txn.get(key + b"\x00" + ts.to_bytes(8, "big"))

    def get_latest(self, key):
        cur = self._cur or self._reader()[1]
        ok = cur.prev() if cur.set_range(key + b"\x01") else cur.last()
        if ok:
            ck = cur.key()
            if len(ck) == len(key) + 9 and ck.startswith(key):
                return ck, cur.value()
        return None

    def _from(self, start):
        cur = self._cur or self._reader()[1]
        return cur.iternext() if cur.set_range(start) else iter(())

    def compact(self):
        pass

    def close(self):
        if self._txn is not None:
            self._txn.abort()
        self.env.close()


class SQLite:
    """sqlite3 (stdlib): a WITHOUT ROWID table keyed by (key, ts), WAL mode."""

    name = "sqlite"
    module = "sqlite3"
    dist = None
    periodic_sync = False   # synchronous=NORMAL: WAL synced at checkpoints

    @staticmethod
    def make(key, ts, value):
        return (key, ts, value)

    def __init__(self, path, sync):
        self.file = os.path.join(path, "bench.sqlite")
        self._synchronous = "FULL" if sync == "always" else "NORMAL"
        self._local = threading.local()
        self.con = self._connection()
        self.con.execute("CREATE TABLE IF NOT EXISTS t (key BLOB NOT NULL, ts INTEGER NOT NULL, "
                         "value BLOB NOT NULL, PRIMARY KEY (key, ts)) WITHOUT ROWID")
        ex = self.con.execute
        self._q_get = lambda key, ts: ex("SELECT value FROM t WHERE key = ? AND ts = ?", (key, ts))

    def _connection(self):
        # One connection per writer thread; the busy timeout makes them queue.
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.file, isolation_level=None, timeout=60,
                                  check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA synchronous={self._synchronous}")
            self._local.con = con
        return con

    def write_batch(self, batch):
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", batch)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def flush(self):
        pass

    def get(self, key, ts):
        row = self._q_get(key, ts).fetchone()
        return None if row is None else row[0]

    def get_latest(self, key):
        return self.con.execute("SELECT key, ts, value FROM t WHERE key = ? "
                                "ORDER BY ts DESC LIMIT 1", (key,)).fetchone()

    def scan_series(self, key):
        return self.con.execute("SELECT key, ts, value FROM t WHERE key = ? ORDER BY ts",
                                (key,)).fetchall()

    def window(self, key, t0, t1):
        return self.con.execute("SELECT key, ts, value FROM t WHERE key = ? AND ts BETWEEN ? AND ? "
                                "ORDER BY ts", (key, t0, t1)).fetchall()

    window_all = _KVPeer.window_all
    hit = staticmethod(_KVPeer.hit)

    @staticmethod
    def rec(got):
        return Rec(*got)

    def compact(self):
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.con.execute("VACUUM")

    def close(self):
        self.con.close()


ENGINES = {cls.name: cls for cls in (Flowdb, RocksDB, LevelDB, LMDB, SQLite)}


# -- the rows -----------------------------------------------------------------

Row = namedtuple("Row", "id name unit better phase target")
HIGHER, LOWER = "higher", "lower"
ROWS = [
    Row("ingest_interval", "ingest, interval sync, 1 writer", "rec/s", HIGHER, "main", 2.0e6),
    Row("ingest_interval_2w", "ingest, interval sync, 2 writers", "rec/s", HIGHER, "threads", None),
    Row("ingest_fsync", "ingest, fsync per batch", "rec/s", HIGHER, "fsync", 1.5e6),
    Row("small_batches_busy", "10-record batches beside a busy thread", "batches/s", HIGHER,
        "threads", None),
    Row("get_hits", "point get, hits", "gets/s", HIGHER, "main", 1.0e6),
    Row("get_hits_warm", "point get, hits, again (warm)", "gets/s", HIGHER, "main", None),
    Row("get_misses", "point get, 10% misses", "gets/s", HIGHER, "main", None),
    Row("get_latest", "get_latest", "gets/s", HIGHER, "main", 1.6e6),
    Row("scan_series", "prefix scan, whole series", "rec/s", HIGHER, "main", 3.5e6),
    Row("window_one_p50", "1% window, one series, p50", "us", LOWER, "main", 6.0),
    Row("window_all", "1% window, all series", "rec/s", HIGHER, "main", 3.5e6),
    Row("disk_ratio", "disk after compaction / raw", "ratio", LOWER, "main", 0.33),
    Row("peak_rss", "peak RSS", "MB", LOWER, "main", 124.0),
]
PHASES = ("main", "fsync", "threads")
# The worker's value "compactions during get_hits": flowdb compactions that
# finished while that row ran (_CompactionWatch); reported, not a row.
COMPACTIONS_DURING = "compactions during "


def read_sizes(records):
    """Work per read row; smaller workloads get proportionally fewer reads."""
    return {
        "gets": min(100_000, max(1_000, records // 10)),
        "latest_rounds": min(100, max(1, records // 10_000)),
        "scans": 20,
        "windows_one": min(500, max(50, records // 2_000)),
        "windows_all": 5,
    }


# -- the worker ---------------------------------------------------------------

class _Syncer:
    """The peers' interval sync: engine.sync() every 100 ms on a background thread."""

    def __init__(self, engine):
        self._stop = threading.Event()
        self._thread = None
        if engine.periodic_sync:
            self._thread = threading.Thread(target=self._run, args=(engine.sync,), daemon=True)
            self._thread.start()

    def _run(self, sync):
        while not self._stop.wait(SYNC_INTERVAL_S):
            sync()

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def verify_ingest(engine, w, what):
    """The data must be there: the latest reading of every series, and the 1% window."""
    for s, key in enumerate(w.keys):
        got = engine.get_latest(key)
        w.check(None if got is None else engine.rec(got), s, w.last_second(s), f"{what}: get_latest")
    lo, hi = w.window(0.01)
    got = engine.window_all(w.keys, w.ts(lo), w.ts(hi))
    w.check_records([engine.rec(g) for g in got], w.count_all(lo, hi), f"{what}: 1% window")


def _timed_gets(engine, w, lookups, what):
    """Gets per second over `lookups`, timed a chunk at a time, each chunk checked after."""
    get, hit = engine.get, engine.hit
    spent = 0.0
    for i in range(0, len(lookups), GET_CHUNK):
        chunk = lookups[i:i + GET_CHUNK]
        t0 = time.perf_counter()
        found = [get(k, t) for k, t, _s, _sec in chunk]
        spent += time.perf_counter() - t0
        w.check_gets(chunk, [hit(k, t, g) for (k, t, _s, _sec), g in zip(chunk, found)], what)
    return len(lookups) / spent


def _timed_get_latest(engine, w, rounds):
    """get_latest calls per second over `rounds` passes of every series,
    timed LATEST_CHUNK passes at a time, each chunk checked after."""
    get_latest, keys, rec = engine.get_latest, w.keys, engine.rec
    calls, spent = 0, 0.0
    for first in range(0, rounds, LATEST_CHUNK):
        passes = min(LATEST_CHUNK, rounds - first)
        t0 = time.perf_counter()
        latest = [get_latest(k) for _ in range(passes) for k in keys]
        spent += time.perf_counter() - t0
        for i, got in enumerate(latest):
            s = i % w.series
            w.check(None if got is None else rec(got), s, w.last_second(s), "get_latest")
        calls += len(latest)
    return calls / spent


class _CompactionWatch:
    """How many background compactions finished during each read row, for an
    engine that counts them (flowdb): a compaction's swap makes the blocks
    read after it cold again, which explains a row much slower than its
    neighbours.  Kept in the worker's values as COMPACTIONS_DURING + row id."""

    def __init__(self, engine):
        self._count = getattr(engine, "compactions", None)
        self._last = self._count() if self._count else 0
        self.during = {}

    def row_done(self, row_id):
        if self._count:
            now = self._count()
            self.during[COMPACTIONS_DURING + row_id] = now - self._last
            self._last = now


def run_reads(engine, w, sizes, rng):
    """Every read row, each answer checked after its timing; returns {row id: value}
    (and, for flowdb, the compactions that finished during each row: _CompactionWatch)."""
    out = {}
    rec = engine.rec
    watch = _CompactionWatch(engine)
    # The first pass finds cold caches (after the ingest); the second, the same gets, warm ones.
    hits = w.lookups(sizes["gets"], rng, misses=False)
    out["get_hits"] = _timed_gets(engine, w, hits, "point get, hits")
    watch.row_done("get_hits")
    out["get_hits_warm"] = _timed_gets(engine, w, hits, "point get, hits, warm")
    watch.row_done("get_hits_warm")
    del hits   # 100,000 lookups held at once would show in every engine's peak RSS
    out["get_misses"] = _timed_gets(engine, w, w.lookups(sizes["gets"], rng),
                                    "point get, 10% misses")
    watch.row_done("get_misses")

    out["get_latest"] = _timed_get_latest(engine, w, sizes["latest_rounds"])
    watch.row_done("get_latest")
    keys = w.keys

    total, spent = 0, 0.0
    for s in rng.sample(range(w.series), min(sizes["scans"], w.series)):
        t0 = time.perf_counter()
        got = engine.scan_series(keys[s])
        spent += time.perf_counter() - t0
        w.check_records([rec(g) for g in got], w.count_series(s, 0, w.seconds),
                        "prefix scan", every=13)
        total += len(got)
    out["scan_series"] = total / spent
    watch.row_done("scan_series")

    lo, hi = w.window(0.01)
    t_lo, t_hi = w.ts(lo), w.ts(hi)
    samples = []
    for _ in range(sizes["windows_one"]):
        s = rng.randrange(w.series)
        t0 = time.perf_counter()
        got = engine.window(keys[s], t_lo, t_hi)
        samples.append(time.perf_counter() - t0)
        w.check_records([rec(g) for g in got], w.count_series(s, lo, hi),
                        "1% window, one series", every=3)
    out["window_one_p50"] = statistics.median(samples) * 1e6
    watch.row_done("window_one_p50")

    samples = []
    for _ in range(sizes["windows_all"]):
        t0 = time.perf_counter()
        got = engine.window_all(keys, t_lo, t_hi)
        samples.append(time.perf_counter() - t0)
        w.check_records([rec(g) for g in got], w.count_all(lo, hi), "1% window, all series")
    out["window_all"] = w.count_all(lo, hi) / statistics.median(samples)
    watch.row_done("window_all")
    out.update(watch.during)
    return out


def _ingest_threads(engine, w, writers=2):
    """Records/s of `writers` threads each writing its own series' batches (built up front)."""
    parts = [list(w.batches(engine.make, p, writers)) for p in range(writers)]
    errors = []

    def write(batches):
        try:
            for batch in batches:
                engine.write_batch(batch)
        except BaseException as exc:   # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in parts]
    syncer = _Syncer(engine)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.flush()
    dt = time.perf_counter() - t0
    syncer.stop()
    if errors:
        raise errors[0]
    return w.records / dt


SMALL_BATCH = 10


def _small_batches_beside_busy_thread(engine, w, seconds):
    """Batches/s of one writer of SMALL_BATCH-record batches while another
    thread spins in Python; then every batch is read back."""
    stop = threading.Event()

    def busy():
        n = 0
        while not stop.is_set():
            n += 1

    sec0 = w.seconds
    keys = w.keys[:SMALL_BATCH]

    def batch(i):
        return [engine.make(keys[s], w.ts(sec0 + i), w.value(s, sec0 + i)) for s in range(SMALL_BATCH)]

    spinner = threading.Thread(target=busy)
    spinner.start()
    written, spent = 0, 0.0
    try:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            b = batch(written)
            t0 = time.perf_counter()
            engine.write_batch(b)
            spent += time.perf_counter() - t0
            written += 1
    finally:
        stop.set()
        spinner.join()
    for i in range(written):
        for s in range(SMALL_BATCH):
            t = w.ts(sec0 + i)
            w.check(engine.hit(keys[s], t, engine.get(keys[s], t)), s, sec0 + i,
                    "small batches beside a busy thread")
    return written / spent


def run_worker(name, phase, records, path):
    """One phase of one engine in this process; returns {row id: value}."""
    cls = ENGINES[name]
    w = SensorWorkload(records, SERIES, BATCH)
    out = {}
    if phase == "fsync":
        engine = cls(path, "always")
        write, flush, _gen = ingest(engine, w, engine.make)
        out["ingest_fsync"] = w.records / (write + flush)
        verify_ingest(engine, w, "ingest, fsync per batch")
        engine.close()
    elif phase == "threads":
        engine = cls(path, "interval")
        out["ingest_interval_2w"] = _ingest_threads(engine, w)
        verify_ingest(engine, w, "ingest, 2 writers")
        out["small_batches_busy"] = _small_batches_beside_busy_thread(
            engine, w, SMALL_BATCH_SECONDS if records >= 1_000_000 else 0.3)
        engine.close()
    else:
        engine = cls(path, "interval")
        syncer = _Syncer(engine)
        write, flush, _gen = ingest(engine, w, engine.make)
        syncer.stop()
        out["ingest_interval"] = w.records / (write + flush)
        verify_ingest(engine, w, "ingest, interval sync")
        out.update(run_reads(engine, w, read_sizes(records), random.Random(11)))
        engine.compact()
        verify_ingest(engine, w, "after compaction")
        engine.close()
        out["disk_ratio"] = dir_bytes(path) / w.raw_bytes
        out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    return out


def _worker_main(args):
    Flowdb.overrides = args.flowdb_config
    path = tempfile.mkdtemp(prefix=f"flowdb-compare-{args.worker}-", dir=args.dir)
    try:
        records = args.fsync_records if args.phase == "fsync" else args.records
        values = run_worker(args.worker, args.phase, records, path)
    except VerificationError as exc:
        print(f"WRONG ANSWER: {exc}", file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        shutil.rmtree(path, ignore_errors=True)
    json.dump({"engine": args.worker, "phase": args.phase, "values": values}, sys.stdout)
    print()
    return 0


# -- the driver ---------------------------------------------------------------

def _flowdb_version():
    version = getattr(flowdb, "__version__", None) or metadata.version("flowdb")
    # Which commit, when flowdb runs from a git checkout.
    root = os.path.dirname(os.path.dirname(os.path.abspath(flowdb.__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


def _version(cls):
    if cls is Flowdb:
        return _flowdb_version()
    if cls is SQLite:
        return f"sqlite {sqlite3.sqlite_version}"
    module = importlib.import_module(cls.module)
    try:
        version = metadata.version(cls.dist)
    except metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "?")
    # The C library each binding carries, where it says.
    if cls is LevelDB:
        version += f" (LevelDB {getattr(module, '__leveldb_version__', '?')})"
    elif cls is LMDB:
        version += f" (LMDB {'.'.join(map(str, module.version()))})"
    return version


def probe(names):
    """{name: {"status": "ok" | "skipped", ...}}: a peer whose module does not import is skipped."""
    engines = {}
    for name in names:
        cls = ENGINES[name]
        try:
            importlib.import_module(cls.module)
        except Exception as exc:   # ImportError, or a module whose library is missing
            engines[name] = {"status": "skipped", "module": cls.module,
                             "reason": f"{cls.module} does not import: {exc}"}
            continue
        try:
            version = _version(cls)
        except Exception:
            version = "?"
        engines[name] = {"status": "ok", "module": cls.module, "version": version}
    return engines


def _worker_env():
    # Workers run this file, so sys.path[0] is benchmarks/: give them the flowdb found here.
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(flowdb.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_one(name, phase, args, env):
    """Run one worker; returns (values or None, error text or None, seconds)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--phase", phase,
           "--records", str(args.records), "--fsync-records", str(args.fsync_records)]
    if args.dir:
        cmd += ["--dir", args.dir]
    for field, value in args.flowdb_config.items():
        cmd += ["--flowdb-config", f"{field}={value!r}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {WORKER_TIMEOUT_S} s", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return None, f"exit {proc.returncode}: {lines[-1] if lines else ''}", dt
    return json.loads(proc.stdout.strip().splitlines()[-1])["values"], None, dt


def machine_info(engines):
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "versions": {n: e.get("version") for n, e in engines.items() if e["status"] == "ok"},
    }


def summarise(engines, samples, errors):
    """The result rows: per engine median/min/max (or the failure), ratios, the target."""
    rows = []
    for row in ROWS:
        results = {}
        for name, info in engines.items():
            if info["status"] != "ok":
                continue
            if (name, row.phase) in errors:
                results[name] = {"failed": errors[(name, row.phase)]}
                continue
            values = samples.get((name, row.id), [])
            if values:
                results[name] = {"median": statistics.median(values), "min": min(values),
                                 "max": max(values), "values": values}
        ours = results.get("flowdb", {}).get("median")
        ratios = {}
        for name, res in results.items():
            theirs = res.get("median")
            if name == "flowdb" or ours is None or not theirs:
                continue
            ratios[name] = ours / theirs if row.better == HIGHER else theirs / ours
        met = None
        if row.target is not None and ours is not None:
            met = ours >= row.target if row.better == HIGHER else ours <= row.target
        rows.append({"id": row.id, "name": row.name, "unit": row.unit, "better": row.better,
                     "target": row.target, "target_met": met, "results": results,
                     "ratios": ratios})
    return rows


def _num(x, unit):
    if unit in ("rec/s", "gets/s"):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if x >= scale:
                return f"{x / scale:.2f}{suffix}"
        return f"{x:.0f}"
    if unit == "ratio":
        return f"{x:.3f}"
    return f"{x:.1f}"


def _target(row):
    if row["target"] is None:
        return ""
    sign = ">=" if row["better"] == HIGHER else "<="
    return f"{sign} {_num(row['target'], row['unit'])}"


def render(result):
    """The report: machine, workload, engines, then the Markdown tables."""
    m, wl, engines = result["machine"], result["workload"], result["engines"]
    ran = [n for n, e in engines.items() if e["status"] == "ok"]
    out = [
        f"## flowdb vs peers: {fmt_count(wl['records'])} records, {fmt_count(wl['series'])} series, "
        f"batches of {fmt_count(wl['batch_size'])} (fsync row: {fmt_count(wl['fsync_records'])} records), "
        f"{wl['repeats']} repeat(s)",
        "",
        f"- machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; load average "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'])} at end",
    ]
    for name, e in engines.items():
        if e["status"] == "ok":
            out.append(f"- {name}: {e['module']} {e['version']}")
            if name == "flowdb" and wl.get("flowdb_config"):
                out[-1] += ", Config changed from its defaults: " + ", ".join(
                    f"{f}={v!r}" for f, v in wl["flowdb_config"].items())
        else:
            out.append(f"- {name}: {e['status'].upper()} ({e['reason']})")
    out += ["", "Median [min - max] over the repeats; rec/s and gets/s: higher is better; "
            "us, ratio, MB: lower is better. Target: flowdb's goal (issue 6), met by the median.", ""]
    head = ["row", "unit"] + ran + ["target", "met"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * len(ran) + ["---", "---"]) + "|")
    for row in result["rows"]:
        cells = [row["name"], row["unit"]]
        for name in ran:
            res = row["results"].get(name)
            if res is None:
                cells.append("")
            elif "failed" in res:
                cells.append(f"FAILED ({res['failed']})")
            else:
                u = row["unit"]
                cells.append(f"{_num(res['median'], u)} [{_num(res['min'], u)} - {_num(res['max'], u)}]")
        met = row["target_met"]
        cells += [_target(row), "" if met is None else ("yes" if met else "**no**")]
        out.append("| " + " | ".join(cells) + " |")
    peers = [n for n in ran if n != "flowdb"]
    if "flowdb" in ran and peers:
        out += ["", "Ratios of medians, oriented so that **> 1 means flowdb is better** "
                "(flowdb/peer for rates, peer/flowdb for latency, disk and memory):", ""]
        out.append("| row | " + " | ".join(f"vs {p}" for p in peers) + " |")
        out.append("|---|" + "|".join(["---:"] * len(peers)) + "|")
        for row in result["rows"]:
            cells = [f"{row['ratios'][p]:.2f}x" if p in row["ratios"] else "" for p in peers]
            out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(out + _compactions_note(result))


def _compactions_note(result):
    """The report's lines on the read rows during which flowdb compactions
    finished (_CompactionWatch), or none if no row had one."""
    during = {r["name"]: result.get("compactions_during", {}).get(r["id"], [])
              for r in result["rows"]}
    named = [f"{name}: {', '.join(map(str, counts))}"
             for name, counts in during.items() if any(counts)]
    if not named:
        return []
    return ["", "flowdb compactions that finished during a read row, per repeat (after one, "
            "the blocks it rewrote are read cold again):", "; ".join(named) + "."]


def round_robin(names, r):
    """The engine order of repeat r: every engine in turn, starting one further each repeat."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def run(args, log=sys.stderr):
    names = args.engines
    engines = probe(names)
    runnable = [n for n in names if engines[n]["status"] == "ok"]
    result = {"machine": machine_info(engines),
              "workload": {"records": args.records, "fsync_records": args.fsync_records,
                           "series": SERIES, "batch_size": BATCH, "repeats": args.repeats,
                           "flowdb_config": args.flowdb_config},
              "engines": engines}
    samples, errors = {}, {}
    env = _worker_env()
    for r in range(args.repeats):
        for phase in PHASES:
            for name in round_robin(runnable, r):
                if (name, phase) in errors:
                    continue
                values, err, dt = run_one(name, phase, args, env)
                print(f"  .. repeat {r + 1}/{args.repeats} {phase:<7} {name:<8} "
                      f"{'FAILED: ' + err if err else 'ok'} ({dt:.1f} s)", file=log, flush=True)
                if err:
                    errors[(name, phase)] = err
                    continue
                for row_id, value in values.items():
                    samples.setdefault((name, row_id), []).append(value)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["rows"] = summarise(engines, samples, errors)
    result["compactions_during"] = {
        row.id: samples[("flowdb", COMPACTIONS_DURING + row.id)] for row in ROWS
        if ("flowdb", COMPACTIONS_DURING + row.id) in samples}
    result["failed"] = sorted({name for name, _phase in errors})
    return result


def _records(text):
    return int(text.replace("_", "").replace(",", ""))


def _config_overrides(items):
    """{field: value} of the --flowdb-config FIELD=VALUE items, checked by Config."""
    out = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not FIELD=VALUE")
        try:
            out[field.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"{item!r}: the value is not a Python literal") from None
    Config.build(Config(), **out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compare.py",
        description="flowdb against RocksDB (rocksdict), LevelDB (plyvel), LMDB and SQLite on "
                    "the sensor workload; every timed read is checked against the data written.")
    parser.add_argument("--records", type=_records, default=1_000_000,
                        help="records to ingest (default 1,000,000)")
    parser.add_argument("--fsync-records", type=_records, default=None,
                        help="records of the fsync-per-batch ingest (default: --records)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine (default 3)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated, from {','.join(ENGINES)} (default: all)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--dir", default=None, help="where the scratch directories go (default: the temp dir)")
    parser.add_argument("--flowdb-config", action="append", default=[], metavar="FIELD=VALUE",
                        help="change one flowdb Config field from its default, e.g. "
                             "prepopulate_block_cache=True (repeatable)")
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=PHASES, default="main", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.records < 1 or args.repeats < 1:
        parser.error("--records and --repeats must be positive")
    if args.fsync_records is None:
        args.fsync_records = args.records
    try:
        args.flowdb_config = _config_overrides(args.flowdb_config)
    except (ValueError, TypeError) as exc:
        parser.error(f"--flowdb-config: {exc}")
    if args.worker:
        return _worker_main(args)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or not args.engines:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    result = run(args)
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if result["failed"]:
        print(f"\nFAILED: {', '.join(result['failed'])} (see the rows marked FAILED)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
