# cython: language_level=3
"""Cython mirror of include/flowdb.h: every C helper shared by the core.

`cimport flowdb._core.cdefs as c` (or `from flowdb._core.cdefs cimport ...`)
in any core module.  All functions are nogil-safe.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cdef extern from "flowdb.h" nogil:
    unsigned FDB_KIND_DELETE
    unsigned FDB_KIND_PUT
    unsigned FDB_KIND_RANGE_DEL
    size_t FDB_TRAILER_SIZE
    uint64_t FDB_MAX_SEQ
    size_t FDB_MAX_KEY
    size_t FDB_MAX_VALUE
    int64_t FDB_NEVER
    int FDB_OK
    int FDB_ERR_CORRUPTION
    int FDB_ERR_IO
    int FDB_ERR_NOMEM
    int FDB_ERR_PYTHON
    size_t FDB_MAX_VARINT64

    int64_t fdb_mono_ns()
    void fdb_count(unsigned long long *c, unsigned long long n)

    void fdb_put_u32le(uint8_t *p, uint32_t v)
    uint32_t fdb_get_u32le(const uint8_t *p)
    void fdb_put_u64le(uint8_t *p, uint64_t v)
    uint64_t fdb_get_u64le(const uint8_t *p)
    void fdb_put_u64be(uint8_t *p, uint64_t v)
    uint64_t fdb_get_u64be(const uint8_t *p)

    size_t fdb_put_varint(uint8_t *p, uint64_t v)
    size_t fdb_varint_len(uint64_t v)
    const uint8_t *fdb_get_varint(const uint8_t *p, const uint8_t *limit, uint64_t *out)

    uint64_t fdb_ts_encode(int64_t ts)
    int64_t fdb_ts_decode(uint64_t u)
    void fdb_ikey_write(uint8_t *out, const uint8_t *ukey, size_t ukey_len,
                        int64_t ts, uint64_t seq, unsigned kind)
    size_t fdb_ikey_ukey_len(size_t n)
    int64_t fdb_ikey_ts(const uint8_t *k, size_t n)
    uint64_t fdb_ikey_seq(const uint8_t *k, size_t n)
    unsigned fdb_ikey_kind(const uint8_t *k, size_t n)
    int fdb_ukey_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
    int fdb_ikey_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)

    ctypedef struct fdb_iter:
        const uint8_t *key
        size_t key_len
        const uint8_t *value
        size_t value_len
        int valid
        int status
        int (*seek_to_first)(fdb_iter *it) noexcept nogil
        int (*seek)(fdb_iter *it, const uint8_t *target, size_t target_len) noexcept nogil
        int (*seek_for_prev)(fdb_iter *it, const uint8_t *target, size_t target_len) noexcept nogil
        int (*next)(fdb_iter *it) noexcept nogil

    void fdb_iter_init(fdb_iter *it,
                       int (*seek_to_first)(fdb_iter *) noexcept nogil,
                       int (*seek)(fdb_iter *, const uint8_t *, size_t) noexcept nogil,
                       int (*seek_for_prev)(fdb_iter *, const uint8_t *, size_t) noexcept nogil,
                       int (*next)(fdb_iter *) noexcept nogil)
