"""flowdb: an embedded LSM-tree storage engine for time-series records and
JSON documents.  This module only re-exports the public API (API.md)."""
from flowdb._config import Config, ReadOptions, StorageBackendKind, SyncMode
from flowdb._core.record import Record
from flowdb._engine import Engine, MaintenanceHandle, ScanIterator
from flowdb._errors import (ConstraintError, CorruptionError, DataError, FlowError,
                            InvalidStateError, LockError, NotFoundError, ReadOnlyError,
                            TransactionInactiveError)
from flowdb._query import KeyFilter, Op, Query, ScanRange
from flowdb._stats import EngineStats
from flowdb._validate import NEVER

__all__ = [
    "Engine", "Config", "Record", "Query", "ScanRange", "ReadOptions", "SyncMode",
    "StorageBackendKind", "Op", "KeyFilter", "NEVER", "EngineStats", "ScanIterator",
    "MaintenanceHandle", "FlowError", "NotFoundError", "ConstraintError", "DataError",
    "ReadOnlyError", "TransactionInactiveError", "InvalidStateError", "CorruptionError",
    "LockError",
]
__version__ = "0.1.0"
