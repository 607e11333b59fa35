"""An injectable file layer for crash and I/O-error tests (LevelDB's
fault_injection_test and Pebble's vfs/errorfs are the models).

Every file flowdb writes goes through the Python `os` module (the WAL, the
manifest, _fileio and the Cython TableBuilder all call os.open / os.write /
os.fsync / os.fdatasync / os.rename / os.replace / os.unlink / os.truncate).
FaultFS.install() replaces those functions *in the current process* (use it
in a child process only) with wrappers that

- track, per inode, how many bytes were durable at the last fsync/fdatasync,
  and per directory which entries (name -> inode) were durable at the last
  fsync of the directory;
- on power_cut(): put the directory back to its durable entries (files
  created or renamed in since the last directory fsync disappear, unlinked
  or replaced durable files come back from hard links kept aside), cut every
  file back to its durable size (keep="none", LevelDB style) or to a random
  length between its durable and current size (keep="random": a torn,
  prefix-persisted write), or keep the size but zero a random subset of the
  unsynced 4 KiB pages (keep="holes": a file system or disk that persists
  pages out of order, such as ext4 data=writeback or a drive's write
  cache), then os._exit(POWER_CUT_EXIT) while holding the layer's lock, so
  no other thread of the process does any more I/O;
- fail chosen calls: Rule(op, match, after, errno, times) makes the
  (after+1)-th call of `op` on a path containing `match` raise
  OSError(errno), `times` times (None: forever).

Every wrapped call runs under one lock: the power cut is an instant.  Only
paths under `root` are tracked; everything else passes straight through.
Data is modelled as append-only (flowdb never overwrites a file in place).
"""
from __future__ import annotations

import errno as _errno
import os
import random
import stat
import threading
from dataclasses import dataclass

POWER_CUT_EXIT = 77
PAGE = 4096
_OPS = ("open", "write", "fsync", "fdatasync", "close", "dup", "rename", "replace",
        "unlink", "truncate", "ftruncate")
_real = {name: getattr(os, name) for name in _OPS}


@dataclass
class Rule:
    op: str                      # "write", "fsync" (covers fdatasync too), "open", "rename"...
    match: str = ""              # substring of the path
    after: int = 0               # let this many matching calls through first
    errno: int = _errno.EIO
    times: int | None = None     # None: fail forever
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
        self.rules: list[Rule] = []
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
        for rule in self.rules:
            if rule.hit(op, path):
                raise OSError(rule.errno, f"faultfs: injected {op} failure", path)

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
        with self.lock:
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
                else:
                    self.synced.setdefault(st.st_ino, st.st_size)
            return fd

    def _write(self, fd, data):
        entry = self.fds.get(fd)
        if entry is None:
            return _real["write"](fd, data)
        with self.lock:
            self._check("write", entry[0])
            return _real["write"](fd, data)

    def _sync(self, op, fd):
        entry = self.fds.get(fd)
        if entry is None:
            return _real[op](fd)
        with self.lock:
            path, ino, is_dir = entry
            self._check(op, path)
            _real[op](fd)
            if is_dir:
                self.durable[path] = self._listing(path)
            else:
                self.synced[ino] = os.fstat(fd).st_size

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
        with self.lock:
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
        with self.lock:
            self._check("unlink", os.fsdecode(path))
            self._keep(path)
            return _real["unlink"](path)

    def _truncate(self, path, length):
        if isinstance(path, int):
            return self._ftruncate(path, length)
        if not self._ours(path):
            return _real["truncate"](path, length)
        with self.lock:
            self._check("truncate", os.fsdecode(path))
            ino = os.stat(path).st_ino
            _real["truncate"](path, length)
            self.synced[ino] = min(self.synced.get(ino, length), length)

    def _ftruncate(self, fd, length):
        entry = self.fds.get(fd)
        if entry is None:
            return _real["ftruncate"](fd, length)
        with self.lock:
            self._check("truncate", entry[0])
            _real["ftruncate"](fd, length)
            self.synced[entry[1]] = min(self.synced.get(entry[1], length), length)

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
            size = os.stat(path).st_size
            durable_size = self.synced.get(ino, size)
            if size > durable_size and keep == "holes":
                self._punch_holes(path, durable_size, size)
            elif size > durable_size:
                cut = durable_size if keep == "none" else self.rng.randint(durable_size, size)
                _real["truncate"](path, cut)
        self.dropped = True

    def _punch_holes(self, path, start, end):
        """Zero a random subset (maybe none, maybe all) of the pages of [start, end)."""
        lost = self.rng.random()
        fd = _real["open"](path, os.O_WRONLY)
        try:
            page = start - start % PAGE
            while page < end:
                lo, hi = max(page, start), min(page + PAGE, end)
                if self.rng.random() < lost:
                    os.pwrite(fd, bytes(hi - lo), lo)
                page += PAGE
        finally:
            _real["close"](fd)
