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


def pick(runs, t, limit):
    """(start, end) of the window of runs[start:end] to merge, or None.

    runs: newest first; t: the threshold; limit: the run count past which the
    cheapest window of t runs is merged whatever the sizes.
    """
    sizes = [run_size(r) for r in runs]
    n = len(sizes)
    for start in range(n):
        total = sizes[start]
        end = start + 1
        while end < n and sizes[end] <= total:
            total += sizes[end]
            end += 1
        if end - start >= t:
            return start, end
    if n > limit and n >= t:
        best = min(range(n - t + 1), key=lambda i: sum(sizes[i:i + t]))
        return best, best + t
    return None


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
