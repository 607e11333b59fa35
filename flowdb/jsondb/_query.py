"""QueryBuilder and its small planner.

Plan choice (explain() reports it):

1. Every where_eq / where_range / where_in on a field that has a plain
   index (one key path, not multi_entry) whose values are valid keys is a
   candidate.  With several candidates (or one competing with an order_by
   index walk) each is estimated by counting its index entries, up to a
   cap (ESTIMATE_CAP, or sqrt((offset + limit) * documents) when a walk
   competes); the smallest wins (the most selective).  A lone candidate
   is taken without counting.
2. With order_by on an indexed field: if the chosen candidate is on that
   field, its index walk is already in order; if there is no candidate, or
   a limit is given and the best candidate's estimate e makes walking
   cheaper (e * e > (offset + limit) * documents: the walk reads about
   (offset + limit) * documents / e documents, the candidate e), the
   order_by index is walked in order and stops after offset + limit
   matches, so nothing is sorted.
3. Otherwise documents come from the chosen index or a full scan, every
   clause is applied as a filter, then the sort (a heap of offset + limit
   when there is a limit), then offset and limit.

Semantics: clauses combine with AND; equality is JSON equality (True != 1,
1 == 1.0); where_range(field, a, b) keeps values v that are valid keys with
a <= v < b in key order; order_by keeps only documents whose field is a
valid key (like an IndexedDB index) and orders by (value, primary key).
Without order_by the order is the index's (index key, primary key) when an
index is used, else primary-key order.
"""
import enum
import heapq
import itertools
import math

from flowdb.jsondb import _keys, _typed
from flowdb.jsondb._transaction import TransactionMode, load_doc

ESTIMATE_CAP = 1000
# Index entries whose documents one engine call fetches (QueryBuilder._source).
CHUNK = 64


class SortDir(enum.Enum):
    ASC = "asc"
    DESC = "desc"


