"""The directory lock (issue 5, item 8): a second open of an open data
directory, from this process or another, is refused with LockError within a
second; the refused opener changes no file; the lock is free again once
the holder shuts down or is killed (the kernel drops the flock).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

import flowdb
from flowdb import Engine, Record, SyncMode
from helpers.common import backend, child_env, dump, run_python

LockError = flowdb.LockError
R = Record

HOLDER = (
    "import sys, time\n"
    "from flowdb import Engine, Record\n"
    "from helpers.common import backend\n"
    "e = Engine.open(sys.argv[1], storage_backend=backend(), auto_background=True)\n"
    "e.write_batch([Record(b'child', 1, b'x')])\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "e.shutdown()\n"
    "print('done', flush=True)\n"
)

OPENER = (
    "import sys, time\n"
    "import flowdb\n"
    "from flowdb import Engine\n"
    "from helpers.common import backend\n"
    "t = time.monotonic()\n"
    "try:\n"
    "    Engine.open(sys.argv[1], storage_backend=backend(), auto_background=False)\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__, isinstance(exc, flowdb.FlowError), time.monotonic() - t)\n"
    "else:\n"
    "    print('opened')\n"
)


def lock_file(path):
    """The file a holder flocks: LOCK, or a single-file store's one file."""
    return path / ("flowdb.db" if backend().value == "single_file" else "LOCK")


def fingerprint(path):
    """{name: (size, mtime_ns, sha1)} of every file in the directory."""
    out = {}
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        st = os.stat(p)
        with open(p, "rb") as f:
            out[name] = (st.st_size, st.st_mtime_ns, hashlib.sha1(f.read()).hexdigest())
    return out


def start_holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        pytest.fail(f"holder did not start: {proc.stderr.read()}")
    return proc


def test_second_open_in_same_process_raises_lock_error(engine_factory, tmp_path):
    e = engine_factory()
    e.write_batch([R(b"k", 1, b"v")])
    e.flush()
    e.write_batch([R(b"k", 2, b"w")])
    before = fingerprint(tmp_path / "db")
    t = time.monotonic()
    for spelling in (str(tmp_path / "db"), str(tmp_path / "db") + "/", str(tmp_path / "db/../db")):
        with pytest.raises(LockError):
            Engine.open(spelling, storage_backend=backend(), auto_background=True, wal_sync_mode=SyncMode.interval_ms(5))
    assert time.monotonic() - t < 1.0
    assert fingerprint(tmp_path / "db") == before, "the refused opener changed a file"
    # the first engine is unaffected
    e.write_batch([R(b"k", 3, b"x")])
    assert len(dump(e)) == 3
    e.shutdown()
    e2 = engine_factory()
    assert len(dump(e2)) == 3


def test_same_process_symlinked_spelling_is_refused(engine_factory, tmp_path):
    engine_factory()
    os.symlink(tmp_path / "db", tmp_path / "alias")
    with pytest.raises(LockError):
        Engine.open(str(tmp_path / "alias"), storage_backend=backend(), auto_background=False)


def test_open_while_another_process_holds_lock(tmp_path):
    proc = start_holder(tmp_path / "db")
    try:
        before = fingerprint(tmp_path / "db")
        res = run_python(OPENER, tmp_path / "db")
        assert res.returncode == 0, res.stderr
        name, is_flow, secs = res.stdout.split()
        assert (name, is_flow) == ("LockError", "True"), res.stdout + res.stderr
        assert float(secs) < 1.0, f"refusal took {secs} s"
        t = time.monotonic()
        with pytest.raises(LockError):
            Engine.open(str(tmp_path / "db"), storage_backend=backend(), auto_background=False)
        assert time.monotonic() - t < 1.0
        after = fingerprint(tmp_path / "db")
        # The holder's own background work may change its files; the refused
        # openers must not: LOCK untouched, nothing created or removed.
        if backend().value == "multi_file":     # else LOCK is the store, which the holder writes
            assert after["LOCK"] == before["LOCK"]
        assert set(after) - set(before) <= {n for n in after if n.endswith((".sst", ".wal"))}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Engine.open(str(tmp_path / "db"), storage_backend=backend(), auto_background=False) as e:
        assert e.get(b"child", 1) is not None


def test_refused_opener_changes_no_file(tmp_path):
    """Refused while the holder is idle (no background work): the directory
    is byte-for-byte and mtime-for-mtime what it was."""
    code = HOLDER.replace("storage_backend=backend(), auto_background=True", "storage_backend=backend(), auto_background=False")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "db")], env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        before = fingerprint(tmp_path / "db")
        for _ in range(3):
            res = run_python(OPENER, tmp_path / "db")
            assert res.stdout.split()[0] == "LockError", res.stdout + res.stderr
            with pytest.raises(LockError):
                Engine.open(str(tmp_path / "db"), storage_backend=backend(), auto_background=True, create_if_missing=False)
        assert fingerprint(tmp_path / "db") == before
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_lock_released_when_holder_is_killed(tmp_path, sig):
    proc = start_holder(tmp_path / "db")
    proc.send_signal(sig)
    proc.wait(timeout=30)
    t = time.monotonic()
    with Engine.open(str(tmp_path / "db"), storage_backend=backend(), auto_background=False) as e:
        assert e.get(b"child", 1) is not None
    assert time.monotonic() - t < 5.0


def test_lock_released_after_shutdown_and_after_failed_open(tmp_path):
    """A failed open (corrupt MANIFEST) releases the lock it took."""
    path = tmp_path / "db"
    Engine.open(str(path), storage_backend=backend(), auto_background=False).shutdown()
    Engine.open(str(path), storage_backend=backend(), auto_background=False).shutdown()
    if backend().value == "multi_file":
        with open(path / "MANIFEST", "r+b") as f:
            f.write(b"XXXX")
    else:
        with open(path / "flowdb.db", "r+b") as f:       # both slots
            f.write(b"XXXX")
            f.seek(4096)
            f.write(b"XXXX")
    for _ in range(2):
        with pytest.raises(flowdb.CorruptionError):
            Engine.open(str(path), storage_backend=backend(), auto_background=False)
    res = run_python("import sys, fcntl, os\n"
                     "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                     "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                     "print('free')\n", lock_file(path))
    assert res.stdout.strip() == "free", res.stderr
