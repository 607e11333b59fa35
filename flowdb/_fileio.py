"""File plumbing shared by the WAL, the manifest and the tables.

The data directory (docs/FORMAT.md, "The data directory"):

    LOCK            empty; an exclusive flock on it marks the directory open
    MANIFEST        the edit log naming the live SSTables
    MANIFEST.tmp    a manifest being rewritten; deleted at open
    NNNNNN.wal      a WAL segment    (NNNNNN: decimal file number, zero-padded
    NNNNNN.sst      an SSTable        to at least 6 digits; one shared counter)
    *.tmp           a file being written; never live, deleted at open

Durability rules every writer here follows:
- a new or renamed file is durable only once its directory is fsynced, so
  every create/rename/unlink that matters is followed by fsync_dir();
- write_file_atomic() never leaves a half-written file under the final name:
  write NAME.tmp, fsync it, rename it over NAME, fsync the directory.

Thread safety: every function is safe to call from any thread.  A DirLock
object itself is not meant to be shared, except that release() may be called
more than once, from any thread.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import threading

from flowdb._core.syscall import timed_write_holding_gil
from flowdb._errors import LockError

LOCK_NAME = "LOCK"
MANIFEST_NAME = "MANIFEST"
TEMP_SUFFIX = ".tmp"
WAL_SUFFIX = ".wal"
TABLE_SUFFIX = ".sst"
NAME_DIGITS = 6               # "%06d": at least six digits, more when needed

# Canonical names only ("000007.wal", "1234567.sst"): one number, one name.
_NAME_RE = re.compile(r"\A([0-9]+)\.(wal|sst)\Z")


# --------------------------------------------------------------------------
# fsync helpers
# --------------------------------------------------------------------------

def fsync_dir(path) -> None:
    """fsync the directory `path`, making creates, renames and unlinks in it durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data) -> int:
    """os.write `data` to `fd`, looping on short writes; returns len(data).

    An OSError (ENOSPC, EIO, EFBIG...) propagates as is; some bytes may then
    already be in the file.
    """
    view = memoryview(data).cast("B")
    total = len(view)
    done = os.write(fd, view)
    while done < total:
        n = os.write(fd, view[done:])
        if n <= 0:                      # POSIX never returns 0 for a non-empty write to a file
            raise OSError(errno.EIO, "write returned 0 bytes")
        done += n
    return total


_os_write = os.write


class AppendWriter:
    """write_all for a file that takes many small appends (the WAL).

    A write of at most HOLD_GIL_MAX_BYTES keeps the GIL: it goes to the page
    cache in microseconds, and giving the GIL away would cost a switch
    interval (5 ms) to win it back whenever another thread is busy in
    Python, once per batch (flowdb._core.syscall).  A write that is slow
    all the same (the kernel throttling dirty pages, a journal commit: over
    SLOW_NS) held every other thread up, so the next BACKOFF_WRITES writes
    release the GIL.  Bigger writes always release it.

    While os.write is replaced (a test's fault injector), every write goes
    through it instead.  Not thread-safe: the WAL calls it under its lock.
    """
    HOLD_GIL_MAX_BYTES = 64 * 1024
    SLOW_NS = 1_000_000
    BACKOFF_WRITES = 256

    def __init__(self):
        self._backoff = 0
        self.held = 0          # writes made with the GIL held
        self.slow = 0          # of them, slower than SLOW_NS

    def write(self, fd: int, data) -> int:
        if len(data) > self.HOLD_GIL_MAX_BYTES or os.write is not _os_write:
            return write_all(fd, data)
        if self._backoff:
            self._backoff -= 1
            return write_all(fd, data)
        took = timed_write_holding_gil(fd, data)
        self.held += 1
        if took > self.SLOW_NS:
            self.slow += 1
            self._backoff = self.BACKOFF_WRITES
        return len(data)


def write_file_atomic(path, data) -> None:
    """Replace `path` by a file holding exactly `data`, atomically and durably.

    Writes path + ".tmp", fsyncs it, renames it over `path` and fsyncs the
    directory.  After a crash `path` holds either its old or its new
    content, never a mix.  On an error the temporary file is removed (best
    effort) and the error propagates; `path` is then unchanged unless the
    error came from the final directory fsync.
    """
    path = os.fspath(path)
    tmp = path + TEMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


# --------------------------------------------------------------------------
# file names
# --------------------------------------------------------------------------

def _check_number(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"a file number is an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"a file number is >= 0, not {n}")
    return n


def wal_name(n: int) -> str:
    """The name of WAL segment `n`: "%06d.wal"."""
    return "%06d%s" % (_check_number(n), WAL_SUFFIX)


def table_name(n: int) -> str:
    """The name of SSTable `n`: "%06d.sst"."""
    return "%06d%s" % (_check_number(n), TABLE_SUFFIX)


def parse_name(filename: str):
    """("wal" | "sst", number) for a canonical segment or table name, else (None, None).

    Only the names wal_name()/table_name() produce are recognised, so
    "7.wal", "0000007.wal" and "000007.wal.tmp" are (None, None).
    """
    m = _NAME_RE.match(filename)
    if m is None:
        return None, None
    digits, kind = m.groups()
    number = int(digits)
    if ("%06d" % number) != digits:
        return None, None
    return kind, number


# --------------------------------------------------------------------------
# the directory lock
# --------------------------------------------------------------------------

# Directories locked by this process, keyed by (st_dev, st_ino) so that two
# spellings of one directory (symlinks, bind mounts, relative paths) collide.
# flock already refuses a second open() of LOCK on Linux (locks belong to the
# open file description); the registry makes that hold on every platform and
# answers without touching the file.
_registry_lock = threading.Lock()
_locked_dirs: dict = {}


class DirLock:
    """An exclusive lock on a data directory: flock(LOCK_EX | LOCK_NB) on DIR/LOCK.

    DirLock(path, name="LOCK") takes the lock or raises LockError at once
    (it never waits).  A single-file store locks its one file instead of a
    LOCK beside it (`name`).  The file is opened without truncation and created only if
    missing, so a refused opener changes no existing file.  The kernel drops
    the flock when the holder's process dies (even by SIGKILL), so a crash
    never leaves a stale lock.  release() is idempotent.

    A child made by fork() without exec shares the open file description
    and so holds the lock too until it exits; exec'd children do not
    inherit it (the descriptor is close-on-exec).
    """

    def __init__(self, path, name=LOCK_NAME):
        self.path = os.path.abspath(os.fspath(path))
        self._fd = None
        st = os.stat(self.path)
        self._key = (st.st_dev, st.st_ino)
        with _registry_lock:
            holder = _locked_dirs.get(self._key)
            if holder is not None:
                raise LockError(f"data directory {self.path} is locked by another engine "
                                f"in this process (opened as {holder})")
            lock_path = os.path.join(self.path, name)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockError(f"data directory {self.path} is locked by another process "
                                    f"(flock on {lock_path} refused)") from None
                raise
            self._fd = fd
            _locked_dirs[self._key] = self.path

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock and close LOCK (the file stays).  Safe to call again."""
        with _registry_lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            _locked_dirs.pop(self._key, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        # A forgotten lock is released with its object, as the kernel would at exit.
        if getattr(self, "_fd", None) is not None:
            try:
                self.release()
            except Exception:
                pass

    def __repr__(self):
        return f"DirLock({self.path!r}, locked={self.locked})"
