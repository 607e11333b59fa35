"""The write-ahead log: segment files NNNNNN.wal (docs/FORMAT.md, "WAL").

    segment := header record*
    header  := magic:8 = "FLOWWAL\\x00"  version:u32le = 2  reserved:u32le = 0
    record  := crc:u32le length:u32le seq_start:u64le synced:u64le batch
               # length = size of batch
               # synced = how many bytes of this segment were durable (fsynced)
               #          when the record was written; <= the record's offset
               # crc    = crc32c(length | seq_start | synced | batch)
    batch   := count:u32le entry{count}                          (see "Batch payload")

Version 1 segments (records without `synced`) are still read, under the
rules below minus the one that needs `synced`.

One record holds one batch, so a batch is applied whole or not at all.  A
segment is closed once it exceeds the segment size (a record is never
split) and is fsynced before the next one is created, so only the newest
segment can have a torn tail.

Recovery (read_wal) reads the segments in file-number order.  A record that
is cut short, is malformed, or fails its checksum is
- a torn tail when it is in the newest segment and no later valid record
  (one starting at any later byte offset) says that the bad record's bytes
  were durable when it was written (its `synced` is past the bad record's
  offset): the bad bytes were not known to be on disk, so they are a write
  the crash cut short, or pages the disk persisted out of order.  The
  segment is truncated at the bad record's offset;
- corruption otherwise: CorruptionError naming the segment and the offset.
A segment whose header is wrong is corruption, except a newest segment that
is shorter than its header or holds only zero bytes: a torn creation,
deleted.

"Valid record" (the torn-tail test and the reader agree on it): the record
fits in the file, 4 <= length, 1 <= seq_start, seq_start + count - 1 < 2**56
(seqs are 56-bit), count * MIN_ENTRY_SIZE <= length - 4, header size <=
synced <= the record's offset, and the checksum matches.  Every record
WalWriter.append writes satisfies the non-checksum conditions (it refuses
anything else), so they only discard byte strings that no flowdb ever
wrote; they make the forward scan cheap.

Thread safety: WalWriter.append and close serialise on an internal lock;
sync() may run in another thread at the same time as append (it fsyncs a
duplicate of the current segment's descriptor, so a concurrent rotation
cannot close it underneath).  sync() makes durable every record whose
append() returned before sync() was called, and once it returns, the
records appended next say so in `synced`.  Readers (read_wal) must not
run on a directory a writer is appending to.
"""
from __future__ import annotations

import os
import re
import struct
import threading

from flowdb._core.checksum import crc32c
from flowdb._core.syscall import close_holding_gil, dup_holding_gil
from flowdb._errors import CorruptionError, FlowError
from flowdb._fileio import AppendWriter, fsync_dir, parse_name, wal_name, write_all

# Constants of the format: never renumber.
WAL_MAGIC = b"FLOWWAL\x00"
WAL_VERSION = 2                        # what WalWriter writes; read_wal reads 1 and 2
WAL_HEADER_SIZE = 8 + 4 + 4            # magic, version, reserved
RECORD_HEADER_SIZE = 4 + 4 + 8 + 8     # crc, length, seq_start, synced
BATCH_COUNT_SIZE = 4                   # batch := count:u32le entry{count}
MIN_ENTRY_SIZE = 1 + 1 + 1 + 8         # kind, key_len varint, 1-byte key, ts (a DELETE)
MAX_SEQ = (1 << 56) - 1                # seqs are 56-bit (trailer = seq << 8 | kind)

_HEADER = struct.Struct("<8sII")       # magic, version, reserved
_RECORD = struct.Struct("<IIQQ")       # crc, length, seq_start, synced
_CRCD_HEADER = struct.Struct("<IQQ")   # the crc'd part of the record header
_U32 = struct.Struct("<I")


class _Layout:
    """How one WAL version lays out a record header."""

    def __init__(self, header: struct.Struct, has_synced: bool):
        self.header = header                       # crc, length, seq_start[, synced]
        self.size = header.size
        self.has_synced = has_synced
        self.min_record = header.size + BATCH_COUNT_SIZE


_LAYOUTS = {1: _Layout(struct.Struct("<IIQ"), False), WAL_VERSION: _Layout(_RECORD, True)}
_NONZERO = re.compile(rb"[^\x00]")

