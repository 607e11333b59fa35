# cython: language_level=3
"""SSTable builder and reader (docs/FORMAT.md, "SSTable")."""
from libc.stdint cimport uint8_t, uint64_t, int64_t
from flowdb._core.iterator cimport Source, Iterator, EntryHit
from flowdb._core.block cimport CBlockBuilder, CBlockIter
from flowdb._core.bloom cimport CBloomBuilder
from flowdb._core.block_cache cimport BlockCache


# One data block as the index describes it (decoded once when a table opens).
cdef struct IndexEntry:
    uint64_t offset           # file offset of the stored block
    uint64_t size             # stored size, without the 5-byte trailer
    int64_t min_ts            # ts bounds of the block's entries (puts and deletes)
    int64_t max_ts
    int64_t min_expire_at     # expire_at bounds (a DELETE counts as NEVER)
    int64_t max_expire_at
    size_t key_off            # the block's last internal key: in the reader's
    size_t key_len            #   index_keys arena at [key_off, key_off + key_len)


# A finished data block waiting to be compressed and written (_write_pending).
cdef struct PendingBlock:
    size_t raw_off            # the block, in TableBuilder.pend_raw
    size_t raw_len
    size_t key_off            # its last key (the index key), in TableBuilder.pend_keys
    size_t key_len
    int64_t min_ts            # its bounds, for the index entry
    int64_t max_ts
    int64_t min_exp
    int64_t max_exp
    uint64_t off              # where it is stored in the file (_write_pending)
    uint64_t size             #   and its stored size, without the trailer


cdef class TableBuilder:
    """Writes one SSTable.  Not thread-safe: one thread drives a builder."""
    # The exception behind a non-OK status returned by add().
    cdef object error
    # Appends an entry; entries must come in strictly increasing internal-key
    # order.  Runs without the GIL; takes it only to hand a full write
    # buffer to os.write, or to warm the cache (_write_pending).  Returns
    # FDB_OK or an FDB_ERR_* code.
    # A rejected entry (bad kind or value, out of order: FDB_ERR_PYTHON with a
    # ValueError) leaves the builder as it was; an I/O or memory error
    # (FDB_ERR_IO, FDB_ERR_NOMEM) is sticky: every later call fails with it.
    cdef int add(self, const unsigned char *ikey, size_t ikey_len,
                 const unsigned char *value, size_t value_len) noexcept nogil
    # The size the file would have if finished now (about); no GIL needed.
    cdef uint64_t size_estimate(self) noexcept nogil

    cdef readonly object path         # the file being written
    cdef int fd                       # -1 once finished or abandoned
    cdef int status                   # sticky FDB_ERR_IO / FDB_ERR_NOMEM, else FDB_OK
    cdef bint finished
    cdef size_t block_size            # cut a data block once its estimate reaches this
    cdef int bloom_bits_per_key       # 0: no bloom filter
    cdef CBlockBuilder data_block     # the data block being filled
    cdef CBlockBuilder index_block    # one entry per finished data block
    cdef CBloomBuilder bloom          # hashes of the distinct user keys
    cdef uint8_t *last_key            # the last key added (order check, index key)
    cdef size_t last_key_len
    cdef size_t last_key_cap
    cdef uint8_t *first_key           # the first key added (smallest_key)
    cdef size_t first_key_len
    cdef int64_t blk_min_ts           # bounds of the data block being filled
    cdef int64_t blk_max_ts
    cdef int64_t blk_min_exp
    cdef int64_t blk_max_exp
    cdef readonly unsigned long long num_entries    # point entries added
    cdef unsigned long long num_deletes
    cdef unsigned long long num_data_blocks
    cdef unsigned long long raw_key_bytes
    cdef unsigned long long raw_value_bytes
    cdef int64_t min_ts               # table-level bounds of the point entries
    cdef int64_t max_ts
    cdef int64_t min_exp
    cdef int64_t max_exp
    cdef uint64_t min_seq             # over point entries and range deletes
    cdef uint64_t max_seq
    cdef uint64_t offset              # bytes of the file so far (written + buffered)
    cdef uint8_t *wbuf                # stored blocks with their trailers, not yet
    cdef size_t wbuf_len              #   handed to os.write
    cdef size_t wbuf_cap
    cdef set range_dels               # {(start, end, seq)}
    cdef BlockCache warm_cache        # warm(): data blocks go here as written, or None
    cdef uint64_t warm_file           # the table's file number: their cache key
    # Cut data blocks not yet stored: compressed and checksummed into wbuf
    # PENDING_BYTES at a time, so that a flush that must take the GIL (a full
    # wbuf, warming) takes it once per batch of blocks rather than once per
    # block (each take costs up to a switch interval, 5 ms, when another
    # thread is busy in Python).
    cdef uint8_t *pend_raw
    cdef size_t pend_raw_len
    cdef size_t pend_raw_cap
    cdef uint8_t *pend_keys
    cdef size_t pend_keys_len
    cdef size_t pend_keys_cap
    cdef PendingBlock *pend
    cdef size_t npend
    cdef size_t pend_cap_bytes
    cdef readonly unsigned long long block_batches  # _write_pending calls that wrote blocks
    cdef readonly unsigned long long gil_takes      # _write_pending's takes of the GIL
    cdef uint64_t raw_written         # data blocks written: bytes before compression,
    cdef uint64_t stored_written      #   and as stored

    # Finishes the data block being filled and queues it (_write_pending
    # once PENDING_BYTES are queued).
    cdef int _cut_block(self) noexcept nogil
    # Compresses the queued blocks into wbuf and adds their index entries.
    cdef int _write_pending(self) noexcept nogil
    # The part of _write_pending that needs the GIL: warming, os.write.
    cdef int _hand_over(self) noexcept
    # Appends one block to wbuf as stored, with its trailer (no GIL needed).
    cdef void _store(self, const uint8_t *raw, size_t n, PendingBlock *pb) noexcept nogil
    cdef int _index_entry(self, const PendingBlock *pb, uint64_t off, uint64_t size) noexcept nogil
    # Refuses one entry: error = ValueError(message); returns FDB_ERR_PYTHON.
    cdef int _reject(self, const char *message) noexcept nogil
    # Records a sticky failure.
    cdef int _fail(self, int code, object exc) noexcept
    cdef int _nomem(self) noexcept nogil
    cdef void _free(self) noexcept
    cdef dict _props(self)
    cdef tuple _write_block(self, object raw)
    cdef _flush_wbuf(self)
    cdef _warm(self, uint64_t off, bytes raw)


