"""Child process for test_concurrency.py: point reads while flushes publish
new views.

usage: view_swap_child.py DATA_DIR SECONDS MIN_FLUSHES

Two threads call get and get_latest over flushed data, with a block cache
too small to hold a block, so every read decompresses one; the main thread
writes and flushes all the while, and each flush publishes a new view: for
SECONDS and at least MIN_FLUSHES flushes (beside two busy readers, a slow
host may give the flushing thread few turns in a given time).  Prints
"ok READS FLUSHES" if every read returned what was written; a crash kills
the process (the test reports it).
"""
from __future__ import annotations

import os
import sys
import threading
import time

from flowdb import Engine, Record, SyncMode


def main():
    data_dir, seconds, min_flushes = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    e = Engine.open(data_dir, auto_background=False, wal_sync_mode=SyncMode.interval_ms(1000),
                    memtable_size_mb=1, block_cache_capacity_mb=0.01)
    keys = [b"k%05d" % i for i in range(5000)]
    values = {k: os.urandom(50) for k in keys}
    e.write_batch([Record(k, 1, values[k]) for k in keys])
    e.flush()
    done = threading.Event()
    reads, wrong = [0], []

    def reader():
        while not done.is_set():
            for k in keys[::7]:
                r = e.get(k, 1)
                latest = e.get_latest(k)
                if r is None or r.value != values[k] or latest is None or latest.key != k:
                    wrong.append((k, r, latest))
                reads[0] += 2

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    flushes = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop or flushes < min_flushes:
        e.write_batch([Record(k, 2 + flushes, b"x") for k in keys[:50]])
        e.flush()
        flushes += 1
    done.set()
    for t in threads:
        t.join()
    e.shutdown()
    if wrong:
        print(f"wrong answers: {wrong[:3]}")
        return 1
    print(f"ok {reads[0]} {flushes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
