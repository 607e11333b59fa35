"""Where the tables and the manifest live: Config.storage_backend.

The engine builds every table into a temporary file beside the store
(table_path), then asks its storage to make the finished files durable and
live-ready (install), to open them (open_table), and to drop them once a
compaction replaced them (retire).  Two backends answer:

- DirectoryStorage, StorageBackendKind.MULTI_FILE: one file per table and a
  MANIFEST edit log (docs/FORMAT.md, "The data directory").
- SingleFileStorage (flowdb._single_file), StorageBackendKind.SINGLE_FILE:
  the tables and the manifest inside one file.

The WAL segments are files in the data directory with either backend.
"""
from __future__ import annotations

import os

from flowdb._config import StorageBackendKind
from flowdb._core.table import TableReader
from flowdb._fileio import MANIFEST_NAME, TEMP_SUFFIX, DirLock, fsync_dir, parse_name, table_name
from flowdb._manifest import Manifest

# A single-file store's one file (flowdb._single_file); named here so that
# each backend can refuse a directory that holds the other's store.
STORE_NAME = "flowdb.db"


def open_storage(kind: StorageBackendKind, dir: str):
    """Lock `dir` and return its storage; ValueError if it holds the other backend's store."""
    if kind is StorageBackendKind.SINGLE_FILE:
        from flowdb._single_file import SingleFileStorage
        return SingleFileStorage(dir)
    return DirectoryStorage(dir)


def temp_table_path(dir, number: int) -> str:
    """Where a TableBuilder writes table `number`, with either backend."""
    return os.path.join(dir, table_name(number)) + TEMP_SUFFIX


def remove_leftovers(dir, also=lambda kind, number: False) -> list:
    """Remove the *.tmp files of `dir`, and the files `also(kind, number)`
    picks (fileio.parse_name); returns their paths."""
    removed = []
    for name in os.listdir(dir):
        if name.endswith(TEMP_SUFFIX) or also(*parse_name(name)):
            path = os.path.join(dir, name)
            os.unlink(path)
            removed.append(path)
    return removed


def _refuse(dir, found, kind):
    raise ValueError(f"Config.storage_backend: {dir!r} holds a store of the other backend "
                     f"({found}); open it with storage_backend=StorageBackendKind.{kind}")


class DirectoryStorage:
    """MULTI_FILE: DIR/NNNNNN.sst per table, DIR/MANIFEST, DIR/LOCK."""

    single_file = False

    def __init__(self, dir):
        self.dir = dir
        if os.path.exists(os.path.join(dir, STORE_NAME)):
            _refuse(dir, STORE_NAME, "SINGLE_FILE")
        self._lock = DirLock(dir)

    def open_manifest(self) -> Manifest:
        exists = os.path.exists(os.path.join(self.dir, MANIFEST_NAME))
        return Manifest.open(self.dir, create=not exists)

    def remove_leftovers(self, live) -> list:
        """Remove temporary files and tables no manifest edit names; returns their paths."""
        return remove_leftovers(self.dir, lambda kind, number: kind == "sst" and number not in live)

    def table_path(self, number: int) -> str:
        return temp_table_path(self.dir, number)

    def install(self, built) -> None:
        """Make finished tables [(number, table_path), ...] durable under their own names."""
        for _number, tmp in built:
            os.rename(tmp, tmp[:-len(TEMP_SUFFIX)])
        fsync_dir(self.dir)

    def open_table(self, number: int, cache) -> TableReader:
        return TableReader(os.path.join(self.dir, table_name(number)), number, cache)

    def discard(self, reader) -> None:
        """Drop an installed table that no manifest edit names."""
        reader.close()
        try:
            os.remove(reader.path)
        except OSError:
            pass                            # an unlisted file: the next open removes it

    def retire(self, reader) -> None:
        """Drop a table a manifest edit removed; open readers read on (POSIX unlink)."""
        try:
            os.unlink(reader.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._lock.release()

    def release_lock(self) -> None:
        self._lock.release()
