# cython: language_level=3, boundscheck=False, wraparound=False
"""SSTable builder, reader and iterator (docs/FORMAT.md, "SSTable").

    table        := data_block* range_del_block bloom_block props_block
                    index_block footer
    *_block      := stored[size] type:u8 crc:u32le          # 5-byte trailer
                    # type 0: stored = the block; 1: stored = snappy(block)
                    # crc = crc32c(stored | type)
    data block   := block (block.pyx) of (internal key, value) entries
    range_del    := block of (internal_key(start, INT64_MIN, seq, RANGE_DEL), end)
    bloom        := filter over the distinct user keys (bloom.pyx); empty: none
    props        := UTF-8 JSON object (see "Properties block")
    index        := block of one entry per data block, in order:
                    key   = the data block's last internal key
                    value = offset:varint size:varint min_ts:i64le max_ts:i64le
                            min_expire_at:i64le max_expire_at:i64le
    footer       := index_handle bloom_handle props_handle range_del_handle
                    format_version:u32le = 1  crc:u32le  magic:8 = "FLOWSST\\0"
                    # crc = crc32c of the 68 bytes before it
    handle       := offset:u64le size:u64le     # size excludes the trailer

The blocks tile the file: data blocks start at 0 and follow each other; then
range_del, bloom, props, index, each right after the previous block's trailer;
the footer right after the index's trailer.  A reader checks all of it.
"""
import errno as _errno
import os
import struct

import ujson

from flowdb._core.checksum import crc32c

from cpython.object cimport PyTypeObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, INT64_MIN, INT64_MAX
from libc.stdlib cimport malloc, realloc, free, qsort
from libc.string cimport memcpy, memcmp
from posix.unistd cimport close as c_close
from libc.errno cimport errno, EAGAIN
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ

from flowdb._core.cdefs cimport (
    fdb_iter, fdb_ikey_cmp, fdb_ukey_cmp, fdb_ikey_ts, fdb_ikey_seq, fdb_ikey_kind,
    fdb_get_u32le, fdb_get_u64le, fdb_put_u32le, fdb_put_u64le, fdb_put_varint, fdb_get_varint, fdb_ikey_write,
    FDB_OK, FDB_ERR_CORRUPTION, FDB_ERR_IO, FDB_ERR_NOMEM, FDB_ERR_PYTHON,
    FDB_KIND_PUT, FDB_KIND_DELETE, FDB_KIND_RANGE_DEL, FDB_TRAILER_SIZE,
    FDB_MAX_SEQ, FDB_NEVER, FDB_MAX_VARINT64, fdb_count)
from flowdb._core.iterator cimport (Iterator, Source, EntryHit, entry_hit, HIT_SAME_TS,
                                    VERSION_UNKNOWN, VERSION_FOUND, VERSION_NONE)
from flowdb._core.block cimport (
    CBlockBuilder, CBlockIter, BLOCK_RESTART_INTERVAL, reserve_bytes,
    block_builder_init, block_builder_add, block_builder_estimate,
    block_builder_finish, block_builder_reset, block_builder_free,
    BlockFloor, block_iter_floor,
    block_iter_init, block_iter_reset, block_iter_reset_trusted, block_iter_seek_to_last,
    block_iter_free, fdb_prefetch)
from flowdb._core.block_cache cimport (BlockCache, BlockMeta, BLOCK_META_RESTARTS,
                                       untrusted_meta)
from flowdb._core.snappy cimport (
    fdb_snappy_compress, fdb_snappy_max_compressed, fdb_snappy_ulen, fdb_snappy_decompress,
    decompress_bytes)
from flowdb._core.checksum cimport crc32c_extend
from flowdb._core.bloom cimport (
    bloom_builder_init, bloom_builder_add_hash, bloom_builder_size,
    bloom_builder_write, bloom_builder_free, bloom_hash, bloom_may_contain,
    FDB_BLOOM_MAX_K)
from flowdb._core.block import BlockBuilder as _PyBlockBuilder
from flowdb._errors import CorruptionError

cdef extern from "Python.h":
    void PyType_Modified(PyTypeObject *t)


# -- format constants (docs/FORMAT.md; never renumber) ---------------------------

cdef enum:
    _COMPRESSION_NONE = 0
    _COMPRESSION_SNAPPY = 1
    _BLOCK_TRAILER_SIZE = 1 + 4
    _BLOCK_HANDLE_SIZE = 8 + 8
    _FOOTER_SIZE = 4 * _BLOCK_HANDLE_SIZE + 4 + 4 + 8
    _MIN_SAVING_EIGHTHS = 1

#: type:u8 crc:u32le after every block.
BLOCK_TRAILER_SIZE = _BLOCK_TRAILER_SIZE
#: offset:u64le size:u64le.
BLOCK_HANDLE_SIZE = _BLOCK_HANDLE_SIZE
#: index, bloom, props, range-del handles; format_version; crc; magic.
FOOTER_SIZE = _FOOTER_SIZE
#: The last 8 bytes of every table.
TABLE_MAGIC = b"FLOWSST\x00"
#: The table format this code writes and reads.
FORMAT_VERSION = 1
#: Block trailer type byte.
COMPRESSION_NONE = _COMPRESSION_NONE
COMPRESSION_SNAPPY = _COMPRESSION_SNAPPY
#: A block is stored compressed only if that saves at least 1/8 (12.5 %):
#: compressed iff 8 * len(snappy) <= 7 * len(raw).
COMPRESSION_MIN_SAVING_EIGHTHS = _MIN_SAVING_EIGHTHS

cdef enum:
    # The fixed part of an index entry's value: min_ts, max_ts, min/max expire_at.
    _INDEX_BOUNDS = 4 * 8
    _INDEX_VALUE_MAX = 2 * 10 + _INDEX_BOUNDS   # two varints + the bounds
    # Not format: bytes of cut data blocks (uncompressed) queued before they are written.
    _PENDING_BYTES = 256 * 1024
    # Not format: an iterator with read_ahead (a compaction's inputs) reads
    # up to this many blocks at once, or this many bytes of them (stored,
    # and decompressed), without the GIL.
    _READAHEAD_BLOCKS = 32
    _READAHEAD_BYTES = 256 * 1024
    # Not format: TableReader.warm reads up to this many blocks, or this
    # many stored bytes of them, per release of the GIL.
    _WARM_BLOCKS = 2048
    _WARM_BYTES = 4 * 1024 * 1024

#: The fixed part of an index entry's value (i64le min_ts, max_ts, min/max expire_at).
INDEX_BOUNDS_SIZE = _INDEX_BOUNDS

cdef enum:
    # Not format: the builder hands bytes to os.write in chunks of about this size.
    _WRITE_BUFFER_SIZE = 1 << 20
WRITE_BUFFER_SIZE = _WRITE_BUFFER_SIZE
PENDING_BYTES = _PENDING_BYTES
# Not format: the largest block_size a builder accepts (restart offsets are u32).
MAX_BLOCK_SIZE = 1 << 30
# Not format: snappy expands at most ~21x (a 3-byte copy of 64 bytes); a
# stored block claiming more is corrupt and is not handed to the decompressor.
cdef enum:
    _SNAPPY_MAX_RATIO = 32

_PROPS_INT_FIELDS = (
    "num_entries", "num_deletes", "num_range_dels", "num_data_blocks",
    "min_ts", "max_ts", "min_expire_at", "max_expire_at", "min_seq", "max_seq",
    "raw_key_bytes", "raw_value_bytes", "data_size")
_PROPS_KEY_FIELDS = ("smallest_key", "largest_key")

_handle = struct.Struct("<QQ")


cdef inline bint _worth_compressing(size_t compressed, size_t raw) noexcept nogil:
    return 8 * compressed <= (8 - _MIN_SAVING_EIGHTHS) * raw


cdef int _status_of(BaseException e):
    """The FDB_ERR_* status a C caller gets for exception e."""
    if isinstance(e, CorruptionError):
        return FDB_ERR_CORRUPTION
    if isinstance(e, OSError):
        return FDB_ERR_IO
    if isinstance(e, MemoryError):
        return FDB_ERR_NOMEM
    return FDB_ERR_PYTHON


cdef inline void _put_trailer(uint8_t *stored, size_t n, uint8_t typ) noexcept nogil:
    # stored[n:n + 5] = type, crc32c(stored | type)
    stored[n] = typ
    fdb_put_u32le(stored + n + 1, crc32c_extend(0, stored, n + 1))


def range_del_key(bytes start not None, unsigned long long seq):
    """The internal key a range delete is stored under in the range-del block."""
    cdef bytearray out = bytearray(len(start) + FDB_TRAILER_SIZE)
    cdef uint8_t *p = out
    fdb_ikey_write(p, start, len(start), INT64_MIN, seq, FDB_KIND_RANGE_DEL)
    return bytes(out)


# -- builder -------------------------------------------------------------------

