"""The manifest: the edit log naming the live SSTables (docs/FORMAT.md, "Manifest").

    manifest := header edit*
    header   := magic:8 = "FLOWMAN\\x00"  version:u32le = 1  reserved:u32le = 0
    edit     := crc:u32le length:u32le body
                # crc = crc32c(length | body)
    body     := a UTF-8 JSON object, first byte "{", with the optional fields
                next_file:int  flushed_seq:int  last_seq:int
                add:[[file_number, level, file_size], ...]  del:[file_number, ...]

The state is the fold of the edits in order; within one edit "del" is
applied before "add", an "add" of a live table or a "del" of a table that is
not live is corruption, and so is an unknown field.  Appending an edit is
one write plus fsync.  A torn final edit (cut short, malformed or a bad
checksum, with no valid edit at any later byte offset) is dropped; anything
else bad is CorruptionError naming the file and offset.  A valid edit: it
fits in the file, length >= 2, the body starts with "{", the checksum
matches.

The manifest is rewritten whole as one snapshot edit at every open and when
it grows past REWRITE_BYTES: MANIFEST.tmp written and fsynced, renamed over
MANIFEST, directory fsynced (write_file_atomic).  The rewrite at open is
also what removes a torn final edit.

next_file: every edit carries the counter's current value, and open takes
the greatest of that, every table number + 1 and every NNNNNN.{wal,sst}
(or .tmp of one) in the directory + 1.  So a number handed out after the
last edit (a WAL segment, a table being built) is never handed out again
while its file exists, and a number some edit covered never at all.

Thread safety: new_file_number() may be called from any thread at any time
(its own lock, never held across I/O).  log_edit() and rewrite() serialise
on another lock.  `tables` is replaced, never mutated, by an edit: a reader
holding the old dict keeps a consistent snapshot.
"""
from __future__ import annotations

import os
import struct
import threading

import ujson
from flowdb._core.checksum import crc32c

from flowdb._errors import CorruptionError, FlowError
from flowdb._fileio import (MANIFEST_NAME, TEMP_SUFFIX, fsync_dir, parse_name,
                            write_all, write_file_atomic)

# Constants of the format: never renumber.
MANIFEST_MAGIC = b"FLOWMAN\x00"
MANIFEST_VERSION = 1
MANIFEST_HEADER_SIZE = 8 + 4 + 4          # magic, version, reserved
EDIT_HEADER_SIZE = 4 + 4                  # crc, length
MIN_EDIT_BODY = len(b"{}")
REWRITE_BYTES = 1 << 20                   # rewrite as a snapshot past 1 MiB
MAX_SEQ = (1 << 56) - 1
MAX_U64 = (1 << 64) - 1

_HEADER = struct.Struct("<8sII")
_EDIT = struct.Struct("<II")
_U32 = struct.Struct("<I")
_FIELDS = frozenset(("next_file", "flushed_seq", "last_seq", "add", "del"))

_UNUSABLE = "MANIFEST is unusable after an earlier I/O error; reopen the engine"


def encode_header() -> bytes:
    return _HEADER.pack(MANIFEST_MAGIC, MANIFEST_VERSION, 0)


def encode_edit(body: dict) -> bytes:
    """One framed edit for the JSON object `body`."""
    data = ujson.dumps(body, ensure_ascii=True).encode("utf-8")
    length = _U32.pack(len(data))
    return b"".join((_U32.pack(crc32c(data, value=crc32c(length))), length, data))


def _is_uint(v, limit=MAX_U64) -> bool:
    return type(v) is int and 0 <= v <= limit


def _edit_problem(data, view, off: int):
    """None if a valid edit starts at `off`, else why not."""
    n = len(data)
    left = n - off
    if left < EDIT_HEADER_SIZE:
        return f"cut short: {left} bytes left, an edit header is {EDIT_HEADER_SIZE}"
    crc, length = _EDIT.unpack_from(data, off)
    end = off + EDIT_HEADER_SIZE + length
    if end > n:
        return f"cut short: length {length} but {left - EDIT_HEADER_SIZE} bytes left"
    if length < MIN_EDIT_BODY or data[off + EDIT_HEADER_SIZE] != 0x7B:   # "{"
        return f"malformed edit: length {length}, body is not a JSON object"
    if crc32c(view[off + 4:end]) != crc:
        return "checksum mismatch"
    return None


