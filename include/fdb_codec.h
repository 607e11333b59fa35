/*
 * fdb_codec.h -- the block codecs a TableBuilder needs without the GIL:
 * a snappy compressor and CRC32C.
 *
 * Everything here is free of Python, so a table is built (entries, blocks,
 * compression, checksums, writes) without holding the GIL: a flush or a
 * compaction runs beside the writers.  Readers decompress and verify with
 * the python-snappy and crc32c packages; the output here is the standard
 * raw snappy format and the standard CRC32C (Castagnoli), so both agree.
 *
 * Snappy (github.com/google/snappy, format_description.txt):
 *
 *     stream  := uncompressed_length:varint element*
 *     element := literal | copy
 *     literal := tag(low bits 00, (len-1) << 2 when len <= 60, else
 *                60..63 = 1..4 little-endian length bytes follow) bytes[len]
 *     copy1   := tag(01 | (len-4) << 2 | (offset >> 8) << 5) offset_lo:u8
 *                # len 4..11, offset 1..2047
 *     copy2   := tag(10 | (len-1) << 2) offset:u16le    # len 1..64
 *
 * The compressor is the reference one's greedy scheme: 64 KiB fragments, a
 * hash table of 4-byte sequences, literals between matches, lookups
 * spaced further apart while nothing matches (incompressible data passes
 * quickly).  Its ratio is the reference's on the same data, not its bytes.
 */
#ifndef FDB_CODEC_H
#define FDB_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "flowdb.h"

/* ---- snappy ------------------------------------------------------------- */

#define FDB_SNAPPY_FRAGMENT  (1u << 16)
#define FDB_SNAPPY_HASH_BITS 14

/* The most bytes fdb_snappy_compress writes for n input bytes (the
 * reference's bound: varint + worst-case literal expansion). */
static inline size_t fdb_snappy_max_len(size_t n) { return 32 + n + n / 6; }

static inline uint32_t fdb_load32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint8_t *fdb_snappy_literal(uint8_t *op, const uint8_t *p, size_t len) {
    size_t n = len - 1;
    if (n < 60) {
        *op++ = (uint8_t)(n << 2);
    } else {
        uint8_t *tag = op++;
        int count = 0;
        while (n > 0) { *op++ = (uint8_t)n; n >>= 8; count++; }
        *tag = (uint8_t)((59 + count) << 2);
    }
    memcpy(op, p, len);
    return op + len;
}

static inline uint8_t *fdb_snappy_copy(uint8_t *op, size_t offset, size_t len) {
    while (len >= 68) {                         /* 64-byte copies, leaving >= 4 */
        *op++ = (uint8_t)(2 | (63 << 2)); *op++ = (uint8_t)offset; *op++ = (uint8_t)(offset >> 8);
        len -= 64;
    }
    if (len > 64) {                             /* 65..67: 60 now, 5..7 after */
        *op++ = (uint8_t)(2 | (59 << 2)); *op++ = (uint8_t)offset; *op++ = (uint8_t)(offset >> 8);
        len -= 60;
    }
    if (len >= 4 && len < 12 && offset < 2048) {
        *op++ = (uint8_t)(1 | ((len - 4) << 2) | ((offset >> 8) << 5));
        *op++ = (uint8_t)offset;
    } else {
        *op++ = (uint8_t)(2 | ((len - 1) << 2)); *op++ = (uint8_t)offset; *op++ = (uint8_t)(offset >> 8);
    }
    return op;
}

static inline uint64_t fdb_load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Length of the common prefix of a and b, at most limit - b (a < b). */
static inline size_t fdb_match_len(const uint8_t *a, const uint8_t *b, const uint8_t *limit) {
    const uint8_t *start = b;
    while (b + 8 <= limit) {
        uint64_t x = fdb_load64(a) ^ fdb_load64(b);
        if (x) return (size_t)(b - start) + (size_t)(__builtin_ctzll(x) >> 3);  /* little-endian */
        a += 8; b += 8;
    }
    while (b < limit && *a == *b) { a++; b++; }
    return (size_t)(b - start);
}

/* One fragment (at most 64 KiB, so every offset fits in 16 bits).  The hash
 * table has 1 << bits slots, scaled to the fragment as the reference does. */