cdef class TableBuilder:
    """Writes one SSTable to `path` (the caller passes a temporary name and
    renames it after finish()).

    TableBuilder(path, block_size=8192, bloom_bits_per_key=10)
    add(ikey, value)                 point entries, strictly increasing order
    add_range_del(start, end, seq)   any order; duplicates are stored once
    finish() -> dict                 properties + file_size; fsyncs and closes
    abandon()                        closes and deletes the file (idempotent)
    """

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.status = FDB_OK
        self.finished = False
        block_builder_init(&self.data_block, BLOCK_RESTART_INTERVAL)
        block_builder_init(&self.index_block, BLOCK_RESTART_INTERVAL)
        bloom_builder_init(&self.bloom, 0)
        self.last_key = NULL
        self.last_key_len = 0
        self.last_key_cap = 0
        self.first_key = NULL
        self.first_key_len = 0
        self.blk_min_ts = INT64_MAX
        self.blk_max_ts = INT64_MIN
        self.blk_min_exp = INT64_MAX
        self.blk_max_exp = INT64_MIN
        self.min_ts = INT64_MAX
        self.max_ts = INT64_MIN
        self.min_exp = INT64_MAX
        self.max_exp = INT64_MIN
        self.min_seq = FDB_MAX_SEQ
        self.max_seq = 0
        self.wbuf = NULL
        self.wbuf_len = self.wbuf_cap = 0
        self.range_dels = set()
        self.warm_cache = None
        self.pend_raw = NULL
        self.pend_raw_len = self.pend_raw_cap = 0
        self.pend_keys = NULL
        self.pend_keys_len = self.pend_keys_cap = 0
        self.pend = NULL
        self.npend = self.pend_cap_bytes = 0
        self.raw_written = self.stored_written = 0

    def __init__(self, path, block_size=8192, bloom_bits_per_key=10):
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
        if not 0 <= bloom_bits_per_key <= 1000:
            raise ValueError(f"bloom_bits_per_key must be in 0..1000, got {bloom_bits_per_key}")
        self.block_size = block_size
        self.bloom_bits_per_key = bloom_bits_per_key
        bloom_builder_init(&self.bloom, bloom_bits_per_key)
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def __dealloc__(self):
        self._free()
        if self.fd >= 0:
            c_close(self.fd)

    cdef void _free(self) noexcept:
        block_builder_free(&self.data_block)
        block_builder_free(&self.index_block)
        bloom_builder_free(&self.bloom)
        free(self.last_key)
        free(self.first_key)
        self.last_key = NULL
        self.first_key = NULL
        self.last_key_cap = 0
        free(self.pend_raw)
        free(self.pend_keys)
        free(self.pend)
        free(self.wbuf)
        self.wbuf = NULL
        self.wbuf_len = self.wbuf_cap = 0
        self.pend_raw = self.pend_keys = NULL
        self.pend = NULL
        self.npend = self.pend_raw_len = self.pend_keys_len = 0
        self.pend_raw_cap = self.pend_keys_cap = self.pend_cap_bytes = 0

    # -- adding ---------------------------------------------------------------

    cdef int _reject(self, const char *message) noexcept nogil:
        with gil:
            self.error = ValueError(message.decode())
        return FDB_ERR_PYTHON

    cdef int _fail(self, int code, object exc) noexcept:
        self.error = exc
        self.status = code
        return code

    cdef int _nomem(self) noexcept nogil:
        with gil:
            return self._fail(FDB_ERR_NOMEM, MemoryError("out of memory building a table"))

    cdef int add(self, const unsigned char *ikey, size_t ikey_len,
                 const unsigned char *value, size_t value_len) noexcept nogil:
        cdef unsigned kind
        cdef int64_t ts, exp
        cdef uint64_t seq
        cdef size_t ulen, cap
        cdef bint new_ukey = True
        cdef uint8_t *p
        if self.status != FDB_OK:
            return self.status
        if self.finished:
            return self._reject(b"add() after finish() or abandon()")
        if ikey_len < FDB_TRAILER_SIZE:
            return self._reject(b"an internal key is at least 16 bytes")
        kind = fdb_ikey_kind(ikey, ikey_len)
        if kind == FDB_KIND_PUT:
            if value_len < 8:
                return self._reject(b"a PUT value starts with an 8-byte expire_at")
            exp = <int64_t>fdb_get_u64le(value)
        elif kind == FDB_KIND_DELETE:
            if value_len != 0:
                return self._reject(b"a DELETE value is empty")
            exp = FDB_NEVER
        else:
            return self._reject(b"a table holds PUT and DELETE entries only "
                                b"(range deletes go to add_range_del)")
        ulen = ikey_len - FDB_TRAILER_SIZE
        if self.num_entries:
            if fdb_ikey_cmp(ikey, ikey_len, self.last_key, self.last_key_len) <= 0:
                return self._reject(b"entries must come in strictly increasing "
                                    b"internal-key order")
            new_ukey = fdb_ukey_cmp(ikey, ulen, self.last_key,
                                    self.last_key_len - FDB_TRAILER_SIZE) != 0
        # Reserve the key copies first, so a failure changes nothing but status.
        if ikey_len > self.last_key_cap:
            cap = ikey_len if ikey_len > 2 * self.last_key_cap else 2 * self.last_key_cap
            p = <uint8_t *>realloc(self.last_key, cap)
            if p == NULL:
                return self._nomem()
            self.last_key = p
            self.last_key_cap = cap
        if self.num_entries == 0:
            self.first_key = <uint8_t *>malloc(ikey_len)
            if self.first_key == NULL:
                return self._nomem()
            memcpy(self.first_key, ikey, ikey_len)
            self.first_key_len = ikey_len
        if block_builder_add(&self.data_block, ikey, ikey_len, value, value_len) != FDB_OK:
            return self._nomem()
        if new_ukey and bloom_builder_add_hash(&self.bloom, bloom_hash(ikey, ulen)) != FDB_OK:
            return self._nomem()
        memcpy(self.last_key, ikey, ikey_len)
        self.last_key_len = ikey_len

        ts = fdb_ikey_ts(ikey, ikey_len)
        seq = fdb_ikey_seq(ikey, ikey_len)
        if ts < self.blk_min_ts: self.blk_min_ts = ts
        if ts > self.blk_max_ts: self.blk_max_ts = ts
        if exp < self.blk_min_exp: self.blk_min_exp = exp
        if exp > self.blk_max_exp: self.blk_max_exp = exp
        if seq < self.min_seq: self.min_seq = seq
        if seq > self.max_seq: self.max_seq = seq
        self.num_entries += 1
        if kind == FDB_KIND_DELETE:
            self.num_deletes += 1
        self.raw_key_bytes += ikey_len
        self.raw_value_bytes += value_len
        if block_builder_estimate(&self.data_block) >= self.block_size:
            return self._cut_block()
        return FDB_OK

    cdef int _cut_block(self) noexcept nogil:
        cdef PendingBlock *pb
        cdef size_t n
        if self.data_block.num_entries == 0:
            return FDB_OK
        if block_builder_finish(&self.data_block) != FDB_OK:
            return self._nomem()
        n = self.data_block.len
        if (reserve_bytes(&self.pend_raw, &self.pend_raw_cap, self.pend_raw_len + n) != FDB_OK
                or reserve_bytes(&self.pend_keys, &self.pend_keys_cap,
                                 self.pend_keys_len + self.last_key_len) != FDB_OK
                or reserve_bytes(<uint8_t **>&self.pend, &self.pend_cap_bytes,
                                 (self.npend + 1) * sizeof(PendingBlock)) != FDB_OK):
            return self._nomem()
        pb = &self.pend[self.npend]
        pb.raw_off = self.pend_raw_len
        pb.raw_len = n
        memcpy(self.pend_raw + self.pend_raw_len, self.data_block.buf, n)
        self.pend_raw_len += n
        pb.key_off = self.pend_keys_len
        pb.key_len = self.last_key_len
        memcpy(self.pend_keys + self.pend_keys_len, self.last_key, self.last_key_len)
        self.pend_keys_len += self.last_key_len
        pb.min_ts = self.blk_min_ts
        pb.max_ts = self.blk_max_ts
        pb.min_exp = self.blk_min_exp
        pb.max_exp = self.blk_max_exp
        self.npend += 1
        if self.blk_min_ts < self.min_ts: self.min_ts = self.blk_min_ts
        if self.blk_max_ts > self.max_ts: self.max_ts = self.blk_max_ts
        if self.blk_min_exp < self.min_exp: self.min_exp = self.blk_min_exp
        if self.blk_max_exp > self.max_exp: self.max_exp = self.blk_max_exp
        self.blk_min_ts = INT64_MAX
        self.blk_max_ts = INT64_MIN
        self.blk_min_exp = INT64_MAX
        self.blk_max_exp = INT64_MIN
        self.num_data_blocks += 1
        block_builder_reset(&self.data_block)
        # The first block goes out at once: file_size_estimate scales the
        # queued bytes by the compression seen so far.
        if self.pend_raw_len >= _PENDING_BYTES or self.raw_written == 0:
            return self._write_pending()
        return FDB_OK

    cdef int _write_pending(self) noexcept nogil:
        cdef int rc = FDB_OK
        cdef size_t i, need = 0
        cdef PendingBlock *pb
        if self.npend == 0:
            return FDB_OK
        self.block_batches += 1
        # Compress and checksum without the GIL: a writer thread runs beside
        # the flush.
        for i in range(self.npend):
            need += fdb_snappy_max_compressed(self.pend[i].raw_len) + _BLOCK_TRAILER_SIZE
        if reserve_bytes(&self.wbuf, &self.wbuf_cap, self.wbuf_len + need) != FDB_OK:
            return self._nomem()
        for i in range(self.npend):
            pb = &self.pend[i]
            self._store(self.pend_raw + pb.raw_off, pb.raw_len, pb)
            self.raw_written += pb.raw_len
            self.stored_written += pb.size
            rc = self._index_entry(pb, pb.off, pb.size)
            if rc != FDB_OK:
                break
        if rc == FDB_OK and (self.warm_cache is not None or self.wbuf_len >= _WRITE_BUFFER_SIZE):
            self.gil_takes += 1
            with gil:
                rc = self._hand_over()
        self.npend = self.pend_raw_len = self.pend_keys_len = 0
        return rc

    cdef int _hand_over(self) noexcept:
        # Apart from _write_pending, which must hold no Python object: one
        # would make Cython take the GIL at its every return to release it.
        cdef size_t i
        cdef PendingBlock *pb
        try:
            if self.warm_cache is not None:
                for i in range(self.npend):
                    pb = &self.pend[i]
                    self._warm(pb.off, (<const char *>self.pend_raw + pb.raw_off)[:pb.raw_len])
            if self.wbuf_len >= _WRITE_BUFFER_SIZE:
                self._flush_wbuf()
        except BaseException as e:
            return self._fail(_status_of(e), e)
        return FDB_OK

    cdef void _store(self, const uint8_t *raw, size_t n, PendingBlock *pb) noexcept nogil:
        # The caller reserved room for the block compressed (or raw, which is
        # never larger than the bound) and its trailer.
        cdef uint8_t *out = self.wbuf + self.wbuf_len
        cdef size_t z = fdb_snappy_compress(raw, n, out)
        cdef uint8_t typ = _COMPRESSION_SNAPPY
        if not _worth_compressing(z, n):
            memcpy(out, raw, n)
            z = n
            typ = _COMPRESSION_NONE
        _put_trailer(out, z, typ)
        pb.off = self.offset
        pb.size = z
        self.wbuf_len += z + _BLOCK_TRAILER_SIZE
        self.offset += z + _BLOCK_TRAILER_SIZE

    cdef int _index_entry(self, const PendingBlock *pb, uint64_t off, uint64_t size) noexcept nogil:
        cdef uint8_t v[_INDEX_VALUE_MAX]
        cdef uint8_t *p = v
        p += fdb_put_varint(p, off)
        p += fdb_put_varint(p, size)
        fdb_put_u64le(p, <uint64_t>pb.min_ts)
        fdb_put_u64le(p + 8, <uint64_t>pb.max_ts)
        fdb_put_u64le(p + 16, <uint64_t>pb.min_exp)
        fdb_put_u64le(p + 24, <uint64_t>pb.max_exp)
        p += _INDEX_BOUNDS
        if block_builder_add(&self.index_block, self.pend_keys + pb.key_off, pb.key_len,
                             v, <size_t>(p - v)) != FDB_OK:
            return self._nomem()
        return FDB_OK

    cdef tuple _write_block(self, object raw):
        """Appends raw (a meta block) as stored, with its trailer; returns its
        handle."""
        cdef PendingBlock pb
        cdef const uint8_t[::1] src = raw
        cdef size_t n = src.shape[0]
        if reserve_bytes(&self.wbuf, &self.wbuf_cap, self.wbuf_len
                         + fdb_snappy_max_compressed(n) + _BLOCK_TRAILER_SIZE) != FDB_OK:
            raise MemoryError("out of memory building a table")
        self._store(&src[0] if n else NULL, n, &pb)
        if self.wbuf_len >= _WRITE_BUFFER_SIZE:
            self._flush_wbuf()
        return pb.off, pb.size

    cdef _warm(self, uint64_t off, bytes raw):
        # Only into free room: warming never evicts what readers are using.
        cdef BlockCache cache = self.warm_cache
        cdef CBlockIter blk
        cdef BlockMeta meta
        if cache.usage + len(raw) > cache.capacity:
            return
        block_iter_init(&blk)
        try:
            # The reader's own check of the restart array, so the cached
            # block is exactly what reading it back would have cached.
            if block_iter_reset(&blk, <const uint8_t *><const char *>raw, len(raw)) != FDB_OK:
                return
            _trusted_meta(&blk, &meta)
            cache.insert(self.warm_file, off, raw, &meta)
        finally:
            block_iter_free(&blk)

    cdef _flush_wbuf(self):
        # Through os.write, not C: the tests' fault-injection layer
        # (tests/reliability/faultfs.py) wraps the os module.
        cdef size_t pos = 0, n = self.wbuf_len
        with PyMemoryView_FromMemory(<char *>self.wbuf, n, PyBUF_READ) as view:
            while pos < n:
                pos += os.write(self.fd, view[pos:])
        self.wbuf_len = 0

    # -- Python API -------------------------------------------------------------

    def add_entry(self, bytes ikey not None, bytes value not None):
        """add(ikey, value): appends one point entry (PUT or DELETE).

        Raises ValueError for a bad or out-of-order entry (the builder stays
        usable), OSError/MemoryError for a failed write (the builder is dead:
        abandon() it)."""
        cdef const unsigned char *k = ikey
        cdef const unsigned char *v = value
        if self.add(k, len(ikey), v, len(value)) != FDB_OK:
            raise self.error

    def add_range_del(self, bytes start not None, bytes end not None, seq):
        """Records the range tombstone [start, end) at seq."""
        if self.finished:
            raise ValueError("add_range_del() after finish() or abandon()")
        if not 0 <= seq <= FDB_MAX_SEQ:
            raise ValueError(f"seq must be in 0..{FDB_MAX_SEQ}, got {seq}")
        self.range_dels.add((start, end, int(seq)))
        if seq < self.min_seq: self.min_seq = seq
        if seq > self.max_seq: self.max_seq = seq

    def warm(self, BlockCache cache, file_number):
        """Put each data block into `cache` under (file_number, offset) as it
        is written, while the cache has free room (RocksDB's
        prepopulate_block_cache): the blocks of a flush are the newest data,
        the likeliest to be read next, and are already decompressed here.
        abandon() takes them out again."""
        self.warm_file = file_number
        self.warm_cache = cache

    @property
    def file_size_estimate(self):
        """The size the file would have if finished now (about)."""
        return self.size_estimate()

    cdef uint64_t size_estimate(self) noexcept nogil:
        # Queued blocks as they will be stored: compressed as the written ones
        # were, plus trailers and index entries.
        cdef uint64_t pending = self.pend_raw_len
        if self.raw_written:
            pending = pending * self.stored_written // self.raw_written
        # An index entry: its key, three varint lengths, two short varints, the bounds.
        pending += self.pend_keys_len + self.npend * (_BLOCK_TRAILER_SIZE + 3 + 8 + _INDEX_BOUNDS)
        return (self.offset + pending + block_builder_estimate(&self.data_block)
                + block_builder_estimate(&self.index_block) + _FOOTER_SIZE)

    cdef dict _props(self):
        cdef bint empty = self.num_entries == 0
        cdef bint no_seq = empty and not self.range_dels
        return {
            "num_entries": self.num_entries,
            "num_deletes": self.num_deletes,
            "num_range_dels": len(self.range_dels),
            "num_data_blocks": self.num_data_blocks,
            "min_ts": self.min_ts,
            "max_ts": self.max_ts,
            "min_expire_at": self.min_exp,
            "max_expire_at": self.max_exp,
            "min_seq": 0 if no_seq else self.min_seq,
            "max_seq": 0 if no_seq else self.max_seq,
            "smallest_key": None if empty else (<const char *>self.first_key)[:self.first_key_len],
            "largest_key": None if empty else (<const char *>self.last_key)[:self.last_key_len],
            "raw_key_bytes": self.raw_key_bytes,
            "raw_value_bytes": self.raw_value_bytes,
            "data_size": 0,
        }

    def finish(self):
        """Writes the meta blocks and footer, fsyncs and closes the file.
        Returns the properties (docs/FORMAT.md, "Properties block") plus
        file_size."""
        cdef int rc
        cdef size_t n
        cdef bytearray filt
        cdef uint8_t *fp
        if self.finished:
            raise ValueError("finish() after finish() or abandon()")
        if self.status != FDB_OK:
            raise self.error
        try:
            with nogil:
                rc = self._cut_block()
                if rc == FDB_OK:
                    rc = self._write_pending()
            if rc != FDB_OK:
                raise self.error
            props = self._props()
            props["data_size"] = self.offset

            rd = _PyBlockBuilder()
            for start, end, seq in sorted(self.range_dels, key=lambda t: (t[0], -t[2], t[1])):
                rd.add(range_del_key(start, seq), end)
            rd_handle = self._write_block(rd.finish())

            n = bloom_builder_size(&self.bloom)
            filt = bytearray(n)
            if n:
                fp = filt
                with nogil:
                    bloom_builder_write(&self.bloom, fp)
            bloom_handle = self._write_block(bytes(filt))

            stored = dict(props)
            for f in _PROPS_KEY_FIELDS:
                if stored[f] is not None:
                    stored[f] = stored[f].hex()
            props_handle = self._write_block(ujson.dumps(stored, sort_keys=True).encode())

            if block_builder_finish(&self.index_block) != FDB_OK:
                raise MemoryError("out of memory building a table")
            index_handle = self._write_block(
                (<const char *>self.index_block.buf)[:self.index_block.len])

            footer = b"".join(_handle.pack(*h) for h in
                              (index_handle, bloom_handle, props_handle, rd_handle))
            footer += FORMAT_VERSION.to_bytes(4, "little")
            footer += crc32c(footer).to_bytes(4, "little")
            footer += TABLE_MAGIC
            if reserve_bytes(&self.wbuf, &self.wbuf_cap, self.wbuf_len + _FOOTER_SIZE) != FDB_OK:
                raise MemoryError("out of memory building a table")
            memcpy(self.wbuf + self.wbuf_len, <const char *>footer, _FOOTER_SIZE)
            self.wbuf_len += _FOOTER_SIZE
            self.offset += _FOOTER_SIZE
            self._flush_wbuf()
            os.fsync(self.fd)
            fd, self.fd = self.fd, -1
            os.close(fd)
        except OSError as e:
            self._fail(FDB_ERR_IO, e)
            raise
        except BaseException as e:
            self._fail(FDB_ERR_PYTHON, e)
            raise
        self.finished = True
        self._free()
        props["file_size"] = self.offset
        return props

    def abandon(self):
        """Closes and deletes the file; the builder is dead.  Idempotent."""
        self.finished = True
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.warm_cache is not None:
            self.warm_cache.erase_file(self.warm_file)
            self.warm_cache = None
        self._free()

    def __repr__(self):
        return f"TableBuilder({self.path!r}, entries={self.num_entries})"


