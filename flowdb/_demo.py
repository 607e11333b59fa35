"""The sensor workload shared by `python -m flowdb demo`, `python -m flowdb.bench`
and asv_bench, and the demo itself.

The workload is what an ingest of sensor readings looks like: `series` keys
(b"sensor:000123"), one reading per series per second, timestamps in
microseconds from a fixed epoch, interleaved across series (record n is
series n % series at second n // series), JSON-like values of about 100
bytes, written in batches.  Every value is a pure function of (series,
second), so a reader can check any answer without keeping what it wrote.

Only the public API (`flowdb`) is used here.
"""
from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone

from flowdb import Config, Engine, Record, SyncMode

# 2025-01-01T00:00:00Z in microseconds: a fixed, recent start of the data.
EPOCH_US = 1_735_689_600_000_000
SECOND_US = 1_000_000
# Distinct readings cycled through; a prime, so series do not repeat in step.
_POOL = 4099
# Files a flowdb data directory may hold (docs/FORMAT.md, "The data directory").
_FLOWDB_SUFFIXES = (".sst", ".wal", ".tmp")
_FLOWDB_NAMES = ("LOCK", "MANIFEST", "MANIFEST.tmp")


class VerificationError(AssertionError):
    """An answer of the engine differs from the data that was written."""