_UNUSABLE = "WAL is unusable after an earlier I/O error; reopen the engine"


# The real calls: a test's fault injector replaces them, and must see every call.
_os_fdatasync, _os_dup, _os_close = getattr(os, "fdatasync", None), os.dup, os.close


def _datasync(fd):
    # fdatasync also flushes the file size, which is all an append changes.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:                                # pragma: no cover - not Linux
        os.fsync(fd)


def _header_problem(length: int, seq_start: int, count: int | None):
    """Why (length, seq_start, count) cannot be a record flowdb wrote, or None."""
    if length < BATCH_COUNT_SIZE:
        return f"length {length} is smaller than a batch count"
    if not 1 <= seq_start <= MAX_SEQ:
        return f"seq_start {seq_start} is out of range"
    if count * MIN_ENTRY_SIZE > length - BATCH_COUNT_SIZE:
        return f"batch count {count} does not fit in length {length}"
    if seq_start + count - 1 > MAX_SEQ:
        return f"seqs {seq_start}+{count} pass 2**56"
    return None


def _encode_batch(records, synced: int) -> bytes:
    """The WAL records for [(seq_start, payload), ...], concatenated (the append hot path).

    `synced`: the bytes of the segment durable before the first of them is written."""
    parts = []
    add = parts.append
    pack_crcd, pack_record, count_of = _CRCD_HEADER.pack, _RECORD.pack, _U32.unpack_from
    for seq_start, payload in records:
        length = len(payload)
        if (length < BATCH_COUNT_SIZE or length > 0xFFFFFFFF or not 1 <= seq_start <= MAX_SEQ
                or count_of(payload, 0)[0] * MIN_ENTRY_SIZE > length - BATCH_COUNT_SIZE
                or seq_start + count_of(payload, 0)[0] > MAX_SEQ + 1):
            _refuse(seq_start, payload)
        crc = crc32c(payload, value=crc32c(pack_crcd(length, seq_start, synced)))
        add(pack_record(crc, length, seq_start, synced))
        add(payload)
    return b"".join(parts)


def _refuse(seq_start, payload):
    length = len(payload)
    if length > 0xFFFFFFFF:
        raise ValueError(f"a WAL record holds at most 4 GiB - 1, not {length} bytes")
    count = _U32.unpack_from(payload, 0)[0] if length >= BATCH_COUNT_SIZE else 0
    raise ValueError(f"not a valid WAL record: {_header_problem(length, seq_start, count)}")


def encode_record(seq_start: int, payload, synced: int = WAL_HEADER_SIZE) -> bytes:
    """One WAL record for (seq_start, batch payload); ValueError if the reader would refuse it
    (but for `synced`, which must not pass the offset the record is written at)."""
    return _encode_batch(((seq_start, payload),), synced)


def encode_header() -> bytes:
    return _HEADER.pack(WAL_MAGIC, WAL_VERSION, 0)


# --------------------------------------------------------------------------
# directory helpers
# --------------------------------------------------------------------------

def segment_path(dir, number: int) -> str:
    return os.path.join(os.fspath(dir), wal_name(number))


def list_segments(dir) -> list[int]:
    """The numbers of the WAL segments in `dir`, ascending."""
    numbers = []
    for name in os.listdir(dir):
        kind, number = parse_name(name)
        if kind == "wal":
            numbers.append(number)
    numbers.sort()
    return numbers


def delete_segments(dir, numbers) -> None:
    """Unlink the given segments (missing ones are skipped), then fsync the directory once."""
    removed = False
    for number in numbers:
        try:
            os.unlink(segment_path(dir, number))
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        fsync_dir(dir)


def repair_torn_tail(path, offset: int) -> None:
    """Cut the segment at `path` to `offset` bytes and make that durable."""
    os.truncate(path, offset)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------