# The C-level add() (table.pxd) and the Python-level add(ikey, value) share a
# name, which Cython cannot declare twice in one class: publish the Python
# method under "add" in the type's dict, where only Python lookups see it.
(<dict>(<PyTypeObject *>TableBuilder).tp_dict)["add"] = TableBuilder.add_entry
PyType_Modified(<PyTypeObject *>TableBuilder)


# -- reader --------------------------------------------------------------------

cdef extern from "fdb_io.h" nogil:
    ctypedef long ssize_t
    ssize_t fdb_pread_cached(int fd, void *buf, size_t n, uint64_t off)
    ssize_t fdb_pread_full(int fd, void *buf, size_t n, uint64_t off)


cdef inline void _trusted_meta(const CBlockIter *blk, BlockMeta *meta) noexcept nogil:
    """What the block cache keeps beside a block whose restart array
    block_iter_reset accepted (the array is in the CPU caches then)."""
    cdef uint32_t i
    meta.data_end = blk.data_end
    meta.num_restarts = blk.num_restarts
    meta.trusted = True
    meta.n_restart_offsets = 0
    if blk.num_restarts <= BLOCK_META_RESTARTS and blk.data_end <= 0xFFFF:
        for i in range(blk.num_restarts):
            meta.restart_offsets[i] = <uint16_t>fdb_get_u32le(blk.data + blk.data_end + 4 * i)
        meta.n_restart_offsets = blk.num_restarts


cdef inline void _prefetch_restart_entries(const uint8_t *data, const BlockMeta *meta) noexcept nogil:
    """A cached block is usually cold in the CPU caches, and a seek reads
    the restart array, then the restart entries: asking for the entries now
    overlaps their misses with the array's (and the bytes object's header)."""
    cdef uint32_t i
    for i in range(meta.n_restart_offsets):
        fdb_prefetch(data + meta.restart_offsets[i])


# The index search.  A binary search over the blocks' last keys misses the
# CPU cache at every step (an IndexEntry, then its key).  So each key also
# gets a "normalized prefix" in a dense array: its user key after the bytes
# every key of the table shares, as a big-endian integer that orders keys as
# the keys do (a < b gives norm(a) <= norm(b)).  When every such remainder
# fits in 7 bytes (a table of sensor ids does), the norm is exact (7 bytes,
# zero-padded, then the length): equal norms mean equal user keys, which a
# second dense array, the keys' ts, orders.  Whole keys are compared only
# where both arrays tie.

