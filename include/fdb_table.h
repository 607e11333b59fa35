/*
 * fdb_table.h -- C helpers of the SSTable modules (block, bloom, table).
 *
 * Everything here is `static inline` and free of Python: safe without the
 * GIL.  flowdb/_core/bloom.pxd mirrors this header for Cython.
 *
 * The hash and the probe sequence are part of the on-disk format (a bloom
 * filter written today must answer the same way forever): never change them;
 * a new filter kind needs a new k value above 30 or a new format version.
 * docs/FORMAT.md, "SSTable" / "Bloom block", repeats them.
 */
#ifndef FDB_TABLE_H
#define FDB_TABLE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "flowdb.h"

/* ---- blocks ------------------------------------------------------------ */

/* Largest block a builder makes: restart offsets and counts are u32. */
#define FDB_BLOCK_MAX_SIZE  0xFFFFFFFFu

/* ---- hash: MurmurHash64A (Austin Appleby, public domain) ---------------
 *
 *   m = 0xc6a4a7935bd1e995, r = 47
 *   h = seed XOR (len * m)
 *   for each whole 8-byte word w (read little-endian):
 *       w *= m; w ^= w >> r; w *= m; h ^= w; h *= m
 *   if len % 8 != 0:
 *       h ^= the remaining bytes as a little-endian integer; h *= m
 *   h ^= h >> r; h *= m; h ^= h >> r
 *
 * All arithmetic is modulo 2**64.  Reading words little-endian (instead of
 * the native order of the original) makes the result portable.
 */
#define FDB_BLOOM_SEED  0xbc9f1d34u   /* LevelDB's bloom seed */

static inline uint64_t fdb_hash64(const uint8_t *p, size_t n, uint64_t seed) {
    const uint64_t m = 0xc6a4a7935bd1e995ull;
    const int r = 47;
    uint64_t h = seed ^ ((uint64_t)n * m);
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t w = fdb_get_u64le(p + 8 * i);
        w *= m; w ^= w >> r; w *= m;
        h ^= w; h *= m;
    }
    size_t rest = n & 7;
    if (rest) {
        const uint8_t *t = p + 8 * words;
        uint64_t w = 0;
        for (size_t i = 0; i < rest; i++) w |= (uint64_t)t[i] << (8 * i);
        h ^= w; h *= m;
    }
    h ^= h >> r; h *= m; h ^= h >> r;
    return h;
}

/* ---- bloom filter probes (double hashing, as LevelDB util/bloom.cc) -----
 *
 *   filter := bits[nbytes] k:u8        nbits = 8 * nbytes
 *   h      := fdb_hash64(user_key, FDB_BLOOM_SEED)
 *   delta  := rotate_right_64(h, 33)
 *   probe i (i = 0 .. k-1): bit (h + i*delta) mod 2**64 mod nbits,
 *            i.e. byte bit/8, mask 1 << (bit % 8)
 */
#define FDB_BLOOM_MAX_K 30u

static inline uint64_t fdb_bloom_delta(uint64_t h) { return (h >> 33) | (h << 31); }

/* Sets the k probe bits of hash h in bits[0 .. nbits/8).  nbits > 0. */
static inline void fdb_bloom_set(uint8_t *bits, uint64_t nbits, unsigned k, uint64_t h) {
    uint64_t delta = fdb_bloom_delta(h);
    for (unsigned i = 0; i < k; i++) {
        uint64_t b = h % nbits;
        bits[b >> 3] |= (uint8_t)(1u << (b & 7));
        h += delta;
    }
}

/* 1 if the key with hash h may be in the filter, 0 if it is certainly not.
 * A filter with no bit array, or a k outside 1..30 (not written by this
 * version), answers 1: a filter can only ever save work, never hide data. */
static inline int fdb_bloom_query(const uint8_t *filter, size_t len, uint64_t h) {
    if (len < 2) return 1;
    unsigned k = filter[len - 1];
    if (k < 1 || k > FDB_BLOOM_MAX_K) return 1;
    uint64_t nbits = (uint64_t)(len - 1) * 8;
    uint64_t delta = fdb_bloom_delta(h);
    for (unsigned i = 0; i < k; i++) {
        uint64_t b = h % nbits;
        if (!(filter[b >> 3] & (1u << (b & 7)))) return 0;
        h += delta;
    }
    return 1;
}

#endif /* FDB_TABLE_H */