class WalWriter:
    """Appends batches to the current segment and rolls to a new one past the size.

    WalWriter(dir, file_number, segment_size_bytes, new_file_number) creates
    segment `file_number` (it must not exist): header written and fsynced,
    directory fsynced.  With reuse=True it instead appends to the existing
    segment `file_number`, whose header must be valid and whose tail must
    already be repaired (read_wal does that).

    new_file_number() is called (from the appending thread) for the number
    of each later segment; it must return a number never used before.

    Any OSError from write or fsync propagates unchanged and leaves the
    writer failed: every later append/sync raises FlowError (the caller
    goes read-only; reopening recovers).  Some bytes of the failed append
    may be on disk; recovery treats them as a torn tail.
    """

    def __init__(self, dir, file_number: int, segment_size_bytes: int, new_file_number, *,
                 reuse: bool = False):
        if isinstance(segment_size_bytes, bool) or not isinstance(segment_size_bytes, int):
            raise TypeError("segment_size_bytes is an int")
        if segment_size_bytes <= 0:
            raise ValueError(f"segment_size_bytes must be positive, not {segment_size_bytes}")
        if not callable(new_file_number):
            raise TypeError("new_file_number must be callable")
        self.dir = os.fspath(dir)
        self.segment_size_bytes = segment_size_bytes
        self._new_file_number = new_file_number
        self._append_lock = threading.Lock()   # one append/close at a time
        self._swap_lock = threading.Lock()     # guards _fd/_number against sync()
        self._writer = AppendWriter()
        self._failure = None                   # the OSError that broke the writer
        self._closed = False
        self._bytes_written = 0
        self._segments = []
        if reuse:
            self._fd, self._size = self._open_existing(file_number)
        else:
            self._fd, self._size = self._create(file_number), WAL_HEADER_SIZE
        self._synced = self._size              # bytes of the current segment known durable
        self._number = file_number
        self._segments.append(file_number)

    # -- properties ---------------------------------------------------------

    @property
    def current_number(self) -> int:
        """The number of the segment appends go to now."""
        return self._number

    @property
    def bytes_written(self) -> int:
        """Record bytes appended by this writer, across all its segments (headers excluded)."""
        return self._bytes_written

    @property
    def segment_numbers(self) -> list[int]:
        """This writer's segments still on disk, oldest first (the current one last)."""
        self._segments = [n for n in self._segments
                          if n == self._number or os.path.exists(segment_path(self.dir, n))]
        return list(self._segments)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    # -- operations ---------------------------------------------------------

    def append(self, records) -> int:
        """Write records [(seq_start, payload), ...] with one os.write; returns the bytes written.

        Not durable until sync() (or a rotation, which fsyncs the segment it
        closes).  When the segment then exceeds segment_size_bytes it is
        fsynced and the next segment is created.
        """
        with self._append_lock:
            self._check_usable()
            buf = _encode_batch(records, self._synced)
            if not buf:
                return 0
            try:
                self._writer.write(self._fd, buf)
            except OSError as exc:
                self._fail(exc)
                raise
            self._size += len(buf)
            self._bytes_written += len(buf)
            if self._size > self.segment_size_bytes:
                self._rotate()
            return len(buf)

    def rotate(self) -> None:
        """Close the current segment (fsynced) and start the next, unless it is empty.

        The engine rotates when it freezes a memtable, so that a segment holds
        one memtable's entries and can be deleted once that memtable is flushed.
        """
        with self._append_lock:
            self._check_usable()
            if self._size > WAL_HEADER_SIZE:
                self._rotate()

    def sync(self, datasync=None) -> None:
        """fdatasync the current segment (see the module docstring for what it covers).

        `datasync(fd)`, if given, makes the call in its place (the engine's
        ApplyThread.datasync).  A test's fault injector that replaces
        os.fdatasync, os.dup or os.close sees every call to it."""
        if datasync is None or os.fdatasync is not _os_fdatasync:
            datasync = _datasync
        # Each call that gives the GIL away costs winning it back from a busy
        # flush: the duplicate descriptor is made and dropped holding it.
        held = os.dup is _os_dup and os.close is _os_close
        with self._swap_lock:
            self._check_usable()
            fd = dup_holding_gil(self._fd) if held else os.dup(self._fd)
            number, size = self._number, self._size
        try:
            datasync(fd)
        except OSError as exc:
            self._fail(exc)
            raise
        finally:
            close_holding_gil(fd) if held else os.close(fd)
        with self._swap_lock:
            if self._number == number and size > self._synced:
                self._synced = size

    def close(self) -> None:
        """fsync and close the current segment; idempotent.

        After a failure the descriptor is closed without an fsync and no
        error is raised.
        """
        with self._append_lock, self._swap_lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
            try:
                if self._failure is None:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------

    def _check_usable(self):
        if self._failure is not None:
            raise FlowError(_UNUSABLE) from self._failure
        if self._closed:
            raise FlowError("the WAL writer is closed")

    def _fail(self, exc):
        if self._failure is None:
            self._failure = exc

    def _create(self, number) -> int:
        path = segment_path(self.dir, number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, encode_header())
            os.fsync(fd)
            fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_existing(self, number):
        path = segment_path(self.dir, number)
        fd = os.open(path, os.O_RDWR)
        try:
            head = os.pread(fd, WAL_HEADER_SIZE, 0)
            version = _check_header(head, path)
            if version != WAL_VERSION:
                raise ValueError(f"{path} is a WAL version {version} segment; "
                                 f"a writer appends to version {WAL_VERSION} segments only")
            size = os.lseek(fd, 0, os.SEEK_END)
            os.fsync(fd)                       # its records claim what is durable before them
        except BaseException:
            os.close(fd)
            raise
        return fd, size

    def _rotate(self):
        # Caller holds _append_lock.  The order is the format's promise: the
        # old segment is durable before the new one exists.
        try:
            os.fsync(self._fd)
            number = self._new_file_number()
            new_fd = self._create(number)
        except BaseException as exc:
            # The batch is written but possibly not durable: the caller must
            # treat the append as failed, and so must every later call.
            self._fail(exc)
            raise
        with self._swap_lock:
            old_fd = self._fd
            self._fd, self._number, self._size = new_fd, number, WAL_HEADER_SIZE
            self._synced = WAL_HEADER_SIZE
            self._segments.append(number)
        os.close(old_fd)

    def __repr__(self):
        return (f"WalWriter({self.dir!r}, current={self._number}, size={self._size}, "
                f"failed={self.failed}, closed={self._closed})")


