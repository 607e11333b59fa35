"""asv benchmarks of the flowdb engine on the sensor workload (flowdb/_demo.py).

1,000,000 readings from 1,000 series (1,000 s of data), batches of 1,000,
SyncMode.interval_ms(100): the workload of `python -m flowdb.bench`.
FLOWDB_ASV_RECORDS=100000 runs a smaller version (time windows stay 1%).
The read benchmarks share one database, built once by setup_cache; each
setup checks the engine's answers against the data written, so a wrong or
empty answer fails the benchmark instead of timing it; the ingest
benchmarks check the data in their teardown.

Each row of benchmarks/compare.py (issue 6) has its benchmark here:
ingest with interval sync (Ingest), with an fsync per batch (IngestAlways,
on SMALL records), by 2 writer threads (IngestTwoWriters, SMALL) and in
small batches beside a thread busy in Python (SmallBatchesBesideBusyThread), point
gets with and without misses, get_latest, prefix scan, the 1% windows
(Reads), bytes on disk after compaction over raw bytes
(Storage.track_disk_over_raw) and peak memory (Memory.peakmem_*); and
the flush of one memtable on its own (Flush), and a flush and a compaction
beside a thread busy in Python (FlushBesideBusyThread,
CompactionBesideBusyThread: each take of the GIL costs them up to the
switch interval, 5 ms).
"""
import os
import random
import shutil
import tempfile
import threading

# ScanRange stays behind flowdb.: asv takes any class in this module with a
# method named time_* (ScanRange.time_range) for a benchmark.
import flowdb
from flowdb import Config, Engine, SyncMode
from flowdb._demo import SensorWorkload, compact, dir_bytes, ingest

