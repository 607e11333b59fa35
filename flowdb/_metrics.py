"""Prometheus text exposition (format 0.0.4) of an engine's stats.

Counters end in _total, gauges are plain, latencies are histograms in
seconds built from the engine's LatencyHistogram buckets.  Every name starts
with flowdb_.
"""
from __future__ import annotations

# (stats field, metric name, type, help)
_COUNTERS = (
    ("total_records_written", "records_written_total", "Records written by write calls."),
    ("total_bytes_written", "bytes_written_total", "Key and value bytes written by write calls."),
    ("total_records_read", "records_read_total", "Records returned by reads."),
    ("total_records_expired", "records_expired_total", "Expired records dropped by compaction or GC."),
    ("total_flushes", "flushes_total", "Memtables flushed to SSTables."),
    ("total_gc_runs", "gc_runs_total", "TTL garbage-collection runs."),
    ("total_compaction_runs", "compaction_runs_total", "Compactions run."),
    ("records_purged_by_gc", "records_purged_by_gc_total", "Records physically purged by GC."),
)
_GAUGES = (
    ("memtable_records", "memtable_records", "Entries in the active memtable."),
    ("memtable_bytes", "memtable_bytes", "Bytes held by the active memtable."),
    ("frozen_memtable_count", "frozen_memtables", "Memtables waiting to be flushed."),
    ("sstable_count", "sstables", "Live SSTables."),
    ("sstable_bytes", "sstable_bytes", "Bytes of live SSTables on disk."),
    ("wal_bytes", "wal_bytes", "Bytes written to the WAL since open."),
    ("block_meta_index_entries", "block_meta_index_entries", "Per-block metadata entries held in memory."),
    ("time_index_buckets", "time_index_buckets", "Buckets of the time index."),
    ("block_cache_hit_rate", "block_cache_hit_ratio", "Block cache hits over lookups."),
    ("compression_ratio", "compression_ratio", "Raw bytes over stored bytes of the SSTables."),
    ("uptime_secs", "uptime_seconds", "Seconds since the engine was opened."),
)
# Histogram bucket bounds in microseconds.
_BOUNDS_US = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
              100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000)


def render_metrics(stats, histograms, extra=()) -> str:
    """stats: EngineStats; histograms: {"write"|"query"|"flush": LatencyHistogram};
    extra: [(name without flowdb_, "counter"|"gauge", help, value)] the engine
    measures beyond EngineStats (compaction and time-index figures)."""
    lines = []
    for name, kind, text, value in extra:
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        lines += [f"# HELP flowdb_{name} {text}", f"# TYPE flowdb_{name} {kind}",
                  f"flowdb_{name} {float(value)!r}" if kind == "gauge" else f"flowdb_{name} {value!r}"]
    for field, name, text in _COUNTERS:
        lines += [f"# HELP flowdb_{name} {text}", f"# TYPE flowdb_{name} counter",
                  f"flowdb_{name} {getattr(stats, field)}"]
    for field, name, text in _GAUGES:
        lines += [f"# HELP flowdb_{name} {text}", f"# TYPE flowdb_{name} gauge",
                  f"flowdb_{name} {float(getattr(stats, field))!r}"]
    for kind, hist in histograms.items():
        name = f"flowdb_{kind}_latency_seconds"
        lines += [f"# HELP {name} Latency of {kind} operations.", f"# TYPE {name} histogram"]
        for bound, count in hist.cumulative(_BOUNDS_US):
            lines.append(f'{name}_bucket{{le="{bound / 1e6!r}"}} {count}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
        lines.append(f"{name}_sum {hist.sum / 1e6!r}")
        lines.append(f"{name}_count {hist.count}")
    return "\n".join(lines) + "\n"