cdef struct IndexSearch:
    const IndexEntry *index
    const uint8_t *keys
    const uint64_t *norm      # per entry; NULL: whole keys only
    const int64_t *ts         # per entry, with exact norms; else NULL
    const uint8_t *prefix     # the user-key bytes every key starts with
    size_t skip               # their count
    Py_ssize_t n


cdef inline uint64_t _norm(const uint8_t *ukey, size_t ulen, size_t skip, bint exact) noexcept nogil:
    cdef uint64_t v = 0
    cdef size_t i, rem = ulen - skip, width = 7 if exact else 8
    for i in range(width):
        v = (v << 8) | (ukey[skip + i] if i < rem else 0)
    if exact:
        v = (v << 8) | (rem if rem < 255 else 255)
    return v


ctypedef fused _sorted_key:
    uint64_t
    int64_t


cdef inline Py_ssize_t _first(const _sorted_key *a, Py_ssize_t lo, Py_ssize_t hi,
                              _sorted_key v, bint after) noexcept nogil:
    """The first i in [lo, hi) with a[i] >= v (a[i] > v if after), else hi."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if a[mid] < v or (after and a[mid] == v):
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef Py_ssize_t _index_lower_bound(const IndexSearch *s, const uint8_t *t,
                                   size_t tn) noexcept nogil:
    """The first block whose last key is >= t (n if none)."""
    cdef Py_ssize_t lo = 0, hi = s.n, mid, run
    cdef size_t tu = tn - FDB_TRAILER_SIZE
    cdef uint64_t nt
    cdef int64_t tts
    if s.norm != NULL and tu >= s.skip and memcmp(t, s.prefix, s.skip) == 0:
        nt = _norm(t, tu, s.skip, s.ts != NULL)
        lo = _first(s.norm, 0, s.n, nt, False)
        hi = _first(s.norm, lo, s.n, nt, True)
        if s.ts != NULL and lo < hi:      # one user key: ts orders the run
            # The caller reads the answer's IndexEntry next, a miss of its
            # own: ask for the run's entries while ts narrows it down.
            if hi - lo < 8:
                for run in range(lo, hi + 1 if hi < s.n else hi):
                    fdb_prefetch(&s.index[run])
            tts = fdb_ikey_ts(t, tn)
            lo = _first(s.ts, lo, hi, tts, False)
            hi = _first(s.ts, lo, hi, tts, True)
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if fdb_ikey_cmp(s.keys + s.index[mid].key_off, s.index[mid].key_len, t, tn) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef class _Index:
    """A table's decoded index block: owns its C arrays.  A TableReader
    and each of its iterators hold a reference, so releasing the reader's
    index (TableReader.release_meta) frees it only when no iterator uses it."""
    cdef IndexEntry *index
    cdef uint8_t *keys
    cdef uint64_t *norm
    cdef int64_t *ts
    cdef size_t n
    cdef size_t nbytes
    cdef IndexSearch search

    def __cinit__(self):
        self.index = NULL
        self.keys = NULL
        self.norm = NULL
        self.ts = NULL

    def __dealloc__(self):
        free(self.index)
        free(self.keys)
        free(self.norm)
        free(self.ts)

    cdef int _prepare_search(self) except -1:
        """Fills `search`, with the norms (and ts) when the table has keys."""
        cdef size_t i, skip = 0, fl, ll, ulen
        cdef bint exact = True
        cdef const uint8_t *first
        cdef const uint8_t *last
        cdef const uint8_t *k
        self.search.index = self.index
        self.search.keys = self.keys
        self.search.n = self.n
        self.search.norm = NULL
        self.search.ts = NULL
        self.search.prefix = self.keys
        self.search.skip = 0
        if self.n == 0:
            return 0
        # Sorted keys: what the first and the last share, all share.
        first = self.keys + self.index[0].key_off
        fl = self.index[0].key_len - FDB_TRAILER_SIZE
        last = self.keys + self.index[self.n - 1].key_off
        ll = self.index[self.n - 1].key_len - FDB_TRAILER_SIZE
        while skip < fl and skip < ll and first[skip] == last[skip]:
            skip += 1
        for i in range(self.n):
            if self.index[i].key_len - FDB_TRAILER_SIZE - skip > 7:
                exact = False
                break
        self.norm = <uint64_t *>malloc(self.n * sizeof(uint64_t))
        if exact:
            self.ts = <int64_t *>malloc(self.n * sizeof(int64_t))
        if self.norm == NULL or (exact and self.ts == NULL):
            raise MemoryError()
        for i in range(self.n):
            k = self.keys + self.index[i].key_off
            ulen = self.index[i].key_len - FDB_TRAILER_SIZE
            self.norm[i] = _norm(k, ulen, skip, exact)
            if exact:
                self.ts[i] = fdb_ikey_ts(k, self.index[i].key_len)
        self.search.norm = self.norm
        self.search.ts = self.ts if exact else NULL
        self.search.prefix = first
        self.search.skip = skip
        self.nbytes += self.n * (sizeof(uint64_t) + (sizeof(int64_t) if exact else 0))
        return 0


# -- the blocks readers were using, for warming after a compaction --------------

cdef struct _KeyRange:
    # [lo, hi] in internal-key order; lo NULL: from the first key on.
    const uint8_t *lo
    size_t lo_len
    const uint8_t *hi
    size_t hi_len


cdef int _cmp_lo(const void *a, const void *b) noexcept nogil:
    cdef const _KeyRange *x = <const _KeyRange *>a
    cdef const _KeyRange *y = <const _KeyRange *>b
    if x.lo == NULL or y.lo == NULL:
        return (y.lo == NULL) - (x.lo == NULL)
    return fdb_ikey_cmp(x.lo, x.lo_len, y.lo, y.lo_len)


cdef class HotRanges:
    """HotRanges(tables, cache): the key ranges of the data blocks of
    `tables` that `cache` holds now, as sorted, disjoint intervals.

    Taken just before a compaction's inputs leave the cache, it tells
    TableReader.warm which blocks of the outputs readers were using (a
    block of table t covers (last key of the block before, its last key]).
    Tables whose index is released (release_meta) count as cold."""
    cdef bytes keys           # the ranges' bounds point into these bytes
    cdef _KeyRange *r
    cdef Py_ssize_t n

    def __cinit__(self):
        self.r = NULL
        self.n = 0

    def __dealloc__(self):
        free(self.r)

    def __init__(self, tables, BlockCache cache not None):
        cdef TableReader t
        cdef _Index h
        cdef size_t i, m, key_bytes = 0, pos = 0
        cdef const IndexEntry *e
        cdef uint8_t *buf
        hot = []                             # (_Index, file, block) of each cached block
        for t in tables:
            if t.index_holder is None:
                continue
            h = <_Index>t.index_holder
            for i in range(h.n):
                if cache.contains(t.cache_file, h.index[i].offset):
                    hot.append((h, i))
                    key_bytes += h.index[i].key_len + (h.index[i - 1].key_len if i else 0)
        if not hot:
            return
        self.keys = PyBytes_FromStringAndSize(NULL, key_bytes)
        buf = <uint8_t *>PyBytes_AS_STRING(self.keys)
        self.r = <_KeyRange *>malloc(len(hot) * sizeof(_KeyRange))
        if self.r == NULL:
            raise MemoryError()
        for h, i in hot:
            e = &h.index[i]
            if i == 0:
                self.r[self.n].lo = NULL
                self.r[self.n].lo_len = 0
            else:
                memcpy(buf + pos, h.keys + e[-1].key_off, e[-1].key_len)
                self.r[self.n].lo = buf + pos
                self.r[self.n].lo_len = e[-1].key_len
                pos += e[-1].key_len
            memcpy(buf + pos, h.keys + e.key_off, e.key_len)
            self.r[self.n].hi = buf + pos
            self.r[self.n].hi_len = e.key_len
            pos += e.key_len
            self.n += 1
        qsort(self.r, self.n, sizeof(_KeyRange), _cmp_lo)
        m = 0                                # merge the overlapping ones
        for i in range(<size_t>self.n):
            if m and (self.r[i].lo == NULL or fdb_ikey_cmp(self.r[i].lo, self.r[i].lo_len,
                                                           self.r[m - 1].hi, self.r[m - 1].hi_len) <= 0):
                if fdb_ikey_cmp(self.r[i].hi, self.r[i].hi_len,
                                self.r[m - 1].hi, self.r[m - 1].hi_len) > 0:
                    self.r[m - 1].hi = self.r[i].hi
                    self.r[m - 1].hi_len = self.r[i].hi_len
            else:
                self.r[m] = self.r[i]
                m += 1
        self.n = m

    def __len__(self):
        return self.n

    def ranges(self):
        """[(lo or None, hi)] as internal keys (tests)."""
        return [(None if self.r[i].lo == NULL else (<const char *>self.r[i].lo)[:self.r[i].lo_len],
                 (<const char *>self.r[i].hi)[:self.r[i].hi_len]) for i in range(self.n)]

    cdef bint overlaps(self, const uint8_t *lo, size_t lo_len, const uint8_t *hi, size_t hi_len,
                       Py_ssize_t *cursor) noexcept nogil:
        """Whether [lo, hi] (lo NULL: from the start) meets a range.  Ask in
        increasing key order: *cursor (start at 0) skips the ranges passed."""
        cdef Py_ssize_t j = cursor[0]
        while j < self.n and lo != NULL and fdb_ikey_cmp(self.r[j].hi, self.r[j].hi_len,
                                                         lo, lo_len) < 0:
            j += 1
        cursor[0] = j
        return j < self.n and (self.r[j].lo == NULL or
                               fdb_ikey_cmp(self.r[j].lo, self.r[j].lo_len, hi, hi_len) <= 0)


cdef int _check_stored(const uint8_t *b, size_t stored, bint verify, uint8_t *typ,
                       uint64_t *ulen) noexcept nogil:
    """A stored block (its bytes, then the trailer) read without the GIL:
    FDB_OK with its compression type and decompressed length when its
    checksum (if verify), type and length header hold, else
    FDB_ERR_CORRUPTION (the caller reads it again with the GIL, or leaves
    it to a reader, and _read_block says what is wrong)."""
    cdef size_t header
    if verify and crc32c_extend(0, b, stored + 1) != fdb_get_u32le(b + stored + 1):
        return FDB_ERR_CORRUPTION
    typ[0] = b[stored]
    if typ[0] == _COMPRESSION_NONE:
        ulen[0] = stored
        return FDB_OK
    if (typ[0] == _COMPRESSION_SNAPPY and fdb_snappy_ulen(b, stored, ulen, &header) == 0
            and ulen[0] <= _SNAPPY_MAX_RATIO * stored + 64):
        return FDB_OK
    return FDB_ERR_CORRUPTION


# One block TableReader.warm reads.
cdef struct _WarmBlock:
    Py_ssize_t i              # its index entry
    size_t at                 # where its stored bytes are in the batch buffer
    uint8_t typ
    uint64_t ulen             # its size decompressed
    uint8_t *dst              # the bytes object it decompresses into
    BlockMeta meta


cdef Py_ssize_t _warm_read(int fd, uint64_t base, const IndexEntry *index, _WarmBlock *wb,
                           Py_ssize_t nb, uint8_t *buf) noexcept nogil:
    """Reads blocks wb[0:nb] into buf and checks their checksums and
    lengths; returns how many passed before the first that did not."""
    cdef Py_ssize_t k
    cdef size_t stored
    for k in range(nb):
        stored = index[wb[k].i].size
        if (fdb_pread_full(fd, buf + wb[k].at, stored + _BLOCK_TRAILER_SIZE,
                           base + index[wb[k].i].offset) != <ssize_t>(stored + _BLOCK_TRAILER_SIZE)
                or _check_stored(buf + wb[k].at, stored, True, &wb[k].typ, &wb[k].ulen) != FDB_OK):
            return k
    return nb


cdef Py_ssize_t _warm_decode(const IndexEntry *index, _WarmBlock *wb, Py_ssize_t nb,
                             const uint8_t *buf, CBlockIter *blk) noexcept nogil:
    """Decompresses blocks wb[0:nb] into their dst and checks their restart
    arrays as a reader would; returns how many passed before the first that
    did not."""
    cdef Py_ssize_t k
    for k in range(nb):
        if wb[k].typ == _COMPRESSION_SNAPPY and fdb_snappy_decompress(
                buf + wb[k].at, index[wb[k].i].size, wb[k].dst, wb[k].ulen) != 0:
            return k
        if block_iter_reset(blk, wb[k].dst, wb[k].ulen) != FDB_OK:
            return k
        _trusted_meta(blk, &wb[k].meta)
    return nb


cdef class TableReader(Source):
    """An open SSTable: TableReader(path, file_number, block_cache=None, base=0, size=None).

    The table is the whole file at `path`, or, given `size`, the `size`
    bytes at offset `base` of it (a table inside a single-file store,
    flowdb._single_file); every offset in the table stays relative to its
    first byte.  Raises CorruptionError(message, path, offset) for a missing file and for
    any inconsistency in the footer or the meta blocks; OSError for other
    failures to open or read the file."""

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.index = NULL
        self.index_keys = NULL
        self.num_blocks = 0
        self.bloom = b""
        self.bloom_ptr = NULL
        self.bloom_len = 0
        self.props = {}
        self.index_holder = None

    def __init__(self, path, file_number, block_cache=None, base=0, size=None):
        self.path = os.fspath(path)
        self.base = base
        self.extent_size = -1 if size is None else size
        self.file_number = file_number
        self.block_cache = block_cache
        if block_cache is not None:
            self.cache_file = file_number
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Whoever opens a table believes it exists (the manifest lists it).
            raise CorruptionError("SSTable file is missing", self.path) from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def __dealloc__(self):
        if self.fd >= 0:
            c_close(self.fd)

    def close(self):
        """Closes the file (idempotent).  Iterators still in use then fail."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"TableReader({self.path!r}, file_number={self.file_number})"

    def _corrupt(self, message, offset):
        # The offset in the file: a single-file store's table starts at base.
        return CorruptionError(message, self.path, self.base + offset)

    def _open(self):
        size = os.fstat(self.fd).st_size - self.base if self.extent_size < 0 else self.extent_size
        self.file_size = size
        if size < FOOTER_SIZE:
            raise self._corrupt(f"file of {size} bytes is shorter than the "
                                f"{FOOTER_SIZE}-byte footer", 0)
        fstart = size - FOOTER_SIZE
        footer = os.pread(self.fd, FOOTER_SIZE, self.base + fstart)
        if len(footer) != FOOTER_SIZE:
            raise self._corrupt("short read of the footer", fstart)
        if footer[FOOTER_SIZE - 8:] != TABLE_MAGIC:
            raise self._corrupt("bad magic number (not an SSTable)", size - 8)
        version = int.from_bytes(footer[4 * BLOCK_HANDLE_SIZE:4 * BLOCK_HANDLE_SIZE + 4], "little")
        if version != FORMAT_VERSION:
            raise self._corrupt(f"unsupported table format version {version} "
                                f"(this flowdb reads version {FORMAT_VERSION})", size - 16)
        crc = int.from_bytes(footer[4 * BLOCK_HANDLE_SIZE + 4:4 * BLOCK_HANDLE_SIZE + 8], "little")
        if crc32c(footer[:4 * BLOCK_HANDLE_SIZE + 4]) != crc:
            raise self._corrupt("footer checksum mismatch", fstart)
        index_h, bloom_h, props_h, rd_h = [_handle.unpack_from(footer, BLOCK_HANDLE_SIZE * i)
                                          for i in range(4)]
        # The meta blocks follow each other, then the footer.
        pos = rd_h[0]
        for h in (rd_h, bloom_h, props_h, index_h):
            if h[0] != pos or h[1] > fstart:
                raise self._corrupt("block handles in the footer do not tile the file", fstart)
            pos = h[0] + h[1] + BLOCK_TRAILER_SIZE
        if pos != fstart:
            raise self._corrupt("block handles in the footer do not tile the file", fstart)
        self.data_end = rd_h[0]

        props_raw = self._read_block(props_h[0], props_h[1], True, "properties block")
        self.props = self._parse_props(props_raw, props_h[0])
        self.bloom = self._read_block(bloom_h[0], bloom_h[1], True, "bloom block")
        if len(self.bloom) == 1 or (len(self.bloom) > 1 and
                                     not 1 <= self.bloom[len(self.bloom) - 1] <= FDB_BLOOM_MAX_K):
            raise self._corrupt("bad bloom filter", bloom_h[0])
        self.bloom_ptr = self.bloom
        self.bloom_len = len(self.bloom)
        self.bloom_off, self.bloom_size = bloom_h
        self.index_off, self.index_size = index_h
        self._load_range_dels(self._read_block(rd_h[0], rd_h[1], True, "range-del block"), rd_h[0])
        self._load_index(self._read_block(index_h[0], index_h[1], True, "index block"), index_h[0])
        self.meta_bytes = (<_Index>self.index_holder).nbytes + len(self.bloom)

        p = self.props
        if p["num_data_blocks"] != self.num_blocks or p["data_size"] != self.data_end:
            raise self._corrupt("properties disagree with the index", props_h[0])
        if p["num_range_dels"] != len(self.range_dels):
            raise self._corrupt("properties disagree with the range-del block", props_h[0])
        if (p["num_entries"] == 0) != (self.num_blocks == 0):
            raise self._corrupt("properties disagree with the index", props_h[0])
        self.min_ts = p["min_ts"]
        self.max_ts = p["max_ts"]
        p["file_size"] = size

    def _parse_props(self, bytes raw, uint64_t offset):
        try:
            obj = ujson.loads(raw)
        except (ValueError, TypeError):
            raise self._corrupt("properties block is not JSON", offset) from None
        if not isinstance(obj, dict):
            raise self._corrupt("properties block is not a JSON object", offset)
        props = {}
        for f in _PROPS_INT_FIELDS:
            v = obj.get(f)
            if type(v) is not int or not INT64_MIN <= v <= 2**64 - 1:
                raise self._corrupt(f"property {f} missing or not an integer", offset)
            props[f] = v
        for f in _PROPS_KEY_FIELDS:
            v = obj.get(f, 0)
            if v is None:
                props[f] = None
                continue
            try:
                props[f] = bytes.fromhex(v)
            except (ValueError, TypeError):
                raise self._corrupt(f"property {f} is not a hex key", offset) from None
        for f, v in obj.items():          # fields of later versions pass through
            if f not in props:
                props[f] = v
        return props

    cdef bytes _read_block(self, uint64_t offset, uint64_t size, bint verify, str what):
        """The block stored at offset (size bytes + trailer), checked and
        decompressed."""
        cdef int fd = self.fd, err
        cdef size_t n = size + BLOCK_TRAILER_SIZE
        cdef ssize_t got
        cdef char *buf
        if fd < 0:
            raise OSError(_errno.EBADF, "table is closed", self.path)
        raw = PyBytes_FromStringAndSize(NULL, n)
        buf = PyBytes_AS_STRING(raw)
        # From the page cache with the GIL held; from the disk without it
        # (include/fdb_io.h).
        got = fdb_pread_cached(fd, buf, n, self.base + offset)
        if got < 0 and errno == EAGAIN:
            with nogil:
                got = fdb_pread_full(fd, buf, n, self.base + offset)
        if got < 0:
            err = errno
            raise OSError(err, os.strerror(err), self.path)
        if <size_t>got != n:
            raise self._corrupt(f"{what} cut short", offset)
        typ = raw[size]
        if verify and crc32c_extend(0, buf, size + 1) != fdb_get_u32le(<uint8_t *>buf + size + 1):
            raise self._corrupt(f"{what} checksum mismatch", offset)      # crc of stored | type
        if typ == COMPRESSION_NONE:
            return raw[:size]
        if typ == COMPRESSION_SNAPPY:
            out = decompress_bytes(<const uint8_t *><const char *>raw, size,
                                   _SNAPPY_MAX_RATIO * size + 64)
            if out is None:
                raise self._corrupt(f"{what} does not decompress", offset)
            return out
        raise self._corrupt(f"{what} has unknown compression type {typ}", offset)

    cdef bytes _fetch_block(self, size_t i, bint verify):
        """Data block i from the file.  (TableIterator._load looks in the
        cache first, and fills it; it reads through its own index.)"""
        self.ensure_meta()
        cdef IndexEntry *e = &self.index[i]
        fdb_count(&self.blocks_read, 1)
        return self._read_block(e.offset, e.size, verify, "data block")

    cdef bytes _meta_block(self, uint64_t offset, uint64_t size, str what):
        """A meta block (index, bloom) through the block cache."""
        cdef BlockMeta meta
        cdef BlockCache cache = self.block_cache
        cdef bytes data = None
        if cache is not None:
            data = cache.lookup(self.cache_file, offset, &meta)
        if data is None:
            data = self._read_block(offset, size, True, what)
            fdb_count(&self.blocks_read, 1)
            if cache is not None:
                untrusted_meta(&meta)
                cache.insert(self.cache_file, offset, data, &meta)
        return data

    cdef bytes _data_block(self, const IndexEntry *e, bint fill_cache, bint verify,
                           CBlockIter *blk):
        """Only blocks read with verify whose restart array passed
        block_iter_reset are cached, together with what that check found, so
        a cached block is trusted: block_iter_reset_trusted skips the check
        (the entries are still bounds-checked as they are decoded).  A block
        read without checksum verification is never cached and always fully
        checked."""
        cdef BlockCache cache = self.block_cache
        cdef BlockMeta meta
        cdef bytes data = None
        if cache is not None:
            data = cache.lookup(self.cache_file, e.offset, &meta)
        if data is not None:
            fdb_count(&self.blocks_loaded, 1)
            if meta.trusted:
                _prefetch_restart_entries(<const uint8_t *><const char *>data, &meta)
                block_iter_reset_trusted(blk, <const uint8_t *><const char *>data, len(data),
                                         meta.data_end, meta.num_restarts)
                return data
            if block_iter_reset(blk, <const uint8_t *><const char *>data, len(data)) != FDB_OK:
                raise self._block_error(blk, e.offset)
            return data
        fdb_count(&self.blocks_read, 1)
        data = self._read_block(e.offset, e.size, verify, "data block")
        fdb_count(&self.blocks_loaded, 1)
        if block_iter_reset(blk, <const uint8_t *><const char *>data, len(data)) != FDB_OK:
            raise self._block_error(blk, e.offset)
        cache = self.block_cache            # None once the table is retired (detach_cache)
        if fill_cache and verify and cache is not None:
            _trusted_meta(blk, &meta)
            cache.insert(self.cache_file, e.offset, data, &meta)
        return data

    cdef object _block_error(self, const CBlockIter *blk, uint64_t offset):
        if blk.base.status == FDB_ERR_NOMEM:
            return MemoryError()
        cdef const char *msg = blk.err_msg
        text = (<bytes>msg).decode() if msg != NULL else "unreadable"
        return self._corrupt(f"corrupt data block: {text} (byte {blk.err_off} "
                             f"of the decompressed block)", offset)

    cdef object find_version(self, const uint8_t *target, size_t tn, bint fill_cache,
                             bint verify_checksums, EntryHit *hit):
        # The entry is in the first block whose last key is >= target, if
        # that block's ts bounds admit ts: no iterator, one block.
        cdef CBlockIter blk
        cdef int64_t ts = fdb_ikey_ts(target, tn)
        cdef _Index h
        cdef const IndexEntry *e
        cdef Py_ssize_t i
        hit.found = False
        while self.index_holder is None:
            self.ensure_meta()
        h = <_Index>self.index_holder       # ours, whatever release_meta does meanwhile
        i = _index_lower_bound(&h.search, target, tn)
        if i >= <Py_ssize_t>h.n:
            return None
        e = &h.index[i]
        if ts < e.min_ts or ts > e.max_ts:
            return None
        block_iter_init(&blk)
        try:
            data = self._data_block(e, fill_cache, verify_checksums, &blk)
            blk.base.seek(&blk.base, target, tn)
            if blk.base.status != FDB_OK:
                raise self._block_error(&blk, e.offset)
            if not blk.base.valid:
                raise self._corrupt("data block ends before its index key", e.offset)
            return data if entry_hit(blk.base.key, blk.base.key_len, blk.base.value,
                                     blk.base.value_len, target, tn, HIT_SAME_TS, hit) else None
        finally:
            block_iter_free(&blk)

    cdef object find_floor(self, const uint8_t *target, size_t tn, uint64_t snapshot,
                           bint fill_cache, bint verify_checksums, EntryHit *hit):
        # One pass over one block (block_iter_floor), which also finds the
        # newest visible version of the floor's ts unless its versions may
        # begin in the block before.
        cdef CBlockIter blk
        cdef BlockFloor f
        cdef _Index h
        cdef Py_ssize_t i
        hit.found = False
        f.found = False
        while self.index_holder is None:
            self.ensure_meta()
        h = <_Index>self.index_holder
        i = _index_lower_bound(&h.search, target, tn)
        block_iter_init(&blk)
        try:
            if i < <Py_ssize_t>h.n:
                data = self._data_block(&h.index[i], fill_cache, verify_checksums, &blk)
                if block_iter_floor(&blk, target, tn, tn - FDB_TRAILER_SIZE, snapshot,
                                    &f) != FDB_OK:
                    raise self._block_error(&blk, h.index[i].offset)
            if not f.found:
                # Every key of the blocks before i is < target.
                i -= 1
                if i < 0:
                    return None
                data = self._data_block(&h.index[i], fill_cache, verify_checksums, &blk)
                if block_iter_floor(&blk, target, tn, tn - FDB_TRAILER_SIZE, snapshot,
                                    &f) != FDB_OK:
                    raise self._block_error(&blk, h.index[i].offset)
                if not f.found:
                    raise self._corrupt("data block holds no entry", h.index[i].offset)
        finally:
            block_iter_free(&blk)
        if not f.same_ukey:
            return None
        hit.found = True
        hit.ts = f.ts
        hit.seq = f.seq
        hit.kind = f.kind
        hit.value = f.value
        hit.value_len = f.value_len
        hit.version = VERSION_UNKNOWN
        if f.group_whole and not (f.group_at_start and i > 0):
            if f.version_found:
                hit.seq = f.version_seq
                hit.kind = f.version_kind
                hit.value = f.version_value
                hit.value_len = f.version_value_len
                hit.version = VERSION_FOUND
            else:
                hit.version = VERSION_NONE
        return data

    def release_meta(self):
        """Drop the in-memory index and bloom filter; returns the bytes freed.

        Reads go on: iterators already made keep their index; the next
        new_iterator() (or block_meta()) loads both again through the block
        cache, and meanwhile may_contain answers True.  Call with the GIL
        (every caller of may_contain holds it too)."""
        if self.index_holder is None:
            return 0
        freed = self.meta_bytes
        self.index = NULL
        self.index_keys = NULL
        self.index_holder = None
        self.bloom_ptr = NULL
        self.bloom_len = 0
        self.bloom = b""
        self.meta_bytes = 0
        return freed

    cpdef ensure_meta(self):
        """Load the index and bloom filter again if release_meta dropped them."""
        if self.index_holder is not None:
            return
        bloom = self._meta_block(self.bloom_off, self.bloom_size, "bloom block")
        self._load_index(self._meta_block(self.index_off, self.index_size, "index block"),
                         self.index_off)
        self.bloom = bloom
        self.bloom_ptr = self.bloom
        self.bloom_len = len(self.bloom)
        self.meta_bytes = (<_Index>self.index_holder).nbytes + len(self.bloom)
        self.meta_loads += 1

    @property
    def meta_loaded(self):
        return self.index_holder is not None

    cdef _load_index(self, bytes block, uint64_t offset):
        cdef CBlockIter it
        cdef size_t n = 0, key_bytes = 0, i, kpos = 0
        cdef uint64_t off, size, expect = 0
        cdef const uint8_t *v
        cdef const uint8_t *vend
        cdef IndexEntry *e
        cdef _Index holder = _Index.__new__(_Index)
        block_iter_init(&it)
        try:
            for npass in range(2):
                if block_iter_reset(&it, <const uint8_t *><const char *>block, len(block)) != FDB_OK:
                    raise self._corrupt(f"index block: {(<bytes>it.err_msg).decode()}", offset)
                it.base.seek_to_first(&it.base)
                i = 0
                while it.base.valid:
                    if npass == 0:
                        n += 1
                        key_bytes += it.base.key_len
                    else:
                        e = &holder.index[i]
                        v = it.base.value
                        vend = v + it.base.value_len
                        v = fdb_get_varint(v, vend, &off)
                        if v != NULL:
                            v = fdb_get_varint(v, vend, &size)
                        if v == NULL or vend - v != _INDEX_BOUNDS:
                            raise self._corrupt(f"index entry {i}: bad value", offset)
                        if off != expect or size > self.data_end - off:
                            raise self._corrupt(f"index entry {i}: data blocks do not tile the file",
                                                offset)
                        expect = off + size + BLOCK_TRAILER_SIZE
                        e.offset = off
                        e.size = size
                        e.min_ts = <int64_t>fdb_get_u64le(v)
                        e.max_ts = <int64_t>fdb_get_u64le(v + 8)
                        e.min_expire_at = <int64_t>fdb_get_u64le(v + 16)
                        e.max_expire_at = <int64_t>fdb_get_u64le(v + 24)
                        if e.min_ts > e.max_ts or e.min_expire_at > e.max_expire_at:
                            raise self._corrupt(f"index entry {i}: bad bounds", offset)
                        memcpy(holder.keys + kpos, it.base.key, it.base.key_len)
                        e.key_off = kpos
                        e.key_len = it.base.key_len
                        kpos += e.key_len
                        if i and fdb_ikey_cmp(holder.keys + holder.index[i - 1].key_off,
                                              holder.index[i - 1].key_len,
                                              holder.keys + e.key_off, e.key_len) >= 0:
                            raise self._corrupt(f"index entry {i}: keys out of order", offset)
                    i += 1
                    it.base.next(&it.base)
                if it.base.status != FDB_OK:
                    if it.err_msg == NULL:
                        raise MemoryError()
                    raise self._corrupt(f"index block: {(<bytes>it.err_msg).decode()} "
                                        f"(byte {it.err_off} of the block)", offset)
                if npass == 0:
                    holder.index = <IndexEntry *>malloc(max(n, 1) * sizeof(IndexEntry))
                    holder.keys = <uint8_t *>malloc(max(key_bytes, 1))
                    if holder.index == NULL or holder.keys == NULL:
                        raise MemoryError()
            if expect != self.data_end:
                raise self._corrupt("index does not cover the data blocks", offset)
            holder.n = n
            holder.nbytes = max(n, 1) * sizeof(IndexEntry) + max(key_bytes, 1)
            holder._prepare_search()
            self.index_holder = holder
            self.index = holder.index
            self.index_keys = holder.keys
            self.num_blocks = n
        finally:
            block_iter_free(&it)

    cdef _load_range_dels(self, bytes block, uint64_t offset):
        cdef CBlockIter it
        cdef list out = []
        block_iter_init(&it)
        try:
            if block_iter_reset(&it, <const uint8_t *><const char *>block, len(block)) != FDB_OK:
                raise self._corrupt(f"range-del block: {(<bytes>it.err_msg).decode()}", offset)
            it.base.seek_to_first(&it.base)
            while it.base.valid:
                if (fdb_ikey_kind(it.base.key, it.base.key_len) != FDB_KIND_RANGE_DEL
                        or fdb_ikey_ts(it.base.key, it.base.key_len) != INT64_MIN):
                    raise self._corrupt("range-del block holds a key that is not a "
                                        "range delete", offset)
                out.append(((<const char *>it.base.key)[:it.base.key_len - FDB_TRAILER_SIZE],
                            (<const char *>it.base.value)[:it.base.value_len],
                            fdb_ikey_seq(it.base.key, it.base.key_len)))
                it.base.next(&it.base)
            if it.base.status != FDB_OK:
                if it.err_msg == NULL:
                    raise MemoryError()
                raise self._corrupt(f"range-del block: {(<bytes>it.err_msg).decode()}", offset)
        finally:
            block_iter_free(&it)
        self.range_dels = out

    # -- queries ----------------------------------------------------------------

    cdef bint may_contain(self, const unsigned char *ukey, size_t n) noexcept nogil:
        return bloom_may_contain(self.bloom_ptr, self.bloom_len, ukey, n)

    def may_contain_key(self, bytes ukey not None):
        """Python view of may_contain: False only if ukey is certainly absent."""
        cdef const unsigned char *p = ukey
        return bool(self.may_contain(p, len(ukey)))

    def detach_cache(self):
        """Stop using the block cache (lookups and inserts) from now on.

        The engine calls it when the table leaves the tree, before it erases
        the table's blocks from the cache: iterators of pinned views that
        still read the table then no longer refill the cache with blocks
        nobody else will ask for.  An iterator re-reads the field with the
        GIL right before each insert, so none slips in after the erase."""
        self.block_cache = None

    def block_meta(self):
        """[(offset, size, min_ts, max_ts, min_expire_at, max_expire_at)] per data block."""
        cdef size_t i
        cdef _Index h
        self.ensure_meta()
        h = <_Index>self.index_holder       # ours, whatever release_meta does meanwhile
        return [(h.index[i].offset, h.index[i].size, h.index[i].min_ts,
                 h.index[i].max_ts, h.index[i].min_expire_at,
                 h.index[i].max_expire_at) for i in range(h.n)]

    @property
    def num_data_blocks(self):
        return self.num_blocks

    def warm(self, HotRanges hot not None):
        """Reads into the block cache the data blocks whose key range meets
        `hot`, while it has free room (warming never evicts); returns how
        many it put.

        After a compaction the readers' blocks are those of the output, and
        a cold read costs a get about 10 us (pread, checksum, decompression,
        fresh memory): the compaction thread pays that instead, for the
        blocks readers were using, a batch at a time without the GIL.  A
        hint only: it stops quietly at a block it cannot read or check,
        which a reader of that block then reports."""
        cdef BlockCache cache = self.block_cache
        cdef _Index h
        cdef Py_ssize_t i = 0, cursor = 0, nb, ok, k
        cdef size_t need, room
        cdef const IndexEntry *e
        cdef _WarmBlock *wb = NULL
        cdef uint8_t *buf = NULL
        cdef size_t buf_cap = 0
        cdef CBlockIter blk
        cdef int fd = self.fd
        cdef bint go_on = True
        if cache is None or hot.n == 0 or fd < 0:
            return 0
        while self.index_holder is None:
            self.ensure_meta()
        h = <_Index>self.index_holder        # ours, whatever release_meta does meanwhile
        put = 0
        outs = [None] * _WARM_BLOCKS
        wb = <_WarmBlock *>malloc(_WARM_BLOCKS * sizeof(_WarmBlock))
        if wb == NULL:
            raise MemoryError()
        block_iter_init(&blk)
        try:
            while i < <Py_ssize_t>h.n and go_on:
                nb = 0
                need = 0
                while i < <Py_ssize_t>h.n and nb < _WARM_BLOCKS and need < _WARM_BYTES:
                    e = &h.index[i]
                    if (hot.overlaps(NULL if i == 0 else h.keys + e[-1].key_off,
                                     0 if i == 0 else e[-1].key_len,
                                     h.keys + e.key_off, e.key_len, &cursor)
                            and not cache.contains(self.cache_file, e.offset)):
                        wb[nb].i = i
                        wb[nb].at = need
                        need += e.size + _BLOCK_TRAILER_SIZE
                        nb += 1
                    i += 1
                if nb == 0:
                    continue
                if reserve_bytes(&buf, &buf_cap, need) != FDB_OK:
                    raise MemoryError()
                fd = self.fd
                if fd < 0:
                    break                        # closed meanwhile
                with nogil:
                    ok = _warm_read(fd, self.base, h.index, wb, nb, buf)
                go_on = ok == nb                 # else a block failed its checks
                room = cache.capacity - cache.usage if cache.capacity > cache.usage else 0
                for k in range(ok):
                    if wb[k].ulen > room:
                        ok = k
                        go_on = False
                        break
                    room -= wb[k].ulen
                    outs[k] = out = PyBytes_FromStringAndSize(NULL, wb[k].ulen)
                    wb[k].dst = <uint8_t *>PyBytes_AS_STRING(out)
                    if wb[k].typ == _COMPRESSION_NONE:
                        memcpy(wb[k].dst, buf + wb[k].at, wb[k].ulen)
                with nogil:
                    nb, ok = ok, _warm_decode(h.index, wb, ok, buf, &blk)
                for k in range(ok):
                    e = &h.index[wb[k].i]
                    if cache.usage + wb[k].ulen > cache.capacity:
                        go_on = False            # readers took the room meanwhile
                        break
                    if not cache.contains(self.cache_file, e.offset):
                        cache.insert(self.cache_file, e.offset, <bytes>outs[k], &wb[k].meta)
                        put += 1
                for k in range(nb):
                    outs[k] = None
                go_on = go_on and ok == nb
        finally:
            block_iter_free(&blk)
            free(buf)
            free(wb)
        return put

    cpdef Iterator new_iterator(self, bint fill_cache=True, bint verify_checksums=True,
                                long long ts_lo=INT64_MIN, long long ts_hi=INT64_MAX):
        """An iterator over every entry; blocks whose ts bounds miss
        [ts_lo, ts_hi] are skipped in both directions, as if absent."""
        cdef TableIterator it = TableIterator.__new__(TableIterator)
        while self.index_holder is None:
            self.ensure_meta()
        it.holder = self.index_holder
        it.reader = self
        it.fill_cache = fill_cache
        it.verify_checksums = verify_checksums
        it.st.index = (<_Index>it.holder).index
        it.st.keys = (<_Index>it.holder).keys
        it.st.n = (<_Index>it.holder).n
        it.st.search = &(<_Index>it.holder).search
        it.st.ts_lo = ts_lo
        it.st.ts_hi = ts_hi
        it.st.verify = verify_checksums
        it.st.fd = &self.fd
        it.st.file_base = self.base
        it.st.blocks_read = &self.blocks_read
        it.st.blocks_loaded = &self.blocks_loaded
        return it


