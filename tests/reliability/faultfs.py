"""An injectable file layer for crash and I/O-error tests (LevelDB's
fault_injection_test and Pebble's vfs/errorfs are the models).

Every file flowdb writes goes through the Python `os` module (the WAL, the
manifest, _fileio and the Cython TableBuilder all call os.open / os.write /
os.fsync / os.fdatasync / os.rename / os.replace / os.unlink / os.truncate;
the single-file store also os.pwrite / os.copy_file_range / os.ftruncate).
FaultFS.install() replaces those functions *in the current process* (use it
in a child process only) with wrappers that

- track, per inode, how many bytes were durable at the last fsync/fdatasync,
  and per directory which entries (name -> inode) were durable at the last
  fsync of the directory;
- keep, per inode, an undo log of the durable bytes overwritten in place
  (os.pwrite, os.copy_file_range, or os.write at a position before the end)
  since its last fsync/fdatasync: the old bytes, read just before each write;
- on power_cut(): put the directory back to its durable entries (files
  created or renamed in since the last directory fsync disappear, unlinked
  or replaced durable files come back from hard links kept aside), cut every
  file back to its durable size (keep="none", LevelDB style) or to a random
  length between its durable and current size (keep="random": a torn,
  prefix-persisted write), or keep the size but zero a random subset of the
  unsynced 4 KiB pages (keep="holes": a file system or disk that persists
  pages out of order, such as ext4 data=writeback or a drive's write
  cache); overwritten durable bytes all go back to their old content
  (keep="none"), or each 512-byte sector (keep="random") or 4 KiB page
  (keep="holes") ends as it was after a random one of the writes to it
  since the sync, or before them; then
  os._exit(POWER_CUT_EXIT) while holding the layer's lock, so no other
  thread of the process does any more I/O;
- fail chosen calls: Rule(op, match, after, errno, times) makes the
  (after+1)-th call of `op` on a path containing `match` raise
  OSError(errno), `times` times (None: forever);
- or cut the power right after one: Rule(..., cut="none" / "random" /
  "holes") lets the call happen, then power_cut(cut).  A timed cut rarely
  lands between an in-place write and its fdatasync (microseconds apart);
  this one does.

Every wrapped call runs under one lock: the power cut is an instant.  Only
paths under `root` are tracked; everything else passes straight through.
A shrinking truncate is modelled as durable at once (the bytes cut are
gone); flowdb only cuts bytes it no longer needs (a single-file store's
free tail), so the other outcome, the bytes coming back, is harmless.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import os
import random
import stat
import threading
from dataclasses import dataclass

POWER_CUT_EXIT = 77
RULE_CUT_LINE = b"faultfs: power cut by a rule\n"   # on stderr, before a rule's cut
PAGE = 4096
SECTOR = 512
_OPS = ("open", "write", "pwrite", "copy_file_range", "fsync", "fdatasync", "close", "dup",
        "rename", "replace", "unlink", "truncate", "ftruncate")
_real = {name: getattr(os, name) for name in _OPS}


@dataclass
class Rule:
    op: str                      # "write", "fsync" (covers fdatasync too), "open", "rename"...
    match: str = ""              # substring of the path
    after: int = 0               # let this many matching calls through first
    errno: int = _errno.EIO
    times: int | None = None     # None: fail forever
    cut: str | None = None       # a power_cut keep= mode: cut after the call instead of failing it
    seen: int = 0
    fired: int = 0

    def hit(self, op, path) -> bool:
        ops = (self.op, "fdatasync") if self.op == "fsync" else (self.op,)
        if op not in ops or self.match not in (path or ""):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class FaultFS:
    def __init__(self, root, seed=0):
        self.root = os.path.abspath(root)
        self.stash = self.root.rstrip("/") + ".faultfs-stash"
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.fds = {}            # fd -> (path, ino, is_dir)
        self.synced = {}         # ino -> durable size
        self.durable = {}        # dir path -> {name: ino}
        self.undo = {}           # ino -> [(offset, old bytes)]: durable bytes overwritten since its sync
        self.rules: list[Rule] = []
        self.cut_when_done = None
        self.installed = False

    # ------------------------------------------------------------- set-up

    def install(self):
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.stash, exist_ok=True)
        with self.lock:
            self.durable[self.root] = self._listing(self.root)
            for name, ino in self.durable[self.root].items():
                self.synced[ino] = os.stat(os.path.join(self.root, name)).st_size
            for name in _OPS:
                setattr(os, name, getattr(self, "_" + name))
            self.installed = True
        return self

    def uninstall(self):
        with self.lock:
            for name, fn in _real.items():
                setattr(os, name, fn)
            self.installed = False

    def _listing(self, d):
        out = {}
        for name in os.listdir(d):
            st = os.lstat(os.path.join(d, name))
            if stat.S_ISREG(st.st_mode):
                out[name] = st.st_ino
        return out

    def _ours(self, path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return p == self.root or os.path.dirname(p) == self.root

    def _check(self, op, path):
        """Raises a failing rule's error; a cutting rule cuts when the call is done."""
        for rule in self.rules:
            if rule.hit(op, path):
                if rule.cut is None:
                    raise OSError(rule.errno, f"faultfs: injected {op} failure", path)
                self.cut_when_done = rule.cut

    @contextlib.contextmanager
    def _locked(self):
        """The layer's lock, around one tracked call."""
        with self.lock:
            yield
            if self.cut_when_done is not None:
                _real["write"](2, RULE_CUT_LINE)
                self.power_cut(keep=self.cut_when_done)

    def _keep(self, path):
        """Hard-link a durable entry aside before it is unlinked or replaced."""
        p = os.path.abspath(os.fsdecode(path))
        d, name = os.path.dirname(p), os.path.basename(p)
        ino = self.durable.get(d, {}).get(name)
        if ino is None:
            return
        try:
            if os.lstat(p).st_ino != ino:
                return
            keep = os.path.join(self.stash, str(ino))
            if not os.path.exists(keep):
                os.link(p, keep)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------- wrappers

    def _open(self, path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None or not self._ours(path):
            return _real["open"](path, flags, mode, dir_fd=dir_fd)
        with self._locked():
            p = os.path.abspath(os.fsdecode(path))
            self._check("open", p)
            existed = os.path.exists(p)
            fd = _real["open"](path, flags, mode)
            st = os.fstat(fd)
            is_dir = stat.S_ISDIR(st.st_mode)
            self.fds[fd] = (p, st.st_ino, is_dir)
            if not is_dir:
                if not existed or flags & os.O_TRUNC:
                    self.synced[st.st_ino] = 0
                    self.undo.pop(st.st_ino, None)
                else:
                    self.synced.setdefault(st.st_ino, st.st_size)
            return fd

    def _overwrite(self, fd, ino, offset, size):
        """Save the durable bytes of [offset, offset + size) before they change."""
        end = min(offset + size, self.synced.get(ino, 0))
        if offset >= end:
            return
        # /proc/self/fd reopens the file for reading whatever fd's mode is.
        rfd = _real["open"](f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            old = os.pread(rfd, end - offset, offset)
        finally:
            _real["close"](rfd)
        self.undo.setdefault(ino, []).append((offset, old))

    def _write(self, fd, data):
        entry = self.fds.get(fd)
        if entry is None:
            return _real["write"](fd, data)
        with self._locked():
            self._check("write", entry[0])
            if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:   # else it appends
                self._overwrite(fd, entry[1], os.lseek(fd, 0, os.SEEK_CUR), len(data))
            return _real["write"](fd, data)

    def _pwrite(self, fd, data, offset):
        entry = self.fds.get(fd)
        if entry is None:
            return _real["pwrite"](fd, data, offset)
        with self._locked():
            self._check("write", entry[0])
            self._overwrite(fd, entry[1], offset, len(data))
            return _real["pwrite"](fd, data, offset)

    def _copy_file_range(self, src, dst, count, offset_src=None, offset_dst=None):
        entry = self.fds.get(dst)
        if entry is None:
            return _real["copy_file_range"](src, dst, count, offset_src, offset_dst)
        with self._locked():
            self._check("write", entry[0])
            at = os.lseek(dst, 0, os.SEEK_CUR) if offset_dst is None else offset_dst
            self._overwrite(dst, entry[1], at, count)
            return _real["copy_file_range"](src, dst, count, offset_src, offset_dst)

    def _sync(self, op, fd):
        entry = self.fds.get(fd)
        if entry is None:
            return _real[op](fd)
        with self._locked():
            path, ino, is_dir = entry
            self._check(op, path)
            _real[op](fd)
            if is_dir:
                self.durable[path] = self._listing(path)
            else:
                self.synced[ino] = os.fstat(fd).st_size
                self.undo.pop(ino, None)

    def _fsync(self, fd):
        return self._sync("fsync", fd)

    def _fdatasync(self, fd):
        return self._sync("fdatasync", fd)

    def _close(self, fd):
        with self.lock:
            self.fds.pop(fd, None)
            return _real["close"](fd)

    def _dup(self, fd):
        with self.lock:
            new = _real["dup"](fd)
            if fd in self.fds:
                self.fds[new] = self.fds[fd]
            return new

    def _move(self, op, src, dst, **kw):
        if kw or not (self._ours(src) or self._ours(dst)):
            return _real[op](src, dst, **kw)
        with self._locked():
            self._check(op, os.fsdecode(dst))
            if os.path.exists(dst):
                self._keep(dst)
            self._keep(src)
            return _real[op](src, dst)

    def _rename(self, src, dst, **kw):
        return self._move("rename", src, dst, **kw)

    def _replace(self, src, dst, **kw):
        return self._move("replace", src, dst, **kw)

    def _unlink(self, path, *, dir_fd=None):
        if dir_fd is not None or not self._ours(path):
            return _real["unlink"](path, dir_fd=dir_fd)
        with self._locked():
            self._check("unlink", os.fsdecode(path))
            self._keep(path)
            return _real["unlink"](path)

    def _truncate(self, path, length):
        if isinstance(path, int):
            return self._ftruncate(path, length)
        if not self._ours(path):
            return _real["truncate"](path, length)
        with self._locked():
            self._check("truncate", os.fsdecode(path))
            ino = os.stat(path).st_ino
            _real["truncate"](path, length)
            self._cut(ino, length)

    def _ftruncate(self, fd, length):
        entry = self.fds.get(fd)
        if entry is None:
            return _real["ftruncate"](fd, length)
        with self._locked():
            self._check("truncate", entry[0])
            _real["ftruncate"](fd, length)
            self._cut(entry[1], length)

    def _cut(self, ino, length):
        self.synced[ino] = min(self.synced.get(ino, length), length)
        if ino in self.undo:
            self.undo[ino] = [(off, old[:length - off]) for off, old in self.undo[ino] if off < length]

    # ------------------------------------------------------------- the power cut

    def power_cut(self, keep="none", exit=True):
        """Drop everything not durable, then (by default) _exit the process."""
        self.lock.acquire()              # never released when exit=True
        try:
            self._drop(keep)
        except BaseException:
            if exit:
                import traceback
                traceback.print_exc()
                _real["close"](2)
                os._exit(3)
            raise
        if exit:
            os._exit(POWER_CUT_EXIT)
        self.lock.release()

    def _drop(self, keep):
        d = self.root
        durable = self.durable.get(d, {})
        current = self._listing(d)
        sources = {ino: os.path.join(d, name) for name, ino in current.items()}
        for name in os.listdir(self.stash):
            sources.setdefault(int(name), os.path.join(self.stash, name))
        restore = []
        for name, ino in durable.items():
            if current.get(name) != ino:
                if ino not in sources:
                    raise AssertionError(f"faultfs lost durable file {name} (inode {ino})")
                tmp = os.path.join(self.stash, f"restore-{name}")
                os.link(sources[ino], tmp)
                restore.append((tmp, os.path.join(d, name)))
        for name, ino in current.items():
            if durable.get(name) != ino:
                _real["unlink"](os.path.join(d, name))
        for tmp, final in restore:
            _real["rename"](tmp, final)
        for name, ino in self._listing(d).items():
            path = os.path.join(d, name)
            if self.undo.get(ino):
                self._undo_overwrites(path, self.undo[ino], keep)
            size = os.stat(path).st_size
            durable_size = self.synced.get(ino, size)
            if size > durable_size and keep == "holes":
                self._punch_holes(path, durable_size, size)
            elif size > durable_size:
                cut = durable_size if keep == "none" else self.rng.randint(durable_size, size)
                _real["truncate"](path, cut)
        self.dropped = True

    def _undo_overwrites(self, path, log, keep):
        """Put overwritten durable bytes back.  keep="none": all of them.
        Otherwise each sector ("random") or page ("holes") ends as it was
        after one of the writes that touched it since the sync (or before
        them all), as if written back at a random moment."""
        unit = {"random": SECTOR, "holes": PAGE}.get(keep)
        lost = self.rng.random()
        if unit is None:
            undo = [[(offset, offset + len(old))] for offset, old in log]
        else:
            undo = [[] for _ in log]             # per write: the (lo, hi) spans to put back
            touching = {}                        # unit start -> indexes of the writes touching it
            for i, (offset, old) in enumerate(log):
                for start in range(offset - offset % unit, offset + len(old), unit):
                    touching.setdefault(start, []).append(i)
            for start, writes in touching.items():
                kept = len(writes) if self.rng.random() >= lost else self.rng.randrange(len(writes))
                for i in writes[kept:]:
                    offset, old = log[i]
                    undo[i].append((max(start, offset), min(start + unit, offset + len(old))))
        fd = _real["open"](path, os.O_WRONLY)
        try:
            for i in reversed(range(len(log))):
                offset, old = log[i]
                for lo, hi in undo[i]:
                    _real["pwrite"](fd, old[lo - offset:hi - offset], lo)
        finally:
            _real["close"](fd)

    def _punch_holes(self, path, start, end):
        """Zero a random subset (maybe none, maybe all) of the pages of [start, end)."""
        lost = self.rng.random()
        fd = _real["open"](path, os.O_WRONLY)
        try:
            page = start - start % PAGE
            while page < end:
                lo, hi = max(page, start), min(page + PAGE, end)
                if self.rng.random() < lost:
                    _real["pwrite"](fd, bytes(hi - lo), lo)
                page += PAGE
        finally:
            _real["close"](fd)
