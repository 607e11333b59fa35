"""Config, SyncMode, ReadOptions, StorageBackendKind: how an engine is opened.

Config.validated() is the single place where field values are checked; it
names the offending field in every error.
"""
from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field

from flowdb._validate import MAX_TTL_SECS


@dataclass(frozen=True)
class SyncMode:
    """When the WAL is fsynced: every batch (ALWAYS) or on a timer.

    SyncMode.ALWAYS fsyncs before write_batch returns; SyncMode.interval_ms(n)
    fsyncs every n ms, so a crash may lose the last n ms of acknowledged
    writes (a suffix, never part of a batch).
    """

    interval: int | None = None  # milliseconds; None means ALWAYS

    ALWAYS = None  # replaced below by SyncMode() (a dataclass cannot self-reference)

    @staticmethod
    def interval_ms(n: int) -> "SyncMode":
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"interval_ms takes an int, not {type(n).__name__}")
        if n <= 0:
            raise ValueError(f"interval_ms({n}): the interval must be positive")
        return SyncMode(n)

    @property
    def is_always(self) -> bool:
        return self.interval is None

    def __repr__(self):
        return "SyncMode.ALWAYS" if self.interval is None else f"SyncMode.interval_ms({self.interval})"


SyncMode.ALWAYS = SyncMode()


class StorageBackendKind(enum.Enum):
    MULTI_FILE = "multi_file"
    SINGLE_FILE = "single_file"


@dataclass(frozen=True)
class ReadOptions:
    fill_cache: bool = True
    verify_checksums: bool = True
    # Descending (key, ts) order, as RocksDB's SeekForPrev/Prev: lazy, a few
    # seeks per record (flowdb._core.read.Cursor).
    reverse: bool = False


_POSITIVE_INT_FIELDS = (
    "memtable_size_mb", "block_size", "block_cache_capacity_mb",
    "bloom_bits_per_key", "wal_segment_size_mb", "compaction_threshold",
    "index_memory_budget_mb", "time_bucket_secs", "gc_interval_secs",
    "flush_interval_ms", "compaction_interval_ms",
)


@dataclass
class Config:
    data_dir: str | os.PathLike = "flowdb_data"
    default_ttl_secs: int | None = None
    gc_interval_secs: int = 3600
    memtable_size_mb: float = 64
    max_frozen_memtables: int = 2
    block_size: int = 8192
    flush_interval_ms: int = 1000
    time_bucket_secs: int = 3600
    index_memory_budget_mb: int = 256
    block_cache_capacity_mb: float = 128
    bloom_bits_per_key: int = 10
    wal_segment_size_mb: float = 64
    compaction_threshold: int = 2
    compaction_interval_ms: int = 60000
    create_if_missing: bool = True
    wal_sync_mode: SyncMode = field(default_factory=lambda: SyncMode.ALWAYS)
    auto_background: bool = True
    # RocksDB's prepopulate_block_cache=kFlushOnly (off by default there too).
    prepopulate_block_cache: bool = False
    storage_backend: StorageBackendKind = StorageBackendKind.MULTI_FILE

    @classmethod
    def build(cls, config=None, **overrides) -> "Config":
        """Engine.open's argument rules: a Config, a path, or None, plus overrides."""
        if config is None:
            base = cls()
        elif isinstance(config, Config):
            base = dataclasses.replace(config)
        elif isinstance(config, (str, bytes, os.PathLike)):
            base = cls(data_dir=os.fsdecode(config))
        else:
            raise TypeError(f"config must be a Config, a path or None, not {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in names:
                raise TypeError(f"unknown Config field {key!r}")
        return dataclasses.replace(base, **overrides).validated()

    def validated(self) -> "Config":
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Config.{name} must be a number, not {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"Config.{name} must be positive, got {value}")
        if self.block_size < 256:
            raise ValueError(f"Config.block_size must be at least 256 bytes, got {self.block_size}")
        if self.time_bucket_secs > MAX_TTL_SECS:
            raise ValueError(f"Config.time_bucket_secs={self.time_bucket_secs} exceeds {MAX_TTL_SECS}")
        if isinstance(self.max_frozen_memtables, bool) or not isinstance(self.max_frozen_memtables, int):
            raise TypeError("Config.max_frozen_memtables must be an int")
        if self.max_frozen_memtables < 1:
            raise ValueError(f"Config.max_frozen_memtables must be at least 1, got {self.max_frozen_memtables}")
        ttl = self.default_ttl_secs
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int):
                raise TypeError("Config.default_ttl_secs must be an int or None")
            if ttl <= 0 or ttl > MAX_TTL_SECS:
                raise ValueError(f"Config.default_ttl_secs={ttl} is outside 1..{MAX_TTL_SECS}")
        if not isinstance(self.prepopulate_block_cache, bool):
            raise TypeError("Config.prepopulate_block_cache must be a bool")
        if not isinstance(self.wal_sync_mode, SyncMode):
            raise TypeError("Config.wal_sync_mode must be a SyncMode")
        if not isinstance(self.storage_backend, StorageBackendKind):
            raise TypeError("Config.storage_backend must be a StorageBackendKind")
        if not isinstance(self.data_dir, (str, bytes, os.PathLike)):
            raise TypeError("Config.data_dir must be a path")
        return self
