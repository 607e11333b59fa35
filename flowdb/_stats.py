"""EngineStats: a snapshot of an engine's counters, sizes and latencies.

Latency percentiles come from flowdb._core.histogram.LatencyHistogram, a
fixed-size HDR-style histogram (never a list of samples).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from flowdb._core.histogram import LatencyHistogram  # noqa: F401 (re-exported)


@dataclass
class EngineStats:
    """A snapshot of the engine's counters, sizes and latencies (API.md 1)."""

    total_records_written: int = 0
    total_bytes_written: int = 0
    total_records_read: int = 0
    total_records_expired: int = 0
    total_flushes: int = 0
    total_gc_runs: int = 0
    total_compaction_runs: int = 0
    records_purged_by_gc: int = 0
    memtable_records: int = 0
    memtable_bytes: int = 0
    frozen_memtable_count: int = 0
    sstable_count: int = 0
    sstable_bytes: int = 0
    wal_bytes: int = 0
    block_meta_index_entries: int = 0
    time_index_buckets: int = 0
    block_cache_hit_rate: float = 0.0
    compression_ratio: float = 0.0
    write_latency_p50_us: int = 0
    write_latency_p90_us: int = 0
    write_latency_p99_us: int = 0
    query_latency_p50_us: int = 0
    query_latency_p90_us: int = 0
    query_latency_p99_us: int = 0
    flush_latency_p50_us: int = 0
    flush_latency_p90_us: int = 0
    flush_latency_p99_us: int = 0
    uptime_secs: int = 0
    http_requests: int = 0
    http_errors: int = 0
    udp_packets: int = 0
    udp_records: int = 0
    udp_errors: int = 0

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]
