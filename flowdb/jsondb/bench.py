"""JsonDB against SQLite: ``python -m flowdb.jsondb.bench [--n 100000]``.

Both sides hold the same documents (JSON) with three indexes: a unique
one on email, one on age, one on city (SQLite: expression indexes on
json_extract).  Both commit one transaction per batch and fsync every
commit (flowdb SyncMode.ALWAYS; SQLite WAL with synchronous=FULL).  Each
row prints operations per second for both and the ratio flowdb / sqlite
(above 1: flowdb is faster).  Between the insert and the read rows each
side settles: flowdb flushes and compacts until nothing is left to do,
SQLite checkpoints its WAL.

Both sides run the same loop: each answer is decoded into documents, and
only their ids are kept (retaining the documents themselves would make
Python's cyclic GC scan them again and again, a cost of the harness, not
of either database).  After timing, the ids each side returned are
compared row by row: a side that answers wrongly, or not at all, fails
the run instead of looking fast.  Ties in order_by break by primary key
on both sides.
"""
import argparse
import json
import os
import random
import shutil
import sqlite3
import tempfile
import time

from flowdb import SyncMode
from flowdb.jsondb import JsonDB, SortDir, StoreSchema

CITIES = [f"city{i}" for i in range(50)]


def make_docs(n, seed=1):
    rnd = random.Random(seed)
    return [{"id": f"user{i:07d}", "email": f"u{i}@example.com", "age": rnd.randrange(18, 90),
             "city": rnd.choice(CITIES), "name": f"Name {i}", "score": rnd.random(),
             "tags": ["a", "b"]} for i in range(n)]


def timed(fn, ops):
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return ops / dt if dt > 0 else float("inf")


def run_flowdb(path, docs, probes, batch):
    db = JsonDB.open(path, wal_sync_mode=SyncMode.ALWAYS, auto_background=True)
    db.apply_store(StoreSchema("users", "id").with_index("by_email", ["email"], True)
                   .with_index("by_age", ["age"]).with_index("by_city", ["city"]))
    res = {}

    def insert():
        for i in range(0, len(docs), batch):
            with db.transaction(["users"], "readwrite") as tx:
                for d in docs[i:i + batch]:
                    tx.put("users", d)
    res["insert"] = timed(insert, len(docs))
    # Settle before the read rows (SQLite: a checkpoint): a compaction still
    # running would take the reads' CPU on 2 cores at a random moment.
    db.engine.flush()
    while db.engine.trigger_compaction():
        pass
    keys, emails, cities, ages = probes
    ids = {row: [] for row in ("get", "unique", "eq", "range")}

    def get():
        out = ids["get"]
        for k in keys:
            out.append(db.get("users", k)["id"])
    res["get"] = timed(get, len(keys))

    def unique():
        out = ids["unique"]
        for e in emails:
            out += [d["id"] for d in db.get_by_index("users", "by_email", e)]
    res["unique"] = timed(unique, len(emails))

    def eq():
        out = ids["eq"]
        for c in cities:
            out += [d["id"] for d in db.query("users").where_eq("city", c)
                    .order_by("age", SortDir.ASC).limit(10).collect()]
    res["eq"] = timed(eq, len(cities))

    def rng():
        out = ids["range"]
        for a in ages:
            out += [d["id"] for d in db.query("users").where_range("age", a, a + 5)
                    .order_by("age").limit(10).collect()]
    res["range"] = timed(rng, len(ages))
    assert db.count("users") == len(docs)
    db.shutdown()
    return res, ids


