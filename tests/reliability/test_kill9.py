"""Crash tests with real processes: SIGKILL a writing child, again and again.

SyncMode.ALWAYS: every acknowledged batch is present and intact, no batch is
partly present, nothing is present that was never written, and per writer
thread the surviving batches are exactly 0..k with k the last acknowledged
batch or the one after it (written, killed before its ack was printed).

SyncMode.interval_ms: a suffix of acknowledged batches may be lost, never a
part of a batch, never a hole, never older data.

A kill can also land during recovery (an open after a crash).

Overwrites: every batch of a thread also rewrites (f"t{t}:last", ts 0); after
each reopen it names the newest surviving batch of that thread.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict

import pytest

from flowdb import Engine
from helpers.common import backend
from helpers.crash_check import Child, check_store, kill_during_recovery


def crash_cycles(tmp_path, cycles, threads, sync, recovery_kills, seed):
    """Returns the figures: cycles, recovery kills, acknowledged batches and
    acknowledged batches lost (0 under ALWAYS; a suffix under interval sync)."""
    rng = random.Random(seed)
    data_dir = tmp_path / "db"
    history = {}
    figures = dict(cycles=cycles, recovery_kills=0, acked=0, lost=0)
    for gen in range(1, cycles + 1):
        child = Child(data_dir, gen, threads, sync)
        if not child.ready.wait(timeout=60):
            _, err = child.kill()
            pytest.fail(f"writer child did not start:\n{err}")
        time.sleep(rng.uniform(0.05, 1.0))
        kill_time, err = child.kill()
        assert child.proc.returncode == -signal.SIGKILL, f"writer child died by itself:\n{err}"
        if recovery_kills and rng.random() < recovery_kills:
            for _ in range(rng.randint(1, 3)):
                kill_during_recovery(data_dir, rng)
                figures["recovery_kills"] += 1
        batches = check_store(data_dir, history, gen, child.acks, threads, kill_time, sync)
        figures["acked"] += len(child.acks)
        figures["lost"] += sum(1 for _, g, t, n, _c in child.acks if (g, t, n) not in batches)
    assert figures["acked"] > 0, "no batch was ever acknowledged"
    if sync == "always":
        assert figures["lost"] == 0
    print(f"\nFIGURES kill -9 sync={sync}: {figures}")
    return figures


def test_sigkill_always_every_acked_batch_survives(tmp_path):
    crash_cycles(tmp_path, cycles=10, threads=3, sync="always", recovery_kills=0.3, seed=1)


def test_sigkill_interval_sync_loses_only_a_suffix(tmp_path):
    crash_cycles(tmp_path, cycles=5, threads=2, sync="50", recovery_kills=0.0, seed=2)


def test_sigkill_single_thread_always(tmp_path):
    crash_cycles(tmp_path, cycles=4, threads=1, sync="always", recovery_kills=0.0, seed=3)


def test_recovery_result_does_not_depend_on_memtable_size(tmp_path):
    """Recovery that flushes part-way through the WAL replay (a small
    memtable) recovers the same records as one that replays it all at once."""
    import shutil

    rng = random.Random(4)
    data_dir = tmp_path / "db"
    history = {}
    for gen in range(1, 4):
        child = Child(data_dir, gen, 3, "always")
        assert child.ready.wait(timeout=60)
        time.sleep(rng.uniform(0.3, 0.8))
        kill_time, _ = child.kill()
        counts = {}
        for mb in (64, 0.01):
            copy = tmp_path / f"copy-{gen}-{mb}"
            shutil.copytree(data_dir, copy)
            with Engine.open(str(copy), auto_background=False, memtable_size_mb=mb, storage_backend=backend()) as e:
                counts[mb] = len(e.query_by_prefix(b""))
        assert counts[0.01] == counts[64], (
            f"gen {gen}: recovery with a 0.01 MiB memtable found {counts[0.01]} records, "
            f"with 64 MiB {counts[64]}")
        check_store(data_dir, history, gen, child.acks, 3, kill_time, "always")


def test_recovery_replay_that_flushes_midway_keeps_everything(tmp_path):
    """Writers keep writing while flush() runs, so the manifest's last_seq
    passes its flushed_seq; the directory is then copied while the engine is
    open (a crash image).  Recovering that image with a memtable small enough
    to flush during the WAL replay must give the same records as with a
    large one, and every batch written before the image was taken."""
    import shutil

    from flowdb import Record

    for round_ in range(6):
        db = tmp_path / f"db{round_}"
        e = Engine.open(str(db), auto_background=False, memtable_size_mb=64, storage_backend=backend())
        stop = threading.Event()
        done = defaultdict(int)  # thread -> batches acknowledged before the image

        def writer(t):
            n = 0
            while not stop.is_set():
                e.write_batch([Record(b"t%d:%d" % (t, i), n, b"x" * 100) for i in range(20)])
                n += 1
                done[t] = n

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        try:
            for _ in range(4):
                time.sleep(0.03)
                e.flush()
            time.sleep(0.05)
            acked = dict(done)
            image = tmp_path / f"image{round_}"
            shutil.copytree(db, image)
        finally:
            stop.set()
            for th in threads:
                th.join()
            e.shutdown()
        counts = {}
        for mb in (64, 0.01):
            copy = tmp_path / f"copy{round_}-{mb}"
            shutil.copytree(image, copy)
            with Engine.open(str(copy), auto_background=False, memtable_size_mb=mb, storage_backend=backend()) as x:
                recs = x.query_by_prefix(b"")
            counts[mb] = len(recs)
            per_thread = defaultdict(set)
            for r in recs:
                t = int(r.key[1:].split(b":")[0])
                per_thread[t].add(r.ts)
            for t, n in acked.items():
                assert set(range(n)) <= per_thread[t], (
                    f"round {round_}, memtable {mb} MiB: thread {t} lost acknowledged batches "
                    f"{sorted(set(range(n)) - per_thread[t])[:10]}")
        assert counts[0.01] == counts[64], counts


@pytest.mark.slow
def test_sigkill_always_many_cycles(tmp_path):
    crash_cycles(tmp_path, cycles=50, threads=3, sync="always", recovery_kills=0.5,
                 seed=int(os.environ.get("FLOWDB_SEED", "11")))


@pytest.mark.slow
def test_sigkill_interval_many_cycles(tmp_path):
    crash_cycles(tmp_path, cycles=50, threads=3, sync="20", recovery_kills=0.3,
                 seed=int(os.environ.get("FLOWDB_SEED", "12")))


@pytest.mark.slow
def test_sigkill_during_recovery_many_times(tmp_path):
    """Many kills during recovery of one crashed store; the store stays intact."""
    rng = random.Random(13)
    data_dir = tmp_path / "db"
    history = {}
    for gen in range(1, 6):
        child = Child(data_dir, gen, 2, "always")
        assert child.ready.wait(timeout=60)
        time.sleep(rng.uniform(0.3, 1.0))
        kill_time, _ = child.kill()
        for _ in range(15):
            kill_during_recovery(data_dir, rng)
        check_store(data_dir, history, gen, child.acks, 2, kill_time, "always")
