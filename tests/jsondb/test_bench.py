"""python -m flowdb.jsondb.bench runs end to end on a small workload, and
its answers are checked against SQLite's (so it cannot rot or look fast by
answering nothing)."""
import pytest

from flowdb.jsondb import bench


def test_bench_runs_and_both_sides_agree(tmp_path, capsys):
    bench.main(["--n", "2000", "--probes", "200", "--queries", "20", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    for _, label in bench.ROWS:
        assert label.format(batch=1000) in out


def test_bench_fails_when_a_side_answers_wrongly(tmp_path, monkeypatch):
    real = bench.run_sqlite

    def wrong(*a):
        res, ids = real(*a)
        ids["range"] = ids["range"][:-1]
        return res, ids
    monkeypatch.setattr(bench, "run_sqlite", wrong)
    with pytest.raises(SystemExit, match="disagree on 'range'"):
        bench.main(["--n", "1000", "--probes", "50", "--queries", "10", "--dir", str(tmp_path)])
