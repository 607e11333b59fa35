"""The time index: which tables a time-range read must open.

Two tiers, both built from bounds every table already carries (docs/FORMAT.md:
the props' min_ts/max_ts and each index entry's per-block min_ts/max_ts):

1. Buckets (this module).  Time is cut into buckets of time_bucket_secs;
   each data block is entered in *every* bucket its [min_ts, max_ts] span
   touches (bucket(ts) = floor(ts / width), negative ts included), under its
   table.  A read over [s, e] visits buckets floor(s/w) .. floor(e/w) and
   gets the tables with a block there.  A block whose span touches more than
   MAX_BUCKETS_PER_BLOCK buckets (a table holding 1970 and 2030, or ts near
   INT64_MIN/MAX) is not spread over buckets but kept on the `wide` list,
   which every read includes.  So no table with a block overlapping [s, e]
   is ever missed: such a block touches a bucket in the visited range, or
   is wide.  A read whose range spans more than MAX_QUERY_BUCKETS buckets
   skips the index and considers every table.
2. Blocks (flowdb._core.table, in C).  Inside a chosen table, the iterator
   compares each block's [min_ts, max_ts] from the in-memory index with
   [s, e] and skips a block that misses it without reading it: an interval
   check, exact by construction.

Tables of views that are no longer current (a pinned snapshot's) may have
left the index: a read includes every table of its view the index does not
know (EngineReads._time_sources, flowdb._core.read), so it never misses
those either.

Thread safety: add/remove/candidates under the engine's _mutex or from one
thread at a time; `candidates` returns a new set.
"""
from __future__ import annotations

#: A block spanning more buckets than this goes to the wide list.
MAX_BUCKETS_PER_BLOCK = 64
#: A read over more buckets than this does not use the index.
MAX_QUERY_BUCKETS = 4096


class TimeIndex:
    """bucket -> {file_number: blocks of that table entered in the bucket}."""

    def __init__(self, bucket_secs: int):
        self.width = max(1, int(bucket_secs * 1_000_000))   # microseconds
        self.buckets = {}          # bucket id -> {file_number: block count}
        self.wide = {}             # file_number -> blocks on the wide list
        self.known = {}            # file_number -> [bucket ids] (for remove)
        self.entries = 0           # (bucket, block) entries

    def add(self, table) -> None:
        number = table.file_number
        if number in self.known:
            return
        w = self.width
        touched = {}
        wide = 0
        for _off, _size, lo, hi, _emin, _emax in table.block_meta():
            if lo > hi:
                continue                     # a block of no timestamps (cannot happen today)
            b0, b1 = lo // w, hi // w
            if b1 - b0 >= MAX_BUCKETS_PER_BLOCK:
                wide += 1
                continue
            for b in range(b0, b1 + 1):
                touched[b] = touched.get(b, 0) + 1
        for b, n in touched.items():
            self.buckets.setdefault(b, {})[number] = n
            self.entries += n
        if wide:
            self.wide[number] = wide
            self.entries += wide
        self.known[number] = list(touched)

    def remove(self, table) -> None:
        number = table.file_number
        ids = self.known.pop(number, None)
        if ids is None:
            return
        for b in ids:
            per = self.buckets.get(b)
            if per is not None and number in per:
                self.entries -= per.pop(number)
                if not per:
                    del self.buckets[b]
        self.entries -= self.wide.pop(number, 0)

    def knows(self, number) -> bool:
        return number in self.known

    def candidates(self, ts_lo: int, ts_hi: int):
        """File numbers of the known tables with a block that may overlap
        [ts_lo, ts_hi], or None when the range is too wide to be worth it."""
        w = self.width
        b0, b1 = ts_lo // w, ts_hi // w
        if b1 - b0 >= MAX_QUERY_BUCKETS:
            return None
        out = set(self.wide)
        if b1 - b0 + 1 <= len(self.buckets):
            for b in range(b0, b1 + 1):
                per = self.buckets.get(b)
                if per:
                    out.update(per)
        else:
            for b, per in self.buckets.items():
                if b0 <= b <= b1:
                    out.update(per)
        return out

    @property
    def num_buckets(self) -> int:
        return len(self.buckets)