def _next_valid_edit(data, view, start: int):
    """The smallest offset >= start where a valid edit starts, or None."""
    off = start
    while True:
        p = data.find(b"{", off + EDIT_HEADER_SIZE)
        if p < 0:
            return None
        off = p - EDIT_HEADER_SIZE
        if _edit_problem(data, view, off) is None:
            return off
        off += 1


class _State:
    """The fold of the edits: what the manifest says."""

    __slots__ = ("tables", "next_file", "flushed_seq", "last_seq")

    def __init__(self):
        self.tables = {}          # file_number -> (level, file_size)
        self.next_file = 1
        self.flushed_seq = 0
        self.last_seq = 0

    def snapshot_body(self) -> dict:
        return {
            "next_file": self.next_file,
            "flushed_seq": self.flushed_seq,
            "last_seq": self.last_seq,
            "add": [[n, level, size] for n, (level, size) in sorted(self.tables.items())],
        }


def _apply(state: _State, body, where) -> None:
    """Fold one decoded edit into `state`; CorruptionError(where) if it is not well-formed."""
    path, off = where
    if not isinstance(body, dict):
        raise CorruptionError("manifest edit is not a JSON object", path, off)
    unknown = set(body) - _FIELDS
    if unknown:
        raise CorruptionError(f"manifest edit has unknown fields {sorted(unknown)}", path, off)
    for name, limit in (("next_file", MAX_U64), ("flushed_seq", MAX_SEQ), ("last_seq", MAX_SEQ)):
        if name in body and not _is_uint(body[name], limit):
            raise CorruptionError(f"manifest edit field {name} is {body[name]!r}", path, off)
    deletes = body.get("del", [])
    adds = body.get("add", [])
    if not isinstance(deletes, list) or not all(_is_uint(n) for n in deletes):
        raise CorruptionError(f"manifest edit field del is {deletes!r}", path, off)
    if not isinstance(adds, list) or not all(
            isinstance(a, list) and len(a) == 3 and all(_is_uint(x) for x in a) for a in adds):
        raise CorruptionError(f"manifest edit field add is {adds!r}", path, off)
    tables = dict(state.tables)
    for n in deletes:
        if tables.pop(n, None) is None:
            raise CorruptionError(f"manifest edit deletes table {n}, which is not live", path, off)
    for n, level, size in adds:
        if n in tables:
            raise CorruptionError(f"manifest edit adds table {n}, which is already live", path, off)
        tables[n] = (level, size)
    state.tables = tables
    if "next_file" in body:
        state.next_file = body["next_file"]
    if "flushed_seq" in body:
        state.flushed_seq = body["flushed_seq"]
    if "last_seq" in body:
        state.last_seq = body["last_seq"]


def _check_header(data, path):
    if len(data) < MANIFEST_HEADER_SIZE:
        raise CorruptionError(f"MANIFEST is shorter than its header ({len(data)} bytes)", path, 0)
    magic, version, reserved = _HEADER.unpack_from(data, 0)
    if magic != MANIFEST_MAGIC:
        raise CorruptionError(f"bad MANIFEST magic {magic!r}", path, 0)
    if version != MANIFEST_VERSION:
        raise CorruptionError(f"unsupported MANIFEST version {version} (this flowdb reads "
                              f"version {MANIFEST_VERSION})", path, 8)
    if reserved != 0:
        raise CorruptionError(f"MANIFEST header reserved field is {reserved}, not 0", path, 12)


