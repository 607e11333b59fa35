"""Write amplification, compaction throughput and the time index on the
1M-record sensor workload (flowdb._demo.SensorWorkload: 1000 series x 1000
seconds, ~100-byte values, batches of 1000).

    python scripts/bench_maintenance.py [--records N] [--memtable-mb M]
                                        [--policy tiered|full] [--json]

Ingests with auto_background=True (flush and compaction threads running, as
in production), waits until the policy has nothing left to do, and reports:

- write amplification = bytes written to SSTables (flushes + compactions)
  / key+ts+value bytes ingested;
- compaction throughput = input bytes merged per second of compaction;
- a 1% all-series time window vs a full scan (median of several runs).

--policy full replaces the policy by "merge every run into one" whenever
compaction_threshold runs exist: what a key-leveled policy does on this
workload, where every flushed table spans the whole key range.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowdb import Engine, ScanRange, SyncMode  # noqa: E402
from flowdb import _compaction  # noqa: E402
from flowdb._demo import SensorWorkload  # noqa: E402


def _full_pick(runs, t, limit, settled=None):
    return (0, len(runs)) if len(runs) >= t else None


def run(records=1_000_000, memtable_mb=4, policy="tiered", threshold=2, repeat=5, inline=False):
    if policy == "full":
        _compaction.pick = _full_pick
    w = SensorWorkload(records)
    d = tempfile.mkdtemp(prefix="flowdb-maint-bench-")
    try:
        e = Engine.open(os.path.join(d, "db"), memtable_size_mb=memtable_mb,
                        compaction_threshold=threshold, compaction_interval_ms=1000,
                        wal_sync_mode=SyncMode.interval_ms(100), auto_background=not inline)
        flushes_seen = 0
        t0 = time.perf_counter()
        for batch in w.batches():
            e.write_batch(batch)
            if inline and e._flushes != flushes_seen:
                while e._maybe_compact():
                    pass
            flushes_seen = e._flushes
        e.flush()
        ingest_s = time.perf_counter() - t0
        while e._maybe_compact():
            pass
        total_s = time.perf_counter() - t0
        if e._maintenance is not None:
            e._maintenance.stop()
            e._maintenance = None
        st = e.stats()
        written = e._table_bytes_written
        lo, hi = w.window(0.01)
        lo_us, hi_us = w.ts(lo), w.ts(hi)

        def timed(fn):
            samples = []
            for _ in range(repeat):
                a = time.perf_counter()
                n = fn()
                samples.append(time.perf_counter() - a)
            return statistics.median(samples), n

        win_s, win_n = timed(lambda: len(e.query_time_range(lo_us, hi_us)))
        full_s, full_n = timed(lambda: sum(1 for _ in e.scan(ScanRange.all())))
        filt_s, filt_n = timed(lambda: sum(1 for r in e.scan(ScanRange.all()) if lo_us <= r.ts <= hi_us))
        assert win_n == filt_n == w.count_all(lo, hi), (win_n, filt_n)
        assert full_n == records
        before = sum(t.blocks_loaded for t in e._view.tables)
        e.query_time_range(lo_us, hi_us)
        blocks = sum(t.blocks_loaded for t in e._view.tables) - before
        total_blocks = sum(t.num_data_blocks for t in e._view.tables)
        result = {
            "records": records, "memtable_mb": memtable_mb, "policy": policy,
            "mode": "inline (compaction after every flush)" if inline else "background threads",
            "compaction_threshold": threshold,
            "ingested_bytes": w.raw_bytes, "sstable_bytes_written": written,
            "write_amplification": round(written / w.raw_bytes, 3),
            # the same per byte a flush wrote: how often each stored byte is rewritten
            "rewrites_per_flushed_byte": round(written / (written - e._compaction_bytes_out), 2),
            "flushes": st.total_flushes, "compactions": st.total_compaction_runs,
            "compaction_bytes_read": e._compaction_bytes_read,
            "compaction_records_in": e._compaction_entries_in,
            "compaction_records_per_s": round(e._compaction_entries_in / (e._compaction_ns / 1e9))
            if e._compaction_ns else None,
            "compaction_seconds": round(e._compaction_ns / 1e9, 3),
            "compaction_throughput_mb_s": round(e._compaction_bytes_read / 2**20 / (e._compaction_ns / 1e9), 1)
            if e._compaction_ns else None,
            "ingest_seconds": round(ingest_s, 2), "ingest_plus_compaction_seconds": round(total_s, 2),
            "ingest_records_per_s": round(records / ingest_s),
            "write_stalls": e._stalls,
            "sstables": st.sstable_count, "runs": len(e._view.runs), "sstable_bytes": st.sstable_bytes,
            "window_1pct_s": round(win_s, 5), "full_scan_s": round(full_s, 4),
            "full_scan_filtered_s": round(filt_s, 4),
            "window_speedup_vs_full_scan": round(full_s / win_s, 1),
            "window_blocks_loaded": blocks, "total_blocks": total_blocks,
            "time_index_buckets": st.time_index_buckets,
        }
        e.shutdown()
        return result
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--memtable-mb", type=float, default=4)
    p.add_argument("--policy", choices=("tiered", "full"), default="tiered")
    p.add_argument("--threshold", type=int, default=2)
    p.add_argument("--inline", action="store_true",
                   help="no background threads: run the policy to idle after every flush "
                        "(deterministic; the most merges a policy can do)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    r = run(a.records, a.memtable_mb, a.policy, a.threshold, inline=a.inline)
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
