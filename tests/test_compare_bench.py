"""benchmarks/compare.py, the comparison with RocksDB, LevelDB, LMDB and SQLite,
run end to end on a tiny workload so that the harness cannot rot.

flowdb and SQLite (stdlib) always run; each other peer runs when its module
is installed (the `bench` extra) and must then be reported as skipped
otherwise.  A wrong answer must fail its worker, never look fast.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import random

import pytest


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare.py")


def _installed(module):
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def test_end_to_end_every_engine(compare, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = compare.main(["--records", "5000", "--repeats", "1", "--json", str(out),
                       "--dir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    engines = result["engines"]
    assert list(engines) == ["flowdb", "rocksdb", "leveldb", "lmdb", "sqlite"]
    for name, info in engines.items():
        expected = "ok" if _installed(compare.ENGINES[name].module) else "skipped"
        assert info["status"] == expected, (name, info)
    ran = [n for n, e in engines.items() if e["status"] == "ok"]
    assert {"flowdb", "sqlite"} <= set(ran)
    assert [r["id"] for r in result["rows"]] == [r.id for r in compare.ROWS]
    for row in result["rows"]:
        assert set(row["results"]) == set(ran), row["id"]
        for name, res in row["results"].items():
            assert "failed" not in res, (row["id"], name, res)
            assert len(res["values"]) == 1
            assert res["min"] <= res["median"] <= res["max"]
            assert math.isfinite(res["median"]) and res["median"] > 0, (row["id"], name)
        assert set(row["ratios"]) == set(ran) - {"flowdb"}
        assert (row["target_met"] is None) == (row["target"] is None)
    # Nothing was left behind in the scratch directory.
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    table = capsys.readouterr().out
    assert "> 1 means flowdb is better" in table
    assert "| 1% window, all series | rec/s |" in table


def test_missing_peer_is_skipped(compare, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(compare.LMDB, "module", "flowdb_no_such_module")
    rc = compare.main(["--records", "2000", "--repeats", "1", "--engines", "lmdb",
                       "--json", str(tmp_path / "out.json")])
    assert rc == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["engines"]["lmdb"]["status"] == "skipped"
    assert "flowdb_no_such_module" in result["engines"]["lmdb"]["reason"]
    assert all(row["results"] == {} for row in result["rows"])
    assert "lmdb: SKIPPED (flowdb_no_such_module does not import" in capsys.readouterr().out


def test_failed_worker_is_reported(compare, monkeypatch, tmp_path, capsys):
    """A worker that fails shows FAILED for its phase's rows and the run exits non-zero."""
    def fake_run_one(name, phase, args, env):
        if name == "sqlite" and phase == "main":
            return None, "exit 3: WRONG ANSWER: prefix scan: expected 5 records, got 0", 0.0
        values = {r.id: 1.0 + (name == "flowdb") for r in compare.ROWS if r.phase == phase}
        return values, None, 0.0

    monkeypatch.setattr(compare, "run_one", fake_run_one)
    rc = compare.main(["--records", "2000", "--repeats", "2", "--engines", "flowdb,sqlite",
                       "--json", str(tmp_path / "out.json")])
    assert rc == 1
    rows = {r["id"]: r for r in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert "WRONG ANSWER" in rows["get_hits"]["results"]["sqlite"]["failed"]
    assert "sqlite" not in rows["get_hits"]["ratios"]
    # The other phases of the failed engine still count, with ratios oriented flowdb-better.
    assert rows["ingest_fsync"]["results"]["sqlite"]["values"] == [1.0, 1.0]
    assert rows["ingest_fsync"]["ratios"]["sqlite"] == 2.0
    assert "FAILED (exit 3: WRONG ANSWER" in capsys.readouterr().out


def test_round_robin_rotates_the_start(compare):
    names = ["a", "b", "c"]
    assert [compare.round_robin(names, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


class _EmptyScans:
    """Wraps flowdb's adapter; its scans return nothing (fast and wrong)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def scan_series(self, key):
        return []


def test_a_wrong_answer_fails_the_reads(compare, tmp_path):
    from flowdb._demo import SensorWorkload, VerificationError, ingest

    w = SensorWorkload(3000, 100, 100)
    engine = compare.Flowdb(str(tmp_path / "db"), "interval")
    try:
        ingest(engine, w, engine.make)
        sizes = compare.read_sizes(w.records)
        assert compare.run_reads(engine, w, sizes, random.Random(1))["scan_series"] > 0
        with pytest.raises(VerificationError, match="prefix scan"):
            compare.run_reads(_EmptyScans(engine), w, sizes, random.Random(1))
    finally:
        engine.close()


def test_flowdb_config_reaches_the_workers_and_the_report(compare, monkeypatch, tmp_path, capsys):
    seen = []
    real_init = compare.Flowdb.__init__

    def spy(self, path, sync):
        real_init(self, path, sync)
        seen.append(self.engine._config.prepopulate_block_cache)

    def in_process(name, phase, args, env):
        # The worker's own command line (as run_one builds it), run here so
        # the spy sees the engine each phase opens.
        argv = ["--worker", name, "--phase", phase, "--records", str(args.records),
                "--dir", str(tmp_path)]
        for field, value in args.flowdb_config.items():
            argv += ["--flowdb-config", f"{field}={value!r}"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert compare.main(argv) == 0
        return json.loads(out.getvalue())["values"], None, 0.0

    monkeypatch.setattr(compare.Flowdb, "__init__", spy)
    monkeypatch.setattr(compare.Flowdb, "overrides", {})
    monkeypatch.setattr(compare, "run_one", in_process)
    rc = compare.main(["--records", "2000", "--repeats", "1", "--engines", "flowdb",
                       "--flowdb-config", "prepopulate_block_cache=True",
                       "--json", str(tmp_path / "out.json")])
    assert rc == 0
    assert seen == [True, True, True]          # the main, fsync and threads phases
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["workload"]["flowdb_config"] == {"prepopulate_block_cache": True}
    assert "Config changed from its defaults: prepopulate_block_cache=True" in capsys.readouterr().out


@pytest.mark.parametrize("item", ["prepopulate_block_cache", "no_such_field=1",
                                  "block_size=-1", "block_size=big"])
def test_bad_flowdb_config_is_refused(compare, item, capsys):
    with pytest.raises(SystemExit) as info:
        compare.main(["--flowdb-config", item])
    assert info.value.code == 2 and "--flowdb-config" in capsys.readouterr().err


class _LateWrongLatest(_EmptyScans):
    """Wraps flowdb's adapter; one get_latest, late in the row, answers None."""

    def __init__(self, inner, wrong_call):
        super().__init__(inner)
        self.calls, self.wrong_call = 0, wrong_call

    def get_latest(self, key):
        self.calls += 1
        return None if self.calls == self.wrong_call else self._inner.get_latest(key)


def test_every_get_latest_chunk_is_checked(compare, tmp_path):
    from flowdb._demo import SensorWorkload, VerificationError, ingest

    w = SensorWorkload(3000, 100, 100)
    engine = compare.Flowdb(str(tmp_path / "db"), "interval")
    try:
        ingest(engine, w, engine.make)
        assert compare._timed_get_latest(engine, w, 25) > 0      # 3 chunks, all right
        late = _LateWrongLatest(engine, 25 * w.series - 7)       # in the last chunk
        with pytest.raises(VerificationError, match="get_latest"):
            compare._timed_get_latest(late, w, 25)
        assert late.calls == 25 * w.series
    finally:
        engine.close()



class _CompactsDuring:
    """Wraps flowdb's adapter; a real compaction runs inside the first call of
    `method` once `skip` calls of it have passed (so inside one chosen row)."""

    def __init__(self, inner, method, skip):
        self._inner, self._method, self._skip = inner, method, skip
        self.calls, self.compacted = 0, False

    def __getattr__(self, name):
        real = getattr(self._inner, name)
        if name != self._method:
            return real

        def call(*args):
            self.calls += 1
            if self.calls > self._skip and not self.compacted:
                self.compacted = self._inner.engine.trigger_compaction()
            return real(*args)
        return call


@pytest.mark.parametrize("row", ["get_misses", "scan_series"])
def test_compactions_during_a_row_are_counted_and_reported(compare, tmp_path, row):
    from flowdb._demo import SensorWorkload, ingest

    w = SensorWorkload(3000, 100, 100)
    engine = compare.Flowdb(str(tmp_path / "db"), "interval")
    sizes = compare.read_sizes(w.records)
    try:
        ingest(engine, w, engine.make)
        # A second table, with the data unchanged: the first reading again.
        engine.write_batch([engine.make(w.keys[0], w.ts(0), w.value(0, 0))])
        engine.flush()
        # get_misses is the third pass of gets; the prefix scan has its own method.
        method, skip = ("get", 2 * sizes["gets"]) if row == "get_misses" else ("scan_series", 0)
        wrapped = _CompactsDuring(engine, method, skip)
        out = compare.run_reads(wrapped, w, sizes, random.Random(1))
    finally:
        engine.close()
    assert wrapped.compacted
    during = {k[len(compare.COMPACTIONS_DURING):]: v for k, v in out.items()
              if k.startswith(compare.COMPACTIONS_DURING)}
    read_rows = [r for r in out if not r.startswith(compare.COMPACTIONS_DURING)]
    assert sorted(during) == sorted(read_rows)
    assert {r: n for r, n in during.items() if n} == {row: 1}

    # The report names the row and gives the count of each repeat.
    result = {"rows": [{"id": r.id, "name": r.name} for r in compare.ROWS],
              "compactions_during": {r: [0, n] for r, n in during.items()}}
    name = next(r.name for r in compare.ROWS if r.id == row)
    assert compare._compactions_note(result)[-1] == f"{name}: 0, 1."


def test_peers_report_no_compactions(compare, tmp_path):
    from flowdb._demo import SensorWorkload, ingest

    w = SensorWorkload(3000, 100, 100)
    engine = compare.SQLite(str(tmp_path), "interval")
    try:
        ingest(engine, w, engine.make)
        out = compare.run_reads(engine, w, compare.read_sizes(w.records), random.Random(1))
    finally:
        engine.close()
    assert out["scan_series"] > 0
    assert not [k for k in out if k.startswith(compare.COMPACTIONS_DURING)]
    assert compare._compactions_note({"rows": [], "compactions_during": {}}) == []
