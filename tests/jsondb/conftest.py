"""Fixtures for the JsonDB tests: a database on tmp_path that can be reopened."""
import pytest

from helpers.common import backend


@pytest.fixture
def db_factory(tmp_path):
    """open_db(**overrides) -> JsonDB on tmp_path/"db"; the previous one
    (if any) is shut down first, and the last one at teardown."""
    from flowdb import SyncMode
    from flowdb.jsondb import JsonDB

    opened = []

    def open_db(**overrides):
        for db in opened:
            db.shutdown()
        cfg = dict(auto_background=False, wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=1,
                   storage_backend=backend())
        cfg.update(overrides)
        db = JsonDB.open(str(tmp_path / "db"), **cfg)
        opened.append(db)
        return db

    yield open_db
    for db in opened:
        db.shutdown()


@pytest.fixture
def db(db_factory):
    return db_factory()
