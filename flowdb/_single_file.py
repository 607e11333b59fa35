"""StorageBackendKind.SINGLE_FILE: the tables and the manifest in one file.

    DIR/flowdb.db := slot slot extent*          (docs/FORMAT.md, "Single-file store")
    slot     := 4096 bytes: magic:8 = "FLOWSF1\\x00"  version:u32le = 1
                reserved:u32le = 0  generation:u64le  snapshot_offset:u64le
                snapshot_length:u64le  crc:u32le = crc32c(the 40 bytes before)
                zeros
    extent   := a table, byte for byte as a multi-file store's NNNNNN.sst,
                or a snapshot; each starts at a multiple of 4096
    snapshot := crc:u32le length:u32le body    (framed as a MANIFEST edit)
    body     := {"state": <a MANIFEST snapshot edit>, "extents": [[number, offset], ...]}

The valid slot (its crc holds) with the greater generation names the
current snapshot; every byte no current extent covers is free.  One
manifest edit writes the new state whole into free space and fdatasyncs,
then writes the other slot with generation + 1 and fdatasyncs: a crash
leaves either slot's snapshot intact, because an extent is reused only
after a slot naming its successor is durable.  A table is built in a
temporary file beside the store, copied into free space and fdatasynced
before the edit that makes it live.  A table a compaction replaced keeps
its extent while a reader (a snapshot, a scan) still holds it.

At rest, after shutdown, the directory holds this one file.  While the
store is open, and after a crash until the next open, the WAL segments
sit beside it, as SQLite's -wal file does.  The file is flocked while
open (no LOCK file).  Free space inside the file is reused first fit and
the file is cut back when its tail frees; holes are not punched.
"""
from __future__ import annotations

import bisect
import errno
import os
import struct
import threading
import weakref

import ujson
from flowdb._core.checksum import crc32c
from flowdb._core.table import TableReader

from flowdb._errors import CorruptionError
from flowdb._fileio import MANIFEST_NAME, DirLock, fsync_dir
from flowdb._manifest import (EDIT_HEADER_SIZE, Manifest, _apply, _edit_problem,
                              _highest_file_number, _is_uint, _State, encode_edit)
from flowdb._storage import STORE_NAME, _refuse, remove_leftovers, temp_table_path

# Constants of the format: never renumber.
SLOT_MAGIC = b"FLOWSF1\x00"
SLOT_VERSION = 1
SLOT_SIZE = 4096
DATA_START = 2 * SLOT_SIZE
ALIGN = 4096

_SLOT = struct.Struct("<8sIIQQQ")          # magic, version, reserved, generation, offset, length
_CRC = struct.Struct("<I")


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def encode_slot(generation: int, offset: int, length: int) -> bytes:
    head = _SLOT.pack(SLOT_MAGIC, SLOT_VERSION, 0, generation, offset, length)
    return (head + _CRC.pack(crc32c(head))).ljust(SLOT_SIZE, b"\x00")


def decode_slot(data: bytes):
    """(generation, offset, length) of a valid slot, else None."""
    if len(data) < _SLOT.size + 4:
        return None
    magic, version, reserved, generation, offset, length = _SLOT.unpack_from(data, 0)
    if _CRC.unpack_from(data, _SLOT.size)[0] != crc32c(data[:_SLOT.size]):
        return None
    if magic != SLOT_MAGIC or version != SLOT_VERSION or reserved != 0:
        return None
    return generation, offset, length


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        done += n