def load(path):
    """Read and fold the manifest at `path` without changing it.

    Returns (state, torn_offset); torn_offset is None unless a torn final
    edit was dropped.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    _check_header(data, path)
    view = memoryview(data)
    state = _State()
    off, n = MANIFEST_HEADER_SIZE, len(data)
    while off < n:
        problem = _edit_problem(data, view, off)
        if problem is not None:
            later = _next_valid_edit(data, view, off + 1)
            if later is None:
                return state, off
            raise CorruptionError(f"manifest edit {problem}; a valid edit follows at offset "
                                  f"{later}", path, off)
        length = _EDIT.unpack_from(data, off)[1]
        body_at = off + EDIT_HEADER_SIZE
        try:
            body = ujson.loads(data[body_at:body_at + length])
        except (ValueError, OverflowError, TypeError) as exc:
            raise CorruptionError(f"manifest edit is not valid JSON ({exc})", path, off) from None
        _apply(state, body, (path, off))
        off = body_at + length
    return state, None


def _highest_file_number(dir) -> int:
    """The greatest NNNNNN of a .wal/.sst (or a .tmp of one) in `dir`, or 0."""
    top = 0
    for name in os.listdir(dir):
        if name.endswith(TEMP_SUFFIX):
            name = name[:-len(TEMP_SUFFIX)]
        kind, number = parse_name(name)
        if kind is not None and number > top:
            top = number
    return top


class Manifest:
    """The open manifest of one data directory.  Open with Manifest.open(dir, create)."""

    def __init__(self, dir, state: _State, fd: int, size: int):
        # Use Manifest.open.
        self.dir = os.fspath(dir)
        self.path = os.path.join(self.dir, MANIFEST_NAME)
        self._state = state
        self._fd = fd
        self._size = size
        self._failure = None
        self._closed = False
        self._counter_lock = threading.Lock()    # next_file only; never held across I/O
        self._edit_lock = threading.Lock()       # appends and rewrites
        self.torn_bytes = 0                      # dropped at open (for logging)
        self.torn_offset = None

    @classmethod
    def open(cls, dir, create: bool) -> "Manifest":
        """Load DIR/MANIFEST and rewrite it as one snapshot edit.

        A leftover MANIFEST.tmp is deleted first.  A missing MANIFEST is
        created empty when `create` (CorruptionError if the directory
        already holds tables: they would be orphaned), else
        FileNotFoundError.
        """
        dir = os.fspath(dir)
        path = os.path.join(dir, MANIFEST_NAME)
        tmp = path + TEMP_SUFFIX
        if os.path.exists(tmp):
            os.unlink(tmp)
            fsync_dir(dir)
        top = _highest_file_number(dir)
        torn_offset, torn_bytes = None, 0
        if os.path.exists(path):
            state, torn_offset = load(path)
            if torn_offset is not None:
                torn_bytes = os.path.getsize(path) - torn_offset
        elif create:
            if any(parse_name(name)[0] == "sst" for name in os.listdir(dir)):
                raise CorruptionError("MANIFEST is missing but the directory holds tables", path)
            state = _State()
        else:
            raise FileNotFoundError(2, "no MANIFEST in the data directory", path)
        if state.tables:
            top = max(top, max(state.tables))
        state.next_file = max(state.next_file, top + 1)
        self = cls(dir, state, -1, 0)
        self.torn_offset, self.torn_bytes = torn_offset, torn_bytes
        self._rewrite_locked()
        return self

    # -- state (read-only views) -----------------------------------------------

    @property
    def tables(self) -> dict:
        """{file_number: (level, file_size)} of the live tables.  Do not mutate."""
        return self._state.tables

    @property
    def next_file(self) -> int:
        return self._state.next_file

    @property
    def flushed_seq(self) -> int:
        return self._state.flushed_seq

    @property
    def last_seq(self) -> int:
        return self._state.last_seq

    @property
    def failed(self) -> bool:
        """True once a write or fsync of the manifest failed (every later edit raises)."""
        return self._failure is not None

    @property
    def size(self) -> int:
        """Bytes in MANIFEST now."""
        return self._size

    # -- operations --------------------------------------------------------------

    def new_file_number(self) -> int:
        """A file number never used before (persisted by the next edit or by the file itself)."""
        with self._counter_lock:
            n = self._state.next_file
            self._state.next_file = n + 1
            return n

    def log_edit(self, add=(), delete=(), flushed_seq=None, last_seq=None) -> None:
        """Append one edit (one write + fsync), then apply it to the state.

        add: [(file_number, level, file_size), ...] tables that became live;
        delete: [file_number, ...] tables that stopped being live.
        ValueError for an edit that would not fold (adding a live table,
        deleting one that is not live, a number in both, a seq going back).
        An OSError propagates and leaves the manifest failed (later calls
        raise FlowError); whether that edit is durable is then unknown.
        """
        adds = [tuple(a) for a in add]
        deletes = list(delete)
        for a in adds:
            if len(a) != 3 or not all(_is_uint(x) for x in a):
                raise ValueError(f"an added table is (file_number, level, file_size), not {a!r}")
        for n in deletes:
            if not _is_uint(n):
                raise ValueError(f"a deleted table is a file number, not {n!r}")
        for name, v in (("flushed_seq", flushed_seq), ("last_seq", last_seq)):
            if v is not None and not _is_uint(v, MAX_SEQ):
                raise ValueError(f"{name} must be an int in [0, 2**56), not {v!r}")
        with self._edit_lock:
            self._check_usable()
            st = self._state
            added = [a[0] for a in adds]
            if len(set(added)) != len(added) or len(set(deletes)) != len(deletes):
                raise ValueError("a table number appears twice in one edit")
            for n in deletes:
                if n not in st.tables:
                    raise ValueError(f"cannot delete table {n}: it is not live")
            for n in added:
                if n in st.tables or n in deletes:
                    raise ValueError(f"cannot add table {n}: it is already live")
            if flushed_seq is not None and flushed_seq < st.flushed_seq:
                raise ValueError(f"flushed_seq would go back from {st.flushed_seq} to {flushed_seq}")
            if last_seq is not None and last_seq < st.last_seq:
                raise ValueError(f"last_seq would go back from {st.last_seq} to {last_seq}")
            with self._counter_lock:
                # A table numbered outside the counter still moves it past itself.
                st.next_file = max([st.next_file] + [n + 1 for n in added])
                body = {"next_file": st.next_file}
            if flushed_seq is not None:
                body["flushed_seq"] = flushed_seq
            if last_seq is not None:
                body["last_seq"] = last_seq
            if adds:
                body["add"] = [list(a) for a in adds]
            if deletes:
                body["del"] = deletes
            new = _State()
            new.tables, new.flushed_seq, new.last_seq = st.tables, st.flushed_seq, st.last_seq
            new.next_file = st.next_file
            _apply(new, {k: v for k, v in body.items() if k != "next_file"}, (self.path, None))
            try:
                self._persist_edit(body, new)
            except OSError as exc:
                self._failure = exc
                raise
            st.tables, st.flushed_seq, st.last_seq = new.tables, new.flushed_seq, new.last_seq
            if self._size > REWRITE_BYTES:
                self._rewrite_locked()

    def _persist_edit(self, body: dict, new: _State) -> None:
        """Make one validated edit durable (new: the state after it).  Here
        an appended frame; flowdb._single_file stores whole snapshots."""
        frame = encode_edit(body)
        write_all(self._fd, frame)
        os.fsync(self._fd)
        self._size += len(frame)

    def rewrite(self) -> None:
        """Replace MANIFEST by one snapshot edit of the current state (atomically)."""
        with self._edit_lock:
            self._check_usable()
            self._rewrite_locked()

    def close(self) -> None:
        """Close the file; idempotent (every edit is already durable)."""
        with self._edit_lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------

    def _check_usable(self):
        if self._failure is not None:
            raise FlowError(_UNUSABLE) from self._failure
        if self._closed:
            raise FlowError("the manifest is closed")

    def _rewrite_locked(self):
        with self._counter_lock:
            body = self._state.snapshot_body()
        data = encode_header() + encode_edit(body)
        try:
            write_file_atomic(self.path, data)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._failure = exc
            raise
        old, self._fd, self._size = self._fd, fd, len(data)
        if old >= 0:
            os.close(old)

    def __repr__(self):
        return (f"Manifest({self.path!r}, tables={len(self.tables)}, next_file={self.next_file}, "
                f"flushed_seq={self.flushed_seq}, last_seq={self.last_seq})")
