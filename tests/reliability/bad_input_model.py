"""Child script for test_bad_input.py (run as a script, so that a crash of
the engine is a failed test, not a dead pytest).

usage: bad_input_model.py DATA_DIR EXAMPLES SEED

Hypothesis generates sequences of engine calls whose arguments mix valid
values with wrong types, empty and oversized keys, \\x00/\\xff keys,
int64-edge and out-of-range timestamps, overflowing and invalid TTLs,
surrogate strings and odd buffers.  Each call either succeeds, and is then
applied to a dict model, or raises one of the documented exceptions
(TypeError, ValueError -- DataError and UnicodeEncodeError are ValueErrors --
or NotFoundError from patch_record), and changes nothing.  After every
sequence the store equals the model, live and after a reopen.  Prints one
JSON line: {"calls": n, "refused": n, "accepted": n, "by_exception": {...}}.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import flowdb
from flowdb import NEVER, Engine, Record, SyncMode

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_KEY = 65535
SEC = 1_000_000
BASE = time.time_ns() // 1000
HOUR = 3600 * SEC
DOCUMENTED = (TypeError, ValueError, flowdb.NotFoundError)
stats = Counter()

good_keys = st.sampled_from([b"\x00", b"\xff", b"\x00\xff", b"\xff\x00", b"a", b"a\x00", "é",
                             "k", b"k" * MAX_KEY])
bad_keys = st.sampled_from([b"", "", b"k" * (MAX_KEY + 1), "é" * 40000, 0, 1.5, None, True,
                            ["a"], ("a",), {"a": 1}, "\udcff", object()])
keys = st.one_of(good_keys, good_keys, bad_keys, st.binary(min_size=1, max_size=5),
                 st.builds(bytearray, st.binary(min_size=1, max_size=3)))
good_ts = st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX,
                           BASE - 3 * HOUR, BASE + 3 * HOUR])
bad_ts = st.sampled_from([INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**70), 1.0, float("nan"),
                          float("inf"), "1", None, True, b"1", 10**30])
tss = st.one_of(good_ts, good_ts, bad_ts)
values = st.one_of(st.binary(max_size=8), st.sampled_from([b"", "text", None, 5, bytearray(b"ba"),
                                                           memoryview(b"mv"), ["v"]]))
# expiries: never, long past, or hours ahead (visibility cannot change while a run lasts)
expires = st.one_of(st.sampled_from([NEVER, 0, -1, INT64_MIN, BASE - HOUR, BASE + 6 * HOUR]),
                    st.sampled_from([INT64_MAX + 1, 1.5, None, "x", INT64_MIN - 1]))
ttls = st.sampled_from([None, 1, 3600, 10**6, INT64_MAX // SEC, INT64_MAX // SEC + 1, 0, -1,
                        2**63, 1.5, "10", True, float("inf")])
records = st.builds(lambda k, t, v, x, use_x: (k, t, v, x) if use_x else (k, t, v),
                    keys, tss, values, expires, st.booleans())
batches = st.lists(records, max_size=5)

ops = st.one_of(
    st.tuples(st.just("write"), batches),
    st.tuples(st.just("write_sync"), batches),
    st.tuples(st.just("write_ttl"), batches, ttls),
    st.tuples(st.just("delete"), st.lists(st.tuples(keys, tss), max_size=4)),
    st.tuples(st.just("delete_range"), keys, keys),
    st.tuples(st.just("patch"), keys, tss, st.one_of(st.none(), values), ttls),
    st.tuples(st.just("get"), keys, tss),
    st.tuples(st.just("get_latest"), keys),
    st.tuples(st.just("prefix"), st.one_of(keys, st.just(b""))),
    st.tuples(st.just("time_range"), tss, tss),
    st.tuples(st.just("key_range"), keys, keys),
    st.tuples(st.just("raw_batch"), st.sampled_from([None, 5, "abc", [None], [(b"k", 1, b"v")],
                                                     [{"key": b"k"}], [b"k"]])),
)


def kb(k):
    return k.encode() if isinstance(k, str) else bytes(k)


def make(rec):
    return Record(*rec)


def visible(model):
    now = time.time_ns() // 1000
    return sorted((k, ts, v, x) for (k, ts), (v, x) in model.items() if x > now)


def dump(e):
    return [(r.key, r.ts, r.value, r.expire_at) for r in e.query_by_prefix(b"")]


def apply(e, model, op):
    """Runs op; on success updates model.  Returns the exception or None."""
    kind, *args = op
    try:
        if kind in ("write", "write_sync", "write_ttl"):
            recs = [make(r) for r in args[0]]
            if kind == "write":
                e.write_batch(recs)
            elif kind == "write_sync":
                e.write_batch_sync(recs)
            else:
                e.write_batch_ttl(recs, args[1])
            for r in recs:
                x = r.expire_at
                if kind == "write_ttl" and args[1] is not None:
                    x = r.ts + args[1] * SEC
                model[(r.key, r.ts)] = (r.value, x)
        elif kind == "delete":
            e.delete_batch(args[0])
            for k, ts in args[0]:
                model.pop((kb(k), ts), None)
        elif kind == "delete_range":
            e.delete_range(args[0], args[1])
            lo, hi = kb(args[0]), kb(args[1])
            for key in [key for key in model if lo <= key[0] < hi]:
                del model[key]
        elif kind == "patch":
            key, ts, value, ttl = args
            r = e.patch_record(key, ts, value, ttl)
            old = model.get((kb(key), ts))
            assert old is not None and old[1] > time.time_ns() // 1000, f"patched a missing {key!r}"
            model[(r.key, r.ts)] = (r.value, r.expire_at)
            if value is not None:
                assert r.value == bytes(value)
            if ttl is not None:
                assert r.expire_at == ts + ttl * SEC
        elif kind == "get":
            r = e.get(*args)
            m = model.get((kb(args[0]), args[1]))
            want = m if m and m[1] > time.time_ns() // 1000 else None
            assert (r and (r.value, r.expire_at)) == (want and tuple(want)), f"get{args!r}"
        elif kind == "get_latest":
            e.get_latest(args[0])
        elif kind == "prefix":
            e.query_by_prefix(args[0])
        elif kind == "time_range":
            e.query_time_range(*args)
        elif kind == "key_range":
            e.query_by_key_range(*args)
        elif kind == "raw_batch":
            e.write_batch(args[0])
            for r in args[0] or ():
                model[(r.key, r.ts)] = (r.value, r.expire_at)
    except DOCUMENTED as exc:
        stats["refused"] += 1
        stats["exc:" + type(exc).__name__] += 1
        return exc
    stats["accepted"] += 1
    return None


def main():
    data_dir, examples, the_seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    @seed(the_seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(ops, min_size=1, max_size=25))
    def run(sequence):
        shutil.rmtree(data_dir, ignore_errors=True)
        model = {}
        e = Engine.open(data_dir, auto_background=False, memtable_size_mb=0.5,
                        wal_sync_mode=SyncMode.ALWAYS)
        try:
            for i, op in enumerate(sequence):
                stats["calls"] += 1
                apply(e, model, op)
                if i % 7 == 6:
                    e.flush()
            assert dump(e) == visible(model), "store differs from the model"
        finally:
            e.shutdown()
        with Engine.open(data_dir, auto_background=False) as e:
            assert dump(e) == visible(model), "store differs from the model after reopen"
            e.write_batch([Record(b"still-writable", 1, b"x")])

    run()
    print(json.dumps({"calls": stats["calls"], "refused": stats["refused"],
                      "accepted": stats["accepted"],
                      "by_exception": {k[4:]: v for k, v in stats.items() if k.startswith("exc:")}}))


if __name__ == "__main__":
    main()
