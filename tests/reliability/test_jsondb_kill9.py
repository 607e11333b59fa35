"""JsonDB transactions across kills (issue 5, item 9).

A child process (jsondb_child.py) commits read-write transactions that move
amounts between documents of two stores (with a unique index whose keys are
sometimes swapped, and a multi-entry index) and log themselves in a third
store; it reports every acknowledged commit to the parent over a pipe and
is SIGKILLed at a random moment, again and again.  After every kill:

- every acknowledged transaction is present (its log entry), and at most
  one transaction more (committed, killed before its ack was printed);
- no transaction is partly visible: the log ids are 0..n-1, and every
  document's "ver" equals the number of log entries that touched it;
- the total balance is unchanged, each store holds its N documents;
- every index matches its documents exactly (no stale or missing entry).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from flowdb import SyncMode
from flowdb.jsondb import JsonDB, _keys
from helpers.common import FULL, child_env

STORES = ("checking", "savings")
N = 10
TOTAL = 2 * N * 100
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jsondb_child.py")


def open_db(path):
    return JsonDB.open(path, wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=1,
                       auto_background=False)


def check(db, acked):
    """Checks the store; returns the set of committed transaction serials."""
    logs = db.scan("log")
    serials = [d["id"] for d in logs]
    assert serials == list(range(len(serials))), "a hole in the transaction log"
    missing = acked - set(serials)
    assert not missing, f"acknowledged transactions lost: {sorted(missing)[:10]}"
    touched = Counter((s, i) for d in logs for s, i in d["touched"])
    total = 0
    for s in STORES:
        docs = db.scan(s)
        assert db.count(s) == len(docs) == N
        total += sum(d["balance"] for d in docs)
        for d in docs:                      # all or nothing per transaction
            assert d["ver"] == touched[(s, d["id"])], ("partial transaction", s, d)
        meta = db._catalog.stores[s]
        by_pk = {_keys.encode(d["id"]): d for d in docs}
        for idx in meta.indexes.values():
            want = sorted((k, pk) for pk, d in by_pk.items() for k in idx.keys_of(d))
            got = [(_keys.encode(k), _keys.encode(pk)) for k, pk, _ in db.open_cursor(s, index=idx.name)]
            assert got == want, (s, idx.name)
            raw = [r.key for r in db.engine.scan_prefix(idx.prefix)]
            assert len(raw) == len(want)
    assert total == TOTAL
    assert db.count("log") == len(logs)
    return set(serials)


def run(tmp_path, rounds, seed):
    path = str(tmp_path / "db")
    db = open_db(path)
    for s in STORES:
        db.create_object_store(s, "id")
        db.create_index_on(s, "num", "num", unique=True)
        db.create_index_on(s, "tags", "tags", multi_entry=True)
        with db.transaction([s], "readwrite") as tx:
            for i in range(N):
                tx.put(s, {"id": i, "num": 1000 + i, "balance": 100, "tags": [], "ver": 0})
    db.create_object_store("log", "id")
    db.shutdown()
    rnd = random.Random(seed)
    env = child_env()                      # the child imports the same flowdb
    figures = dict(cycles=rounds, acked=0, lost=0, committed_unacked=0, partial=0)
    acked, committed = set(), set()
    for r in range(rounds):
        child = subprocess.Popen([sys.executable, CHILD, path, str(seed * 1000 + r)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        acks = []

        def read():
            for line in child.stdout:
                parts = line.split()
                if line.endswith("\n") and len(parts) == 2 and parts[0] == "ack":
                    acks.append(int(parts[1]))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(rnd.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        reader.join(timeout=10)
        err = child.stderr.read()
        child.stdout.close()
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL, f"the child died by itself:\n{err}"
        acked.update(acks)
        figures["acked"] += len(acks)
        db = open_db(path)
        try:
            now = check(db, acked)
        finally:
            db.shutdown()
        new = now - committed - set(acks)
        assert len(new) <= 1, f"transactions present that were never acknowledged: {sorted(new)}"
        figures["committed_unacked"] += len(new)
        committed = now
    assert figures["acked"] > 0, "no transaction was ever acknowledged"
    print(f"\nFIGURES JsonDB kill -9: {figures}")
    return figures


def test_jsondb_kill9_all_or_nothing_and_indexes(tmp_path):
    run(tmp_path, 12 if FULL else 4, 1)


@pytest.mark.slow
def test_jsondb_kill9_many_rounds(tmp_path):
    run(tmp_path, 40, int(os.environ.get("FLOWDB_SEED", "2")))
