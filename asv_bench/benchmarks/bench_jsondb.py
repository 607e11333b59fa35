"""asv benchmarks of JsonDB: the read rows of `python -m flowdb.jsondb.bench`.

One settled store (flushed and compacted) of FLOWDB_ASV_DOCS documents
(20,000 by default) with a unique and two plain indexes, built once by
setup_cache.  Each setup checks the answers against the documents, so a
wrong or empty answer fails the benchmark instead of timing it.  Index keys
share long prefixes (a store, an index, a city), which is where a search
that degrades to a linear scan shows first.
"""
import os
import random
import shutil

from flowdb import SyncMode
from flowdb.jsondb import JsonDB, SortDir, StoreSchema
from flowdb.jsondb.bench import CITIES, make_docs

DOCS = int(os.environ.get("FLOWDB_ASV_DOCS", 20_000))


def _open(path):
    return JsonDB.open(path, wal_sync_mode=SyncMode.interval_ms(100))


class Queries:
    timeout = 300

    def setup_cache(self):
        path = os.path.abspath("flowdb-asv-jsondb")
        shutil.rmtree(path, ignore_errors=True)
        db = _open(path)
        db.apply_store(StoreSchema("users", "id").with_index("by_email", ["email"], True)
                       .with_index("by_age", ["age"]).with_index("by_city", ["city"]))
        docs = make_docs(DOCS)
        for i in range(0, len(docs), 1000):
            with db.transaction(["users"], "readwrite") as tx:
                for d in docs[i:i + 1000]:
                    tx.put("users", d)
        db.engine.flush()
        while db.engine.trigger_compaction():
            pass
        db.shutdown()
        return path

    def setup(self, path):
        self.db = _open(path)
        docs = {d["id"]: d for d in make_docs(DOCS)}
        rng = random.Random(3)
        self.ids = rng.sample(sorted(docs), 1000)
        self.emails = [docs[i]["email"] for i in self.ids]
        self.city = CITIES[0]
        # The answers must be right before they are timed.
        assert [self.db.get("users", i) for i in self.ids[:50]] == [docs[i] for i in self.ids[:50]]
        assert [d["id"] for e in self.emails[:50]
                for d in self.db.get_by_index("users", "by_email", e)] == self.ids[:50]
        want = sorted((d for d in docs.values() if d["city"] == self.city),
                      key=lambda d: (d["age"], d["id"]))[:10]
        assert [d["id"] for d in self._eq()] == [d["id"] for d in want]
        want = sorted((d for d in docs.values() if 40 <= d["age"] <= 45),
                      key=lambda d: (d["age"], d["id"]))[:10]
        assert [d["id"] for d in self._range()] == [d["id"] for d in want]

    def teardown(self, path):
        self.db.shutdown()

    def _eq(self):
        return (self.db.query("users").where_eq("city", self.city)
                .order_by("age", SortDir.ASC).limit(10).collect())

    def _range(self):
        return self.db.query("users").where_range("age", 40, 45).order_by("age").limit(10).collect()

    def time_get_by_key_1000(self, path):
        get = self.db.get
        for i in self.ids:
            get("users", i)

    def time_unique_index_lookup_1000(self, path):
        by_index = self.db.get_by_index
        for e in self.emails:
            by_index("users", "by_email", e)

    def time_where_eq_order_by_limit_10(self, path):
        self._eq()

    def time_where_range_order_by_limit_10(self, path):
        self._range()