static inline uint8_t *fdb_snappy_fragment(const uint8_t *in, size_t n, uint8_t *op,
                                           uint16_t *table) {
    const uint8_t *ip = in, *end = in + n, *next_emit = in;
    if (n >= 15) {
        int bits = 8;
        while (bits < FDB_SNAPPY_HASH_BITS && ((size_t)1 << bits) < n) bits++;
        const int shift = 32 - bits;
        const uint8_t *limit = end - 15;        /* room for the 4-byte loads */
        memset(table, 0, sizeof(uint16_t) << bits);
        ip++;
        uint32_t skip = 32;
        while (ip < limit) {
            uint32_t cur = fdb_load32(ip);
            uint32_t h = (cur * 0x1e35a7bdu) >> shift;
            const uint8_t *cand = in + table[h];
            table[h] = (uint16_t)(ip - in);
            if (cand >= ip || fdb_load32(cand) != cur) {
                ip += skip++ >> 5;               /* sparser lookups while nothing matches */
                continue;
            }
            skip = 32;
            if (ip > next_emit) op = fdb_snappy_literal(op, next_emit, (size_t)(ip - next_emit));
            size_t len = 4 + fdb_match_len(cand + 4, ip + 4, end);
            op = fdb_snappy_copy(op, (size_t)(ip - cand), len);
            ip += len;
            next_emit = ip;
            if (ip < limit) {                    /* the position before the next lookup */
                uint32_t prev = fdb_load32(ip - 1);
                table[(prev * 0x1e35a7bdu) >> shift] = (uint16_t)(ip - 1 - in);
            }
        }
    }
    if (next_emit < end) op = fdb_snappy_literal(op, next_emit, (size_t)(end - next_emit));
    return op;
}

/* Compresses in[0..n) into out (fdb_snappy_max_len(n) bytes); returns the
 * compressed length.  table: scratch of 1 << FDB_SNAPPY_HASH_BITS uint16. */
static inline size_t fdb_snappy_compress(const uint8_t *in, size_t n, uint8_t *out,
                                         uint16_t *table) {
    uint8_t *op = out + fdb_put_varint(out, n);
    for (size_t off = 0; off < n; off += FDB_SNAPPY_FRAGMENT) {
        size_t len = n - off < FDB_SNAPPY_FRAGMENT ? n - off : FDB_SNAPPY_FRAGMENT;
        op = fdb_snappy_fragment(in + off, len, op, table);
    }
    return (size_t)(op - out);
}

/* ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---------------- */

static uint32_t fdb_crc32c_table[8][256];

/* Fills the slicing-by-8 tables; call once before the first crc (module
 * import does). */
static inline void fdb_crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        fdb_crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            fdb_crc32c_table[t][i] = (fdb_crc32c_table[t - 1][i] >> 8) ^
                                     fdb_crc32c_table[0][fdb_crc32c_table[t - 1][i] & 0xff];
}

static inline uint32_t fdb_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ fdb_get_u32le(p), hi = fdb_get_u32le(p + 4);
        crc = fdb_crc32c_table[7][lo & 0xff] ^ fdb_crc32c_table[6][(lo >> 8) & 0xff] ^
              fdb_crc32c_table[5][(lo >> 16) & 0xff] ^ fdb_crc32c_table[4][lo >> 24] ^
              fdb_crc32c_table[3][hi & 0xff] ^ fdb_crc32c_table[2][(hi >> 8) & 0xff] ^
              fdb_crc32c_table[1][(hi >> 16) & 0xff] ^ fdb_crc32c_table[0][hi >> 24];
        p += 8; n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ fdb_crc32c_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2")))
static uint32_t fdb_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc & 0xffffffffu;
    while (n >= 8) { c = __builtin_ia32_crc32di(c, fdb_get_u64le(p)); p += 8; n -= 8; }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
static inline int fdb_crc32c_has_hw(void) { return __builtin_cpu_supports("sse4.2"); }
#else
static inline uint32_t fdb_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    return fdb_crc32c_sw(crc, p, n);
}
static inline int fdb_crc32c_has_hw(void) { return 0; }
#endif

/* crc32c(p[0..n)) continued from crc (0 to start), as crc32c.crc32c(data, crc). */
static inline uint32_t fdb_crc32c(uint32_t crc, const uint8_t *p, size_t n, int hw) {
    return hw ? fdb_crc32c_hw(crc, p, n) : fdb_crc32c_sw(crc, p, n);
}

#endif /* FDB_CODEC_H */
