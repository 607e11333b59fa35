"""Child process for tests/test_crash.py: writes batches until it is killed.

usage: writer_child.py DATA_DIR GEN THREADS SYNC [SEED]

SYNC is "always" or an interval in ms.  Thread t writes batch n as N records
(N = 1..40, chosen by a seeded RNG) with key f"t{t}:{i}", ts GEN * 10**6 + n,
and value made by encode_value(), plus one overwrite record: key f"t{t}:last",
ts 0, value encode_value(..., i=count, ...), rewritten by every batch of the
thread, so after a crash it must name the newest surviving batch of its
thread (overwrites resolve to the newest).  Once write_batch returns it prints
"ack GEN t n N" and flushes stdout.  It prints "ready" once the engine is open.
The engine runs with a tiny memtable and background maintenance on, so
flushes and compactions are cut by the kill too.
"""
from __future__ import annotations

import random
import sys
import threading
import zlib

from flowdb import Engine, Record, SyncMode
from helpers.common import backend

TS_PER_GEN = 10**6


def encode_value(gen, t, n, i, count, size):
    """value := header b"|" padding b"|" crc32(header + padding) (hex)."""
    head = b"%d:%d:%d:%d:%d" % (gen, t, n, i, count)
    pad = bytes((gen * 31 + t * 7 + n + i + j) % 251 for j in range(size))
    return head + b"|" + pad + b"|" + b"%08x" % zlib.crc32(head + pad)


def decode_value(value):
    """(gen, t, n, i, count) or None if the value is not intact."""
    try:
        head, rest = value.split(b"|", 1)
        pad, crc = rest.rsplit(b"|", 1)
        if int(crc, 16) != zlib.crc32(head + pad):
            return None
        gen, t, n, i, count = (int(x) for x in head.split(b":"))
    except ValueError:
        return None
    return gen, t, n, i, count


def config(sync):
    mode = SyncMode.ALWAYS if sync == "always" else SyncMode.interval_ms(int(sync))
    return dict(wal_sync_mode=mode, memtable_size_mb=0.05, auto_background=True,
                flush_interval_ms=20, compaction_interval_ms=50, compaction_threshold=2,
                wal_segment_size_mb=0.05, storage_backend=backend())


def start_writers(engine, gen, threads, seed):
    """Starts `threads` daemon writer threads (the protocol above); returns them."""
    lock = threading.Lock()

    def writer(t):
        rng = random.Random(seed * 1000 + t)
        n = 0
        while True:
            count = rng.randint(1, 40)
            size = rng.choice([4, 16, 100, 1000])
            batch = [Record(f"t{t}:{i}", gen * TS_PER_GEN + n, encode_value(gen, t, n, i, count, size))
                     for i in range(count)]
            batch.append(Record(f"t{t}:last", 0, encode_value(gen, t, n, count, count, 16)))
            engine.write_batch(batch)
            with lock:
                sys.stdout.write(f"ack {gen} {t} {n} {count}\n")
                sys.stdout.flush()
            n += 1

    ts = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(threads)]
    for th in ts:
        th.start()
    return ts


def main():
    data_dir, gen, threads, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else gen
    engine = Engine.open(data_dir, **config(sync))
    print("ready", flush=True)
    for th in start_writers(engine, gen, threads, seed):
        th.join()


if __name__ == "__main__":
    main()