# -- iterator ------------------------------------------------------------------

cdef struct TIterState:
    fdb_iter base             # the protocol (first member)
    void *owner               # the TableIterator that embeds this state (borrowed)
    const IndexEntry *index   # the reader's index (the owner keeps the reader alive)
    const uint8_t *keys       # the reader's index key arena
    const IndexSearch *search # the reader's index search (in the owner's holder)
    Py_ssize_t n              # data blocks
    Py_ssize_t cur            # the block blk reads (-1: none)
    int64_t ts_lo             # blocks whose ts bounds miss [ts_lo, ts_hi] are skipped
    int64_t ts_hi
    CBlockIter blk
    bint verify               # check block checksums
    # With read_ahead, blocks [ra_lo, ra_hi) are read (one pread into
    # ra_buf) and decompressed (into ra_out) without the GIL; a forward move
    # onto one of them needs no GIL either.
    bint read_ahead
    const int *fd             # the reader's descriptor (-1 once closed)
    uint64_t file_base        # the table's first byte in that file
    unsigned long long *blocks_read     # the reader's counters (fdb_count)
    unsigned long long *blocks_loaded
    Py_ssize_t ra_lo
    Py_ssize_t ra_hi
    const uint8_t *ra_data[_READAHEAD_BLOCKS]
    size_t ra_len[_READAHEAD_BLOCKS]
    uint8_t *ra_buf
    size_t ra_buf_cap
    uint8_t *ra_out
    size_t ra_out_cap


