/*
 * flowdb.h -- C helpers shared by every module of flowdb._core.
 *
 * Everything here is `static inline` and free of Python: it is safe to call
 * without the GIL.  flowdb/_core/cdefs.pxd mirrors this header for Cython.
 *
 * Internal key (docs/FORMAT.md, "Internal key"):
 *
 *     internal_key := user_key | ts_be | trailer_be
 *     ts_be        := 8 bytes, big-endian (uint64)(ts) ^ (1 << 63)
 *     trailer_be   := 8 bytes, big-endian (seq << 8) | kind
 *
 * Order: user_key bytewise ascending, then ts ascending, then seq DESCENDING
 * (the newest version of a (key, ts) comes first).  Flipping the sign bit
 * makes big-endian bytes of a signed ts compare like the signed value.
 */
#ifndef FLOWDB_H
#define FLOWDB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---- constants (part of the on-disk format: never renumber) ---------- */

#define FDB_KIND_DELETE     0u  /* point tombstone for (key, ts)             */
#define FDB_KIND_PUT        1u  /* value := expire_at(8, LE) | user value    */
#define FDB_KIND_RANGE_DEL  2u  /* key := start, ts := INT64_MIN, value := end (exclusive) */

#define FDB_TRAILER_SIZE    16u /* 8 (ts) + 8 (seq << 8 | kind)               */
#define FDB_MAX_SEQ         ((((uint64_t)1) << 56) - 1)
#define FDB_MAX_KEY         65535u
#define FDB_MAX_VALUE       (64u * 1024u * 1024u)
#define FDB_NEVER           INT64_MAX

/* ---- status codes: nogil code returns these, one Cython function turns
 *      them into exceptions once the GIL is held (cdefs.pxd: raise_status) */

#define FDB_OK              0
#define FDB_ERR_CORRUPTION  1   /* bad checksum, bad length, bad format      */
#define FDB_ERR_IO          2   /* read/write failed                        */
#define FDB_ERR_NOMEM       3
#define FDB_ERR_PYTHON      4   /* a Python exception is pending / stored    */

/* ---- fixed-width integers ------------------------------------------- */

static inline void fdb_put_u32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t fdb_get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
           ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void fdb_put_u64le(uint8_t *p, uint64_t v) {
    fdb_put_u32le(p, (uint32_t)v); fdb_put_u32le(p + 4, (uint32_t)(v >> 32));
}
static inline uint64_t fdb_get_u64le(const uint8_t *p) {
    return (uint64_t)fdb_get_u32le(p) | ((uint64_t)fdb_get_u32le(p + 4) << 32);
}
static inline void fdb_put_u64be(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}
static inline uint64_t fdb_get_u64be(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

/* ---- varints (LEB128, unsigned, at most 10 bytes for 64 bits) -------- */

#define FDB_MAX_VARINT64 10

/* Writes v at p; returns the number of bytes written (1..10). */
static inline size_t fdb_put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) { p[n++] = (uint8_t)(v | 0x80); v >>= 7; }
    p[n++] = (uint8_t)v;
    return n;
}
static inline size_t fdb_varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}
/* Reads a varint from [p, limit).  Returns the position after it, or NULL
 * if it is truncated or longer than 10 bytes (the caller reports corruption). */
static inline const uint8_t *fdb_get_varint(const uint8_t *p, const uint8_t *limit,
                                            uint64_t *out) {
    uint64_t v = 0;
    for (unsigned shift = 0; shift <= 63 && p < limit; shift += 7) {
        uint64_t b = *p++;
        if (shift == 63 && b > 1) return NULL;   /* would overflow 64 bits */
        v |= (b & 0x7f) << shift;
        if (b < 0x80) { *out = v; return p; }
    }
    return NULL;
}

/* ---- internal keys ---------------------------------------------------- */

static inline uint64_t fdb_ts_encode(int64_t ts) { return ((uint64_t)ts) ^ (((uint64_t)1) << 63); }
static inline int64_t  fdb_ts_decode(uint64_t u) { return (int64_t)(u ^ (((uint64_t)1) << 63)); }

/* Writes user_key | ts | trailer into out (ukey_len + 16 bytes). */
static inline void fdb_ikey_write(uint8_t *out, const uint8_t *ukey, size_t ukey_len,
                                  int64_t ts, uint64_t seq, unsigned kind) {
    memcpy(out, ukey, ukey_len);
    fdb_put_u64be(out + ukey_len, fdb_ts_encode(ts));
    fdb_put_u64be(out + ukey_len + 8, (seq << 8) | (kind & 0xff));
}
/* Accessors: the caller guarantees n >= FDB_TRAILER_SIZE. */
static inline size_t   fdb_ikey_ukey_len(size_t n) { return n - FDB_TRAILER_SIZE; }
static inline int64_t  fdb_ikey_ts(const uint8_t *k, size_t n) { return fdb_ts_decode(fdb_get_u64be(k + n - 16)); }
static inline uint64_t fdb_ikey_seq(const uint8_t *k, size_t n) { return fdb_get_u64be(k + n - 8) >> 8; }
static inline unsigned fdb_ikey_kind(const uint8_t *k, size_t n) { return (unsigned)(k[n - 1]); }

