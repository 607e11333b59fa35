"""Shared fixtures for the engine tests.

flowdb is imported lazily (inside fixtures) so that tests which do not need
the engine still collect while it is being built.
"""
from __future__ import annotations

import os

import pytest

from helpers.common import backend

def pytest_configure(config):
    # FLOWDB_FULL=1 is the full tier: the slow tests run too, unless a -m
    # expression other than pyproject's default "not slow" was given.
    if os.environ.get("FLOWDB_FULL") == "1" and config.option.markexpr == "not slow":
        config.option.markexpr = ""


@pytest.fixture
def engine_factory(tmp_path):
    """open_engine(path=None, **overrides) -> Engine.

    Defaults: data dir tmp_path/"db", auto_background=False (flush and
    compaction only when asked, or inline when the memtable fills),
    SyncMode.ALWAYS, a 1 MiB memtable.  Every engine still open at teardown
    is shut down.
    """
    from flowdb import Engine, SyncMode

    opened = []

    def open_engine(path=None, **overrides):
        cfg = dict(auto_background=False, wal_sync_mode=SyncMode.ALWAYS,
                   memtable_size_mb=1, storage_backend=backend())
        cfg.update(overrides)
        engine = Engine.open(str(path if path is not None else tmp_path / "db"), **cfg)
        opened.append(engine)
        return engine

    yield open_engine
    for engine in opened:
        try:
            engine.shutdown()
        except Exception:
            pass  # already shut down (InvalidStateError) or the test broke it


@pytest.fixture
def engine(engine_factory):
    """One engine on tmp_path/"db" with the factory's defaults."""
    return engine_factory()


@pytest.fixture(scope="session")
def load_benchmark():
    """load_benchmark(filename): benchmarks/<filename> loaded as a module
    (the folder is no package)."""
    import importlib.util
    import pathlib

    def load(filename: str):
        path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / filename
        spec = importlib.util.spec_from_file_location(f"flowdb_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