cdef class TableIterator(Iterator):
    """Two-level iterator: the in-memory index, then one data block at a time.

    With read_ahead set (a compaction's inputs), moving forward onto a block
    it must load reads it and the blocks that follow, up to _READAHEAD_BYTES,
    with one pread, and checks and decompresses them, all without the GIL
    (_ti_read_batch): beside a thread busy in Python each take of the GIL
    costs up to the switch interval (5 ms), and the compaction's merge loop
    runs without it.  The cache is neither read nor filled that way (a
    compaction reads each block once).  Scans keep one block at a time, so
    their memory does not grow with the tables merged."""
    cdef TIterState st
    cdef TableReader reader
    cdef object holder        # the _Index st.index/st.keys point into
    cdef bytes block          # the bytes st.blk reads, when _load read them
    cdef readonly unsigned long long gil_loads   # blocks loaded holding the GIL (_load)
    cdef bint fill_cache
    cdef bint verify_checksums

    def __cinit__(self):
        block_iter_init(&self.st.blk)
        self.st.base.key = NULL
        self.st.base.key_len = 0
        self.st.base.value = NULL
        self.st.base.value_len = 0
        self.st.base.valid = 0
        self.st.base.status = FDB_OK
        self.st.base.seek_to_first = _ti_seek_to_first
        self.st.base.seek = _ti_seek
        self.st.base.seek_for_prev = _ti_seek_for_prev
        self.st.base.next = _ti_next
        self.st.owner = <void *>self
        self.st.index = NULL
        self.st.keys = NULL
        self.st.search = NULL
        self.st.n = 0
        self.st.cur = -1
        self.st.ra_lo = self.st.ra_hi = 0
        self.st.ra_buf = self.st.ra_out = NULL
        self.st.ra_buf_cap = self.st.ra_out_cap = 0
        self.st.read_ahead = False
        self.it = &self.st.base

    def __dealloc__(self):
        block_iter_free(&self.st.blk)
        free(self.st.ra_buf)
        free(self.st.ra_out)

    @property
    def read_ahead(self):
        return self.st.read_ahead

    @read_ahead.setter
    def read_ahead(self, bint on):
        self.st.read_ahead = on

    cdef int _fail(self, int code, object exc) noexcept:
        self.error = exc
        self.st.base.status = code
        self.st.base.valid = 0
        return code

    cdef int _load(self, Py_ssize_t i) noexcept:
        """Points st.blk at data block i (TableReader._data_block), through
        the cache; raises what reading it meets (as _fail)."""
        self.gil_loads += 1
        self.st.ra_lo = self.st.ra_hi = 0
        try:
            # Through this iterator's own index: the reader's may be released.
            self.block = self.reader._data_block(&self.st.index[i], self.fill_cache,
                                                 self.verify_checksums, &self.st.blk)
        except BaseException as e:
            return self._fail(_status_of(e), e)
        self.st.cur = i
        return FDB_OK

    cdef int _blk_failed(self) noexcept:
        cdef int code = self.st.blk.base.status
        return self._fail(code, self.reader._block_error(
            &self.st.blk, self.st.index[self.st.cur].offset if self.st.cur >= 0 else 0))

    @property
    def blocks_held(self):
        """The blocks the iterator holds: the one it reads (0 or 1) and
        those read ahead (with read_ahead only)."""
        cdef Py_ssize_t n = self.st.ra_hi - self.st.ra_lo
        if self.block is not None and not self.st.ra_lo <= self.st.cur < self.st.ra_hi:
            n += 1
        return n