def _copy(src: int, src_offset: int, dst: int, dst_offset: int, size: int) -> None:
    """Copy `size` bytes between descriptors (in the kernel where it can)."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, src_offset + done, dst_offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            chunk = os.pread(src, min(size - done, 1 << 20), src_offset + done)
            _pwrite_all(dst, chunk, dst_offset + done)
            n = len(chunk)
        if n <= 0:
            raise OSError(errno.EIO, f"the copy source ends before {size} bytes")
        done += n


class SingleFileStorage:
    """The storage of a SINGLE_FILE store (flowdb._storage has the interface)."""

    single_file = True

    def __init__(self, dir):
        self.dir = dir
        self.path = os.path.join(dir, STORE_NAME)
        if os.path.exists(os.path.join(dir, MANIFEST_NAME)):
            _refuse(dir, MANIFEST_NAME, "MULTI_FILE")
        self._lock = DirLock(dir, STORE_NAME)    # creates the file if missing
        self._fd = -1
        self._mutex = threading.Lock()           # the allocator and the extents
        self._closed = False
        self._free = []                          # sorted, coalesced [offset, length] pairs
        self._end = DATA_START                   # every extent ends at or before it
        self._extents = {}                       # number -> (offset, size): live, staged or pinned
        self._snapshot = None                    # (offset, length) of the current snapshot
        self._slot = 1                           # the current slot (the next edit writes the other)
        self._generation = 0
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            self._lock.release()
            raise

    # -- the manifest --------------------------------------------------------------

    def open_manifest(self) -> Manifest:
        state = self._load()
        top = _highest_file_number(self.dir)
        if state.tables:
            top = max(top, max(state.tables))
        state.next_file = max(state.next_file, top + 1)
        man = _SnapshotManifest(self, state)
        man._rewrite_locked()                    # also makes a fresh store's first slot
        return man

    def _load(self) -> _State:
        size = os.fstat(self._fd).st_size
        heads = os.pread(self._fd, DATA_START, 0)
        slots = [decode_slot(heads[i * SLOT_SIZE:(i + 1) * SLOT_SIZE]) for i in (0, 1)]
        if slots == [None, None]:
            # A crash while the file was being created leaves zeros in both
            # slots (they are written last) and at most the first snapshot.
            if heads.count(0) == len(heads) and size <= DATA_START + ALIGN:
                return _State()
            raise CorruptionError("neither slot of the single-file store is valid", self.path, 0)
        self._slot = 0 if slots[1] is None or (slots[0] is not None and slots[0][0] > slots[1][0]) else 1
        self._generation, off, length = slots[self._slot]
        where = (self.path, off)
        if off < DATA_START or off % ALIGN or off + length > size or length < EDIT_HEADER_SIZE:
            raise CorruptionError(f"the current slot names a snapshot outside the file "
                                  f"({length} bytes at {off})", self.path, self._slot * SLOT_SIZE)
        data = os.pread(self._fd, length, off)
        problem = _edit_problem(data, memoryview(data), 0)
        if problem is None and EDIT_HEADER_SIZE + _CRC.unpack_from(data, 4)[0] != length:
            problem = "length disagrees with the slot"
        if problem is not None:
            raise CorruptionError(f"snapshot {problem}", *where)
        try:
            body = ujson.loads(data[EDIT_HEADER_SIZE:])
        except (ValueError, OverflowError, TypeError) as exc:
            raise CorruptionError(f"snapshot is not valid JSON ({exc})", *where) from None
        if not isinstance(body, dict) or set(body) != {"state", "extents"}:
            raise CorruptionError("snapshot is not {state, extents}", *where)
        state = _State()
        _apply(state, body["state"], where)
        extents = body["extents"]
        if (not isinstance(extents, list)
                or not all(isinstance(e, list) and len(e) == 2 and all(_is_uint(x) for x in e)
                           for e in extents)
                or sorted(e[0] for e in extents) != sorted(state.tables)):
            raise CorruptionError("snapshot extents do not match its tables", *where)
        used = [(off, length)]
        for number, offset in extents:
            tsize = state.tables[number][1]
            if offset < DATA_START or offset % ALIGN or offset + tsize > size:
                raise CorruptionError(f"table {number} ({tsize} bytes at {offset}) lies outside "
                                      f"the file", *where)
            self._extents[number] = (offset, tsize)
            used.append((offset, tsize))
        used.sort()
        pos = DATA_START
        for start, n in used:
            if start < pos:
                raise CorruptionError(f"extents overlap at offset {start}", *where)
            if start > pos:
                self._free.append([pos, start - pos])
            pos = _round_up(start + n)
        self._end = pos
        self._snapshot = (off, length)
        if size > pos:
            os.ftruncate(self._fd, pos)          # free tail: nothing current lies there
        return state

    def write_snapshot(self, state: _State, next_file: int) -> None:
        """Make `state` the current one (two fdatasyncs); OSError leaves it unknown."""
        body = state.snapshot_body()
        body["next_file"] = next_file
        with self._mutex:
            extents = [[n, self._extents[n][0]] for n in sorted(state.tables)]
        frame = encode_edit({"state": body, "extents": extents})
        off = self._alloc(len(frame))
        _pwrite_all(self._fd, frame, off)
        os.fdatasync(self._fd)
        slot, generation = 1 - self._slot, self._generation + 1
        _pwrite_all(self._fd, encode_slot(generation, off, len(frame)), slot * SLOT_SIZE)
        os.fdatasync(self._fd)
        if generation == 1:
            fsync_dir(self.dir)                  # the file's creation
        with self._mutex:
            old, self._snapshot = self._snapshot, (off, len(frame))
            self._slot, self._generation = slot, generation
            if old is not None:
                self._release(*old)

    @property
    def snapshot_size(self) -> int:
        return self._snapshot[1] if self._snapshot else 0

    # -- tables --------------------------------------------------------------------

    def remove_leftovers(self, live) -> list:
        return remove_leftovers(self.dir)        # no table is a file of its own here

    def table_path(self, number: int) -> str:
        return temp_table_path(self.dir, number)

    def install(self, built) -> None:
        """Copy finished tables into free space and fdatasync; the temporary files go."""
        placed = []
        try:
            for number, tmp in built:
                size = os.path.getsize(tmp)
                off = self._alloc(size)
                placed.append((number, off, size))
                src = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _copy(src, 0, self._fd, off, size)
                finally:
                    os.close(src)
            os.fdatasync(self._fd)
        except BaseException:
            with self._mutex:
                for _number, off, size in placed:
                    self._release(off, size)
            for _number, tmp in built:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise
        with self._mutex:
            for number, off, size in placed:
                self._extents[number] = (off, size)
        for _number, tmp in built:
            os.unlink(tmp)

    def open_table(self, number: int, cache) -> TableReader:
        with self._mutex:
            ext = self._extents.get(number)
        if ext is None:
            raise CorruptionError(f"table {number} has no extent in the single-file store", self.path)
        return TableReader(self.path, number, cache, base=ext[0], size=ext[1])

    def discard(self, reader) -> None:
        reader.close()
        self._release_table(reader.file_number)

    def retire(self, reader) -> None:
        # Snapshots and scans may still read it: the extent frees with the reader.
        weakref.finalize(reader, self._release_table, reader.file_number)

    def _release_table(self, number: int) -> None:
        with self._mutex:
            ext = self._extents.pop(number, None)
            if ext is not None and not self._closed:
                self._release(*ext)

    def move_tables_forward(self, state: _State, next_file: int) -> int:
        """Move the tables nearest the end of the file into free space before
        them, then cut the freed tail; returns the tables moved.  The caller
        holds the manifest's edit lock (_SnapshotManifest.vacuum).  Safe at
        any instant: each table is copied and fdatasynced, a snapshot names
        the copies, and only then is the old space free."""
        with self._mutex:
            # Replaced tables whose readers were not collected yet: at
            # shutdown nothing reads them any more.
            for number in [n for n in self._extents if n not in state.tables]:
                self._release(*self._extents.pop(number))
        # First the snapshot, to the first free bytes, lest it split the
        # free space the tables would move into.
        self.write_snapshot(state, next_file)
        moved = []
        for number in sorted(state.tables, key=lambda n: -self._extents[n][0]):
            off, size = self._extents[number]
            with self._mutex:
                hole = self._take(size, before=off)
            if hole is None:
                continue
            _copy(self._fd, off, self._fd, hole, size)
            moved.append((number, off, size, hole))
        if not moved:
            return 0
        os.fdatasync(self._fd)
        with self._mutex:
            for number, _off, size, hole in moved:
                self._extents[number] = (hole, size)
        self.write_snapshot(state, next_file)
        with self._mutex:
            for _number, off, size, _hole in moved:
                self._release(off, size)
            last = max((o for o, _s in self._extents.values()), default=0)
        if self._snapshot[0] > last:             # it was placed past the tables: move it too
            self.write_snapshot(state, next_file)
        return len(moved)

    # -- free space ----------------------------------------------------------------

    def _alloc(self, size: int) -> int:
        with self._mutex:
            off = self._take(size)
            if off is None:
                off, self._end = self._end, self._end + _round_up(max(size, 1))
            return off

    def _take(self, size: int, before=None):
        """First fit of `size` bytes in the free list (ending at or before
        `before`, if given), or None.  Caller holds _mutex."""
        size = _round_up(max(size, 1))
        for i, (off, length) in enumerate(self._free):
            if before is not None and off + size > before:
                return None
            if length >= size:
                if length == size:
                    del self._free[i]
                else:
                    self._free[i] = [off + size, length - size]
                return off
        return None

    def _release(self, off: int, size: int) -> None:
        """Caller holds _mutex."""
        size = _round_up(max(size, 1))
        i = bisect.bisect(self._free, [off, size])
        self._free.insert(i, [off, size])
        if i + 1 < len(self._free) and off + size == self._free[i + 1][0]:
            self._free[i][1] += self._free.pop(i + 1)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == off:
            self._free[i - 1][1] += self._free.pop(i)[1]
            i -= 1
        last = self._free[-1]
        if last[0] + last[1] == self._end:
            self._free.pop()
            self._end = last[0]
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                pass                             # the next open cuts it

    def free_bytes(self) -> int:
        with self._mutex:
            return sum(length for _off, length in self._free)

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self._lock.release()

    def release_lock(self) -> None:
        self._lock.release()


class _SnapshotManifest(Manifest):
    """The manifest of a single-file store: the same state and checks, each
    edit made durable as a whole snapshot in the store's file."""

    def __init__(self, storage: SingleFileStorage, state: _State):
        super().__init__(storage.dir, state, -1, 0)
        self.path = storage.path
        self._storage = storage

    def _persist_edit(self, body: dict, new: _State) -> None:
        self._storage.write_snapshot(new, body["next_file"])

    def _rewrite_locked(self):
        try:
            self._storage.write_snapshot(self._state, self._next_file())
        except OSError as exc:
            self._failure = exc
            raise

    def _next_file(self) -> int:
        with self._counter_lock:
            return self._state.next_file

    def vacuum(self) -> int:
        """At shutdown, when nothing reads or installs any more: move the
        tables forward (SingleFileStorage.move_tables_forward).  A
        compaction's output lands after its inputs, and without this the
        file at rest would keep their space."""
        with self._edit_lock:
            return self._storage.move_tables_forward(self._state, self._next_file())

    @property
    def size(self) -> int:
        return self._storage.snapshot_size
