"""kill -9 while committing transactions: a child process moves amounts
between documents in two stores (with unique and plain indexes, swapping
unique keys too); after every kill the total is unchanged and every index
matches its documents exactly."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from flowdb import SyncMode
from flowdb.jsondb import JsonDB, _keys
from helpers.common import child_env

STORES = ("checking", "savings")
N = 10
TOTAL = 2 * N * 100

CHILD = r"""
import random, sys
from flowdb import SyncMode
from flowdb.jsondb import JsonDB
db = JsonDB.open(sys.argv[1], wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=1)
rnd = random.Random(int(sys.argv[2]))
print("ready", flush=True)
while True:
    a, b = rnd.sample(["checking", "savings"], 2) if rnd.random() < 0.5 else ("checking", "checking")
    with db.transaction(["checking", "savings"], "readwrite") as tx:
        x = tx.get(a, rnd.randrange(10))
        y = tx.get(b, rnd.randrange(10))
        if x is None or y is None or (a == b and x["id"] == y["id"]):
            continue
        amount = rnd.randrange(1, 50)
        x["balance"] -= amount
        y["balance"] += amount
        x["tags"] = [rnd.randrange(5) for _ in range(rnd.randrange(3))]
        if a == b and rnd.random() < 0.3:           # swap unique numbers
            nx, ny = x["num"], y["num"]
            x["num"] = -1 - x["id"]
            tx.put(a, x)
            y["num"] = nx
            tx.put(b, y)
            x["num"] = ny
        tx.put(a, x)
        tx.put(b, y)
"""


def open_db(path):
    return JsonDB.open(path, wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=1,
                       auto_background=False)


def check(db):
    total = 0
    for s in STORES:
        docs = db.scan(s)
        assert db.count(s) == len(docs) == N
        total += sum(d["balance"] for d in docs)
        meta = db._catalog.stores[s]
        by_pk = {_keys.encode(d["id"]): d for d in docs}
        for idx in meta.indexes.values():
            want = sorted((k, pk) for pk, d in by_pk.items() for k in idx.keys_of(d))
            got = [(_keys.encode(k), _keys.encode(pk)) for k, pk, _ in db.open_cursor(s, index=idx.name)]
            assert got == want, (s, idx.name)
            raw = [r.key for r in db.engine.scan_prefix(idx.prefix)]
            assert len(raw) == len(want)
    assert total == TOTAL


def run(tmp_path, rounds, seed):
    path = str(tmp_path / "db")
    db = open_db(path)
    for s in STORES:
        db.create_object_store(s, "id")
        db.create_index_on(s, "num", "num", unique=True)
        db.create_index_on(s, "tags", "tags", multi_entry=True)
        with db.transaction([s], "readwrite") as tx:
            for i in range(N):
                tx.put(s, {"id": i, "num": 1000 + i, "balance": 100, "tags": []})
    db.shutdown()
    rnd = random.Random(seed)
    env = child_env()                      # the child imports the same flowdb
    for r in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(seed * 1000 + r)],
                                 stdout=subprocess.PIPE, env=env)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rnd.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        db = open_db(path)
        try:
            check(db)
        finally:
            db.shutdown()
    db = open_db(path)
    try:                                   # the child did commit transactions
        assert any(d["balance"] != 100 for s in STORES for d in db.scan(s))
    finally:
        db.shutdown()


def test_kill9_keeps_sum_and_indexes(tmp_path):
    run(tmp_path, 4, 1)


@pytest.mark.slow
def test_kill9_many_rounds(tmp_path):
    run(tmp_path, 40, 2)