class SensorWorkload:
    """N readings from `series` sensors, one per series per second.

    Record n is series `n % series` at second `n // series`; `batches()`
    yields them in that order, `batch_size` at a time.  `value(s, sec)`,
    `last_second(s)` and the count helpers give the expected answers.
    """

    def __init__(self, records=1_000_000, series=1000, batch_size=1000, seed=7):
        if records < 1 or series < 1 or batch_size < 1:
            raise ValueError("records, series and batch_size must be positive")
        self.records = records
        self.series = min(series, records)
        self.batch_size = batch_size
        self.seconds = -(-records // self.series)
        self.keys = [b"sensor:%06d" % i for i in range(self.series)]
        rng = random.Random(seed)
        self._heads = [
            b'{"temp":%.2f,"hum":%.1f,"bat":%.2f,"rssi":%d,"status":"%s"' % (
                rng.uniform(18.0, 26.0), rng.uniform(30.0, 60.0),
                rng.uniform(3.30, 4.20), rng.randint(-90, -40),
                b"ok" if rng.random() < 0.97 else b"warn")
            for _ in range(_POOL)
        ]
        self._tails = [b',"fw":"1.4.%d","site":"plant-%d"}' % (i % 3, i % 12)
                       for i in range(self.series)]
        self._index = {k: i for i, k in enumerate(self.keys)}
        # Bytes of key + 8 (ts) + value over the whole workload; known once
        # batches() has run to the end.
        self.raw_bytes = None

    # -- the data -----------------------------------------------------------

    @staticmethod
    def ts(sec: int) -> int:
        return EPOCH_US + sec * SECOND_US

    def value(self, s: int, sec: int) -> bytes:
        return self._heads[(s * 7919 + sec) % _POOL] + self._tails[s]

    def batches(self, make=Record, part=0, parts=1):
        """Yield lists of `batch_size` items in ingest order; sets raw_bytes.

        An item is `make(key, ts, value)`, a Record by default (another
        engine's benchmark passes its own encoding).  With `parts` > 1 only
        the series s with s % parts == part are yielded: one writer's share
        of a concurrent ingest, disjoint from the other parts.
        """
        keys, heads, tails = self.keys, self._heads, self._tails
        series, records, size = self.series, self.records, self.batch_size
        batch = []
        raw = 0
        n = 0
        for sec in range(self.seconds):
            ts = EPOCH_US + sec * SECOND_US
            for s in range(part, min(series, records - n), parts):
                key = keys[s]
                value = heads[(s * 7919 + sec) % _POOL] + tails[s]
                raw += len(key) + len(value)
                batch.append(make(key, ts, value))
                if len(batch) == size:
                    yield batch
                    batch = []
            n += series
        if batch:
            yield batch
        if parts == 1:
            self.raw_bytes = raw + 8 * records

    # -- expected answers ---------------------------------------------------

    def last_second(self, s: int) -> int:
        """The last second at which series s has a reading."""
        return (self.records - 1 - s) // self.series

    def count_series(self, s: int, sec_lo: int, sec_hi: int) -> int:
        """Readings of series s in seconds [sec_lo, sec_hi]."""
        hi = min(sec_hi, self.last_second(s))
        return max(0, hi - max(sec_lo, 0) + 1)

    def count_all(self, sec_lo: int, sec_hi: int) -> int:
        """Readings of every series in seconds [sec_lo, sec_hi]."""
        lo = min(self.records, max(sec_lo, 0) * self.series)
        hi = min(self.records, (sec_hi + 1) * self.series)
        return max(0, hi - lo)

    def window(self, fraction=0.01):
        """(first second, last second) of a window of `fraction` of the span, mid-data."""
        width = max(1, int(self.seconds * fraction))
        lo = max(0, self.seconds // 2 - width // 2)
        return lo, lo + width - 1

    def check(self, record, s: int, sec: int, what: str) -> None:
        """Raise VerificationError unless `record` is reading (s, sec)."""
        if record is None:
            raise VerificationError(f"{what}: no record for {self.keys[s]!r} at second {sec}")
        if (record.key != self.keys[s] or record.ts != self.ts(sec)
                or record.value != self.value(s, sec)):
            raise VerificationError(
                f"{what}: expected {self.keys[s]!r} ts={self.ts(sec)} {self.value(s, sec)!r}, "
                f"got {record.key!r} ts={record.ts} {record.value!r}")

    def lookups(self, n: int, rng, misses=True):
        """n random point lookups (key, ts, s, sec); s is None for a miss.

        With `misses`, one in ten misses: half an absent ts of a real series,
        half an absent key that sorts among the real ones.
        """
        keys, out = self.keys, []
        for i in range(n):
            s = rng.randrange(self.series)
            sec = rng.randrange(self.last_second(s) + 1)
            if not misses or i % 10 != 9:
                out.append((keys[s], self.ts(sec), s, sec))
            elif i % 20 == 9:
                out.append((keys[s], self.ts(sec) + 500_000, None, None))
            else:
                out.append((keys[s] + b"-x", self.ts(sec), None, None))
        return out

    def check_gets(self, lookups, found, what: str) -> None:
        """Check the answers `found` of `lookups` (hits and misses)."""
        if len(found) != len(lookups):
            raise VerificationError(f"{what}: {len(found)} answers to {len(lookups)} lookups")
        for (_k, _t, s, sec), rec in zip(lookups, found):
            if s is None:
                if rec is not None:
                    raise VerificationError(f"{what}: a miss returned {rec!r}")
            else:
                self.check(rec, s, sec, what)

    def check_records(self, records, expected_count: int, what: str, every=97) -> None:
        """Check the count, and every `every`-th record (plus the last) against the data."""
        if len(records) != expected_count:
            raise VerificationError(f"{what}: expected {expected_count} records, got {len(records)}")
        index = self._index
        picks = list(range(0, len(records), every))
        if records:
            picks.append(len(records) - 1)
        for i in picks:
            r = records[i]
            s = index.get(r.key)
            if s is None or (r.ts - EPOCH_US) % SECOND_US:
                raise VerificationError(f"{what}: unexpected record {r.key!r} ts={r.ts}")
            self.check(r, s, (r.ts - EPOCH_US) // SECOND_US, what)
        for a, b in zip(records, records[1:]):
            if (a.key, a.ts) >= (b.key, b.ts):
                raise VerificationError(f"{what}: records out of (key, ts) order at {a.key!r} {a.ts}")


# -- helpers shared with flowdb.bench ---------------------------------------

def dir_bytes(path, suffix="") -> int:
    """Total size of the regular files under `path` (whose names end with `suffix`)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if not name.endswith(suffix):
                continue
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def prepare_dir(path) -> None:
    """Make `path` an empty directory; refuse to delete anything but flowdb data."""
    if os.path.isdir(path):
        names = os.listdir(path)
        foreign = [n for n in names
                   if n not in _FLOWDB_NAMES and not n.endswith(_FLOWDB_SUFFIXES)]
        if foreign:
            raise SystemExit(f"{path} holds files that are not flowdb data ({', '.join(sorted(foreign)[:5])}); "
                             "choose another --dir")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


def ingest(engine, workload, make=Record):
    """Write the workload with write_batch, then flush.

    `engine` is a flowdb Engine or anything with write_batch and flush (the
    peers of benchmarks/compare.py), `make` builds its items.  Returns
    (seconds in write_batch, seconds in flush, seconds generating records);
    generation is kept out of the engine's figures.
    """
    write = 0.0
    total = time.perf_counter()
    for batch in workload.batches(make):
        t0 = time.perf_counter()
        engine.write_batch(batch)
        write += time.perf_counter() - t0
    total = time.perf_counter() - total
    t0 = time.perf_counter()
    engine.flush()
    flush = time.perf_counter() - t0
    return write, flush, total - write


def compact(engine, limit=64) -> int:
    """Flush, then compact until nothing is left to merge; returns the compactions run."""
    engine.flush()
    runs = 0
    while runs < limit and engine.trigger_compaction():
        runs += 1
    return runs


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def fmt_count(n) -> str:
    return f"{n:,}"


def fmt_records(n) -> str:
    return f"{n:,} record" + ("" if n == 1 else "s")


def fmt_rate(per_sec: float, unit: str) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_sec >= scale:
            return f"{per_sec / scale:.2f} {suffix}{unit}/s"
    return f"{per_sec:.1f} {unit.strip()}/s"


def fmt_secs(secs: float) -> str:
    if secs >= 1:
        return f"{secs:.2f} s"
    if secs >= 1e-3:
        return f"{secs * 1e3:.2f} ms"
    return f"{secs * 1e6:.1f} us"


def fmt_bytes(n: float) -> str:
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{int(n)} B"


def table(rows, headers, aligns=None) -> str:
    """A plain-text table; aligns is a string of 'l'/'r' per column."""
    rows = [[str(c) for c in row] for row in rows]
    aligns = aligns or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, aligns)).rstrip()

    out = [line([str(h) for h in headers]), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- the demo ----------------------------------------------------------------

def run_demo(data_dir="./flowdb_data", records=1_000_000, series=1000, out=sys.stdout) -> int:
    """Ingest the sensor workload into `data_dir`, query it, print what happened."""
    def say(text=""):
        print(text, file=out, flush=True)

    w = SensorWorkload(records, series)
    prepare_dir(data_dir)
    sync = SyncMode.interval_ms(100)
    say(f"flowdb demo: "
        f"{fmt_count(w.records)} sensor readings, {fmt_count(w.series)} series "
        f"x {fmt_count(w.seconds)} s, batches of {fmt_count(w.batch_size)}, {sync!r}")
    say(f"data directory: {os.path.abspath(data_dir)}")
    say()
    rows = []
    rng = random.Random(1)
    with Engine.open(Config(data_dir=data_dir, wal_sync_mode=sync)) as engine:
        write, flush, gen = ingest(engine, w)
        rows.append(("ingest (write_batch)", fmt_records(w.records), fmt_secs(write),
                     fmt_rate(w.records / write, " rec")))
        rows.append(("flush", "", fmt_secs(flush), ""))
        rows.append(("  ingest incl. flush", "", fmt_secs(write + flush),
                     fmt_rate(w.records / (write + flush), " rec")))

        # Latest reading of every series.
        t0 = time.perf_counter()
        latest = [engine.get_latest(k) for k in w.keys]
        dt = time.perf_counter() - t0
        for s, rec in enumerate(latest):
            w.check(rec, s, w.last_second(s), "get_latest")
        rows.append((f"get_latest x {fmt_count(w.series)}", "all found", fmt_secs(dt),
                     fmt_rate(w.series / dt, " op")))

        # A 1% time window: of one series (many times), then of every series.
        lo, hi = w.window(0.01)
        lat = []
        n_one = 0
        for _ in range(200):
            s = rng.randrange(w.series)
            t0 = time.perf_counter()
            got = engine.query_prefix_time_range(w.keys[s], w.ts(lo), w.ts(hi))
            lat.append(time.perf_counter() - t0)
            w.check_records(got, w.count_series(s, lo, hi), "1% window, one series")
            n_one = len(got)
        rows.append(("1% window, one series (p50 of 200)", fmt_records(n_one),
                     fmt_secs(statistics.median(lat)), fmt_rate(1 / statistics.median(lat), " query")))
        t0 = time.perf_counter()
        got = engine.query_time_range(w.ts(lo), w.ts(hi))
        dt = time.perf_counter() - t0
        w.check_records(got, w.count_all(lo, hi), "1% window, all series")
        rows.append(("1% window, all series", fmt_records(len(got)), fmt_secs(dt),
                     fmt_rate(len(got) / dt, " rec")))

        # Every reading of one series, lazily.
        s = w.series // 2
        t0 = time.perf_counter()
        got = list(engine.scan_prefix(w.keys[s]))
        dt = time.perf_counter() - t0
        w.check_records(got, w.count_series(s, 0, w.seconds), "prefix scan", every=1)
        rows.append((f"prefix scan {w.keys[s].decode()}", fmt_records(len(got)),
                     fmt_secs(dt), fmt_rate(len(got) / dt, " rec")))

        # Point gets of random (series, second).
        picks = [(rng.randrange(w.series), rng.randrange(w.seconds)) for _ in range(20_000)]
        picks = [(s, sec) for s, sec in picks if sec <= w.last_second(s)]
        get = engine.get
        keys, ts = w.keys, w.ts
        t0 = time.perf_counter()
        found = [get(keys[s], ts(sec)) for s, sec in picks]
        dt = time.perf_counter() - t0
        for (s, sec), rec in zip(picks, found):
            w.check(rec, s, sec, "get")
        rows.append((f"point get x {fmt_count(len(picks))}", "all found", fmt_secs(dt),
                     fmt_rate(len(picks) / dt, " op")))

        say(table(rows, ["operation", "result", "time", "throughput"], "lrrr"))
        say()
        say("Latest readings")
        shown = sorted({s for s in (0, 1, w.series // 2, w.series - 1) if s < w.series})
        say(table([(w.keys[s].decode(), iso(latest[s].ts), latest[s].value.decode())
                   for s in shown], ["series", "time (UTC)", "value"], "lll"))
        say()
        engine.close()
        st = engine.stats()
        disk = dir_bytes(data_dir)
        raw = w.raw_bytes
        say("Storage (engine.stats() and the data directory)")
        say(table([
            ("records written", fmt_count(st.total_records_written)),
            ("memtable records", fmt_count(st.memtable_records)),
            ("sstables", fmt_count(st.sstable_count)),
            ("sstable bytes", fmt_bytes(st.sstable_bytes)),
            ("WAL bytes written", fmt_bytes(st.wal_bytes)),
            ("WAL segments on disk", fmt_bytes(dir_bytes(data_dir, ".wal"))),
            ("bytes on disk (directory)", fmt_bytes(disk)),
            ("raw bytes (key + 8 + value)", fmt_bytes(raw)),
            ("on disk / raw", f"{disk / raw:.2f}"),
            ("compression ratio (stats)", f"{st.compression_ratio:.2f}"),
            ("write latency p50 / p99", f"{st.write_latency_p50_us} / {st.write_latency_p99_us} us"),
            ("flushes / compactions", f"{st.total_flushes} / {st.total_compaction_runs}"),
        ], ["stat", "value"], "lr"))
    say()
    say(f"data generation took {fmt_secs(gen)} (not counted above); every answer was checked.")
    return 0
