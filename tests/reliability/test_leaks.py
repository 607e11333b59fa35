"""Resource leaks (issue 5, item 12): open/close cycles leave no file
descriptors or threads behind, and a shut-down engine holds no descriptor
of its directory even while the Python object is still referenced (an
unmount or a directory removal must not find the files busy).

Runs in a child process so that descriptors of other tests do not count.
"""
from __future__ import annotations

import json

import pytest

from helpers.common import FULL, run_python

CHILD = r'''
import gc, json, os, sys, threading
from flowdb import Engine, Record, ScanRange, SyncMode

data = sys.argv[1]
cycles = int(sys.argv[2])

def fds():
    out = {}
    for x in os.listdir("/proc/self/fd"):
        try:
            out[int(x)] = os.readlink(f"/proc/self/fd/{x}")
        except OSError:
            pass
    return out

def cycle(i, background):
    e = Engine.open(data, auto_background=background, memtable_size_mb=0.01,
                    wal_sync_mode=SyncMode.ALWAYS if i % 2 else SyncMode.interval_ms(5),
                    flush_interval_ms=5, compaction_interval_ms=5)
    e.write_batch([Record(b"k%03d" % j, i, b"x" * 50) for j in range(40)])
    if i % 7 == 0:
        e.flush()
    if i % 11 == 0:
        e.trigger_compaction()
    it = e.scan(ScanRange.all())
    next(it)                        # an iterator left open across shutdown
    e.get_latest(b"k001")
    e.shutdown()
    held = [p for p in fds().values() if p.startswith(data)]
    return e, it, held

cycle(0, True)
gc.collect()
base_fds, base_threads = fds(), threading.active_count()
problems = []
for i in range(1, cycles + 1):
    e, it, held = cycle(i, i % 3 != 0)
    if held and len(problems) < 5:
        problems.append(f"cycle {i}: shut-down engine still holds {held}")
    del e, it
gc.collect()
extra = sorted(set(fds().items()) - set(base_fds.items()))
print(json.dumps({"extra_fds": extra, "threads": threading.active_count(),
                  "base_threads": base_threads, "problems": problems,
                  "thread_names": [t.name for t in threading.enumerate()]}))
'''


def run_cycles(tmp_path, cycles):
    res = run_python(CHILD, tmp_path / "db", cycles, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["problems"], out["problems"]
    assert out["extra_fds"] == [], f"descriptors left open: {out['extra_fds'][:10]}"
    assert out["threads"] == out["base_threads"], f"threads left: {out['thread_names']}"


def test_open_close_cycles_leave_no_descriptors_or_threads(tmp_path):
    run_cycles(tmp_path, 1000 if FULL else 300)


@pytest.mark.slow
def test_thousand_open_close_cycles(tmp_path):
    run_cycles(tmp_path, 1000)