# --------------------------------------------------------------------------
# recovery
# --------------------------------------------------------------------------

def _check_header(head, path) -> int:
    """The segment's version, or CorruptionError."""
    if len(head) < WAL_HEADER_SIZE:
        raise CorruptionError(f"WAL segment is shorter than its header ({len(head)} bytes)", path, 0)
    magic, version, reserved = _HEADER.unpack_from(head, 0)
    if magic != WAL_MAGIC:
        raise CorruptionError(f"bad WAL magic {magic!r}", path, 0)
    if version not in _LAYOUTS:
        raise CorruptionError(f"unsupported WAL version {version} (this flowdb reads versions "
                              f"{', '.join(map(str, sorted(_LAYOUTS)))})", path, 8)
    if reserved != 0:
        raise CorruptionError(f"WAL header reserved field is {reserved}, not 0", path, 12)
    return version


def _record_problem(data, view, off: int, layout: _Layout):
    """None if a valid record starts at `off`, else why not."""
    n = len(data)
    left = n - off
    size = layout.size
    if left < size:
        return f"cut short: {left} bytes left, a record header is {size}"
    fields = layout.header.unpack_from(data, off)
    crc, length, seq_start = fields[0], fields[1], fields[2]
    end = off + size + length
    if end > n:
        return f"cut short: length {length} but {left - size} bytes left"
    count = _U32.unpack_from(data, off + size)[0] if length >= BATCH_COUNT_SIZE else 0
    problem = _header_problem(length, seq_start, count)
    if problem is not None:
        return f"malformed header: {problem}"
    if layout.has_synced and not WAL_HEADER_SIZE <= fields[3] <= off:
        return f"malformed header: synced {fields[3]} is past the record's offset"
    if crc32c(view[off + 4:end]) != crc:
        return "checksum mismatch"
    return None


def _next_valid_record(data, view, start: int, layout: _Layout):
    """The smallest offset >= start where a valid record starts, or None.

    Every byte offset is a candidate, but only those whose header's last
    byte is zero (the top byte of seq_start, < 2**56, or of synced, <= the
    offset) and whose length field is nonzero can hold one, so bytes.find
    and a regex skip the rest at C speed; runs of zeros (a preallocated or
    unwritten tail) are skipped whole.
    """
    top = layout.size - 1
    last = len(data) - layout.min_record
    off = start
    while off <= last:
        p = data.find(b"\x00", off + top)
        if p < 0:
            return None
        off = p - top
        if off > last:
            return None
        if _U32.unpack_from(data, off + 4)[0] == 0:
            # Any later record needs a nonzero byte in its own length field.
            m = _NONZERO.search(data, off + 8)
            if m is None:
                return None
            off = max(off + 1, m.start() - 7)
            continue
        if _record_problem(data, view, off, layout) is None:
            return off
        off += 1
    return None


