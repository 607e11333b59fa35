"""asv benchmarks of the flowdb engine on the sensor workload (flowdb/_demo.py).

1,000,000 readings from 1,000 series (1,000 s of data), batches of 1,000,
SyncMode.interval_ms(100): the workload of `python -m flowdb.bench`.
FLOWDB_ASV_RECORDS=100000 runs a smaller version (time windows stay 1%).
The read benchmarks share one database, built once by setup_cache; each
setup checks the engine's answers against the data written, so a wrong or
empty answer fails the benchmark instead of timing it.
"""
import os
import random
import shutil
import tempfile

# ScanRange stays behind flowdb.: asv takes any class in this module with a
# method named time_* (ScanRange.time_range) for a benchmark.
import flowdb
from flowdb import Config, Engine, SyncMode
from flowdb._demo import SensorWorkload

RECORDS = int(os.environ.get("FLOWDB_ASV_RECORDS", 1_000_000))
SERIES = 1000
# 1% of the time span: 10 readings of one series, 10,000 of all series (1M records).
WINDOW = 0.01


def _open(path):
    return Engine.open(Config(data_dir=path, wal_sync_mode=SyncMode.interval_ms(100)))


class Ingest:
    """write_batch of RECORDS readings in batches of 1,000, then flush."""

    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0
    timeout = 300

    def setup(self):
        self.batches = list(SensorWorkload(RECORDS, SERIES).batches())
        self.dir = tempfile.mkdtemp(prefix="flowdb-asv-")
        self.engine = _open(self.dir)

    def teardown(self):
        self.engine.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_write_batch_interval_sync(self):
        for batch in self.batches:
            self.engine.write_batch(batch)
        self.engine.flush()

    def peakmem_write_batch_interval_sync(self):
        self.time_write_batch_interval_sync()


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
        self.lookups = [(w.keys[s], w.ts(sec), s, sec)
                        for s, sec in ((rng.randrange(w.series), rng.randrange(w.seconds))
                                       for _ in range(1000))]
        self.scan_key = w.keys[w.series // 2]
        self.lo, self.hi = w.window(WINDOW)
        self.ts_lo, self.ts_hi = w.ts(self.lo), w.ts(self.hi)
        # The answers must be right before they are timed.
        for key, ts, s, sec in self.lookups[:100]:
            w.check(self.engine.get(key, ts), s, sec, "get")
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
    """Bytes on disk per record after flush and compaction (lower is better)."""

    timeout = 300

    def setup_cache(self):
        w = SensorWorkload(RECORDS, SERIES)
        path = tempfile.mkdtemp(prefix="flowdb-asv-disk-")
        try:
            with _open(path) as engine:
                for batch in w.batches():
                    engine.write_batch(batch)
                engine.flush()
                for _ in range(64):
                    if not engine.trigger_compaction():
                        break
            total = sum(os.path.getsize(os.path.join(root, name))
                        for root, _dirs, names in os.walk(path) for name in names)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return total / RECORDS

    def track_disk_bytes_per_record(self, bytes_per_record):
        return bytes_per_record

    track_disk_bytes_per_record.unit = "bytes"
