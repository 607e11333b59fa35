"""Full disk and I/O errors (issue 5, item 6).

A child (io_child.py) writes under the FaultFS layer with one failure rule
(Pebble errorfs style: the n-th write / fsync / open / rename / unlink of a
file kind fails), or on a real, tiny tmpfs that fills up.  Checked:
- the child never crashes; every error is a FlowError or an OSError whose
  message names the file or the failed part (WAL, MANIFEST);
- after a failed WAL or MANIFEST write or fsync every later write fails
  (FlowError, "reopen") even once the disk is healthy again: no retry of an fsync whose
  failure may have dropped dirty pages (fsyncgate); reads still work;
- after reopen every acknowledged batch is present and whole, and nothing
  else (no partial batch, no batch that was refused).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from flowdb import Engine, Record, StorageBackendKind
from flowdb._storage import STORE_NAME
from helpers.common import backend, child_env

IO_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "io_child.py")


def batch(n):
    return [Record(b"n%d:%d" % (n, i), n, b"v%d-%d" % (n, i) * 20) for i in range(1 + n % 8)]


def run_child(data_dir, rule, background, batches=200):
    p = subprocess.run([sys.executable, IO_CHILD, str(data_dir), json.dumps(rule),
                        "1" if background else "0", str(batches)],
                       env=child_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"io_child crashed ({p.returncode}):\n{p.stderr[-3000:]}"
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def check_reopened(data_dir, acked):
    """Every acknowledged batch whole; nothing that was not acknowledged
    except possibly batches whose write_batch raised after the WAL append."""
    with Engine.open(str(data_dir), auto_background=False, storage_backend=backend()) as e:
        got = {}
        for r in e.query_by_prefix(b""):
            n = r.ts
            assert r in batch(n), f"record {r!r} was never written"
            got.setdefault(n, []).append(r)
    for n in acked:
        assert sorted(got.get(n, []), key=lambda r: r.key) == sorted(batch(n), key=lambda r: r.key), (
            f"acknowledged batch {n} is missing or partial after reopen")
    for n, rs in got.items():
        assert len(rs) == len(batch(n)), f"batch {n} is partial: {len(rs)} of {len(batch(n))}"
    return got


def check_events(events, wal_failure):
    """wal_failure: False, True (the WAL fails first), or "maybe-background"."""
    acked = [e["n"] for e in events if e["ev"] == "ack"]
    errors = [e for e in events if e["ev"] == "error"]
    for e in errors:
        assert e["type"] in ("FlowError", "OSError") or e["flow"], f"unexpected error type {e}"
        assert e["msg"], f"error without a message: {e}"
        assert any(w in e["msg"] for w in (".wal", ".sst", "MANIFEST", STORE_NAME, "WAL",
                                           "background", "No space")), (
            f"error does not say what failed: {e}")
    assert not [e for e in errors if e["where"] == "read"], "a read raised after the failure"
    assert [e["ok"] for e in events if e["ev"] == "read"] == [True], (
        "acknowledged records could not be read back after the failure")
    writes = [e for e in errors if e["where"] == "write"]
    if wal_failure:
        assert writes, "the failure never reached a write"
        assert writes[0]["flow"], writes[0]
        # A full disk may first fail a background flush (reported once, to
        # one write) before the WAL itself fails.
        assert "reopen" in writes[0]["msg"] or (
            wal_failure == "maybe-background" and "background" in writes[0]["msg"]), writes[0]
    if writes and "reopen" in writes[0]["msg"]:
        after = [e for e in events if e["ev"] == "after"]
        assert after and all(e["type"] == "FlowError" for e in after), (
            f"a write succeeded after a failed WAL write/fsync: {after}")
    return acked


# (rule, the WAL itself fails)
RULES = [
    (dict(op="write", match=".wal", after=30), True),
    (dict(op="fsync", match=".wal", after=30, times=1), True),
    (dict(op="fsync", match=".wal", after=3, times=1, errno=errno.ENOSPC), True),
    (dict(op="open", match=".wal", after=3, times=1), True),
    (dict(op="write", match=".sst", after=5), False),
    (dict(op="fsync", match=".sst", after=2, times=1), False),
    (dict(op="rename", match=".sst", after=2, times=1), False),
    (dict(op="write", match="MANIFEST", after=3), "maybe-background"),
    (dict(op="fsync", match="MANIFEST", after=3, times=1), "maybe-background"),
    (dict(op="unlink", match=".wal", after=1, times=1), False),
    (dict(op="write", match="", after=80, errno=errno.ENOSPC), None),
]
if backend() == StorageBackendKind.SINGLE_FILE:
    # The manifest and the tables live in flowdb.db; tables are built in
    # NNNNNN.sst.tmp files and copied in, never renamed.  Opening a store
    # writes it 4 times (a snapshot and a slot, twice): fail after the open.
    RULES = [(dict(r, match=STORE_NAME, after=r["after"] + 8) if r["match"] == "MANIFEST"
              else r, w) for r, w in RULES if r["op"] != "rename"]
    RULES.append((dict(op="write", match=STORE_NAME, after=14, errno=errno.ENOSPC),
                  "maybe-background"))


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
@pytest.mark.parametrize("rule,wal_failure", RULES,
                         ids=[f"{r['op']}-{r['match'] or 'any'}-{r.get('errno', 5)}" for r, _ in RULES])
def test_injected_io_error(tmp_path, rule, wal_failure, background):
    data = tmp_path / "db"
    events = run_child(data, rule, background)
    if wal_failure is None or wal_failure == "maybe-background":
        wal_failure = "maybe-background" if background else True
    acked = check_events(events, wal_failure)
    assert acked, "nothing was acknowledged before the failure"
    check_reopened(data, acked)


def test_failure_during_open_is_clear_and_harmless(tmp_path):
    """An I/O error while recovering: a clear error, and the next open works."""
    data = tmp_path / "db"
    events = run_child(data, {}, False, batches=50)
    acked = check_events(events, False)
    shutil.copytree(data, tmp_path / "crash-image")   # data is closed; reopen from a copy too
    manifest = STORE_NAME if backend() == StorageBackendKind.SINGLE_FILE else "MANIFEST"
    for rule in (dict(op="write", match=".sst"), dict(op="fsync", match=manifest),
                 dict(op="open", match=".wal"), dict(op="truncate", match=".wal")):
        events = run_child(data, rule, False, batches=0)
        opened = [e for e in events if e["ev"] == "error" and e["where"] == "open"]
        for e in opened:
            assert e["type"] in ("FlowError", "OSError") and "faultfs" in e["msg"], e
    check_reopened(data, acked)


# ------------------------------------------------------------ a real full disk

def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root and mount(8) needed); else the injectable layer
    makes every write past the 300th fail with ENOSPC."""
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
    if os.geteuid() == 0 and shutil.which("mount") and _mount_tmpfs(mnt, "1m"):
        yield mnt, True
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    else:
        yield mnt, False


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
def test_full_disk(tiny_disk, background):
    mnt, real = tiny_disk
    data = mnt / "db"
    rule = {} if real else dict(op="write", match="", after=300, errno=errno.ENOSPC)
    events = run_child(data, rule, background, batches=5000)
    acked = check_events(events, wal_failure="maybe-background" if background else True)
    errors = [e for e in events if e["ev"] == "error"]
    assert any("No space left" in e["msg"] or "[Errno 28]" in e["msg"] for e in errors), errors
    if real:
        # Still full: the open may refuse (recovery needs room), clearly, and harms nothing.
        try:
            check_reopened(data, acked)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        subprocess.run(["mount", "-o", "remount,size=32m", str(mnt)], check=True)
    check_reopened(data, acked)