def _durable_proof(data, view, bad: int, start: int, layout: _Layout):
    """The offset of the first valid record at or after `start` whose synced
    passes `bad` (it was written after a sync that covered the bad record),
    or None."""
    off = start
    while off is not None:
        fields = layout.header.unpack_from(data, off)
        if fields[3] > bad:
            return off
        off += layout.size + fields[1]
        if _record_problem(data, view, off, layout) is not None:
            off = _next_valid_record(data, view, off + 1, layout)
    return None


class WalRecovery:
    """The iterator read_wal returns, plus what recovery had to repair.

    Iterating yields (segment_number, offset, seq_start, payload) for every
    valid record, in order.  Side effects happen during iteration, when the
    reader reaches them: a torn tail of the newest segment is truncated
    (repair_torn_tail) after that segment's last good record was yielded; a
    torn creation is deleted.  A CorruptionError is raised at the bad
    record, after the records before it were yielded, so the caller must
    treat the whole recovery as failed.  With repair=False nothing on disk
    changes but the same facts are reported.

    After iteration: torn_bytes (bytes dropped from the newest segment's
    tail), torn_segment and torn_offset (None when there was no torn tail),
    deleted_segments (torn creations removed), records (count yielded).
    """

    def __init__(self, dir, segment_numbers, repair: bool):
        self.dir = os.fspath(dir)
        self.segment_numbers = sorted(set(segment_numbers))
        self.repair = repair
        self.torn_bytes = 0
        self.torn_segment = None
        self.torn_offset = None
        self.deleted_segments = []
        self.records = 0
        existing = list_segments(self.dir)
        self.newest = existing[-1] if existing else None
        self._gen = self._run()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def _run(self):
        for number in self.segment_numbers:
            yield from self._segment(number)

    def _segment(self, number):
        path = segment_path(self.dir, number)
        newest = number == self.newest
        with open(path, "rb") as f:
            data = f.read()
        n = len(data)
        if newest and (n < WAL_HEADER_SIZE or _NONZERO.search(data) is None):
            # Torn creation: the header never became durable, so nothing followed it.
            if self.repair:
                os.unlink(path)
                fsync_dir(self.dir)
            self.deleted_segments.append(number)
            self.torn_bytes += n
            return
        layout = _LAYOUTS[_check_header(data[:WAL_HEADER_SIZE], path)]
        view = memoryview(data)
        off = WAL_HEADER_SIZE
        while off < n:
            problem = _record_problem(data, view, off, layout)
            if problem is None:
                fields = layout.header.unpack_from(data, off)
                body = off + layout.size
                self.records += 1
                yield number, off, fields[2], data[body:body + fields[1]]
                off = body + fields[1]
                continue
            later = _next_valid_record(data, view, off + 1, layout)
            proof = later
            if later is not None and layout.has_synced:
                proof = _durable_proof(data, view, off, later, layout)
            if newest and proof is None:
                self.torn_segment, self.torn_offset, self.torn_bytes = number, off, n - off
                if self.repair:
                    repair_torn_tail(path, off)
                return
            if not newest:
                why = f"WAL record {problem}, in a segment that is not the newest"
            elif layout.has_synced:
                why = (f"WAL record {problem}, but the record at offset {proof} was written "
                       f"after these bytes were fsynced")
            else:
                why = f"WAL record {problem}; a valid record follows at offset {later}"
            raise CorruptionError(why, path, off)


def read_wal(dir, segment_numbers, *, repair: bool = True) -> WalRecovery:
    """Iterate (segment_number, offset, seq_start, payload) over the given segments in order.

    The newest segment is the highest-numbered *.wal in `dir` (the caller
    should pass every segment there); only it may have a torn tail or be a
    torn creation.  See WalRecovery for the repairs and what is reported.
    """
    return WalRecovery(dir, segment_numbers, repair)
