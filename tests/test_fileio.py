"""flowdb._fileio: names, atomic writes, and the data-directory lock.

The lock tests use real processes: a holder started with subprocess, a
refused opener in another process, a holder killed with SIGKILL.
"""
import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import flowdb._fileio as fileio
from flowdb._errors import FlowError, LockError
from flowdb._fileio import (DirLock, fsync_dir, parse_name, table_name, wal_name,
                            write_file_atomic)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(fileio.__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _dir_state(path):
    """Names, sizes, mtimes and inodes of everything in `path` (and of `path` itself)."""
    st = os.stat(path)
    state = {".": (st.st_mtime_ns, st.st_ino)}
    for name in sorted(os.listdir(path)):
        s = os.stat(os.path.join(path, name))
        state[name] = (s.st_size, s.st_mtime_ns, s.st_ino)
    return state


# -- names ------------------------------------------------------------------

def test_names_are_zero_padded_to_six_digits():
    assert wal_name(1) == "000001.wal"
    assert table_name(42) == "000042.sst"
    assert wal_name(1234567) == "1234567.wal"


def test_parse_name_round_trips():
    for n in (0, 1, 999999, 1000000, 123456789):
        assert parse_name(wal_name(n)) == ("wal", n)
        assert parse_name(table_name(n)) == ("sst", n)


@pytest.mark.parametrize("name", ["LOCK", "MANIFEST", "MANIFEST.tmp", "000001.wal.tmp",
                                  "000001.sst.tmp", "1.wal", "00001.sst", "0000001.wal",
                                  "000001.log", "00000a.wal", "\u0661\u0662\u0663\u0664\u0665\u0666.wal",
                                  "000001.WAL", " 000001.wal", "000001.wal\n"])
def test_parse_name_rejects_other_names(name):
    assert parse_name(name) == (None, None)


def test_name_helpers_reject_bad_numbers():
    with pytest.raises(ValueError):
        wal_name(-1)
    with pytest.raises(TypeError):
        table_name(True)
    with pytest.raises(TypeError):
        wal_name(1.0)


# -- atomic writes --------------------------------------------------------------

def test_write_file_atomic_creates_and_replaces(tmp_path):
    p = tmp_path / "f"
    write_file_atomic(p, b"one")
    assert p.read_bytes() == b"one"
    write_file_atomic(str(p), b"two, longer")
    assert p.read_bytes() == b"two, longer"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_write_file_atomic_failed_fsync_keeps_old_content(tmp_path, monkeypatch):
    p = tmp_path / "f"
    write_file_atomic(p, b"old")

    def broken_fsync(fd):
        raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_file_atomic(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_write_file_atomic_fsyncs_file_then_directory(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(a, b):
        events.append(("rename", os.path.basename(a), os.path.basename(b)))
        real_replace(a, b)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_file_atomic(tmp_path / "f", b"x")
    assert events == [("fsync", "f.tmp"), ("rename", "f.tmp", "f"), ("fsync", tmp_path.name)]


def test_write_all_loops_on_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def short_write(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data)[:3])
    monkeypatch.setattr(os, "write", short_write)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert fileio.write_all(fd, b"0123456789") == 10
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"0123456789"
    assert len(calls) == 4


def test_fsync_dir_of_missing_directory_raises(tmp_path):
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "absent")


# -- the lock: one process ----------------------------------------------------------

def test_flock_conflicts_between_two_opens_in_one_process(tmp_path):
    # The kernel fact DirLock relies on (Linux): flock belongs to the open
    # file description, so a second open() of LOCK in the same process conflicts.
    p = tmp_path / "LOCK"
    a = os.open(p, os.O_RDWR | os.O_CREAT)
    b = os.open(p, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_second_dirlock_in_same_process_raises_lock_error(tmp_path):
    lock = DirLock(tmp_path)
    try:
        with pytest.raises(LockError) as info:
            DirLock(tmp_path)
        assert isinstance(info.value, FlowError)
        assert str(tmp_path) in str(info.value)
        assert "locked" in str(info.value)
    finally:
        lock.release()


def test_second_dirlock_through_symlink_or_relative_path_raises(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "alias").symlink_to(data)
    lock = DirLock(data)
    try:
        with pytest.raises(LockError):
            DirLock(tmp_path / "alias")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(LockError):
            DirLock("data")
    finally:
        lock.release()


def test_in_process_flock_alone_refuses_a_second_lock(tmp_path, monkeypatch):
    # With the registry emptied, the kernel's flock still says no.
    lock = DirLock(tmp_path)
    try:
        monkeypatch.setattr(fileio, "_locked_dirs", {})
        with pytest.raises(LockError) as info:
            DirLock(tmp_path)
        assert "another process" in str(info.value)
    finally:
        monkeypatch.undo()
        lock.release()


def test_release_is_idempotent_and_the_dir_can_be_locked_again(tmp_path):
    lock = DirLock(tmp_path)
    assert lock.locked
    lock.release()
    lock.release()
    assert not lock.locked
    with DirLock(tmp_path) as again:
        assert again.locked
    assert not again.locked


def test_dirlock_creates_lock_file_if_missing(tmp_path):
    with DirLock(tmp_path):
        assert os.listdir(tmp_path) == ["LOCK"]
        assert (tmp_path / "LOCK").read_bytes() == b""


def test_dirlock_does_not_truncate_an_existing_lock_file(tmp_path):
    (tmp_path / "LOCK").write_bytes(b"left by someone")
    with DirLock(tmp_path):
        assert (tmp_path / "LOCK").read_bytes() == b"left by someone"


def test_refused_opener_in_same_process_changes_no_file(tmp_path):
    (tmp_path / "MANIFEST").write_bytes(b"x")
    lock = DirLock(tmp_path)
    try:
        before = _dir_state(tmp_path)
        time.sleep(0.01)   # so that any write would show in the mtimes
        with pytest.raises(LockError):
            DirLock(tmp_path)
        assert _dir_state(tmp_path) == before
    finally:
        lock.release()


def test_dirlock_of_missing_directory_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        DirLock(tmp_path / "absent")


# -- the lock: other processes -------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from flowdb._fileio import DirLock
    lock = DirLock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")

_TRY = textwrap.dedent("""
    import sys, time
    from flowdb._errors import LockError
    from flowdb._fileio import DirLock
    t = time.monotonic()
    try:
        DirLock(sys.argv[1])
        print("acquired", time.monotonic() - t)
    except LockError as e:
        print("LockError", time.monotonic() - t, e)
""")


def _start_holder(path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE,
                            env=_env(), cwd=REPO, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "locked", line
    return proc


def _try_in_other_process(path):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _TRY, str(path)], capture_output=True, text=True,
                         env=_env(), cwd=REPO, timeout=30)
    assert out.returncode == 0, out.stderr
    word, took, *_ = out.stdout.split()
    return word, float(took), time.monotonic() - started


def test_other_process_gets_lock_error_within_a_second(tmp_path):
    with DirLock(tmp_path):
        word, took, wall = _try_in_other_process(tmp_path)
    assert word == "LockError"
    assert took < 1.0                 # the refusal itself never waits
    assert wall < 10.0                # interpreter start-up included


def test_this_process_gets_lock_error_while_another_holds_it(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        t = time.monotonic()
        with pytest.raises(LockError) as info:
            DirLock(tmp_path)
        assert time.monotonic() - t < 1.0
        assert "another process" in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_freed_when_holder_is_killed_with_sigkill(tmp_path):
    holder = _start_holder(tmp_path)
    with pytest.raises(LockError):
        DirLock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL
    with DirLock(tmp_path) as lock:
        assert lock.locked
    word, _took, _wall = _try_in_other_process(tmp_path)
    assert word == "acquired"


def test_refused_opener_in_other_process_changes_no_file(tmp_path):
    (tmp_path / "MANIFEST").write_bytes(b"manifest")
    (tmp_path / "000001.wal").write_bytes(b"wal")
    holder = _start_holder(tmp_path)
    try:
        before = _dir_state(tmp_path)
        time.sleep(0.01)
        word, _took, _wall = _try_in_other_process(tmp_path)
        assert word == "LockError"
        with pytest.raises(LockError):
            DirLock(tmp_path)
        assert _dir_state(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


# -- AppendWriter: small appends keep the GIL ---------------------------------

def _open_w(path):
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def test_timed_write_holding_gil_writes_every_buffer_kind(tmp_path):
    from flowdb._core.syscall import timed_write_holding_gil
    fd = _open_w(tmp_path / "f")
    try:
        for data in (b"abc", bytearray(b"def"), memoryview(b"xghix")[1:4], b""):
            assert timed_write_holding_gil(fd, data) >= 0
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abcdefghi"


def test_timed_write_holding_gil_raises_os_error(tmp_path):
    from flowdb._core.syscall import timed_write_holding_gil
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            timed_write_holding_gil(fd, b"x")
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    with pytest.raises(TypeError):
        timed_write_holding_gil(0, "not bytes")


def test_append_writer_keeps_the_gil_only_for_small_writes(tmp_path):
    w = fileio.AppendWriter()
    big = b"b" * (w.HOLD_GIL_MAX_BYTES + 1)
    fd = _open_w(tmp_path / "f")
    try:
        assert w.write(fd, b"small") == 5
        assert w.write(fd, big) == len(big)
        assert w.write(fd, b"s" * w.HOLD_GIL_MAX_BYTES) == w.HOLD_GIL_MAX_BYTES
    finally:
        os.close(fd)
    assert (w.held, w.slow) == (2, 0)
    assert (tmp_path / "f").read_bytes() == b"small" + big + b"s" * w.HOLD_GIL_MAX_BYTES


def test_append_writer_releases_the_gil_after_a_slow_write(tmp_path, monkeypatch):
    w = fileio.AppendWriter()
    w.SLOW_NS = -1                     # every write held is "slow"
    fd = _open_w(tmp_path / "f")
    try:
        w.write(fd, b"0")
        assert (w.held, w.slow) == (1, 1)
        for _ in range(w.BACKOFF_WRITES):
            w.write(fd, b"1")
        assert w.held == 1             # the backoff writes went through os.write
        w.write(fd, b"2")
        assert (w.held, w.slow) == (2, 2)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"0" + b"1" * w.BACKOFF_WRITES + b"2"


def test_append_writer_goes_through_a_replaced_os_write(tmp_path, monkeypatch):
    # Fault injectors (tests/reliability/faultfs.py) replace os.write: they must see every write.
    real_write, seen = os.write, []

    def spy(fd, data):
        seen.append(bytes(data))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", spy)
    w = fileio.AppendWriter()
    fd = _open_w(tmp_path / "f")
    try:
        w.write(fd, b"abc")
    finally:
        os.close(fd)
    assert seen == [b"abc"] and w.held == 0
    assert (tmp_path / "f").read_bytes() == b"abc"