def json_eq(a, b):
    """JSON equality: True != 1, 1 == 1.0, objects and arrays deeply."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in (int, float) and tb in (int, float):
        return a == b
    if ta is dict and tb is dict:
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    if ta in (list, tuple) and tb in (list, tuple):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    if ta is not tb:
        return False
    return a == b


class _Clause:
    __slots__ = ("kind", "field", "parts", "args")

    def __init__(self, kind, field, args):
        self.kind = kind
        self.field = field
        self.parts = _keys.parse_key_path(field)
        self.args = args

    def match(self, doc):
        v = _keys.extract(doc, self.parts)
        if v is _keys.MISSING:
            return False
        if self.kind == "eq":
            return json_eq(v, self.args)
        if self.kind == "in":
            return any(json_eq(v, x) for x in self.args)
        enc = _keys.try_encode(v)
        lo, hi = self.args
        return enc is not None and lo <= enc < hi

    def ranges(self, prefix):
        """[lo, hi) byte ranges of this clause over an index, or None if an
        index cannot serve it."""
        if self.kind == "eq":
            enc = _keys.try_encode(self.args)
            if enc is None:
                return None
            return [(prefix + enc, _keys.successor(prefix + enc))]
        if self.kind == "in":
            encs = set()
            for x in self.args:
                enc = _keys.try_encode(x)
                if enc is None:
                    return None
                encs.add(enc)
            return [(prefix + e, _keys.successor(prefix + e)) for e in sorted(encs)]
        lo, hi = self.args
        if lo >= hi:
            return []
        return [(prefix + lo, prefix + hi)]

    def __str__(self):
        if self.kind == "range":
            return f"where_range({self.field})"
        return f"where_{self.kind}({self.field})"


class QueryBuilder:
    """db.query("users").where_eq("city", "Oslo").order_by("age").limit(10).collect()"""

    def __init__(self, db, store):
        self._db = db
        self._store = store
        self._clauses = []
        self._order = None
        self._limit = None
        self._offset = 0

    def where_eq(self, field, value):
        self._clauses.append(_Clause("eq", field, value))
        return self

    def where_range(self, field, start, end):
        self._clauses.append(_Clause("range", field, (_keys.encode(start), _keys.encode(end))))
        return self

    def where_in(self, field, values):
        self._clauses.append(_Clause("in", field, list(values)))
        return self

    def order_by(self, field, direction=SortDir.ASC):
        if isinstance(direction, str):
            direction = SortDir(direction.lower())
        if not isinstance(direction, SortDir):
            raise TypeError("direction must be a SortDir")
        self._order = (field, _keys.parse_key_path(field), direction)
        return self

    def limit(self, n):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("limit must be an int >= 0")
        self._limit = n
        return self

    def offset(self, n):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("offset must be an int >= 0")
        self._offset = n
        return self

    # ---- planning -------------------------------------------------------------

    def _plan(self, tx):
        meta = tx._store(self._store)
        plain = {idx.key_paths[0]: idx for idx in meta.indexes.values()
                 if not idx.compound and not idx.multi_entry}
        cands = []                                  # (clause, idx, ranges)
        for c in self._clauses:
            idx = plain.get(c.field)
            if idx is not None:
                ranges = c.ranges(idx.prefix)
                if ranges is not None:
                    cands.append((c, idx, ranges))
        oidx = plain.get(self._order[0]) if self._order is not None else None
        walk_ok = oidx is not None and self._limit is not None
        need = self._offset + (self._limit or 0)
        total = 0
        cap = ESTIMATE_CAP
        best = None                                 # (estimate, clause, idx, ranges)
        if len(cands) == 1 and (not walk_ok or cands[0][1] is oidx):
            best = (None,) + cands[0]
        elif cands:
            if walk_ok:
                # walking the order index reads about need * total / est
                # documents, the candidate est: count up to where walking wins
                total = tx._count_of(meta)
                cap = max(ESTIMATE_CAP, math.isqrt(need * total) + 1)
            for c, idx, ranges in cands:  # noqa: B007
                limit = cap if best is None else min(cap, best[0])
                est = _count(tx, ranges, limit)
                if best is None or est < best[0] or (est == best[0] and idx is oidx):
                    best = (est, c, idx, ranges)
        plan = {"meta": meta, "index": None, "ranges": None, "clause": None, "ordered": False,
                "estimate": None, "cap": cap}
        if best is not None:
            plan.update(index=best[2], ranges=best[3], clause=best[1], estimate=best[0])
        if oidx is not None:
            if best is not None and best[2] is oidx:
                plan["ordered"] = True
            elif walk_ok and (best is None or best[0] * best[0] > need * total):
                p = oidx.prefix
                plan.update(index=oidx, ranges=[(p, _keys.successor(p))], clause=None,
                            ordered=True, estimate=None)
        return plan

    def explain(self):
        """What collect() would do, in words."""
        with self._db.transaction([self._store], TransactionMode.READ_ONLY) as tx:
            plan = self._plan(tx)
        parts = []
        if plan["index"] is None:
            parts.append(f"full scan of {self._store!r}")
        else:
            how = f"for {plan['clause']}" if plan["clause"] is not None else "in order"
            parts.append(f"index {plan['index'].name!r} of {self._store!r} {how}")
            if plan["estimate"] is not None:
                cap = "+" if plan["estimate"] >= plan["cap"] else ""
                parts.append(f"estimated {plan['estimate']}{cap} entries")
        rest = [str(c) for c in self._clauses if c is not plan["clause"]]
        if rest:
            parts.append("filter " + ", ".join(rest))
        if self._order is not None:
            if plan["ordered"]:
                parts.append(f"order_by({self._order[0]}) from the index order")
            else:
                parts.append(f"sort by {self._order[0]}" +
                             (" (top-k heap)" if self._limit is not None else ""))
        if self._offset:
            parts.append(f"offset {self._offset}")
        if self._limit is not None:
            parts.append(f"limit {self._limit}")
        return "; ".join(parts)

    # ---- execution ------------------------------------------------------------

    def collect(self):
        """The matching documents."""
        with self._db.transaction([self._store], TransactionMode.READ_ONLY) as tx:
            return self._run(tx)

    def collect_doc(self, cls):
        return [_typed.from_doc(cls, d) for d in self.collect()]

    def _source(self, tx, plan):
        """(pk bytes, doc) in the plan's order."""
        meta = plan["meta"]
        idx = plan["index"]
        load = load_doc
        if idx is None:
            p = meta.docs_prefix
            n = len(p)
            for k, v in tx._iter_range(p, _keys.successor(p)):
                yield k[n:], load(v)
            return
        desc = plan["ordered"] and self._order[2] is SortDir.DESC
        seen = set() if len(plan["ranges"]) > 1 else None
        ranges = plan["ranges"]
        if desc:
            ranges = ranges[::-1]
        pk_of = idx.pk_of
        docs = meta.docs_prefix
        # Documents are fetched a chunk of index entries at a time (one engine
        # call per chunk): as many as the query still needs when nothing
        # filters them, else CHUNK.
        chunk = CHUNK
        if not self._clauses or self._clauses == [plan["clause"]]:
            if self._limit is not None and plan["ordered"]:
                chunk = max(1, min(CHUNK, self._offset + self._limit))
        for lo, hi in ranges:
            entries = tx._iter_range(lo, hi, desc)
            while True:
                pks = []
                n = 0
                for k, v in itertools.islice(entries, chunk):
                    n += 1
                    pk = pk_of(k, v)
                    if seen is not None:
                        if pk in seen:
                            continue
                        seen.add(pk)
                    pks.append(pk)
                if not n:
                    break
                for pk, raw in zip(pks, tx._get_raws([docs + pk for pk in pks])):
                    if raw is not None:
                        yield pk, load(raw)
                chunk = CHUNK

    def _run(self, tx):
        plan = self._plan(tx)
        clauses = [c for c in self._clauses if c is not plan["clause"]]
        start = self._offset
        stop = None if self._limit is None else self._offset + self._limit
        if stop == 0:
            return []
        matches = self._source(tx, plan)
        if clauses:
            matches = ((pk, d) for pk, d in matches if all(c.match(d) for c in clauses))
        if self._order is not None and not plan["ordered"]:
            parts = self._order[1]
            keyed = []
            for pk, d in matches:
                enc = _keys.try_encode(_keys.extract(d, parts))
                if enc is not None:
                    keyed.append(((enc, pk), d))
            desc = self._order[2] is SortDir.DESC
            if stop is not None:
                pick = heapq.nlargest if desc else heapq.nsmallest
                keyed = pick(stop, keyed, key=lambda t: t[0])
            else:
                keyed.sort(key=lambda t: t[0], reverse=desc)
            return [d for _, d in keyed[start:stop]]
        # ordered: the documents come from the order_by index, so each has a
        # valid key there
        out = []
        for i, (_, d) in enumerate(matches):
            if i >= start:
                out.append(d)
            if stop is not None and i + 1 >= stop:
                break
        return out


def _count(tx, ranges, limit):
    n = 0
    for lo, hi in ranges:
        for _ in tx._iter_range(lo, hi):
            n += 1
            if n >= limit:
                return n
    return n


