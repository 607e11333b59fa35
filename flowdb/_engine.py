"""Engine: the orchestration of the LSM tree (API.md section 1).

    write_batch --encode (Cython)--> group commit --> WAL segment (+fsync, while
                                                  a C thread inserts the batch)
                                                  --> active memtable
    memtable full --> frozen memtables --flush--> SSTable + manifest edit
    reads: the current View (memtable, frozen, tables; newest first) at the
           last published sequence number, through flowdb._core.read.

Concurrency rules (lock order: _compact_lock -> _write_lock -> _flush_lock -> _mutex):
- One write leader at a time holds _write_lock while it takes seqs and
  writes its group to the WAL (group commit: one write and one fsync for
  the writers queued on _write_cv; a writer that finds no queue and the
  lock free is a group of one, and skips the queue).  It then releases
  it, so the next leader's WAL write overlaps this group's memtable
  inserts, which every writer of the group does for its own batch, in
  parallel and without the GIL (MemTable.apply_concurrent).  Groups
  publish (raise _visible_seq) in seq order, each after its inserts and
  its fsync; a freeze waits for the groups in flight (_inflight), so a
  frozen memtable is complete.
- Flushes: a frozen memtable's table is built by whichever thread claims it
  (_building: the flush thread, or a caller of flush() that would otherwise
  wait), and goes live in freeze order under _flush_lock: a flush puts a new
  run in front of the view.
- _compact_lock serialises compactions and GC runs; they hold no other lock
  while they merge (the loop runs without the GIL in read.compact), then
  swap exactly their input runs for the output run under _mutex.  So writes,
  reads and flushes go on while a compaction runs.
- _mutex guards the swap of self._view; a View is immutable, so readers take
  it with one attribute read and never lock.
- Readers see exactly the entries with seq <= self._visible_seq, which the
  leader raises only after a whole group is in the memtable: no reader ever
  sees part of a batch.
- Background threads (MaintenanceHandle) never raise into the void: an error
  is logged and raised by the next foreground call.
See docs/MAINTENANCE.md for the compaction policy, GC and the time index.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref

from flowdb._core.block_cache import BlockCache
from flowdb._config import Config, ReadOptions
from flowdb._core import batch as _batch
from flowdb._core import read as _read
from flowdb._core.read import ScanIterator
from flowdb._core.memtable import ApplyThread, MemTable
from flowdb._core.record import Record
from flowdb._core.table import HotRanges, TableBuilder, build_table
from flowdb._errors import FlowError, InvalidStateError, NotFoundError
from flowdb import _compaction as _policy
from flowdb._storage import open_storage
from flowdb._time_index import TimeIndex
from flowdb._metrics import render_metrics
from flowdb._query import ScanRange
from flowdb._stats import EngineStats, LatencyHistogram
from flowdb._validate import INT64_MAX, INT64_MIN, as_key, as_ts, as_ttl, as_value, expiry
from flowdb._wal import WalWriter, delete_segments, list_segments, read_wal

log = logging.getLogger("flowdb")

_MIB = 1024 * 1024
_GROUP_MAX_BYTES = 4 * _MIB          # a commit group stops growing past this
_MIN_TARGET_BYTES = 64 * 1024       # compaction outputs are cut at 2 x memtable size,
_MAX_TARGET_BYTES = 256 * _MIB      # within these bounds (docs/MAINTENANCE.md)
_GC_MERGE_MIN_GARBAGE = 0.2         # the GC timer merges to purge past this share of garbage


_time_ns = time.time_ns


def _now_us() -> int:
    return _time_ns() // 1000


def _order_runs(groups):
    """Runs newest first (by their greatest max_seq), each in key order."""
    runs = []
    for tables in groups:
        tables = sorted(tables, key=lambda t: (t.props["smallest_key"] or b"", t.file_number))
        runs.append((max(t.props["max_seq"] for t in tables), tuple(tables)))
    runs.sort(key=lambda x: x[0], reverse=True)
    return tuple(r for _, r in runs)


class _View:
    """An immutable picture of the tree: what a read merges, newest first.

    runs: a tuple of runs, newest first; a run is a tuple of TableReaders
    with disjoint (key, ts) sets, in key order (flowdb._compaction).
    """

    __slots__ = ("mem", "frozen", "runs", "tables", "sources", "reader", "time_sources")

    def __init__(self, mem, frozen, runs):
        self.mem = mem                    # the active MemTable
        self.frozen = frozen              # tuple of (MemTable, boundary_seq), newest first
        self.runs = runs                  # tuple of tuples of TableReader, newest first
        self.tables = tuple(t for r in runs for t in r)
        self.sources = [mem] + [m for m, _ in frozen] + list(self.tables)
        old = []
        for s in self.sources[1:]:
            old.extend(s.range_dels)
        # get, get_latest, and the range deletes every read honours (the
        # active memtable's grow in place: the reader reads them live).
        self.reader = _read.PointReader(self.sources, old, mem)
        self.time_sources = {}            # Engine._time_sources' answers, by bucket range


class _Writer:
    """One caller waiting in the group-commit queue."""

    __slots__ = ("payload", "count", "sync", "done", "error", "seq", "taken", "mem", "applied")

    def __init__(self, payload, count, sync):
        self.payload = payload
        self.count = count
        self.sync = sync
        self.done = False
        self.error = None
        self.seq = 0
        self.taken = False       # in a leader's group (the leader's own included)
        self.mem = None          # set by the leader: insert your batch here yourself
        self.applied = False     # ... and done so


class MaintenanceHandle:
    """The background threads of an engine; stop() joins them.

    Two threads, so that a flush never waits for a compaction:
    - flowdb-flush: flushes frozen memtables as soon as the write path
      freezes one (it is woken), and every flush_interval_ms freezes and
      flushes a non-empty active memtable;
    - flowdb-compact: every compaction_interval_ms, or when woken by a flush
      that left at least compaction_threshold runs, runs policy rounds until
      the policy has nothing to do; every gc_interval_secs, a GC run.
    (Under SyncMode.interval_ms the WAL fsync timer is a third thread,
    _WalSyncer, which runs whether or not maintenance is on.)
    An exception is logged and kept in engine._background_error, which the
    next foreground call raises (Engine._check_open); the thread goes on.
    """

    def __init__(self, engine):
        self._engine = engine
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._run_flush,), name="flowdb-flush", daemon=True),
            threading.Thread(target=self._guard, args=(self._run_compact,), name="flowdb-compact", daemon=True),
        ]
        self.flush_thread = self._threads[0]
        for t in self._threads:
            t.start()

    def _guard(self, body):
        backoff = 0.05
        while not self._stop.is_set():
            try:
                body()
                return
            except Exception as exc:  # surfaced to the next write, flush, compaction or GC
                log.exception("background maintenance failed in %s; retrying in %.2f s",
                              threading.current_thread().name, backoff)
                self._engine._background_error = exc
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)     # a lasting failure does not flood the log

    def _run_flush(self):
        engine = self._engine
        cfg = engine._config
        period = cfg.flush_interval_ms / 1000.0
        next_flush = time.monotonic() + period
        while not self._stop.is_set():
            engine._maintenance_wakeup.wait(min(period, 1.0))
            engine._maintenance_wakeup.clear()
            if self._stop.is_set():
                break
            engine._flush_frozen(wait=False)
            engine._delete_dead_wal()
            engine._enforce_meta_budget()
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + period
                # Never block on the write lock: its holder may be waiting for us.
                if engine._freeze_if_nonempty(blocking=False):
                    engine._flush_frozen(wait=False)
            if len(engine._view.runs) >= _policy.threshold(cfg):
                engine._compact_wakeup.set()

    def _run_compact(self):
        engine = self._engine
        cfg = engine._config
        period = cfg.compaction_interval_ms / 1000.0
        next_compaction = time.monotonic() + period
        next_gc = time.monotonic() + cfg.gc_interval_secs
        while not self._stop.is_set():
            woken = engine._compact_wakeup.wait(min(period, 1.0, max(0.0, next_gc - time.monotonic())))
            engine._compact_wakeup.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            if woken or now >= next_compaction:
                next_compaction = now + period
                while not self._stop.is_set() and engine._maybe_compact():
                    pass
            if now >= next_gc:
                next_gc = now + cfg.gc_interval_secs
                engine._gc()

    def stop(self):
        self._stop.set()
        self._engine._maintenance_wakeup.set()
        self._engine._compact_wakeup.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()


class _WalSyncer:
    """Under SyncMode.interval_ms(n): fsyncs the WAL every n ms if it was written."""

    def __init__(self, engine, interval_ms):
        self._engine = engine
        self._interval = interval_ms / 1000.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowdb-wal-sync", daemon=True)
        self._thread.start()

    def _run(self):
        engine = self._engine
        while not self._stop.wait(self._interval):
            try:
                engine._sync_wal_if_dirty()
            except Exception as exc:
                log.exception("WAL sync failed; the engine refuses writes until reopened")
                engine._fail_writes(exc)
                return

    def stop(self):
        self._stop.set()
        self._thread.join()


class Snapshot:
    """Reads at one sequence number over one View: see Engine.snapshot()."""

    __slots__ = ("_engine", "_view", "_seq")

    def __init__(self, engine, view, seq):
        self._engine = engine
        self._view = view
        self._seq = seq

    def _live_view(self):
        if self._view is None:
            raise InvalidStateError("the snapshot has been released")
        if self._engine._closed:
            self._engine._check_open()
        return self._view

    def get(self, key, ts):
        return self._live_view().reader.get(key, ts, self._seq)

    def get_latest(self, key):
        return self._live_view().reader.get_latest(key, self._seq)

    def scan(self, range: ScanRange, opts: ReadOptions = ReadOptions()) -> ScanIterator:
        return self._engine._scan_at(self._live_view(), self._seq, range, opts)

    def _get_values(self, keys, ts):
        """[value or None] of the live record at (key, ts) for each key
        (bytes): many gets in one call, for JsonDB's queries."""
        return self._live_view().reader.get_values(keys, ts, self._seq)

    def _scan_keys(self, lo, hi, reverse=False):
        """Engine._scan_keys at this snapshot."""
        view = self._live_view()
        return ScanIterator(self._engine, view, self._engine._cursor_over(
            view, self._seq, None, lo, hi, INT64_MIN, INT64_MAX, True, True, reverse))

    def close(self):
        self._view = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Engine(_read.EngineReads):
    """An open flowdb store.  Create with Engine.open(); see API.md.

    get, get_latest, query_prefix_time_range and the cursor every query and
    scan reads through (_query, _cursor_over) are inherited from EngineReads
    (C methods); they read _view, _visible_seq, _closed and _read_stats,
    which live there, and the time index (_time_index, under _mutex)."""

    # ---- opening and closing -------------------------------------------

    @classmethod
    def open(cls, config=None, **overrides) -> "Engine":
        return cls(Config.build(config, **overrides))

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError("use Engine.open(config) to open an engine")
        self._config = config
        self._dir = os.path.abspath(os.fsdecode(config.data_dir))
        self._closed = True
        self._started = time.monotonic()
        if not os.path.isdir(self._dir):
            if not config.create_if_missing:
                raise NotFoundError(f"Config.data_dir {self._dir!r} does not exist "
                                    "and create_if_missing is False")
            os.makedirs(self._dir, exist_ok=True)
        self._storage = open_storage(config.storage_backend, self._dir)
        try:
            self._init_state()
            self._recover()
        except BaseException:
            self._storage.close()
            raise
        self._closed = False
        self._syncer = None
        if not config.wal_sync_mode.is_always:
            self._syncer = _WalSyncer(self, config.wal_sync_mode.interval)
        self._maintenance = None
        if config.auto_background:
            self._maintenance = MaintenanceHandle(self)

    def _init_state(self):
        cfg = self._config
        self._memtable_limit = int(cfg.memtable_size_mb * _MIB)
        self._sync_always = cfg.wal_sync_mode.is_always
        self._cache = BlockCache(int(cfg.block_cache_capacity_mb * _MIB))
        self._readers = weakref.WeakSet()     # every TableReader opened, closed at shutdown
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._building = set()                # id() of the frozen memtables being flushed
        self._mutex = threading.Lock()
        self._patch_lock = threading.Lock()
        self._compact_lock = threading.Lock()   # serialises compactions and GC
        self._time_index = TimeIndex(cfg.time_bucket_secs)   # guarded by _mutex
        self._meta_budget = int(cfg.index_memory_budget_mb * _MIB)
        self._meta_releases = 0
        self._stall_runs = _policy.stall_runs(cfg)
        self._target_file_size = min(_MAX_TARGET_BYTES, max(_MIN_TARGET_BYTES, 2 * self._memtable_limit))
        self._settled = _policy.settled_size(self._target_file_size)
        self._write_cv = threading.Condition(threading.Lock())
        self._room_cv = threading.Condition(self._mutex)   # frozen memtables drained
        self._queue = collections.deque()
        # Groups in the WAL but not yet published, in seq order: [last seq];
        # guarded by _write_cv.  A freeze waits until it is empty.
        self._inflight = collections.deque()
        self._maintenance_wakeup = threading.Event()   # wakes the flush thread
        self._compact_wakeup = threading.Event()       # wakes the compaction thread
        self._write_error = None
        self._background_error = None
        self._wal_dirty = False
        self._appliers = []                   # idle ApplyThreads: see _apply_group
        self._segment_max_seq = {}
        self._dead_wal = []                   # flushed segments to unlink (_delete_dead_wal)
        self._dead_lock = threading.Lock()
        self._wal = None                      # created once recovery has replayed the old log
        self._next_seq = 1
        self._visible_seq = 0
        # counters
        self._records_written = 0
        self._bytes_written = 0
        self._flushes = 0
        self._compactions = 0
        self._gc_runs = 0
        self._purged = 0
        self._expired_dropped = 0
        self._table_bytes_written = 0         # flush + compaction output bytes
        self._compaction_bytes_read = 0
        self._compaction_bytes_out = 0
        self._compaction_ns = 0
        self._compaction_entries_in = 0
        self._blocks_warmed = 0
        self._stalls = 0
        self._tables_skipped_by_time_index = 0
        self._write_hist = LatencyHistogram()
        self._query_hist = LatencyHistogram()
        self._read_stats = _read.ReadStats(self._query_hist)   # point reads count here
        self._flush_hist = LatencyHistogram()

    def _recover(self):
        cfg = self._config
        self._manifest = self._storage.open_manifest()
        man = self._manifest
        for path in self._storage.remove_leftovers(set(man.tables)):
            log.info("removed leftover file %s", path)
        groups = {}
        for number, (run_id, _size) in man.tables.items():
            reader = self._open_table(number)
            # run_id 0 (stores written before runs existed): a run of its own.
            groups.setdefault(run_id or -number, []).append(reader)
        self._view = _View(MemTable(), (), _order_runs(groups.values()))
        for t in self._view.tables:
            self._time_index.add(t)
        self._enforce_meta_budget()
        log.info("opened %s: %d tables in %d runs", self._dir, len(self._view.tables),
                 len(self._view.runs))
        # Replay the WAL into memtables past flushed_seq, flushing as they fill.
        # A memtable's boundary is the last seq replayed into it, never the
        # manifest's last_seq: seqs above what the WAL holds were never durable.
        flushed = man.flushed_seq
        last_seq = max(man.last_seq, flushed)
        self._next_seq = last_seq + 1
        segments = list_segments(self._dir)
        replayed, top = 0, flushed
        for _segment, _offset, seq_start, payload in read_wal(self._dir, segments):
            if seq_start <= flushed:
                continue
            mem = self._view.mem
            count = mem.apply(payload, seq_start)
            replayed += count
            top = seq_start + count - 1
            if top > last_seq:
                last_seq = top
                self._next_seq = last_seq + 1
            if mem.approximate_bytes >= self._memtable_limit:
                self._replace_view(frozen=((mem, top),), mem=MemTable())
                self._flush_frozen()
        if self._view.mem.num_entries or self._view.mem.range_dels:
            self._replace_view(frozen=((self._view.mem, top),), mem=MemTable())
            self._flush_frozen()
        if replayed:
            log.info("recovered %d entries from the WAL of %s", replayed, self._dir)
        self._next_seq = last_seq + 1
        self._visible_seq = last_seq
        # Everything replayed is now in tables: a fresh segment starts the log.
        self._wal = WalWriter(self._dir, man.new_file_number(),
                              int(cfg.wal_segment_size_mb * _MIB), man.new_file_number)
        man.log_edit(last_seq=last_seq, flushed_seq=last_seq)
        delete_segments(self._dir, [s for s in segments if s != self._wal.current_number])

    def shutdown(self) -> None:
        """Flush, sync, stop background threads, release the lock; then closed."""
        if self._closed:
            return
        try:
            if self._maintenance is not None:
                self._maintenance.stop()
                self._maintenance = None
            if self._syncer is not None:
                self._syncer.stop()
                self._syncer = None
            if self._write_error is None:
                self._flush_all()
                self._wal.sync()
            self._delete_dead_wal()
            if (self._storage.single_file and self._write_error is None
                    and self._manifest.flushed_seq >= self._next_seq - 1):
                # Every record is in a table: at rest the store is its one file.
                self._wal.close()
                delete_segments(self._dir, [self._wal.current_number])
                self._manifest.vacuum()
        finally:
            self._closed = True
            for applier in self._appliers:
                applier.close()
            try:
                if self._wal is not None:
                    self._wal.close()
            except (OSError, FlowError):
                pass
            self._manifest.close()
            # Release the tables' descriptors now, not when the objects are
            # collected: a shut-down engine holds no file of its directory,
            # also none that a forgotten iterator or snapshot still holds.
            for table in list(self._readers):
                table.close()
            self._storage.close()

    def close(self) -> None:
        """Flush the memtables and sync the WAL; the engine stays usable."""
        self._check_open()
        self.flush()
        with self._write_lock:
            self._wal.sync()
            self._wal_dirty = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __del__(self):
        # A forgotten engine still releases its lock; data is safe in the WAL.
        if getattr(self, "_closed", True) is False:
            try:
                self._storage.release_lock()
            except Exception:
                pass

    def _check_open(self):
        if self._closed:
            raise InvalidStateError("the engine has been shut down")
        if self._background_error is not None:
            exc, self._background_error = self._background_error, None
            raise FlowError(f"background maintenance failed: {exc}") from exc

    # ---- writing ---------------------------------------------------------

    def write_batch(self, records) -> None:
        """Atomically write records; each keeps its expire_at (NEVER gets the default TTL)."""
        self._check_open()
        payload, count, raw = _batch.encode_puts(records, self._config.default_ttl_secs, True)
        self._commit(payload, count, raw, self._sync_always)

    def write_batch_owned(self, records) -> None:
        """Same as write_batch (kept for parity with the original API)."""
        self.write_batch(records)

    def write_batch_sync(self, records) -> None:
        """As write_batch, and the WAL is fsynced before it returns, whatever the mode."""
        self._check_open()
        payload, count, raw = _batch.encode_puts(records, self._config.default_ttl_secs, True)
        self._commit(payload, count, raw, True)

    def write_batch_ttl(self, records, ttl_secs=None) -> None:
        """Every record gets expire_at = ts + ttl (None: the default TTL, else its own)."""
        self._check_open()
        ttl = as_ttl(ttl_secs)
        if ttl is None:
            ttl = self._config.default_ttl_secs
        payload, count, raw = _batch.encode_puts(records, ttl, False)
        self._commit(payload, count, raw, self._sync_always)

    def delete_batch(self, keys_ts) -> None:
        """Atomically delete (key, ts) pairs; absent ones are not an error."""
        self._check_open()
        payload, count = _batch.encode_deletes(keys_ts)
        self._commit(payload, count, 0, self._sync_always)

    def delete_range(self, start_key, end_key) -> None:
        """Delete every version of every key in [start_key, end_key)."""
        self._check_open()
        start = as_key(start_key, "start_key")
        end = as_key(end_key, "end_key")
        if start >= end:
            return
        payload, count = _batch.encode_range_delete(start, end)
        self._commit(payload, count, 0, self._sync_always)

    def _write_mixed(self, records, deletes=(), range_deletes=(), sync=None) -> None:
        """One atomic batch: range deletes [start, end), point deletes, and
        puts (expiry kept as given), applied in that order, so a batch can
        clear a range and write into it.

        For layers built on the engine (JsonDB commits a transaction's
        documents, index entries and key generators with one call).
        """
        self._check_open()
        parts = []
        for start, end in range_deletes:
            if as_key(start, "start_key") < as_key(end, "end_key"):
                parts.append(_batch.encode_range_delete(start, end)[0])
        parts.append(_batch.encode_deletes(deletes)[0])
        parts.append(_batch.encode_puts(records, None, False)[0])
        payload = _batch.concat_payloads(*parts)
        count = int.from_bytes(payload[:4], "little")
        raw = sum(len(r.key) + len(r.value) for r in records) if records else 0
        self._commit(payload, count, raw, self._sync_always if sync is None else sync)

    def snapshot(self) -> "Snapshot":
        """A consistent read-only view of the store as it is now.

        Reads through it never see later writes; it pins the memtables and
        tables it reads (deleted files stay readable through open handles),
        so release it (close(), or a with block) when done.
        """
        self._check_open()
        view, seq = self._snapshot()
        return Snapshot(self, view, seq)

    def patch_record(self, key, ts, new_value=None, new_ttl_secs=None) -> Record:
        """Replace the value and/or expiry of a live record, serialised by a lock."""
        self._check_open()
        key = as_key(key)
        ts = as_ts(ts)
        value = None if new_value is None else as_value(new_value, "new_value")
        ttl = as_ttl(new_ttl_secs, "new_ttl_secs")
        with self._patch_lock:
            current = self.get(key, ts)
            if current is None:
                raise NotFoundError(f"no live record at key={key!r} ts={ts}")
            patched = Record(key, ts, current.value if value is None else value,
                             current.expire_at if ttl is None else expiry(ts, ttl))
            payload, count, raw = _batch.encode_puts([patched], None, False)
            self._commit(payload, count, raw, self._sync_always)
            return patched

    def _commit(self, payload, count, raw, sync):
        """Group commit: lead alone when nobody waits, else queue, and either
        ride a leader's group or lead one."""
        if count == 0:
            return
        started = time.perf_counter_ns()
        if self._maintenance is not None and len(self._view.runs) > self._stall_runs and (
                _policy.active_runs(self._view.runs, self._settled) > self._stall_runs):
            self._stall()
        w = _Writer(payload, count, sync)
        if not self._queue and self._write_lock.acquire(False):
            # Nobody waits and no leader writes: a group of one needs no
            # queue, which saves a small batch three lock round trips and
            # two notify_all.  A writer arriving meanwhile queues, and
            # leads the next group.
            self._lead([w], queued=False)
        else:
            self._join(w)
        if w.error is not None:
            raise w.error
        self._records_written += count
        self._bytes_written += raw
        self._write_hist.record((time.perf_counter_ns() - started) // 1000)

    def _join(self, w):
        """Queue w; lead the group of everyone queued once w is at the head,
        or, taken into a leader's group, insert w's batch in parallel."""
        cv = self._write_cv
        with cv:
            if self._write_error is not None:
                raise self._write_error
            queue = self._queue
            queue.append(w)
            # Until a leader takes it into a group, w is in the queue.
            while not w.taken and queue[0] is not w:
                cv.wait()
            if w.taken:
                while not w.done and w.mem is None:
                    cv.wait()
        if not w.taken:
            # The head: the group is whoever queued by the time the WAL is free.
            try:
                self._write_lock.acquire()
            except BaseException:             # interrupted: let the next writer lead
                with cv:
                    queue.remove(w)
                    cv.notify_all()
                raise
            with cv:
                group, size = [], 0
                for x in queue:
                    x.taken = True
                    group.append(x)
                    size += len(x.payload)
                    if size >= _GROUP_MAX_BYTES:
                        break
            self._lead(group, queued=True)
        elif w.mem is not None:
            # A leader wrote this batch to the WAL: insert it in parallel with
            # the rest of the group, then wait for the leader to publish.
            try:
                w.mem.apply_concurrent(w.payload, w.seq)
            except BaseException as exc:
                w.error = exc
            with cv:
                w.applied = True
                cv.notify_all()
                while not w.done:
                    cv.wait()

    def _lead(self, group, queued):
        """The leader's work, entered holding _write_lock; errors go to every
        writer's .error.  Pipelined: the next leader starts on the WAL as soon
        as this group is in it, while this one is still inserting."""
        cv = self._write_cv
        inflight = None
        try:
            try:
                inflight = self._write_group(group)
            finally:
                self._write_lock.release()
                if queued:
                    with cv:
                        for _ in group:
                            self._queue.popleft()
                        cv.notify_all()
            self._finish_group(group, *inflight)
        except BaseException as exc:
            for w in group:
                w.error = exc
        finally:
            if len(group) > 1:               # followers wait for .done
                with cv:
                    for w in group:
                        w.done = True
                    cv.notify_all()

    def _stall(self):
        """Slow a writer while compaction is behind (too many runs).

        A short sleep per commit, outside every lock, so that the compaction
        thread catches up; writers stop outright only when max_frozen_memtables
        is reached (_freeze).  Bounded: at most 100 ms per commit."""
        self._stalls += 1
        self._compact_wakeup.set()
        deadline = time.monotonic() + 0.1
        while (_policy.active_runs(self._view.runs, self._settled) > self._stall_runs
               and time.monotonic() < deadline):
            time.sleep(0.002)

    def _write_group(self, group):
        """Under _write_lock: room, seqs, the WAL (one write).  Returns the
        in-flight record (_finish_group's arguments)."""
        if self._write_error is None and self._manifest.failed:
            # No flush can ever be recorded again: refuse writes now, as
            # after a WAL failure, instead of filling memory until reopen.
            self._fail_writes(self._manifest._failure, "MANIFEST")
        if self._write_error is not None:
            raise self._write_error
        self._make_room()
        seq = self._next_seq
        entries = []
        for w in group:
            w.seq = seq
            entries.append((seq, w.payload))
            seq += w.count
        segment = self._wal.current_number
        try:
            self._wal.append(entries)
        except Exception as exc:
            self._fail_writes(exc)
            raise self._write_error from exc
        sync = any(w.sync for w in group)
        if not sync:
            self._wal_dirty = True
        self._segment_max_seq[segment] = seq - 1
        # The seqs are used from here on, even if the fsync fails: the
        # memtable may hold the entries (invisible), and a later flush must
        # not give the same seqs to others.
        self._next_seq = seq
        record = [seq - 1]
        with self._write_cv:
            self._inflight.append(record)
        return record, self._view.mem, sync

    def _finish_group(self, group, record, mem, sync):
        """Insert the group (and fsync it, if `sync`), and publish it after
        every earlier group (visible_seq only moves forward over whole groups)."""
        error = None
        try:
            self._apply_group(group, mem, sync)
        except BaseException as exc:
            error = exc
        if error is not None and not isinstance(error, Exception):
            # Interrupted (KeyboardInterrupt...) with inserts perhaps still
            # running: no later group may publish past this one.
            self._fail_writes(error, "write path")
        cv = self._write_cv
        with cv:
            try:
                while self._inflight[0] is not record:
                    cv.wait()
            except BaseException as exc:
                # Leave the queue, so that nobody waits on this group, and
                # let no later group publish past it.
                self._fail_writes(exc, "write path")
                self._inflight.remove(record)
                cv.notify_all()
                raise
            # An earlier group whose fsync failed fails this one too: its
            # entries would become visible with ours.
            if error is None and self._write_error is not None:
                error = self._write_error
            if error is None:
                self._visible_seq = record[0]
            self._inflight.popleft()
            cv.notify_all()
        if error is not None:
            raise error

    def _apply_group(self, group, mem, sync):
        """Insert the group into mem: every writer its own batch, in parallel
        (the inserts run without the GIL); returns once all are in.

        With `sync`, the leader's batch goes in on the C apply thread while
        this thread fsyncs the WAL (os.fdatasync gives the GIL away), so the
        fsync overlaps the insert without a hand-over between Python
        threads.  A failed fsync refuses all later writes."""
        leader, followers = group[0], group[1:]
        if followers:
            with self._write_cv:
                for w in followers:
                    w.mem = mem
                self._write_cv.notify_all()
        try:
            if sync:
                # One per leader at a time (pipelined leaders overlap).
                applier = self._appliers.pop() if self._appliers else ApplyThread()
                try:
                    applier.start(mem, leader.payload, leader.seq)
                    try:
                        self._wal.sync(applier.datasync)
                    except Exception as exc:
                        self._fail_writes(exc)
                        raise self._write_error from exc
                    finally:
                        applier.wait()
                finally:
                    self._appliers.append(applier)
            else:
                mem.apply_concurrent(leader.payload, leader.seq)
        finally:
            if followers:
                with self._write_cv:
                    while not all(w.applied for w in followers):
                        self._write_cv.wait()

    def _fail_writes(self, exc, what="WAL"):
        if self._write_error is None:
            log.error("%s write or fsync failed (%s); refusing writes until reopened", what, exc)
            self._write_error = FlowError(
                f"the {what} failed ({exc}); the engine refuses writes until it is reopened")

    def _sync_wal_if_dirty(self):
        if self._wal_dirty:
            self._wal_dirty = False
            self._wal.sync()

    def _make_room(self):
        """Called by the write leader: freeze a full memtable, waiting for room."""
        if self._view.mem.approximate_bytes < self._memtable_limit:
            return
        self._freeze()

    def _freeze(self):
        """Move the active memtable to the frozen list (caller holds _write_lock)."""
        with self._write_cv:
            # Groups still inserting into the active memtable finish first.
            while self._inflight:
                self._write_cv.wait()
        maintenance = self._maintenance
        with self._mutex:
            while len(self._view.frozen) >= self._config.max_frozen_memtables:
                # The flush thread (its timer freeze) must not wait for
                # itself to make room: it flushes inline below.
                if maintenance is None or threading.current_thread() is maintenance.flush_thread:
                    break
                self._maintenance_wakeup.set()
                self._room_cv.wait(0.1)
                if self._background_error is not None:
                    raise FlowError("background flush failed") from self._background_error
        if len(self._view.frozen) >= self._config.max_frozen_memtables:
            self._flush_frozen()              # no background thread: flush inline
        view = self._view
        if view.mem.num_entries == 0 and not view.mem.range_dels:
            return
        self._replace_view(mem=MemTable(), frozen=((view.mem, self._next_seq - 1),) + view.frozen)
        if self._wal is not None:
            try:
                self._wal.rotate()
            except Exception as exc:
                self._fail_writes(exc)
                raise self._write_error from exc
        if self._maintenance is not None:
            self._maintenance_wakeup.set()

    def _freeze_if_nonempty(self, blocking=True):
        """Freeze the active memtable if it holds anything; False if not done."""
        if not self._write_lock.acquire(blocking):
            return False
        try:
            mem = self._view.mem
            if not (mem.num_entries or mem.range_dels):
                return False
            self._freeze()
            return True
        finally:
            self._write_lock.release()

    def _replace_view(self, mem=None, frozen=None):
        with self._mutex:
            v = self._view
            self._view = _View(v.mem if mem is None else mem,
                               v.frozen if frozen is None else frozen, v.runs)
            self._room_cv.notify_all()

    # ---- flush and compaction -------------------------------------------

    def flush(self) -> None:
        """Write the memtables to SSTables."""
        self._check_open()
        self._flush_all()

    def _flush_all(self):
        self._freeze_if_nonempty()
        self._flush_frozen()

    def _flush_frozen(self, wait=True):
        """Flush the frozen memtables.  Several threads may do this at once
        (the flush thread and a caller of flush(), which would otherwise
        only wait): each builds the oldest memtable nobody is building, and
        the tables go live in the order their memtables froze.  wait=False
        returns once every frozen memtable has a builder (the flush thread
        does not wait for a caller's); True, once none is left."""
        while True:
            with self._mutex:
                job = self._claim_oldest()
                if job is None:
                    if not (wait and self._view.frozen):
                        return
                    self._room_cv.wait()
                    continue
            self._flush_claimed(*job)

    def _claim_oldest(self, older_than=None):
        """The oldest frozen (memtable, boundary) nobody builds, now claimed
        by the caller; None if there is none (older than `older_than`, if
        given).  Caller holds _mutex."""
        for mem, boundary in reversed(self._view.frozen):
            if mem is older_than:
                return None
            if id(mem) not in self._building:
                self._building.add(id(mem))
                return mem, boundary
        return None

    def _flush_claimed(self, mem, boundary):
        started = time.perf_counter_ns()
        reader = None
        offered = False
        try:
            if mem.num_entries or mem.range_dels:
                reader = self._write_table(lambda b: build_table(mem.new_iterator(), b, list(mem.range_dels)))
            self._await_turn(mem)
            offered = True
            self._install_flush(mem, boundary, reader, started)
        except BaseException:
            with self._mutex:
                self._building.discard(id(mem))
                self._room_cv.notify_all()     # a waiter may take the memtable over
            if reader is not None and not offered:
                self._discard_table(reader)
            raise

    def _await_turn(self, mem):
        """Returns once mem is the oldest frozen memtable.  An older one
        whose builder gave up (an error, a stop) is built here meanwhile."""
        while True:
            with self._mutex:
                if self._view.frozen[-1][0] is mem:
                    return
                orphan = self._claim_oldest(older_than=mem)
                if orphan is None:
                    self._room_cv.wait()
                    continue
            self._flush_claimed(*orphan)

    def _install_flush(self, mem, boundary, reader, started):
        """The manifest edit and the new view of a flush, in freeze order."""
        with self._flush_lock:
            # A flushed table is a run of its own: its run id is its number.
            added = [(reader.file_number, reader.file_number, reader.file_size)] if reader else []
            self._manifest.log_edit(add=added, flushed_seq=boundary, last_seq=max(boundary, self._next_seq - 1))
            with self._mutex:
                v = self._view
                runs = (((reader,),) if reader else ()) + v.runs
                self._view = _View(v.mem, v.frozen[:-1], runs)
                self._building.discard(id(mem))
                if reader is not None:
                    self._time_index.add(reader)
                self._room_cv.notify_all()
            self._table_bytes_written += reader.file_size if reader else 0
            self._enforce_meta_budget()
            self._flushes += 1
            self._flush_hist.record((time.perf_counter_ns() - started) // 1000)
            log.info("flushed %d entries to %s", mem.num_entries,
                      reader.path if reader else "(nothing)")
            self._delete_obsolete_wal(boundary)

    def _discard_table(self, reader):
        """Removes a table built but never offered to the manifest."""
        self._storage.discard(reader)

    def _write_table(self, fill):
        """Build a table under a temporary name, then make it durable and
        live-ready.  With Config.prepopulate_block_cache its data blocks go
        to the block cache as they are written (TableBuilder.warm)."""
        number = self._manifest.new_file_number()
        tmp = self._storage.table_path(number)
        builder = TableBuilder(tmp, self._config.block_size, self._config.bloom_bits_per_key)
        if self._config.prepopulate_block_cache:
            builder.warm(self._cache, number)
        try:
            fill(builder)
        except BaseException:
            builder.abandon()
            raise
        self._storage.install([(number, tmp)])
        return self._open_table(number)

    def _open_table(self, number):
        reader = self._storage.open_table(number, self._cache)
        self._readers.add(reader)
        return reader

    def _delete_obsolete_wal(self, flushed_seq):
        if self._wal is None:               # recovery: it deletes the old log itself
            return
        dead = self._collect_dead_wal(flushed_seq)
        if self._maintenance is None:
            self._delete_dead_wal()
        elif dead:
            # Unlinking a segment of tens of MiB, and the directory fsync,
            # take milliseconds: the flush thread does it, not the flush()
            # caller.  Recovery skips a segment that outlives its flush.
            self._maintenance_wakeup.set()

    def _collect_dead_wal(self, flushed_seq):
        """Move the segments (but the current one) whose records are all
        <= flushed_seq to the unlink list; returns them."""
        if self._wal is None:
            return []
        current = self._wal.current_number
        dead = [s for s, top in list(self._segment_max_seq.items())
                if top <= flushed_seq and s != current
                and self._segment_max_seq.pop(s, None) is not None]
        with self._dead_lock:
            self._dead_wal.extend(dead)
        return dead

    def _delete_dead_wal(self):
        """Unlink the WAL segments whose every record is in a table.

        Also those a flush could not collect because the freeze that made
        them obsolete had not yet rotated the WAL."""
        self._collect_dead_wal(self._manifest.flushed_seq)
        with self._dead_lock:
            dead, self._dead_wal = self._dead_wal, []
        if dead:
            delete_segments(self._dir, dead)

    def trigger_compaction(self) -> bool:
        """Run one round of the compaction policy; True if it merged anything.

        One round: the window of adjacent runs the policy picks
        (flowdb._compaction.pick); when the policy sees nothing to do but
        several runs are left, all of them are merged into one (an explicit
        request is the operator asking for a compact tree).
        """
        self._check_open()
        with self._compact_lock:
            runs = self._view.runs
            window = self._pick(runs)
            if window is None and len(runs) > 1:
                window = (0, len(runs))
            if window is None and runs and any(self._has_garbage(t, _now_us()) for t in runs[0]):
                return self._compact_window(runs, 0, 1, force=True) is not None
            if window is None:
                return False
            return self._compact_window(runs, *window) is not None

    def _pick(self, runs):
        cfg = self._config
        return _policy.pick(runs, _policy.threshold(cfg), _policy.max_runs(cfg), self._settled)

    def _maybe_compact(self):
        """Background: one round of the policy, if it picks a window; True if it did."""
        with self._compact_lock:
            runs = self._view.runs
            window = self._pick(runs)
            if window is None:
                return False
            return self._compact_window(runs, *window) is not None

    def _compact_window(self, runs, start, end, force=False):
        """Merge runs[start:end] into one run in their place.

        runs: the view's runs as the caller saw them under _compact_lock
        (a flush since then only put runs in front; so end == len(runs)
        still means "includes the oldest run").

        Caller holds _compact_lock (compactions and GC are serialised; flushes
        go on: they only put new runs in front, and the install below replaces
        exactly the input runs, found by identity).  The merge loop runs in
        read.compact without the GIL and holds no engine lock, so writers,
        readers and flushes continue.  Returns the merge counters, or None if
        there was nothing to do.
        """
        inputs = runs[start:end]
        tables = [t for r in inputs for t in r]
        if not tables:
            return None
        if len(inputs) == 1 and not force:
            return None
        bottommost = end == len(runs)
        started = time.perf_counter_ns()
        range_dels = [rd for t in tables for rd in t.range_dels]
        outputs = []
        cfg = self._config

        def new_builder():
            number = self._manifest.new_file_number()
            path = self._storage.table_path(number)
            outputs.append((number, path))
            return TableBuilder(path, cfg.block_size, cfg.bloom_bits_per_key)

        stats = {}
        try:
            _read.compact(tables, range_dels, new_builder, self._target_file_size,
                          bottommost, _now_us(), self._visible_seq, stats)
        except BaseException:
            for _, path in outputs:
                if os.path.exists(path):
                    os.unlink(path)
            raise
        produced = [(number, path) for number, path in outputs if os.path.exists(path)]
        self._storage.install(produced)
        readers = tuple(self._open_table(number) for number, _path in produced)
        run_id = readers[0].file_number if readers else 0
        self._manifest.log_edit(add=[(r.file_number, run_id, r.file_size) for r in readers],
                                delete=[t.file_number for t in tables])
        hot = HotRanges(tables, self._cache)    # before _retire drops the inputs' blocks
        self._install(inputs, (readers,) if readers else ())
        self._retire(tables)
        warm_started = time.perf_counter_ns()
        warmed = sum(r.warm(hot) for r in readers)
        warm_ns = time.perf_counter_ns() - warm_started
        self._blocks_warmed += warmed
        self._enforce_meta_budget()
        written = sum(r.file_size for r in readers)
        self._table_bytes_written += written
        self._compaction_bytes_read += sum(t.file_size for t in tables)
        self._compaction_bytes_out += written
        elapsed = time.perf_counter_ns() - started
        self._compaction_ns += elapsed
        self._compaction_entries_in += stats["entries_in"]
        self._compactions += 1
        self._expired_dropped += stats["dropped_expired"]
        log.info("compacted %d runs (%d tables, %d bytes%s) into %d tables (%d bytes) in %.1f ms; "
                 "dropped %d versions, %d deleted, %d tombstones, %d expired",
                 len(inputs), len(tables), sum(t.file_size for t in tables),
                 ", bottommost" if bottommost else "", len(readers), written, elapsed / 1e6,
                 stats["dropped_versions"], stats["dropped_deleted"],
                 stats["dropped_tombstones"], stats["dropped_expired"])
        if warmed:
            log.debug("warmed %d blocks of the output where readers had cached the input's, in %.1f ms",
                      warmed, warm_ns / 1e6)
        return stats

    def _install(self, old_runs, new_runs):
        """Replace the runs old_runs (adjacent, by identity) by new_runs in the view."""
        with self._mutex:
            v = self._view
            runs = v.runs
            for i in range(len(runs)):
                if runs[i] is old_runs[0]:
                    break
            else:
                raise AssertionError("compaction inputs vanished from the view")
            assert all(runs[i + j] is r for j, r in enumerate(old_runs))
            self._view = _View(v.mem, v.frozen, runs[:i] + tuple(new_runs) + runs[i + len(old_runs):])
            kept = {t.file_number for r in new_runs for t in r}
            for r in old_runs:
                for t in r:
                    if t.file_number not in kept:
                        self._time_index.remove(t)
            for r in new_runs:
                for t in r:
                    self._time_index.add(t)          # no-op for a table it knows

    def _enforce_meta_budget(self):
        """Keep the block indexes and bloom filters within index_memory_budget_mb.

        Past the budget, the tables of the oldest runs release theirs
        (TableReader.release_meta); a table loads them again on its next
        read, through the block cache.  Called after every flush and
        compaction and on every tick of the flush thread, so the budget can
        be overshot only by what reads reload between two calls."""
        tables = self._view.tables
        total = sum(t.meta_bytes for t in tables)
        if total <= self._meta_budget:
            return 0
        freed = 0
        for t in reversed(tables):             # oldest first
            if total - freed <= self._meta_budget:
                break
            freed += t.release_meta()
        self._meta_releases += 1
        log.debug("released %d bytes of table indexes and blooms (budget %d)", freed, self._meta_budget)
        return freed

    def _retire(self, tables):
        """After the view swap: forget cached blocks and unlink the files.

        Views still pinned (snapshots, scans) read on through open fds."""
        erased = 0
        for t in tables:
            t.detach_cache()
            erased += self._cache.erase_file(t.file_number)
            self._storage.retire(t)
        if erased:
            self._cache.release_free_memory()

    def trigger_gc(self) -> int:
        """Physically purge expired and deleted records; returns how many."""
        self._check_open()
        return self._gc(explicit=True)

    def _gc(self, explicit=False):
        """One GC run: drop whole expired tables, then purge by a bottommost merge.

        1. Tables of the oldest run whose every record has expired
           (flowdb._compaction.droppable_oldest) are dropped without being
           read; their num_entries count as purged and expired.  Repeated
           while the oldest run empties.
        2. If a table left holds tombstones or records already expired
           (props: num_deletes, num_range_dels, min_expire_at <= now), the
           runs from the newest such one down to the oldest are merged
           bottommost, which drops them physically.  The timer (not
           trigger_gc) does this only when the estimated garbage is at least
           GC_MERGE_MIN_GARBAGE of those runs' bytes
           (flowdb._compaction.garbage_fraction): a store whose retention is
           met by step 1 is not rewritten every gc_interval_secs.
        """
        with self._compact_lock:
            self._gc_runs += 1
            now = _now_us()
            purged = 0
            dropped_tables = 0
            while True:
                runs = self._view.runs
                drop = _policy.droppable_oldest(runs, now)
                if not drop:
                    break
                oldest = runs[-1]
                keep = tuple(t for t in oldest if all(t is not d for d in drop))
                self._manifest.log_edit(delete=[t.file_number for t in drop])
                self._install((oldest,), (keep,) if keep else ())
                self._retire(drop)
                n = sum(t.props["num_entries"] for t in drop)
                expired = sum(t.props["num_entries"] - t.props["num_deletes"] for t in drop)
                purged += n
                self._expired_dropped += expired
                dropped_tables += len(drop)
            runs = self._view.runs
            first = None
            for i, run in enumerate(runs):
                if any(self._has_garbage(t, now) for t in run):
                    first = i
                    break
            if first is not None and not explicit:
                window = [t for r in runs[first:] for t in r]
                if _policy.garbage_fraction(window, now) < _GC_MERGE_MIN_GARBAGE:
                    first = None
            if first is not None:
                stats = self._compact_window(runs, first, len(runs), force=True)
                if stats is not None:
                    # Records purged: expired ones, ones hidden by a delete,
                    # and one per point tombstone dropped.
                    purged += (stats["dropped_expired"] + stats["dropped_deleted"]
                               + stats["dropped_tombstones"])
            self._purged += purged
            log.info("GC purged %d records (%d whole tables dropped unread)", purged, dropped_tables)
            return purged

    @staticmethod
    def _has_garbage(table, now):
        p = table.props
        return bool(p["num_deletes"] or p["num_range_dels"] or p["min_expire_at"] <= now)

    def spawn_background_maintenance(self):
        """Start the maintenance thread; None if it is already running."""
        self._check_open()
        if self._maintenance is not None:
            return None
        self._maintenance = MaintenanceHandle(self)
        return self._maintenance

    # ---- reading ---------------------------------------------------------

    def _snapshot(self):
        seq = self._visible_seq            # read before the view: see the module doc
        return self._view, seq

    def get_sync(self, key, ts):
        """As get, but never raises for a missing record or a read error: None."""
        try:
            return self.get(key, ts)
        except InvalidStateError:
            raise
        except (FlowError, OSError):
            return None

    def scan(self, range: ScanRange) -> ScanIterator:
        return self.scan_opt(range, ReadOptions())

    def scan_opt(self, range: ScanRange, opts: ReadOptions) -> ScanIterator:
        """A lazy iterator over a snapshot of the records that `range` selects."""
        if self._closed:                   # a background failure is a writer's news
            self._check_open()
        view, seq = self._snapshot()
        return self._scan_at(view, seq, range, opts)

    def _scan_keys(self, lo, hi, reverse=False):
        """Every record with lo <= key <= hi (bytes, unchecked), ascending or
        descending: the scan of layers built on the engine (JsonDB), without
        a ScanRange's checks on every call."""
        if self._closed:
            self._check_open()
        view, seq = self._snapshot()
        return ScanIterator(self, view, self._cursor_over(
            view, seq, None, lo, hi, INT64_MIN, INT64_MAX, True, True, reverse))

    def _scan_at(self, view, seq, range, opts):
        return ScanIterator(self, view, self._cursor(view, seq, range, opts))

    def _cursor(self, view, seq, range, opts):
        if not isinstance(range, ScanRange):
            raise TypeError(f"scan takes a ScanRange or Query, not {type(range).__name__}")
        if not isinstance(opts, ReadOptions):
            raise TypeError(f"opts must be ReadOptions, not {type(opts).__name__}")
        keys = range.keys
        return self._cursor_over(view, seq, keys.prefix_bytes, keys.start, keys.end,
                                 range.ts_start, range.ts_end, opts.fill_cache, opts.verify_checksums,
                                 opts.reverse)

    def scan_prefix(self, prefix) -> ScanIterator:
        return self.scan(ScanRange.prefix(prefix))

    def scan_prefix_time_range(self, prefix, ts_start, ts_end) -> ScanIterator:
        return self.scan(ScanRange.prefix_time_range(prefix, ts_start, ts_end))

    def query(self, query: ScanRange) -> list:
        """Every record the query selects, in (key, ts) order."""
        if not isinstance(query, ScanRange):
            raise TypeError(f"scan takes a ScanRange or Query, not {type(query).__name__}")
        keys = query.keys
        return self._query(keys.prefix_bytes, keys.start, keys.end, query.ts_start, query.ts_end)

    def query_by_prefix(self, prefix) -> list:
        return self.query(ScanRange.prefix(prefix))

    def query_by_key_range(self, start, end) -> list:
        return self.query(ScanRange.key_range(start, end))

    def query_time_range(self, start, end) -> list:
        return self.query(ScanRange.time_range(start, end))

    def query_key_time_range(self, start_key, end_key, start, end) -> list:
        return self.query(ScanRange.key_time_range(start_key, end_key, start, end))

    # ---- observability -----------------------------------------------------

    def stats(self) -> EngineStats:
        self._check_open()
        view = self._view
        tables = view.tables
        raw = sum(t.props.get("raw_key_bytes", 0) + t.props.get("raw_value_bytes", 0) for t in tables)
        stored = sum(t.file_size for t in tables)
        hits, misses = self._cache.hits, self._cache.misses
        w, q, f = self._write_hist, self._query_hist, self._flush_hist
        return EngineStats(
            total_records_written=self._records_written,
            total_bytes_written=self._bytes_written,
            total_records_read=self._read_stats.records_read,
            total_records_expired=self._expired_dropped,
            total_flushes=self._flushes,
            total_gc_runs=self._gc_runs,
            total_compaction_runs=self._compactions,
            records_purged_by_gc=self._purged,
            memtable_records=view.mem.num_entries,
            memtable_bytes=view.mem.approximate_bytes,
            frozen_memtable_count=len(view.frozen),
            sstable_count=len(tables),
            sstable_bytes=stored,
            wal_bytes=self._wal.bytes_written,
            block_meta_index_entries=sum(t.num_data_blocks for t in tables if t.meta_loaded),
            time_index_buckets=self._time_index.num_buckets,
            block_cache_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
            compression_ratio=raw / stored if stored else 0.0,
            write_latency_p50_us=w.percentile(50), write_latency_p90_us=w.percentile(90),
            write_latency_p99_us=w.percentile(99),
            query_latency_p50_us=q.percentile(50), query_latency_p90_us=q.percentile(90),
            query_latency_p99_us=q.percentile(99),
            flush_latency_p50_us=f.percentile(50), flush_latency_p90_us=f.percentile(90),
            flush_latency_p99_us=f.percentile(99),
            uptime_secs=int(time.monotonic() - self._started),
        )

    def metrics_text(self) -> str:
        """Prometheus text exposition of stats(), every name prefixed flowdb_."""
        return render_metrics(self.stats(), {"write": self._write_hist, "query": self._query_hist,
                                             "flush": self._flush_hist}, self._maintenance_metrics())

    def _maintenance_metrics(self):
        """Figures beyond EngineStats: [(name, type, help, value)] (flowdb._metrics)."""
        ingested = self._bytes_written
        return [
            ("sstable_bytes_written_total", "counter",
             "Bytes written to SSTables by flushes and compactions.", self._table_bytes_written),
            ("compaction_bytes_read_total", "counter", "Bytes of SSTables read by compactions.",
             self._compaction_bytes_read),
            ("compaction_bytes_written_total", "counter", "Bytes of SSTables written by compactions.",
             self._compaction_bytes_out),
            ("compaction_seconds_total", "counter", "Seconds spent in compactions.",
             self._compaction_ns / 1e9),
            ("compaction_blocks_warmed_total", "counter",
             "Output blocks compactions read into the block cache where readers had cached input blocks.",
             self._blocks_warmed),
            ("write_stalls_total", "counter", "Commits slowed because compaction was behind.",
             self._stalls),
            ("time_index_tables_skipped_total", "counter",
             "Tables a time-range read skipped through the time index.",
             self._tables_skipped_by_time_index),
            ("table_meta_bytes", "gauge",
             "Bytes of block indexes and bloom filters in memory (bounded by index_memory_budget_mb).",
             sum(t.meta_bytes for t in self._view.tables)),
            ("table_meta_reloads", "gauge",
             "Indexes and blooms the live tables loaded again on demand after the budget released them.",
             sum(t.meta_loads for t in self._view.tables)),
            ("sstable_runs", "gauge", "Sorted runs of SSTables (the compaction policy's unit).",
             len(self._view.runs)),
            ("write_amplification", "gauge",
             "Bytes written to SSTables over key and value bytes ingested (0 before any).",
             self._table_bytes_written / ingested if ingested else 0.0),
        ]
