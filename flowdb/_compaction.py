"""The compaction policy: size-tiered merges of adjacent, recency-ordered runs.

See docs/MAINTENANCE.md for the measurements behind the choice.

A *run* is a set of tables with disjoint (key, ts) sets that occupies one
place in the recency order: a flush makes a run of one table; a compaction
merges a window of *adjacent* runs into one run (its outputs cut by key at
the target size).  Because only adjacent runs merge, the invariant the read
path relies on holds at every step: for any (key, ts), a newer run holds the
newer versions, and the merged run simply takes the place of its inputs.
Seq ranges of runs are disjoint and ordered the same way, so the order of
runs is recoverable from the tables' max_seq alone (recovery sorts by it).

Why tiered and not leveled: time-series ingest interleaves every series in
every batch, so every flushed table spans the whole key range.  A key-leveled
policy then rewrites all of L1 on every L0 compaction (write amplification
~ size(L1) / size(memtable), growing without bound); size-tiered merging is
a binary counter over flushes, write amplification ~ log2(flushes / T) + 1.

Pick rule (RocksDB "universal" style, size ratio 1):

    runs r[0] (newest) .. r[n-1] (oldest), size s[i] in bytes
    for start in 0 .. n-1:
        window = [start]; total = s[start]
        while next run j exists and s[j] <= total: window += [j]; total += s[j]
        if len(window) >= T: return window          # T = compaction_threshold
    if n > max_runs: return the T adjacent runs of least total size
    return None

bottommost = the window includes the oldest run: no older data can exist,
so point tombstones, expired records and range deletes are dropped there.

Settled runs: a run of SETTLED_RUN_TARGETS x the target file size or more
is no longer merged by the policy.  Time-series ingest arrives in time
order, so runs in recency order are also in time order: a settled run
covers one stretch of time, and when that stretch has expired its tables
are dropped whole by GC (droppable_oldest) instead of being rewritten
again and again.  Write amplification is bounded too: a byte is merged at
most ~log2(SETTLED_RUN_TARGETS x 2) times.
"""
from __future__ import annotations

#: Beyond this many runs per unit of threshold, merge even runs of unequal size.
RUNS_PER_THRESHOLD = 4
#: Writers are slowed (a short sleep per commit) past this many runs per threshold.
STALL_RUNS_PER_THRESHOLD = 12


def threshold(config) -> int:
    """The number of adjacent runs a merge takes (compaction_threshold, at least 2)."""
    return max(2, int(config.compaction_threshold))


def max_runs(config) -> int:
    return threshold(config) * RUNS_PER_THRESHOLD


def stall_runs(config) -> int:
    return threshold(config) * STALL_RUNS_PER_THRESHOLD


def run_size(run) -> int:
    return sum(t.file_size for t in run)


#: A run this many times the target file size is *settled*: the policy no
#: longer merges it (docs/MAINTENANCE.md, "Settled runs").
SETTLED_RUN_TARGETS = 32


def settled_size(target_file_size) -> int:
    return SETTLED_RUN_TARGETS * target_file_size


def active_runs(runs, settled) -> int:
    """How many runs the policy may still merge (the unsettled ones)."""
    return sum(1 for r in runs if run_size(r) < settled)


def pick(runs, t, limit, settled=None):
    """(start, end) of the window of runs[start:end] to merge, or None.

    runs: newest first; t: the threshold; limit: the count of unsettled
    runs past which the cheapest window of t adjacent unsettled runs is
    merged whatever the sizes; settled: the size at which a run is settled
    (never part of a window; None: no run ever is).
    """
    sizes = [run_size(r) for r in runs]
    n = len(sizes)
    free = [settled is None or s < settled for s in sizes]
    for start in range(n):
        if not free[start]:
            continue
        total = sizes[start]
        end = start + 1
        while end < n and free[end] and sizes[end] <= total:
            total += sizes[end]
            end += 1
        if end - start >= t:
            return start, end
    if sum(free) > limit:
        windows = [i for i in range(n - t + 1) if all(free[i:i + t])]
        if windows:
            best = min(windows, key=lambda i: sum(sizes[i:i + t]))
            return best, best + t
    return None


def garbage_fraction(tables, now_us) -> float:
    """Estimated share of the bytes of `tables` a bottommost merge would drop.

    From metadata only: blocks whose every record has expired (per-block
    max_expire_at), the point-tombstone share of each table, and a whole
    table for range deletes (what they hide is unknown)."""
    total = garbage = 0
    for t in tables:
        size = t.file_size
        total += size
        p = t.props
        if p["num_range_dels"]:
            garbage += size
            continue
        if p["min_expire_at"] <= now_us:
            garbage += sum(b[1] for b in t.block_meta() if b[5] <= now_us)
        if p["num_deletes"] and p["num_entries"]:
            garbage += 2 * size * p["num_deletes"] // p["num_entries"]   # tombstone + its victim
    return garbage / total if total else 0.0


def droppable_oldest(runs, now_us):
    """Tables of the oldest run that may be dropped whole without being read.

    A table of the oldest run whose every PUT has expired (max_expire_at <=
    now; a table of only tombstones has max_expire_at = INT64_MIN) can go:
    nothing older exists for its tombstones to hide, and within a run (key,
    ts) pairs are unique, so no version of the run shows through.  One
    exception: a table holding range deletes may hide entries of the *other*
    tables of its run (a non-bottommost merge writes every range delete to
    its first output), so it is dropped only when it is the run's only
    table.  Tables of newer runs are never dropped whole: an expired newer
    version hides an older one whose own expiry may be later.
    """
    if not runs:
        return []
    oldest = runs[-1]
    out = []
    for t in oldest:
        p = t.props
        if p["max_expire_at"] > now_us:
            continue
        if p["num_range_dels"] and len(oldest) > 1:
            continue
        out.append(t)
    return out