# ------------------------------------------------------------ background failures

def test_background_failure_reaches_a_writer_not_a_reader(tmp_path):
    """A failed background flush is reported to the next write (or flush,
    compaction, GC), once.  Reads in between return the right data and
    neither raise it nor swallow it (before the fix, get_sync consumed the
    report and returned None for a present record, and nobody ever saw
    the failure).  FaultFS is installed in this process for this test only."""
    import time

    from flowdb import FlowError, Query
    from reliability.faultfs import FaultFS, Rule

    data = tmp_path / "db"
    fs = FaultFS(data).install()
    try:
        rule = Rule(op="write", match=".sst", times=1)
        fs.rules.append(rule)
        e = Engine.open(str(data), auto_background=True, flush_interval_ms=10,
                        compaction_interval_ms=60_000, memtable_size_mb=64,
                        storage_backend=backend())
        try:
            e.write_batch(batch(1))
            deadline = time.monotonic() + 10
            while not rule.fired and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rule.fired, "the background flush never ran"
            time.sleep(0.3)                          # let the thread record the failure
            for r in batch(1):
                assert e.get_sync(r.key, r.ts) == r
                assert e.get(r.key, r.ts) == r
                assert e.get_latest(r.key) == r
            assert sorted(e.query(Query.prefix(b"n1:")), key=lambda r: r.key) == sorted(
                batch(1), key=lambda r: r.key)
            with pytest.raises(FlowError, match="background maintenance failed"):
                e.write_batch(batch(2))
            e.write_batch(batch(3))                  # reported once; the disk is fine again
        finally:
            e.shutdown()
    finally:
        fs.uninstall()
    check_reopened(data, [1, 3])
