"""Malformed files at open (issue 5, item 11): truncated, zero-length,
wrong magic, future format version, garbage -- for the MANIFEST, WAL
segments and SSTables.  Every open runs in a child process with a time
limit: the answer is a clear CorruptionError (naming the file) or, for the
cases the format defines as a torn write, a successful open that loses
nothing acknowledged; never a crash, a hang or another exception.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from flowdb import Engine, Record, StorageBackendKind, SyncMode
from helpers.common import child_env, crc32c, sst_files, wal_files

OPEN = dict(auto_background=False, wal_sync_mode=SyncMode.ALWAYS,
            storage_backend=StorageBackendKind.MULTI_FILE)

OPENER = r'''
import json, sys, traceback
import flowdb
from flowdb import Engine
try:
    with Engine.open(sys.argv[1], auto_background=False) as e:
        n = len(e.query_by_prefix(b""))
    print(json.dumps({"outcome": "opened", "records": n}))
except flowdb.CorruptionError as exc:
    print(json.dumps({"outcome": "corruption", "msg": str(exc)}))
except Exception as exc:
    print(json.dumps({"outcome": "other", "msg": "".join(traceback.format_exception(exc))[-1500:]}))
'''

N_FLUSHED, N_WAL = 60, 25


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with tables and WAL records, copied while open (a crash image)."""
    base = tmp_path_factory.mktemp("malformed")
    live = base / "live"
    e = Engine.open(str(live), memtable_size_mb=64, **OPEN)
    try:
        for j in range(3):
            e.write_batch([Record(b"f%d:%02d" % (j, i), i, b"x" * i) for i in range(20)])
            e.flush()
        for i in range(N_WAL):
            e.write_batch([Record(b"w:%02d" % i, i, b"y" * i)])
        shutil.copytree(live, base / "pristine")
    finally:
        e.shutdown()
    return base / "pristine"


def open_in_child(path):
    try:
        p = subprocess.run([sys.executable, "-c", OPENER, str(path)], env=child_env(),
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("open hung for 60 s")
    assert p.returncode == 0, f"the opener crashed ({p.returncode}):\n{p.stderr[-2000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def newest_wal(d):
    return wal_files(d)[-1]


def header(magic, version):
    return struct.pack("<8sII", magic, version, 0)


def sst_future_version(data):
    """The footer with format_version 2 and a correct footer crc."""
    foot = bytearray(data[-80:])
    struct.pack_into("<I", foot, 64, 2)
    struct.pack_into("<I", foot, 68, crc32c(bytes(foot[:68])))
    return data[:-80] + bytes(foot)


# name -> (file chooser, transform bytes -> bytes, expected outcome, words the message must hold)
CASES = {
    "manifest-zero-length": ("MANIFEST", lambda d: b"", "corruption", ["MANIFEST"]),
    "manifest-truncated-header": ("MANIFEST", lambda d: d[:7], "corruption", ["MANIFEST"]),
    "manifest-wrong-magic": ("MANIFEST", lambda d: b"SQLITE3\x00" + d[8:], "corruption",
                             ["MANIFEST", "magic"]),
    "manifest-future-version": ("MANIFEST", lambda d: header(b"FLOWMAN\x00", 2) + d[16:],
                                "corruption", ["MANIFEST", "version 2"]),
    "manifest-garbage": ("MANIFEST", lambda d: os.urandom(len(d)), "corruption", ["MANIFEST"]),
    "manifest-header-only": ("MANIFEST", lambda d: d[:16], "corruption", []),
    "wal-zero-length": ("wal", lambda d: b"", "opened", []),
    # FORMAT.md: a newest segment shorter than its header is a torn creation
    # (the header is fsynced before any record goes in), deleted at open.
    "wal-truncated-header": ("wal", lambda d: d[:9], "opened", []),
    "wal-header-only": ("wal", lambda d: d[:16], "opened", []),
    "wal-wrong-magic": ("wal", lambda d: b"NOTAWAL\x00" + d[8:], "corruption", [".wal", "magic"]),
    "wal-future-version": ("wal", lambda d: header(b"FLOWWAL\x00", 3) + d[16:], "corruption",
                           [".wal", "version 3"]),
    "wal-garbage": ("wal", lambda d: os.urandom(len(d)), "corruption", [".wal"]),
    "sst-zero-length": ("sst", lambda d: b"", "corruption", [".sst"]),
    "sst-truncated": ("sst", lambda d: d[:len(d) // 3], "corruption", [".sst"]),
    "sst-footer-only": ("sst", lambda d: d[-80:], "corruption", [".sst"]),
    "sst-wrong-magic": ("sst", lambda d: d[:-8] + b"FLOWSSX\x00", "corruption", [".sst", "magic"]),
    "sst-future-version": ("sst", sst_future_version, "corruption", [".sst", "version 2"]),
    "sst-garbage": ("sst", lambda d: os.urandom(len(d)), "corruption", [".sst"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_at_open(pristine, tmp_path, case):
    kind, transform, expected, words = CASES[case]
    work = tmp_path / "work"
    shutil.copytree(pristine, work)
    if kind == "MANIFEST":
        target = work / "MANIFEST"
    elif kind == "wal":
        target = newest_wal(work)
    else:
        target = sst_files(work)[0]
    target.write_bytes(transform(target.read_bytes()))
    got = open_in_child(work)
    if case == "manifest-header-only":
        # A MANIFEST with no edit while tables exist: refused or opened, never "other".
        assert got["outcome"] in ("corruption", "opened"), got
        return
    if expected == "opened" and got["outcome"] == "opened":
        # A torn segment creation: only that segment's batches may be missing.
        assert got["records"] >= 3 * 20, got
        return
    assert got["outcome"] == expected, f"{case}: {got}"
    for w in words:
        assert w in got["msg"], f"{case}: message {got['msg']!r} lacks {w!r}"


def test_data_dir_is_a_file(tmp_path):
    p = tmp_path / "file"
    p.write_bytes(b"not a directory")
    got_err = None
    try:
        Engine.open(str(p), **OPEN)
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        got_err = exc
    assert isinstance(got_err, (OSError, ValueError)) or got_err.__class__.__name__.endswith("Error")
    assert got_err is not None and str(p) in str(got_err) or "directory" in str(got_err)
    assert p.read_bytes() == b"not a directory"
