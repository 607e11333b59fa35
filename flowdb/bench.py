"""`python -m flowdb.bench`: the flowdb benchmark.

The workload is the demo's (flowdb/_demo.py): N sensor readings from 1,000
series, one per series per second, interleaved, ~100-byte values, written
with write_batch in batches of 1,000.  Rows:

    ingest, SyncMode.interval_ms(100)     records/s over write_batch + final flush
    ingest, SyncMode.ALWAYS               records/s, one fsync per batch
    point get (10% misses)                gets/s over random (series, second)
    get_latest                            gets/s, every series in turn
    prefix scan, one whole series         records/s (and time per series)
    1% window, one series                 p50 latency of query_prefix_time_range
    1% window, all series                 records/s of query_time_range
    disk after compaction / raw           directory bytes / (key + 8 + value bytes)
    peak RSS                              getrusage ru_maxrss of this process

Every timed read is checked against the data written afterwards (counts,
order, and values spot-checked), so an engine that returns nothing, or the
wrong thing, fails instead of looking fast.  Record generation is never
inside a timed region.  Only the public API is used.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time

from flowdb import Config, Engine, ScanRange, SyncMode
from flowdb._demo import (SensorWorkload, VerificationError, compact, dir_bytes, fmt_bytes,
                          fmt_count, fmt_rate, fmt_secs, ingest, percentile, table)

# Work per read row: (full run, --quick).
_SIZES = {
    "gets": (100_000, 20_000),
    "latest_rounds": (10, 2),
    "scans": (20, 5),
    "windows_one": (500, 100),
    "windows_all": (5, 3),
}


class _Rows:
    def __init__(self):
        self.rows = []

    def add(self, name, value, unit, shown, detail=""):
        self.rows.append({"name": name, "value": value, "unit": unit,
                          "shown": shown, "detail": detail})


def _open(path, sync):
    return Engine.open(Config(data_dir=path, wal_sync_mode=sync))


def _bench_ingest(rows, w, path, sync, label):
    with _open(path, sync) as engine:
        write, flush, _gen = ingest(engine, w)
        rate = w.records / (write + flush)
        rows.add(label, rate, "records/s", fmt_rate(rate, " rec"),
                 f"write_batch {fmt_secs(write)} + flush {fmt_secs(flush)}")
        # The data must be there: every series' latest reading, and one window.
        for s in range(w.series):
            w.check(engine.get_latest(w.keys[s]), s, w.last_second(s), f"{label}: get_latest")
        lo, hi = w.window(0.01)
        w.check_records(engine.query_time_range(w.ts(lo), w.ts(hi)), w.count_all(lo, hi),
                        f"{label}: 1% window")


def _bench_reads(rows, w, engine, quick, rng):
    pick = 1 if quick else 0
    keys, ts = w.keys, w.ts

    # Point gets: 90% hits, 10% misses (SensorWorkload.lookups).
    n = _SIZES["gets"][pick]
    lookups = w.lookups(n, rng)
    get = engine.get
    t0 = time.perf_counter()
    found = [get(k, t) for k, t, _s, _sec in lookups]
    dt = time.perf_counter() - t0
    w.check_gets(lookups, found, "point get")
    rows.add("point get (10% misses)", n / dt, "ops/s", fmt_rate(n / dt, " op"),
             f"{fmt_count(n)} gets, {fmt_secs(dt / n)} each; first pass, blocks read from disk")

    # The same gets again: every block is in the block cache now.
    t0 = time.perf_counter()
    again = [get(k, t) for k, t, _s, _sec in lookups]
    dt = time.perf_counter() - t0
    if again != found:
        raise VerificationError("point get: the second pass disagrees with the first")
    rows.add("point get, warm cache", n / dt, "ops/s", fmt_rate(n / dt, " op"),
             f"the same {fmt_count(n)} gets again, {fmt_secs(dt / n)} each")

    # get_latest of every series in turn.
    rounds = _SIZES["latest_rounds"][pick]
    get_latest = engine.get_latest
    t0 = time.perf_counter()
    latest = [get_latest(k) for _ in range(rounds) for k in keys]
    dt = time.perf_counter() - t0
    for i, rec in enumerate(latest):
        s = i % w.series
        w.check(rec, s, w.last_second(s), "get_latest")
    n = len(latest)
    rows.add("get_latest", n / dt, "ops/s", fmt_rate(n / dt, " op"),
             f"{fmt_count(n)} gets, {fmt_secs(dt / n)} each")

    # Lazy scan of whole series.
    series = rng.sample(range(w.series), min(_SIZES["scans"][pick], w.series))
    total, spent = 0, 0.0
    for s in series:
        t0 = time.perf_counter()
        got = list(engine.scan_prefix(keys[s]))
        spent += time.perf_counter() - t0
        w.check_records(got, w.count_series(s, 0, w.seconds), "prefix scan", every=13)
        total += len(got)
    rows.add("prefix scan, one whole series", total / spent, "records/s",
             fmt_rate(total / spent, " rec"),
             f"{fmt_count(total // len(series))} records per series, "
             f"{fmt_secs(spent / len(series))} each")

    # A 1% time window of one series.
    lo, hi = w.window(0.01)
    samples = []
    n_rec = 0
    for _ in range(_SIZES["windows_one"][pick]):
        s = rng.randrange(w.series)
        t0 = time.perf_counter()
        got = engine.query_prefix_time_range(keys[s], ts(lo), ts(hi))
        samples.append(time.perf_counter() - t0)
        w.check_records(got, w.count_series(s, lo, hi), "1% window, one series", every=3)
        n_rec = len(got)
    p50 = statistics.median(samples)
    rows.add("1% window, one series (p50)", p50 * 1e6, "us", fmt_secs(p50),
             f"{fmt_count(n_rec)} records; p99 {fmt_secs(percentile(samples, 99))}")

    # The same window over every series.
    samples = []
    for _ in range(_SIZES["windows_all"][pick]):
        t0 = time.perf_counter()
        got = engine.query_time_range(ts(lo), ts(hi))
        samples.append(time.perf_counter() - t0)
        w.check_records(got, w.count_all(lo, hi), "1% window, all series")
    dt = statistics.median(samples)
    rows.add("1% window, all series", len(got) / dt, "records/s", fmt_rate(len(got) / dt, " rec"),
             f"{fmt_count(len(got))} records in {fmt_secs(dt)} (median of {len(samples)})")

    # Against a scan of everything (the time index: docs/MAINTENANCE.md).
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        n = sum(1 for _ in engine.scan(ScanRange.all()))
        samples.append(time.perf_counter() - t0)
    full = statistics.median(samples)
    if n != w.records:
        raise VerificationError(f"full scan: {n} records, expected {w.records}")
    rows.add("1% window vs full scan", full / dt, "x faster", f"{full / dt:.1f}x",
             f"full scan of {fmt_count(n)} records in {fmt_secs(full)} (median of 3)")


def run(records=None, quick=False, series=1000, batch_size=1000, workdir=None, out=sys.stderr):
    """Run every row; returns the result dict (what --json prints)."""
    records = records or (100_000 if quick else 1_000_000)
    rng = random.Random(11)
    rows = _Rows()
    base = tempfile.mkdtemp(prefix="flowdb-bench-", dir=workdir)

    def progress(text):
        if out is not None:
            print(f"  .. {text}", file=out, flush=True)

    try:
        w = SensorWorkload(records, series, batch_size)
        path = os.path.join(base, "interval")
        progress(f"ingest {fmt_count(records)} records, SyncMode.interval_ms(100)")
        _bench_ingest(rows, w, path, SyncMode.interval_ms(100), "ingest, interval_ms(100)")
        always = os.path.join(base, "always")
        progress(f"ingest {fmt_count(records)} records, SyncMode.ALWAYS")
        _bench_ingest(rows, w, always, SyncMode.ALWAYS, "ingest, ALWAYS (fsync per batch)")
        shutil.rmtree(always)

        with _open(path, SyncMode.interval_ms(100)) as engine:
            progress("reads")
            _bench_reads(rows, w, engine, quick, rng)
            progress("compaction")
            t0 = time.perf_counter()
            runs = compact(engine)
            dt = time.perf_counter() - t0
            engine.close()
            st = engine.stats()
            lo, hi = w.window(0.01)
            w.check_records(engine.query_time_range(w.ts(lo), w.ts(hi)), w.count_all(lo, hi),
                            "1% window after compaction")
        disk = dir_bytes(path)
        rows.add("disk after compaction / raw", disk / w.raw_bytes, "ratio",
                 f"{disk / w.raw_bytes:.3f}",
                 f"{fmt_bytes(disk)} on disk, {fmt_bytes(w.raw_bytes)} raw, "
                 f"{st.sstable_count} sstables, {runs} compactions in {fmt_secs(dt)}, "
                 f"stats.compression_ratio {st.compression_ratio:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows.add("peak RSS", rss / 2**20, "MiB", fmt_bytes(rss), "ru_maxrss of the whole process")
    return {
        "workload": {"records": records, "series": w.series, "batch_size": batch_size,
                     "seconds": w.seconds, "raw_bytes": w.raw_bytes, "quick": quick},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "rows": rows.rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowdb.bench",
        description="Benchmark flowdb on the sensor workload (1,000 series, batches of 1,000); "
                    "every timed read is checked against the data written.")
    parser.add_argument("--records", type=lambda t: int(t.replace("_", "")), default=None,
                        help="records to ingest (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 100,000 records and fewer reads")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--dir", default=None,
                        help="where to create the scratch data directories (default: the temp dir)")
    args = parser.parse_args(argv)
    if args.records is not None and args.records < 1:
        parser.error("--records must be positive")
    try:
        result = run(args.records, args.quick, workdir=args.dir)
    except VerificationError as exc:
        print(f"flowdb.bench: WRONG ANSWER: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    wl = result["workload"]
    print(f"flowdb.bench: {fmt_count(wl['records'])} records, {fmt_count(wl['series'])} series, "
          f"batches of {fmt_count(wl['batch_size'])}, ~{wl['raw_bytes'] // wl['records']} raw bytes "
          f"per record (Python {result['machine']['python']}, {result['machine']['cpus']} CPUs)")
    print(table([(r["name"], r["shown"], r["detail"]) for r in result["rows"]],
                ["benchmark", "result", "detail"], "lrl"))
    print("every timed read was checked against the data written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
