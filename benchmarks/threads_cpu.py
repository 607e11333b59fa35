"""Where the CPU goes while 1 or 2 threads ingest: each thread's CPU time.

    python benchmarks/threads_cpu.py [--records N] [--writers 1,2] [--repeats R]

The workload and sync mode of compare.py's interval-ingest rows (1M records,
batches of 1,000 built before the clock starts, SyncMode.interval_ms(100)),
each writer writing its own series.  A writer reads its own CPU time as it
ends; the engine's threads are read from /proc/self/task (Linux) once the
ingest and its flush are done.  Prints the rate, how many of the
machine's cores the process used, and the CPU seconds of each thread:
writers, flowdb-flush, flowdb-compact, flowdb-wal-sync.  A process that
uses well under all the cores while its writers wait is waiting on a lock
or on the GIL, not on the CPU (docs/PERFORMANCE.md, "Two writer threads,
and who holds the GIL").
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

try:
    import flowdb
except ImportError:   # run from a checkout where flowdb is built in place, not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import flowdb
from flowdb import Config, Engine, Record, ScanRange, SyncMode
from flowdb._demo import SensorWorkload

_TICKS = os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[int, float]:
    """{native thread id: user + system CPU seconds} of this process's threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:                       # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICKS   # utime, stime
    return out


def run(records: int, writers: int) -> tuple[float, float, dict[str, float]]:
    """(records/s, cores used, {thread name: CPU seconds}) of one ingest."""
    w = SensorWorkload(records)
    parts = [list(w.batches(Record, p, writers)) for p in range(writers)]
    path = tempfile.mkdtemp(prefix="flowdb-threads-cpu-")
    try:
        engine = Engine.open(Config(data_dir=path, wal_sync_mode=SyncMode.interval_ms(100)))

        writer_cpu = {}

        def write(batches):
            for batch in batches:
                engine.write_batch(batch)
            writer_cpu[threading.current_thread().name] = time.thread_time()

        threads = [threading.Thread(target=write, args=(p,), name=f"writer-{i}")
                   for i, p in enumerate(parts)]
        before = _thread_cpu()
        cpu0, t0 = os.times(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine.flush()
        wall, cpu1 = time.perf_counter() - t0, os.times()
        after = _thread_cpu()               # the engine's threads are still alive
        names = {t.native_id: t.name for t in threading.enumerate()}
        stored = sum(1 for _ in engine.scan(ScanRange.all()))
        engine.shutdown()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    if stored != w.records:                   # a writer died: its rate means nothing
        raise RuntimeError(f"{stored} records stored of {w.records} written")
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    by_name = dict(writer_cpu)
    for tid, cpu in after.items():
        name = names.get(tid, f"native-{tid}")
        by_name[name] = by_name.get(name, 0.0) + cpu - before.get(tid, 0.0)
    return w.records / wall, used / wall, by_name


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--writers", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        sys.exit("threads_cpu.py reads /proc/self/task: Linux only")
    counts = [int(x) for x in args.writers.split(",")]
    for _ in range(args.repeats):
        for n in counts:                      # alternated: the host's speed drifts
            rate, cores, by_name = run(args.records, n)
            print(f"{n} writer(s): {rate / 1e6:.2f}M records/s, "
                  f"{cores:.2f} of {os.cpu_count()} cores (flowdb {flowdb.__version__})")
            for name, cpu in sorted(by_name.items(), key=lambda kv: -kv[1]):
                if cpu > 0:
                    print(f"    {name:16s} {cpu:6.2f} s")


if __name__ == "__main__":
    main()