/* Unaligned big-endian load (one instruction where the target has one):
 * big-endian words compare like the bytes they hold. */
static inline uint64_t fdb_load_u64be(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(v);
#elif defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return v;
#else
    return fdb_get_u64be(p);
#endif
}

/* memcmp's sign for n bytes, inline: keys are short, and a call to memcmp
 * costs more than comparing them 8 bytes at a time. */
static inline int fdb_bytes_cmp(const uint8_t *a, const uint8_t *b, size_t n) {
    while (n >= 8) {
        uint64_t x = fdb_load_u64be(a), y = fdb_load_u64be(b);
        if (x != y) return x < y ? -1 : 1;
        a += 8; b += 8; n -= 8;
    }
    for (; n; a++, b++, n--)
        if (*a != *b) return *a < *b ? -1 : 1;
    return 0;
}

/* Bytewise comparison of two user keys. */
static inline int fdb_ukey_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    size_t m = an < bn ? an : bn;
    int r = fdb_bytes_cmp(a, b, m);
    if (r) return r;
    return an < bn ? -1 : (an > bn ? 1 : 0);
}

/* Internal-key order: user key asc, ts asc, seq desc.  Both lengths >= 16. */
static inline int fdb_ikey_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    size_t ua = an - FDB_TRAILER_SIZE, ub = bn - FDB_TRAILER_SIZE;
    int r = fdb_ukey_cmp(a, ua, b, ub);
    if (r) return r;
    uint64_t xa = fdb_load_u64be(a + ua), xb = fdb_load_u64be(b + ub);
    if (xa != xb) return xa < xb ? -1 : 1;
    xa = fdb_load_u64be(a + ua + 8); xb = fdb_load_u64be(b + ub + 8);
    return xa > xb ? -1 : (xa < xb ? 1 : 0);
}

/* ---- clock ------------------------------------------------------------ */

/* time.perf_counter_ns() without a Python call: latency timers. */
static inline int64_t fdb_mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ---- atomics: one writer publishes, many readers read without locks ---- */

#define fdb_load_acquire(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fdb_store_release(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fdb_load_relaxed(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#define fdb_store_relaxed(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* A statistics counter bumped by threads with and without the GIL. */
static inline void fdb_count(unsigned long long *c, unsigned long long n) {
    __atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

/* ---- the iterator protocol ----------------------------------------------
 *
 * Every internal iterator (memtable, block, table, merge) embeds an fdb_iter
 * as the FIRST member of its C state struct, so an fdb_iter* can be cast to
 * the implementation's state.  Entries are (internal key, value) pairs in
 * internal-key order.
 *
 * - key/key_len/value/value_len describe the current entry while valid != 0;
 *   the memory stays valid until the next call that moves the iterator.
 * - seek(target): first entry >= target.  seek_to_first: first entry.
 * - seek_for_prev(target): last entry <= target (NULL where unsupported:
 *   the merge iterator).  next(): the following entry.
 * - Each call returns FDB_OK or an error code; the first error is also kept
 *   in `status` (sticky) and leaves valid == 0.  Calls run without the GIL;
 *   an implementation that must touch Python objects (block cache, file
 *   reads) takes the GIL itself.
 * - Not thread-safe: one iterator is used by one thread at a time.
 */
typedef struct fdb_iter fdb_iter;
struct fdb_iter {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *value;
    size_t value_len;
    int valid;
    int status;
    int (*seek_to_first)(fdb_iter *it);
    int (*seek)(fdb_iter *it, const uint8_t *target, size_t target_len);
    int (*seek_for_prev)(fdb_iter *it, const uint8_t *target, size_t target_len);
    int (*next)(fdb_iter *it);
};

/* Sets up an iterator's protocol struct: invalid, status OK, and its calls
 * (seek_for_prev may be NULL). */
static inline void fdb_iter_init(fdb_iter *it,
                                 int (*seek_to_first)(fdb_iter *),
                                 int (*seek)(fdb_iter *, const uint8_t *, size_t),
                                 int (*seek_for_prev)(fdb_iter *, const uint8_t *, size_t),
                                 int (*next)(fdb_iter *)) {
    it->key = NULL; it->key_len = 0; it->value = NULL; it->value_len = 0;
    it->valid = 0; it->status = FDB_OK;
    it->seek_to_first = seek_to_first; it->seek = seek;
    it->seek_for_prev = seek_for_prev; it->next = next;
}

#endif /* FLOWDB_H */