def run_sqlite(path, docs, probes, batch):
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE users (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID")
    con.execute("CREATE UNIQUE INDEX by_email ON users (json_extract(body, '$.email'))")
    con.execute("CREATE INDEX by_age ON users (json_extract(body, '$.age'))")
    con.execute("CREATE INDEX by_city ON users (json_extract(body, '$.city'))")
    res = {}

    def insert():
        for i in range(0, len(docs), batch):
            con.execute("BEGIN")
            con.executemany("INSERT OR REPLACE INTO users VALUES (?, ?)",
                            [(d["id"], json.dumps(d)) for d in docs[i:i + batch]])
            con.execute("COMMIT")
    res["insert"] = timed(insert, len(docs))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    keys, emails, cities, ages = probes
    ids = {row: [] for row in ("get", "unique", "eq", "range")}

    def get():
        out = ids["get"]
        for k in keys:
            row = con.execute("SELECT body FROM users WHERE id = ?", (k,)).fetchone()
            out.append(json.loads(row[0])["id"])
    res["get"] = timed(get, len(keys))

    def unique():
        out = ids["unique"]
        for e in emails:
            out += [json.loads(r[0])["id"] for r in con.execute(
                "SELECT body FROM users WHERE json_extract(body, '$.email') = ?", (e,))]
    res["unique"] = timed(unique, len(emails))

    def eq():
        out = ids["eq"]
        for c in cities:
            out += [json.loads(r[0])["id"] for r in con.execute(
                "SELECT body FROM users WHERE json_extract(body, '$.city') = ? "
                "ORDER BY json_extract(body, '$.age'), id LIMIT 10", (c,))]
    res["eq"] = timed(eq, len(cities))

    def rng():
        out = ids["range"]
        for a in ages:
            out += [json.loads(r[0])["id"] for r in con.execute(
                "SELECT body FROM users WHERE json_extract(body, '$.age') >= ? AND "
                "json_extract(body, '$.age') < ? ORDER BY json_extract(body, '$.age'), id "
                "LIMIT 10", (a, a + 5))]
    res["range"] = timed(rng, len(ages))
    con.close()
    return res, ids


ROWS = [("insert", "bulk insert, transactions of {batch}"), ("get", "get by key"),
        ("unique", "unique-index lookup (email)"),
        ("eq", "where_eq(city) + order_by(age) + limit 10"),
        ("range", "where_range(age) + order_by(age) + limit 10")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="documents")
    ap.add_argument("--batch", type=int, default=1000, help="documents per transaction")
    ap.add_argument("--probes", type=int, default=10_000, help="point lookups")
    ap.add_argument("--queries", type=int, default=1_000, help="queries per query row")
    ap.add_argument("--dir", default=None, help="where to put both databases (default: a temp dir)")
    args = ap.parse_args(argv)
    docs = make_docs(args.n)
    rnd = random.Random(2)
    probes = ([rnd.choice(docs)["id"] for _ in range(args.probes)],
              [rnd.choice(docs)["email"] for _ in range(args.probes)],
              [rnd.choice(CITIES) for _ in range(args.queries)],
              [rnd.randrange(18, 85) for _ in range(args.queries)])
    base = tempfile.mkdtemp(prefix="jsondb-bench-", dir=args.dir)
    try:
        f, f_ids = run_flowdb(os.path.join(base, "flowdb"), docs, probes, args.batch)
        s, s_ids = run_sqlite(os.path.join(base, "sqlite.db"), docs, probes, args.batch)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for row, got in f_ids.items():
        if got != s_ids[row] or not got:
            raise SystemExit(f"jsondb bench: flowdb and sqlite disagree on {row!r} "
                             f"({len(got)} vs {len(s_ids[row])} ids)")
    print(f"{args.n} documents, 3 indexes; ops/s (higher is better); ratio = flowdb / sqlite "
          f"(sqlite {sqlite3.sqlite_version})")
    print(f"| {'operation':<44} | {'flowdb ops/s':>12} | {'sqlite ops/s':>12} | {'ratio':>6} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 14}|{'-' * 8}|")
    for key, label in ROWS:
        label = label.format(batch=args.batch)
        print(f"| {label:<44} | {f[key]:>12,.0f} | {s[key]:>12,.0f} | {f[key] / s[key]:>6.2f} |")


if __name__ == "__main__":
    main()