cdef inline bint _overlaps(const TIterState *st, Py_ssize_t i) noexcept nogil:
    return st.index[i].max_ts >= st.ts_lo and st.index[i].min_ts <= st.ts_hi


cdef int _ti_load(TIterState *st, Py_ssize_t i, bint forward) noexcept nogil:
    cdef int rc
    cdef Py_ssize_t k
    if st.cur == i:
        return FDB_OK
    if not st.ra_lo <= i < st.ra_hi and not (
            forward and st.read_ahead and _ti_read_batch(st, i)):
        # The cache, or a block the batch could not take (a bad one is
        # reported from here, as without read_ahead).
        with gil:
            rc = (<TableIterator>st.owner)._load(i)
        return rc
    k = i - st.ra_lo
    st.cur = i
    if block_iter_reset(&st.blk, st.ra_data[k], st.ra_len[k]) != FDB_OK:
        return _ti_blk_failed(st)
    return FDB_OK


cdef Py_ssize_t _ti_read_batch(TIterState *st, Py_ssize_t i) noexcept nogil:
    """Reads blocks i, i+1, ... (overlapping, adjacent in the file) with one
    pread, checks their checksums and decompresses them, into ra_buf and
    ra_out: [ra_lo, ra_hi) = [i, i + the blocks that passed).  Returns that
    count; 0 if block i itself failed or any other trouble (the caller then
    reads it with the GIL, which reports what is wrong)."""
    cdef Py_ssize_t j = i, k
    cdef uint64_t start = st.index[i].offset, end = start
    cdef size_t stored, held = 0, nout = 0
    cdef size_t out_off[_READAHEAD_BLOCKS]
    cdef uint64_t ulen
    cdef const uint8_t *b
    cdef uint8_t typ
    cdef int fd = st.fd[0]
    if fd < 0:
        return 0
    while j < st.n and j - i < _READAHEAD_BLOCKS and _overlaps(st, j) and st.index[j].offset == end:
        stored = st.index[j].size + _BLOCK_TRAILER_SIZE
        if j > i and end - start + stored > _READAHEAD_BYTES:
            break
        end += stored
        j += 1
    # st.blk may read the buffers about to be overwritten: it holds no block now.
    st.cur = -1
    st.ra_lo = st.ra_hi = 0
    if (end == start or reserve_bytes(&st.ra_buf, &st.ra_buf_cap, end - start) != FDB_OK
            or fdb_pread_full(fd, st.ra_buf, end - start, st.file_base + start) != <ssize_t>(end - start)):
        return 0
    b = st.ra_buf
    k = i
    while k < j:
        stored = st.index[k].size
        if _check_stored(b, stored, st.verify, &typ, &ulen) != FDB_OK:
            break
        if typ == _COMPRESSION_NONE:
            st.ra_data[k - i] = b
            st.ra_len[k - i] = stored
            out_off[k - i] = <size_t>-1
            held += stored
        else:
            if ((k > i and held + ulen > _READAHEAD_BYTES)
                    or reserve_bytes(&st.ra_out, &st.ra_out_cap, nout + ulen) != FDB_OK
                    or fdb_snappy_decompress(b, stored, st.ra_out + nout, ulen) != 0):
                break
            out_off[k - i] = nout
            st.ra_len[k - i] = ulen
            nout += ulen
            held += ulen
        b += stored + _BLOCK_TRAILER_SIZE
        k += 1
    for j in range(k - i):                  # ra_out may have moved as it grew
        if out_off[j] != <size_t>-1:
            st.ra_data[j] = st.ra_out + out_off[j]
    fdb_count(st.blocks_read, k - i)
    fdb_count(st.blocks_loaded, k - i)
    st.ra_lo = i
    st.ra_hi = k
    return k - i


