"""JsonDB against SQLite: ``python -m flowdb.jsondb.bench [--n 100000]``.

Both sides hold the same documents (JSON) with three indexes: a unique
one on email, one on age, one on city (SQLite: expression indexes on
json_extract).  Both commit one transaction per batch and fsync every
commit (flowdb SyncMode.ALWAYS; SQLite WAL with synchronous=FULL).  Each
row prints operations per second for both and the ratio flowdb / sqlite
(above 1: flowdb is faster).
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
    keys, emails, cities, ages = probes
    res["get"] = timed(lambda: [db.get("users", k) for k in keys], len(keys))
    res["unique"] = timed(lambda: [db.get_by_index("users", "by_email", e) for e in emails],
                          len(emails))
    res["eq"] = timed(lambda: [db.query("users").where_eq("city", c).order_by("age", SortDir.ASC)
                               .limit(10).collect() for c in cities], len(cities))
    res["range"] = timed(lambda: [db.query("users").where_range("age", a, a + 5)
                                  .order_by("age").limit(10).collect() for a in ages], len(ages))
    check = (db.get("users", keys[0]), db.count("users"))
    db.shutdown()
    return res, check


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
    keys, emails, cities, ages = probes

    def get():
        for k in keys:
            row = con.execute("SELECT body FROM users WHERE id = ?", (k,)).fetchone()
            json.loads(row[0])
    res["get"] = timed(get, len(keys))

    def unique():
        for e in emails:
            [json.loads(r[0]) for r in con.execute(
                "SELECT body FROM users WHERE json_extract(body, '$.email') = ?", (e,))]
    res["unique"] = timed(unique, len(emails))

    def eq():
        for c in cities:
            [json.loads(r[0]) for r in con.execute(
                "SELECT body FROM users WHERE json_extract(body, '$.city') = ? "
                "ORDER BY json_extract(body, '$.age'), id LIMIT 10", (c,))]
    res["eq"] = timed(eq, len(cities))

    def rng():
        for a in ages:
            [json.loads(r[0]) for r in con.execute(
                "SELECT body FROM users WHERE json_extract(body, '$.age') >= ? AND "
                "json_extract(body, '$.age') < ? ORDER BY json_extract(body, '$.age') LIMIT 10",
                (a, a + 5))]
    res["range"] = timed(rng, len(ages))
    con.close()
    return res


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
        f, _ = run_flowdb(os.path.join(base, "flowdb"), docs, probes, args.batch)
        s = run_sqlite(os.path.join(base, "sqlite.db"), docs, probes, args.batch)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.n} documents, 3 indexes; ops/s (higher is better); ratio = flowdb / sqlite "
          f"(sqlite {sqlite3.sqlite_version})")
    print(f"| {'operation':<44} | {'flowdb ops/s':>12} | {'sqlite ops/s':>12} | {'ratio':>6} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 14}|{'-' * 8}|")
    for key, label in ROWS:
        label = label.format(batch=args.batch)
        print(f"| {label:<44} | {f[key]:>12,.0f} | {s[key]:>12,.0f} | {f[key] / s[key]:>6.2f} |")


if __name__ == "__main__":
    main()
