"""Child process for test_concurrency.py.

usage: concurrency_child.py DATA_DIR SECONDS SEED

Threads for SECONDS seconds, on one engine with a tiny memtable and
background maintenance on:
- writers: batch n of writer t puts K records (b"w%d:%03d" % (t, i), ts n);
- deleters: write a batch, then delete it (delete_batch or delete_range);
- expirers: write records that expire 50..300 ms later;
- readers: snapshot scans, queries, get, get_latest, checking that every
  batch is seen whole or not at all, that nothing deleted before the read
  began is returned, and nothing expired before the read began;
- maintenance: flush, trigger_compaction, trigger_gc in a loop.
Then every thread must stop within 30 s (else: a deadlock; the stacks are
dumped).  Prints one JSON line of counters and problems.
"""
from __future__ import annotations

import faulthandler
import json
import random
import sys
import threading
import time

from flowdb import Engine, Record, ScanRange, SyncMode

K = 8
problems = []
counts = {"batches": 0, "deletes": 0, "expiring": 0, "reads": 0, "records_seen": 0,
          "flushes": 0, "compactions": 0, "gc": 0}
lock = threading.Lock()


def now_us():
    return time.time_ns() // 1000


def problem(msg):
    with lock:
        if len(problems) < 20:
            problems.append(msg)


def bump(name, n=1):
    with lock:
        counts[name] += n


def main():
    data_dir, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    e = Engine.open(data_dir, auto_background=True, memtable_size_mb=0.05,
                    wal_sync_mode=SyncMode.interval_ms(20), flush_interval_ms=10,
                    compaction_interval_ms=20, compaction_threshold=2, gc_interval_secs=1)
    stop = threading.Event()
    deleted = {}          # (t, n) -> time (monotonic ns) its delete returned
    written = {}          # t -> highest n acknowledged

    def writer(t):
        n = 0
        while not stop.is_set():
            e.write_batch([Record(b"w%d:%03d" % (t, i), n, b"%d:%d:%d" % (t, n, i)) for i in range(K)])
            with lock:
                written[t] = n
            bump("batches")
            n += 1

    def deleter(t):
        rng = random.Random(seed + t)
        n = 0
        while not stop.is_set():
            e.write_batch([Record(b"d%d:%03d" % (t, i), n, b"doomed") for i in range(K)])
            if rng.random() < 0.5:
                e.delete_batch([(b"d%d:%03d" % (t, i), n) for i in range(K)])
            else:
                e.delete_range(b"d%d:" % t, b"d%d;" % t)
            with lock:
                deleted[(t, n)] = time.monotonic_ns()
            bump("deletes")
            n += 1

    def expirer(t):
        rng = random.Random(seed * 7 + t)
        n = 0
        while not stop.is_set():
            exp = now_us() + rng.randint(50_000, 300_000)
            e.write_batch([Record(b"x%d:%03d" % (t, i), n, b"short-lived", exp) for i in range(K)])
            bump("expiring")
            n += 1
            time.sleep(0.002)

    def check(records, started_ns, started_us, what):
        by_batch = {}
        for r in records:
            k = r.key
            if k[:1] == b"d":
                t = int(k[1:].split(b":")[0])
                d = deleted.get((t, r.ts))
                if d is not None and d < started_ns:
                    problem(f"{what}: deleted record {k!r}@{r.ts} returned")
            elif k[:1] == b"x":
                if r.expire_at <= started_us:
                    problem(f"{what}: expired record {k!r}@{r.ts} returned "
                            f"({started_us - r.expire_at} us after expiry)")
            by_batch.setdefault((k[:1], k.split(b":")[0], r.ts), []).append(r)
        for key, rs in by_batch.items():
            if len(rs) != K:
                problem(f"{what}: batch {key} seen with {len(rs)} of {K} records")

    def reader(t):
        rng = random.Random(seed * 13 + t)
        while not stop.is_set():
            started_ns, started_us = time.monotonic_ns(), now_us()
            choice = rng.randrange(4)
            if choice == 0:
                recs = list(e.scan(ScanRange.all()))
            elif choice == 1:
                recs = e.query_by_prefix(rng.choice([b"w", b"d", b"x", b""]))
            elif choice == 2:
                recs = list(e.scan_prefix(b"w%d:" % rng.randrange(2)))
            else:
                tt = rng.randrange(2)
                n = written.get(tt)
                recs = []
                if n is not None:
                    got = [e.get(b"w%d:%03d" % (tt, i), n) for i in range(K)]
                    if any(g is None for g in got):
                        problem(f"get: acknowledged batch w{tt}@{n} has missing records")
                    latest = e.get_latest(b"w%d:%03d" % (tt, 0))
                    if latest is None or latest.ts < n:
                        problem(f"get_latest w{tt}: {latest and latest.ts} < acknowledged {n}")
            check(recs, started_ns, started_us, ["scan", "query", "scan_prefix", "get"][choice])
            bump("reads")
            bump("records_seen", len(recs))

    def maintenance():
        rng = random.Random(seed * 17)
        while not stop.is_set():
            c = rng.randrange(3)
            if c == 0:
                e.flush()
                bump("flushes")
            elif c == 1:
                e.trigger_compaction()
                bump("compactions")
            else:
                e.trigger_gc()
                bump("gc")
            time.sleep(rng.uniform(0, 0.02))

    errors = []

    def guard(fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                import traceback
                errors.append("".join(traceback.format_exception(exc))[-1500:])
                stop.set()
        return threading.Thread(target=run, name=f"{fn.__name__}{args}")

    threads = ([guard(writer, t) for t in range(2)] + [guard(deleter, t) for t in range(2)]
               + [guard(expirer, t) for t in range(1)] + [guard(reader, t) for t in range(3)]
               + [guard(maintenance)])
    for th in threads:
        th.start()
    stop.wait(seconds)
    stop.set()
    deadline = time.monotonic() + 30
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    stuck = [th.name for th in threads if th.is_alive()]
    if stuck:
        print(json.dumps({"deadlock": stuck}), flush=True)
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        import os
        os._exit(2)
    e.shutdown()
    print(json.dumps({"counts": counts, "problems": problems, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
