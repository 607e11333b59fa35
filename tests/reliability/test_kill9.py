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
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from flowdb import Engine, SyncMode
from helpers.common import FULL, HELPERS_DIR, child_env
from helpers.writer_child import TS_PER_GEN, decode_value

WRITER = str(HELPERS_DIR / "writer_child.py")


class Child:
    """A writer_child process whose acks are collected with arrival times."""

    def __init__(self, data_dir, gen, threads, sync):
        self.acks = []  # (arrival time, gen, t, n, count)
        self.proc = subprocess.Popen(
            [sys.executable, WRITER, str(data_dir), str(gen), str(threads), sync],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split()
            if parts == ["ready"]:
                self.ready.set()
            elif line.endswith("\n") and len(parts) == 5 and parts[0] == "ack":
                self.acks.append((time.monotonic(), *map(int, parts[1:])))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join(timeout=10)
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return time.monotonic(), err


def kill_during_recovery(data_dir, rng):
    """Open the store in a child (recovery) and SIGKILL it at a random moment."""
    code = ("import sys\nfrom flowdb import Engine\n"
            "from helpers.writer_child import config\n"
            "e = Engine.open(sys.argv[1], **config('always'))\n"
            "print('opened', flush=True)\n"
            "import time\ntime.sleep(0.05)\n"
            "e.shutdown()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(rng.uniform(0.05, 0.6))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode in (0, -signal.SIGKILL), f"recovery child failed:\n{err}"


def read_batches(data_dir, last=None):
    """{(gen, t, n): (count, set of i)} of every record in the store.

    Fails on any record that is not intact or not where its value says.
    `last`, if given, receives {t: (gen, n)} of the overwrite records.
    """
    found = defaultdict(lambda: [None, set()])
    with Engine.open(str(data_dir), auto_background=False) as e:
        for r in e.query_by_prefix(b""):
            d = decode_value(r.value)
            assert d is not None, f"damaged value at {r.key!r} ts={r.ts}: {r.value[:60]!r}"
            gen, t, n, i, count = d
            if r.key.endswith(b":last"):
                assert r.key == f"t{t}:last".encode() and r.ts == 0 and i == count, (
                    f"overwrite record {d} under {r.key!r} ts={r.ts}")
                if last is not None:
                    last[t] = (gen, n)
                continue
            assert r.key == f"t{t}:{i}".encode(), f"record {d} under key {r.key!r}"
            assert r.ts == gen * TS_PER_GEN + n, f"record {d} at ts {r.ts}"
            assert 0 <= i < count
            entry = found[(gen, t, n)]
            assert entry[0] in (None, count), f"batch {(gen, t, n)} has two counts"
            entry[0] = count
            assert i not in entry[1]
            entry[1].add(i)
    return {k: (c, s) for k, (c, s) in found.items()}


def check_store(data_dir, history, gen, acks, threads, kill_time, sync):
    """Checks the store after generation `gen` was killed.

    history: {(gen, t, n): count} of every batch accepted in earlier
    generations (they must all still be there, unchanged).
    """
    last = {}
    batches = read_batches(data_dir, last)
    newest = {}
    for (g, t, n) in batches:
        newest[t] = max(newest.get(t, (0, -1)), (g, n))
    assert last == newest, (
        f"overwrite records {last} do not name the newest surviving batches {newest}")
    for key, (count, present) in batches.items():
        assert present == set(range(count)), (
            f"batch {key} is partial: {len(present)} of {count} records")
    # Earlier generations: exactly as verified before.
    old = {k: c for k, (c, _) in batches.items() if k[0] < gen}
    assert old == history, "batches of earlier generations changed after a crash"
    acked = defaultdict(dict)  # t -> {n: (count, arrival)}
    for arrival, g, t, n, count in acks:
        assert g == gen
        acked[t][n] = (count, arrival)
    for t in range(threads):
        present = sorted(n for (g, tt, n) in batches if g == gen and tt == t)
        k = len(present) - 1
        assert present == list(range(k + 1)), f"thread {t}: hole in batches {present}"
        last_acked = max(acked[t], default=-1)
        for n in present:
            if n in acked[t]:
                assert batches[(gen, t, n)][0] == acked[t][n][0]
        if sync == "always":
            assert k >= last_acked, (
                f"thread {t}: acknowledged batch {last_acked} lost (only 0..{k} present)")
            assert k <= last_acked + 1, (
                f"thread {t}: batch {k} present but only {last_acked} was ever started")
        else:
            # A suffix may be lost, but only of the last interval (with a wide
            # margin for scheduling): batches acknowledged well before the
            # kill are durable.
            old_enough = [n for n, (_, at) in acked[t].items() if kill_time - at > 1.5]
            if old_enough:
                assert k >= max(old_enough), (
                    f"thread {t}: batch {max(old_enough)} acknowledged >1.5 s before the "
                    f"kill is lost (only 0..{k} present)")
            assert k <= last_acked + 1
    history.update({k: c for k, (c, _) in batches.items()})
    return batches


def crash_cycles(tmp_path, cycles, threads, sync, recovery_kills, seed):
    rng = random.Random(seed)
    data_dir = tmp_path / "db"
    history = {}
    total_acked = 0
    for gen in range(1, cycles + 1):
        child = Child(data_dir, gen, threads, sync)
        if not child.ready.wait(timeout=60):
            _, err = child.kill()
            pytest.fail(f"writer child did not start:\n{err}")
        time.sleep(rng.uniform(0.05, 1.0))
        kill_time, err = child.kill()
        assert child.proc.returncode == -signal.SIGKILL, f"writer child died by itself:\n{err}"
        total_acked += len(child.acks)
        if recovery_kills and rng.random() < recovery_kills:
            for _ in range(rng.randint(1, 3)):
                kill_during_recovery(data_dir, rng)
        check_store(data_dir, history, gen, child.acks, threads, kill_time, sync)
    assert total_acked > 0, "no batch was ever acknowledged"
    return history


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
            with Engine.open(str(copy), auto_background=False, memtable_size_mb=mb) as e:
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
        e = Engine.open(str(db), auto_background=False, memtable_size_mb=64)
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
            with Engine.open(str(copy), auto_background=False, memtable_size_mb=mb) as x:
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
    crash_cycles(tmp_path, cycles=30, threads=3, sync="20", recovery_kills=0.3,
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


if FULL:
    # FLOWDB_FULL=1: the default tier runs many more cycles too.
    def test_sigkill_always_full_tier(tmp_path):
        crash_cycles(tmp_path, cycles=50, threads=3, sync="always", recovery_kills=0.5, seed=21)
