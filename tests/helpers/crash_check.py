"""The crash-test harness shared by tests/reliability: a writer child
(helpers/writer_child.py, or another script speaking its protocol) whose
acknowledgements are collected, and the checks of a store after a crash.

Protocol: the child prints "ready" once its engine is open, then one line
"ack GEN t n COUNT" after each acknowledged batch.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

from flowdb import Engine
from helpers.common import HELPERS_DIR, backend, child_env
from helpers.writer_child import TS_PER_GEN, decode_value

WRITER = str(HELPERS_DIR / "writer_child.py")


class Child:
    """A writer_child process whose acks are collected with arrival times."""

    def __init__(self, data_dir, gen, threads, sync, script=WRITER, extra=()):
        self.acks = []  # (arrival time, gen, t, n, count)
        self.proc = subprocess.Popen(
            [sys.executable, script, str(data_dir), str(gen), str(threads), sync, *map(str, extra)],
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
    with Engine.open(str(data_dir), auto_background=False, storage_backend=backend()) as e:
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


def check_store(data_dir, history, gen, acks, threads, kill_time, sync, durable_after=1.5):
    """Checks the store after generation `gen` was killed.

    Under interval sync, batches acknowledged more than `durable_after`
    seconds before the kill must be present (None: no such bound).
    Returns {(gen, t, n): (count, set of i)} of the store.

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
            old_enough = [n for n, (_, at) in acked[t].items()
                          if durable_after is not None and kill_time - at > durable_after]
            if old_enough:
                assert k >= max(old_enough), (
                    f"thread {t}: batch {max(old_enough)} acknowledged >1.5 s before the "
                    f"kill is lost (only 0..{k} present)")
            assert k <= last_acked + 1
    history.update({k: c for k, (c, _) in batches.items()})
    return batches