cdef class TableReader(Source):
    """An open SSTable.  Thread-safe: after __init__ every shared field is
    read-only (the block counters change by atomic adds), reads use pread, and
    any number of threads may each drive their own iterator at once.  close()
    must not race with iterators in use; dropping the last reference (every
    iterator holds one) closes the file too."""
    cdef readonly object path
    cdef readonly object file_number
    cdef readonly unsigned long long file_size
    # Table properties (docs/FORMAT.md, "Properties block"), plus file_size.
    cdef readonly dict props
    # Blocks fetched from the file (pread), and blocks handed to iterators
    # (from the cache or the file).
    cdef readonly unsigned long long blocks_read
    cdef readonly unsigned long long blocks_loaded
    cdef readonly BlockCache block_cache  # or None
    cdef uint64_t cache_file          # file_number as the cache key's first half
    cdef int fd                       # -1 once closed
    cdef readonly uint64_t base       # the table's first byte in the file (0: the whole file)
    cdef long long extent_size        # its length there, or -1: to the file's end
    cdef bytes bloom                  # filter bytes; b"" means none
    cdef const uint8_t *bloom_ptr     # into bloom, for may_contain without the GIL
    cdef object __weakref__           # the engine tracks its readers weakly, to close them at shutdown
    cdef size_t bloom_len
    cdef IndexEntry *index            # num_blocks entries, in key order
    cdef size_t num_blocks
    cdef uint8_t *index_keys          # arena of the blocks' last keys
    cdef uint64_t data_end            # end of the last data block's trailer
    # The index and bloom filter may be released (release_meta) and loaded
    # again on demand (ensure_meta, through the block cache): index and
    # index_keys point into index_holder (an _Index that iterators also
    # hold, so a release never frees what an iterator reads), NULL when
    # released; bloom is then b"" (may_contain answers True).
    cdef object index_holder          # the _Index owning index/index_keys, or None
    cdef uint64_t index_off           # the index block's handle
    cdef uint64_t index_size
    cdef uint64_t bloom_off           # the bloom block's handle
    cdef uint64_t bloom_size
    cdef readonly size_t meta_bytes   # bytes of index + bloom while loaded
    cdef readonly unsigned long long meta_loads  # on-demand reloads

    cdef bytes _read_block(self, uint64_t offset, uint64_t size, bint verify, str what)
    # Data block i read from the file (not the cache), checked and decompressed.
    cdef bytes _fetch_block(self, size_t i, bint verify)
    cdef _load_index(self, bytes block, uint64_t offset)
    # A meta block (index, bloom) through the block cache.
    cdef bytes _meta_block(self, uint64_t offset, uint64_t size, str what)
    # Loads the index and bloom again after release_meta() (GIL held).
    cpdef ensure_meta(self)
    cdef _load_range_dels(self, bytes block, uint64_t offset)
    # Data block `e` (an entry of an index the caller holds), from the cache
    # or the file (then cached if fill_cache and verify), with blk pointed at
    # it: checked, unless the cache vouches for the bytes.  Returns the bytes
    # blk reads; raises CorruptionError, OSError or MemoryError.
    cdef bytes _data_block(self, const IndexEntry *e, bint fill_cache, bint verify,
                           CBlockIter *blk)
    # The CorruptionError for what blk found wrong in the block at offset.
    cdef object _block_error(self, const CBlockIter *blk, uint64_t offset)
    # Source's point reads, without an iterator object (iterator.pxd).
    cdef object find_version(self, const uint8_t *target, size_t tn, bint fill_cache,
                             bint verify_checksums, EntryHit *hit)
    cdef object find_floor(self, const uint8_t *target, size_t tn, uint64_t snapshot,
                           bint fill_cache, bint verify_checksums, EntryHit *hit)
    cpdef Iterator new_iterator(self, bint fill_cache=*, bint verify_checksums=*,
                                long long ts_lo=*, long long ts_hi=*)