RECORDS = int(os.environ.get("FLOWDB_ASV_RECORDS", 1_000_000))
# The slower ingests (an fsync per batch, threads with batches built up front) run on fewer.
SMALL = max(10_000, RECORDS // 5)
SERIES = 1000
# 1% of the time span: 10 readings of one series, 10,000 of all series (1M records).
WINDOW = 0.01


def _open(path, sync=None, **config):
    return Engine.open(Config(data_dir=path, wal_sync_mode=sync or SyncMode.interval_ms(100), **config))


def _check_ingested(engine, w):
    """The latest reading of every series must be there, and the 1% window complete."""
    for s in range(w.series):
        w.check(engine.get_latest(w.keys[s]), s, w.last_second(s), "ingest: get_latest")
    lo, hi = w.window(WINDOW)
    w.check_records(engine.query_time_range(w.ts(lo), w.ts(hi)), w.count_all(lo, hi),
                    "ingest: 1% window")


class _IngestBase:
    """A fresh engine and the batches built up front; the data checked in teardown.

    (A leading underscore: asv does not collect this class, so the
    subclasses do not inherit each other's benchmarks.)
    """

    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0
    timeout = 300
    records = RECORDS
    sync = None
    writers = 1
    config = {}                 # other Config fields

    def setup(self):
        self.w = SensorWorkload(self.records, SERIES)
        self.parts = [list(self.w.batches(part=p, parts=self.writers))
                      for p in range(self.writers)]
        self.dir = tempfile.mkdtemp(prefix="flowdb-asv-")
        self.engine = _open(self.dir, self.sync, **self.config)

    def teardown(self):
        try:
            # Only after a timed run: setup alone writes nothing.
            if self.engine.stats().total_records_written:
                _check_ingested(self.engine, self.w)
        finally:
            self.engine.shutdown()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _write(self):
        write = self.engine.write_batch
        if self.writers == 1:
            for batch in self.parts[0]:
                write(batch)
        else:
            def run(batches):
                for batch in batches:
                    write(batch)

            threads = [threading.Thread(target=run, args=(p,)) for p in self.parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.engine.flush()


class Ingest(_IngestBase):
    """write_batch of RECORDS readings in batches of 1,000, then flush."""

    def time_write_batch_interval_sync(self):
        self._write()

    def peakmem_write_batch_interval_sync(self):
        self._write()


class IngestAlways(_IngestBase):
    """SMALL readings with SyncMode.ALWAYS: one fsync per batch of 1,000."""

    records = SMALL
    sync = SyncMode.ALWAYS

    def time_write_batch_always(self):
        self._write()


class IngestTwoWriters(_IngestBase):
    """SMALL readings by 2 threads, each writing the batches of its own half of the series."""

    records = SMALL
    writers = 2

    def time_write_batch_2_writers(self):
        self._write()


class _OneMemtable(_IngestBase):
    """SMALL readings in the memtable, no background thread."""

    records = SMALL
    config = {"auto_background": False}

    def setup(self):
        super().setup()
        for batch in self.parts[0]:
            self.engine.write_batch(batch)
        assert not self.engine._view.frozen, "the memtable filled before the timed flush"


class Flush(_OneMemtable):
    """flush() of one memtable: the table build alone, which the ingest
    benchmarks time together with the writes."""

    def time_flush_memtable(self):
        self.engine.flush()


class _BusyThread:
    """A thread spinning in Python from setup to teardown (mixed in before
    the benchmark's base class)."""

    def setup(self):
        super().setup()
        self.stop = threading.Event()
        self.spinner = threading.Thread(target=self._spin)
        self.spinner.start()

    def _spin(self):
        n = 0
        while not self.stop.is_set():
            n += 1

    def teardown(self):
        self.stop.set()
        self.spinner.join()
        super().teardown()


class FlushBesideBusyThread(_BusyThread, _OneMemtable):
    """Flush's memtable flushed while another thread spins in Python: the
    table build runs without the GIL, taking it once per MiB written
    (docs/PERFORMANCE.md, "Checksums in C": 0.82 s before, 0.38 s after,
    for 200,000 readings; 0.17 s with no busy thread)."""

    def time_flush_memtable_beside_busy_thread(self):
        self.engine.flush()


class _ThreeTables(_IngestBase):
    """SMALL readings written and flushed into three tables (three runs)."""

    records = SMALL
    config = {"auto_background": False, "compaction_threshold": 100}

    def setup(self):
        super().setup()
        batches = self.parts[0]
        third = len(batches) // 3 + 1
        for i in range(0, len(batches), third):
            for batch in batches[i:i + third]:
                self.engine.write_batch(batch)
            self.engine.flush()
        assert len(self.engine._view.runs) == 3, self.engine._view.runs


class CompactionBesideBusyThread(_BusyThread, _ThreeTables):
    """The three tables merged into one run (trigger_compaction) while
    another thread spins in Python: the merge reads its inputs, and writes
    its output, without the GIL (docs/PERFORMANCE.md, "Checksums in C":
    1.08 s before, 0.35 s after, for 200,000 readings)."""

    def time_compaction_beside_busy_thread(self):
        assert self.engine.trigger_compaction()


class _SmallBatchesBase(_IngestBase):
    """Batches of 10 readings from 10 series, one writer, no flush."""

    records = 200_000

    def setup(self):
        self.w = SensorWorkload(self.records, 10, 10)
        self.parts = [list(self.w.batches())]
        self.dir = tempfile.mkdtemp(prefix="flowdb-asv-")
        self.engine = _open(self.dir)

    def _write_small(self):
        # No flush: a flush beside a busy thread is another matter (docs/PERFORMANCE.md).
        write = self.engine.write_batch
        for batch in self.parts[0]:
            write(batch)


class SmallBatches(_SmallBatchesBase):
    """20,000 batches, nothing else running: the fixed cost of a commit (group commit, WAL
    record, memtable insert)."""

    def time_small_batches(self):
        self._write_small()


class SmallBatchesBesideBusyThread(_BusyThread, _SmallBatchesBase):
    """2,000 batches of 10 readings while another thread spins in Python.

    Each time a write gives the GIL away, winning it back costs the writer
    up to the busy thread's switch interval (5 ms): 6.8 s for this before
    small writes kept the GIL, 0.07 s after."""

    records = 20_000

    def time_small_batches_beside_busy_thread(self):
        self._write_small()


class Reads:
    """Point gets, get_latest, prefix scans and time windows over one database."""

    timeout = 300

    def setup_cache(self):
        path = os.path.abspath("flowdb-asv-reads")
        shutil.rmtree(path, ignore_errors=True)
        w = SensorWorkload(RECORDS, SERIES)
        with _open(path) as engine:
            for batch in w.batches():
                engine.write_batch(batch)
            engine.flush()
        return path

    def setup(self, path):
        self.w = w = SensorWorkload(RECORDS, SERIES)
        self.engine = _open(path)
        rng = random.Random(5)
        self.lookups = w.lookups(1000, rng, misses=False)
        self.lookups_misses = w.lookups(1000, rng)
        self.scan_key = w.keys[w.series // 2]
        self.lo, self.hi = w.window(WINDOW)
        self.ts_lo, self.ts_hi = w.ts(self.lo), w.ts(self.hi)
        # The answers must be right before they are timed.
        for lookups in (self.lookups, self.lookups_misses):
            w.check_gets(lookups, [self.engine.get(k, t) for k, t, _s, _sec in lookups], "get")
        for s in range(0, w.series, 97):
            w.check(self.engine.get_latest(w.keys[s]), s, w.last_second(s), "get_latest")
        w.check_records(list(self.engine.scan_prefix(self.scan_key)),
                        w.count_series(w.series // 2, 0, w.seconds), "scan_prefix")
        w.check_records(self.engine.query_prefix_time_range(self.scan_key, self.ts_lo, self.ts_hi),
                        w.count_series(w.series // 2, self.lo, self.hi), "window, one series")
        w.check_records(self.engine.query_time_range(self.ts_lo, self.ts_hi),
                        w.count_all(self.lo, self.hi), "window, all series")

    def teardown(self, path):
        self.engine.shutdown()

    def time_get_1000(self, path):
        get = self.engine.get
        for key, ts, _s, _sec in self.lookups:
            get(key, ts)

    def time_get_1000_10pct_misses(self, path):
        get = self.engine.get
        for key, ts, _s, _sec in self.lookups_misses:
            get(key, ts)

    def time_get_latest_all_series(self, path):
        get_latest = self.engine.get_latest
        for key in self.w.keys:
            get_latest(key)

    def time_scan_prefix_one_series(self, path):
        for _ in self.engine.scan_prefix(self.scan_key):
            pass

    def time_query_window_one_series(self, path):
        self.engine.query_prefix_time_range(self.scan_key, self.ts_lo, self.ts_hi)

    def time_query_window_all_series(self, path):
        self.engine.query_time_range(self.ts_lo, self.ts_hi)

    def time_full_scan(self, path):
        """What time_query_window_all_series is compared with (issue 3: >= 5x)."""
        for _ in self.engine.scan(flowdb.ScanRange.all()):
            pass


class Storage:
    """Bytes on disk after flush and compaction (lower is better)."""

    timeout = 300

    def setup_cache(self):
        w = SensorWorkload(RECORDS, SERIES)
        path = tempfile.mkdtemp(prefix="flowdb-asv-disk-")
        try:
            with _open(path) as engine:
                for batch in w.batches():
                    engine.write_batch(batch)
                compact(engine)
            total = dir_bytes(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return {"per_record": total / RECORDS, "over_raw": total / w.raw_bytes}

    def track_disk_bytes_per_record(self, disk):
        return disk["per_record"]

    track_disk_bytes_per_record.unit = "bytes"

    def track_disk_over_raw(self, disk):
        """Directory bytes / (key + 8 + value bytes); issue 6 target <= 0.33."""
        return disk["over_raw"]

    track_disk_over_raw.unit = "ratio"


class Memory:
    """Peak RSS of a whole run as compare.py measures it: ingest (records built
    batch by batch), reads, compaction."""

    timeout = 300

    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="flowdb-asv-mem-")

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def peakmem_ingest_read_compact(self):
        w = SensorWorkload(RECORDS, SERIES)
        with _open(os.path.join(self.dir, "db")) as engine:
            ingest(engine, w)
            lo, hi = w.window(WINDOW)
            w.check_records(engine.query_time_range(w.ts(lo), w.ts(hi)), w.count_all(lo, hi),
                            "1% window, all series")
            compact(engine)
