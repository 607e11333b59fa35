"""Child process for tests/test_corruption.py: reads damaged copies of a store.

usage: corrupt_reader.py PRISTINE_DIR WORK_DIR EXPECTED_JSON FILE_NAME MASK OFFSET...

For each OFFSET: copy PRISTINE_DIR, XOR the byte at OFFSET of FILE_NAME with
MASK, open the copy and read everything (full query, a lazy scan, get,
get_sync and get_latest of every key).  Every read must return exactly the
expected data or raise CorruptionError.  Prints "start OFFSET" before and one
JSON line {"offset":..., "outcome": "ok"|"corruption"|"wrong"|"error",
"detail": ...} after each offset, so that the parent can tell a crash
(a "start" without a result) from a verdict.

With FLOWDB_CORRUPT_COMPACT=1 the engine first runs trigger_compaction() on
the damaged copy (a CorruptionError there is a detection), then reads, then
the copy is opened and read once more: compaction must never have written
wrong data into a new, validly checksummed table.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback

from flowdb import CorruptionError, Engine, ScanRange


COMPACT = os.environ.get("FLOWDB_CORRUPT_COMPACT") == "1"


def as_tuple(r):
    return (r.key, r.ts, r.value, r.expire_at)


def load_expected(path):
    with open(path) as f:
        raw = json.load(f)
    return [(bytes.fromhex(k), ts, bytes.fromhex(v), exp) for k, ts, v, exp in raw]


def check_copy(data_dir, expected, compact=False):
    """Returns (outcome, detail)."""
    corruption = []
    wrong = []

    def attempt(what, fn):
        try:
            fn()
        except CorruptionError as exc:
            corruption.append(f"{what}: {exc}")
        except AssertionError as exc:
            wrong.append(f"{what}: {exc}")

    try:
        engine = Engine.open(data_dir, auto_background=False)
    except CorruptionError as exc:
        return "corruption", f"open: {exc}"
    try:
        if compact:
            def compaction():
                engine.trigger_compaction()

            attempt("compaction", compaction)

        def full_query():
            got = [as_tuple(r) for r in engine.query_by_prefix(b"")]
            assert got == expected, _diff(got, expected)

        def lazy_scan():
            got = []
            for r in engine.scan(ScanRange.all()):
                got.append(as_tuple(r))
                assert got[-1] == expected[len(got) - 1], f"scan record {len(got) - 1}: {got[-1]!r}"
            assert got == expected, _diff(got, expected)

        attempt("query", full_query)
        attempt("scan", lazy_scan)
        latest = {}
        for r in expected:
            latest[r[0]] = r
        for r in expected:
            def get(r=r):
                g = engine.get(r[0], r[1])
                assert g is not None and as_tuple(g) == r, f"get{r[:2]!r} -> {g and as_tuple(g)!r}"

            def get_sync(r=r):
                g = engine.get_sync(r[0], r[1])
                assert g is None or as_tuple(g) == r, f"get_sync{r[:2]!r} -> {as_tuple(g)!r}"

            attempt(f"get {r[:2]!r}", get)
            attempt(f"get_sync {r[:2]!r}", get_sync)
        for key, r in latest.items():
            def get_latest(key=key, r=r):
                g = engine.get_latest(key)
                assert g is not None and as_tuple(g) == r, f"get_latest {key!r} -> {g and as_tuple(g)!r}"

            attempt(f"get_latest {key!r}", get_latest)

        def absent():
            assert engine.get(b"absent-key", 1) is None

        attempt("absent", absent)
    finally:
        try:
            engine.shutdown()
        except CorruptionError:
            pass
    if wrong:
        return "wrong", "; ".join(wrong[:5])
    if corruption:
        return "corruption", corruption[0]
    return "ok", ""


def _diff(got, expected):
    if len(got) != len(expected):
        return f"{len(got)} records instead of {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            return f"record {i}: got {g!r:.200} expected {e!r:.200}"
    return "differs"


def main():
    pristine, work, expected_path, name, mask = sys.argv[1:6]
    offsets = [int(x) for x in sys.argv[6:]]
    expected = load_expected(expected_path)
    mask = int(mask)
    for off in offsets:
        print(f"start {off}", flush=True)
        copy = os.path.join(work, f"o{off}")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(pristine, copy)
        path = os.path.join(copy, name)
        with open(path, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ mask]))
        try:
            outcome, detail = check_copy(copy, expected, COMPACT)
            if COMPACT and outcome != "wrong":
                again, why = check_copy(copy, expected)
                if again != "ok":
                    outcome, detail = again, f"after compaction: {why}"
        except Exception as exc:  # any other exception type is a failure
            outcome, detail = "error", "".join(traceback.format_exception(exc))[-2000:]
        print(json.dumps({"offset": off, "outcome": outcome, "detail": detail}), flush=True)
        shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    main()