cdef int _ti_blk_failed(TIterState *st) noexcept nogil:
    cdef int rc
    with gil:
        rc = (<TableIterator>st.owner)._blk_failed()
    return rc


cdef int _ti_empty_block(TIterState *st) noexcept nogil:
    st.blk.err_msg = b"data block holds no entry"
    st.blk.err_off = 0
    st.blk.base.status = FDB_ERR_CORRUPTION
    return _ti_blk_failed(st)


cdef inline int _ti_sync(TIterState *st) noexcept nogil:
    """After a block move: mirror the block iterator's position."""
    if st.blk.base.status != FDB_OK:
        return _ti_blk_failed(st)
    st.base.key = st.blk.base.key
    st.base.key_len = st.blk.base.key_len
    st.base.value = st.blk.base.value
    st.base.value_len = st.blk.base.value_len
    st.base.valid = st.blk.base.valid
    return FDB_OK


cdef int _ti_forward_from(TIterState *st, Py_ssize_t i) noexcept nogil:
    """The first entry of the first overlapping block at or after i."""
    while i < st.n and not _overlaps(st, i):
        i += 1
    if i >= st.n:
        st.base.valid = 0
        return FDB_OK
    if _ti_load(st, i, True) != FDB_OK:
        return st.base.status
    st.blk.base.seek_to_first(&st.blk.base)
    if st.blk.base.status == FDB_OK and not st.blk.base.valid:
        return _ti_empty_block(st)
    return _ti_sync(st)


cdef int _ti_backward_from(TIterState *st, Py_ssize_t i) noexcept nogil:
    """The last entry of the last overlapping block at or before i."""
    while i >= 0 and not _overlaps(st, i):
        i -= 1
    if i < 0:
        st.base.valid = 0
        return FDB_OK
    if _ti_load(st, i, False) != FDB_OK:
        return st.base.status
    block_iter_seek_to_last(&st.blk)
    if st.blk.base.status == FDB_OK and not st.blk.base.valid:
        return _ti_empty_block(st)
    return _ti_sync(st)


cdef inline Py_ssize_t _ti_lower_bound(const TIterState *st, const uint8_t *t,
                                       size_t tn) noexcept nogil:
    return _index_lower_bound(st.search, t, tn)


cdef int _ti_seek_to_first(fdb_iter *base) noexcept nogil:
    cdef TIterState *st = <TIterState *>base
    if base.status != FDB_OK:
        return base.status
    return _ti_forward_from(st, 0)


cdef int _ti_seek(fdb_iter *base, const uint8_t *t, size_t tn) noexcept nogil:
    cdef TIterState *st = <TIterState *>base
    cdef Py_ssize_t i
    if base.status != FDB_OK:
        return base.status
    i = _ti_lower_bound(st, t, tn)
    if i >= st.n:
        base.valid = 0
        return FDB_OK
    if not _overlaps(st, i):
        return _ti_forward_from(st, i + 1)
    if _ti_load(st, i, True) != FDB_OK:
        return base.status
    st.blk.base.seek(&st.blk.base, t, tn)
    if st.blk.base.status == FDB_OK and not st.blk.base.valid:
        return _ti_forward_from(st, i + 1)
    return _ti_sync(st)


cdef int _ti_seek_for_prev(fdb_iter *base, const uint8_t *t, size_t tn) noexcept nogil:
    cdef TIterState *st = <TIterState *>base
    cdef Py_ssize_t i
    if base.status != FDB_OK:
        return base.status
    i = _ti_lower_bound(st, t, tn)
    if i < st.n and _overlaps(st, i):
        if _ti_load(st, i, False) != FDB_OK:
            return base.status
        st.blk.base.seek_for_prev(&st.blk.base, t, tn)
        if st.blk.base.status != FDB_OK or st.blk.base.valid:
            return _ti_sync(st)
    # Every key of the blocks before i is < t.
    return _ti_backward_from(st, i - 1)


cdef int _ti_next(fdb_iter *base) noexcept nogil:
    cdef TIterState *st = <TIterState *>base
    if base.status != FDB_OK:
        return base.status
    if not base.valid:
        return FDB_OK
    st.blk.base.next(&st.blk.base)
    if st.blk.base.status == FDB_OK and not st.blk.base.valid:
        return _ti_forward_from(st, st.cur + 1)
    return _ti_sync(st)


# -- flush helper ----------------------------------------------------------------

def build_table(Iterator source not None, TableBuilder builder not None, list range_dels=None):
    """Adds every entry of source (from seek_to_first to the end) and the
    range deletes, then finishes the builder; returns its properties.

    RANGE_DEL entries met in source are added as range deletes.  The loop runs
    without the GIL.  On any error the builder is abandoned (its file deleted)
    and the error raised."""
    cdef fdb_iter *it = source.it
    cdef int st = FDB_OK, bst = FDB_OK
    cdef list found = []
    try:
        with nogil:
            st = it.seek_to_first(it)
            while st == FDB_OK and it.valid:
                if (it.key_len >= FDB_TRAILER_SIZE
                        and fdb_ikey_kind(it.key, it.key_len) == FDB_KIND_RANGE_DEL):
                    with gil:
                        found.append(((<const char *>it.key)[:it.key_len - FDB_TRAILER_SIZE],
                                      (<const char *>it.value)[:it.value_len],
                                      fdb_ikey_seq(it.key, it.key_len)))
                else:
                    bst = builder.add(it.key, it.key_len, it.value, it.value_len)
                    if bst != FDB_OK:
                        break
                st = it.next(it)
        if st != FDB_OK:
            source.check()
        if bst != FDB_OK:
            raise builder.error
        for start, end, seq in found:
            builder.add_range_del(start, end, seq)
        for start, end, seq in (range_dels or ()):
            builder.add_range_del(start, end, seq)
        return builder.finish()
    except BaseException:
        builder.abandon()
        raise
