"""Child process for test_io_errors.py: writes under FaultFS with one failure
rule, reports what happened as JSON lines.

usage: io_child.py DATA_DIR RULE_JSON BACKGROUND(0|1) [BATCHES]

RULE_JSON holds the faultfs.Rule fields ({} for none: a full disk comes
from the file system itself).  Batch n is 1..8 records f"n{n}:{i}" at ts n,
values b"v%d-%d" * 20; a flush() after every 10th.  Lines printed:
  {"ev": "ack", "n": n, "count": c}           write_batch(n) returned
  {"ev": "error", "where": w, "n": n, "type": T, "msg": m, "flow": bool}
  {"ev": "after", "n": n, "type": T|null}     a write tried after the first WAL error
  {"ev": "read", "ok": bool}                  the acknowledged records read back
                                              (after one retry if the first read got a
                                              background error, which is reported too)
  {"ev": "shutdown", "type": T|null}
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flowdb                                                        # noqa: E402
from flowdb import Engine, Record, SyncMode                          # noqa: E402
from helpers.common import backend                                   # noqa: E402
from reliability.faultfs import FaultFS, Rule                        # noqa: E402


def batch(n):
    return [Record(b"n%d:%d" % (n, i), n, b"v%d-%d" % (n, i) * 20) for i in range(1 + n % 8)]


def say(**kw):
    print(json.dumps(kw), flush=True)


def err(where, n, exc):
    say(ev="error", where=where, n=n, type=type(exc).__name__, msg=str(exc)[:300],
        flow=isinstance(exc, flowdb.FlowError))


def main():
    data_dir, rule, background = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
    total = int(sys.argv[4]) if len(sys.argv) > 4 else 400
    fs = FaultFS(data_dir).install()
    if rule:
        fs.rules.append(Rule(**rule))
    try:
        engine = Engine.open(data_dir, auto_background=background, memtable_size_mb=0.02,
                             wal_segment_size_mb=0.02, wal_sync_mode=SyncMode.ALWAYS,
                             flush_interval_ms=10, compaction_interval_ms=20,
                             storage_backend=backend())
    except Exception as exc:
        err("open", -1, exc)
        return
    acked = []
    write_failed = None
    for n in range(total):
        try:
            engine.write_batch(batch(n))
        except Exception as exc:
            err("write", n, exc)
            write_failed = n
            break
        acked.append(n)
        say(ev="ack", n=n, count=len(batch(n)))
        if n % 10 == 9:
            try:
                engine.flush()
            except Exception as exc:
                err("flush", n, exc)
    if write_failed is not None:
        fs.rules.clear()              # the disk is healthy again: writes must still fail
        for n in range(write_failed + 1, write_failed + 4):
            try:
                engine.write_batch(batch(n))
                say(ev="after", n=n, type=None)
            except Exception as exc:
                say(ev="after", n=n, type=type(exc).__name__)
    for attempt in range(2):
        try:
            ok = all(engine.get(r.key, r.ts) == r for n in acked for r in batch(n))
            say(ev="read", ok=ok)
            break
        except flowdb.FlowError as exc:
            # Reads must not get background failures (they go to writers);
            # should one arrive anyway it is reported (and fails the test).
            err("read", -1, exc)
            if "background maintenance failed" not in str(exc):
                break
        except Exception as exc:
            err("read", -1, exc)
            break
    try:
        engine.shutdown()
        say(ev="shutdown", type=None)
    except Exception as exc:
        say(ev="shutdown", type=type(exc).__name__, msg=str(exc)[:300])


if __name__ == "__main__":
    main()
