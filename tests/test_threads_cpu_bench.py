"""benchmarks/threads_cpu.py, the per-thread CPU profile of an ingest, on a
tiny workload so that the tool cannot rot (docs/PERFORMANCE.md, "Two
writer threads, and who holds the GIL")."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                                reason="reads /proc/self/task (Linux)")


@pytest.fixture(scope="module")
def tool(load_benchmark):
    return load_benchmark("threads_cpu.py")


@pytest.mark.parametrize("writers", [1, 2])
def test_every_writer_is_counted_and_every_record_stored(tool, writers):
    rate, cores, by_name = tool.run(20_000, writers)
    assert rate > 0 and cores > 0
    for i in range(writers):
        assert by_name[f"writer-{i}"] > 0     # ended before the engine's threads were read
    assert f"writer-{writers}" not in by_name
    assert "flowdb-flush" in by_name and "MainThread" in by_name


def test_a_lost_record_fails_the_run(tool, monkeypatch):
    real = tool.Engine.write_batch

    def drop_last(self, batch):
        real(self, batch[:-1])

    monkeypatch.setattr(tool.Engine, "write_batch", drop_last)
    with pytest.raises(RuntimeError, match="records stored of"):
        tool.run(5_000, 1)


def test_main_prints_a_line_per_writer_count(tool, capsys):
    tool.main(["--records", "5000", "--writers", "1,2"])
    out = capsys.readouterr().out
    assert "1 writer(s):" in out and "2 writer(s):" in out and "writer-1" in out
