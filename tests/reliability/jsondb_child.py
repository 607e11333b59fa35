"""Child of test_jsondb_kill9.py: moves amounts between documents of two
stores ("checking", "savings"; a unique index on "num", a multi-entry index
on "tags") in read-write transactions, and logs each transaction in a third
store in the same transaction:

    log: {"id": serial, "touched": [[store, doc id], ...]}

Every touched document's "ver" is incremented, so after a crash each
document's "ver" must equal the number of log entries naming it (a
transaction is all or nothing), and the log ids must be 0..n-1 (no hole).
After each commit returns it prints "ack <serial>" (the parent reads the
acks over the pipe).  argv: data_dir seed
"""
import random
import sys

from flowdb import SyncMode
from flowdb.jsondb import JsonDB

STORES = ["checking", "savings"]
N = 10

db = JsonDB.open(sys.argv[1], wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=1)
rnd = random.Random(int(sys.argv[2]))
serial = db.count("log")
print("ready", flush=True)
while True:
    a, b = rnd.sample(STORES, 2) if rnd.random() < 0.5 else ("checking", "checking")
    ia, ib = rnd.randrange(N), rnd.randrange(N)
    if a == b and ia == ib:
        continue
    with db.transaction(STORES + ["log"], "readwrite") as tx:
        x = tx.get(a, ia)
        y = tx.get(b, ib)
        amount = rnd.randrange(1, 50)
        x["balance"] -= amount
        y["balance"] += amount
        x["ver"] += 1
        y["ver"] += 1
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
        tx.put("log", {"id": serial, "touched": [[a, ia], [b, ib]]})
    print(f"ack {serial}", flush=True)
    serial += 1
