/*
 * fdb_snappy.h -- the snappy block codec, in C, callable without the GIL.
 *
 * Why not python-snappy here: it compresses and decompresses through
 * cramjam, which releases the GIL inside every call and must win it back
 * after.  Beside a thread busy in Python each win costs up to the switch
 * interval (5 ms), so a flush or compaction, one call per 8 KiB block, took
 * a minute instead of a second (docs/PERFORMANCE.md).  This codec runs as
 * plain C: the table builder compresses a whole batch of blocks per GIL
 * acquisition and the reader decompresses without leaving the GIL.
 * python-snappy stays the reference the tests hold this codec to, both ways.
 *
 * The format is snappy's raw format, unchanged
 * (google/snappy, format_description.txt):
 *
 *     stream  := ulen:varint32 element*
 *     element := literal | copy
 *     literal := tag(len-1 << 2 | 0b00)                      len-1 < 60
 *              | tag((59+k) << 2 | 0b00) (len-1):u{8k}le      k = 1..4
 *                bytes[len]
 *     copy    := tag((len-4) << 2 | (off >> 8) << 5 | 0b01) off:u8
 *                                                             len 4..11, off < 2048
 *              | tag((len-1) << 2 | 0b10) off:u16le           len 1..64
 *              | tag((len-1) << 2 | 0b11) off:u32le           len 1..64
 *
 * A copy repeats len bytes starting off bytes back in the output (off >= 1;
 * off < len repeats a pattern).  The stream decodes to exactly ulen bytes.
 *
 * The compressor is the classic greedy LZ77 over 4-byte hashes, cut in
 * 64 KiB fragments so every offset fits 16 bits; it never reads past its
 * input and writes at most fdb_snappy_max_compressed(n) bytes.  The
 * decompressor checks every length and offset against both buffers before
 * using it: any stream decodes to ulen bytes or is refused.
 */
#ifndef FDB_SNAPPY_H
#define FDB_SNAPPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FDB_SNAPPY_FRAGMENT     65536u  /* offsets within a fragment fit u16 */
#define FDB_SNAPPY_MAX_TABLE    16384u  /* hash table entries (a power of two) */
#define FDB_SNAPPY_MIN_TABLE    256u
#define FDB_SNAPPY_INPUT_MARGIN 15u     /* no match is sought this close to the end */

/* The most a stream of n input bytes can take (snappy's own bound). */
static inline size_t fdb_snappy_max_compressed(size_t n) {
    return 32 + n + n / 6;
}

static inline uint32_t fdb_snappy_load32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint8_t *fdb_snappy_literal(uint8_t *op, const uint8_t *lit, size_t len) {
    size_t n = len - 1;
    if (n < 60) {
        *op++ = (uint8_t)(n << 2);
    } else {
        uint8_t *tag = op++;
        unsigned k = 0;
        while (n) {                 /* len-1 in k little-endian bytes */
            *op++ = (uint8_t)n;
            n >>= 8;
            k++;
        }
        *tag = (uint8_t)((59 + k) << 2);
    }
    memcpy(op, lit, len);
    return op + len;
}

/* One copy element; 4 <= len <= 64, 1 <= off < 65536. */
static inline uint8_t *fdb_snappy_copy_upto64(uint8_t *op, size_t off, size_t len) {
    if (len < 12 && off < 2048) {
        *op++ = (uint8_t)(1 | ((len - 4) << 2) | ((off >> 8) << 5));
        *op++ = (uint8_t)off;
    } else {
        *op++ = (uint8_t)(2 | ((len - 1) << 2));
        *op++ = (uint8_t)off;
        *op++ = (uint8_t)(off >> 8);
    }
    return op;
}

/* Copies of any length >= 4: pieces of 64, and never a last piece under 4. */
static inline uint8_t *fdb_snappy_copy(uint8_t *op, size_t off, size_t len) {
    while (len >= 68) {
        op = fdb_snappy_copy_upto64(op, off, 64);
        len -= 64;
    }
    if (len > 64) {
        op = fdb_snappy_copy_upto64(op, off, 60);
        len -= 60;
    }
    return fdb_snappy_copy_upto64(op, off, len);
}

/* Bytes equal at a and b, b < a, reading no further than limit. */
static inline size_t fdb_snappy_match_len(const uint8_t *b, const uint8_t *a,
                                          const uint8_t *limit) {
    const uint8_t *start = a;
    while (a + 8 <= limit) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y)
            return (size_t)(a - start) + ((size_t)__builtin_ctzll(x ^ y) >> 3);
        a += 8;
        b += 8;
    }
    while (a < limit && *a == *b) {
        a++;
        b++;
    }
    return (size_t)(a - start);
}

/* One fragment (<= 64 KiB) into op; table has at least table_size entries. */
static inline uint8_t *fdb_snappy_fragment(const uint8_t *base, size_t len, uint8_t *op,
                                           uint16_t *table, uint32_t table_size) {
    const uint8_t *end = base + len, *ip = base, *next_emit = base;
    const uint8_t *candidate, *ip_limit;
    uint32_t shift = 32 - (uint32_t)__builtin_ctz(table_size), cur, h, skip;
    if (len <= FDB_SNAPPY_INPUT_MARGIN)
        goto remainder;
    ip_limit = end - FDB_SNAPPY_INPUT_MARGIN;
    memset(table, 0, table_size * sizeof(uint16_t));
    ip++;                           /* the first byte has nothing before it */
    for (;;) {
        /* Find a 4-byte match, stepping faster through incompressible data. */
        skip = 32;
        for (;;) {
            cur = fdb_snappy_load32(ip);
            h = (cur * 0x1e35a7bdu) >> shift;
            candidate = base + table[h];
            table[h] = (uint16_t)(ip - base);
            if (cur == fdb_snappy_load32(candidate))
                break;
            ip += skip++ >> 5;
            if (ip > ip_limit)
                goto remainder;
        }
        if (next_emit < ip)
            op = fdb_snappy_literal(op, next_emit, (size_t)(ip - next_emit));
        /* Emit the match, then try to start another right after it. */
        for (;;) {
            size_t matched = 4 + fdb_snappy_match_len(candidate + 4, ip + 4, end);
            op = fdb_snappy_copy(op, (size_t)(ip - candidate), matched);
            ip += matched;
            next_emit = ip;
            if (ip >= ip_limit)
                goto remainder;
            table[((fdb_snappy_load32(ip - 1)) * 0x1e35a7bdu) >> shift] = (uint16_t)(ip - 1 - base);
            cur = fdb_snappy_load32(ip);
            h = (cur * 0x1e35a7bdu) >> shift;
            candidate = base + table[h];
            table[h] = (uint16_t)(ip - base);
            if (cur != fdb_snappy_load32(candidate))
                break;
        }
        ip++;
    }
remainder:
    if (next_emit < end)
        op = fdb_snappy_literal(op, next_emit, (size_t)(end - next_emit));
    return op;
}

/* Compresses src[0:n] into dst (room for fdb_snappy_max_compressed(n));
 * returns the stream's length.  n must be < 2**32. */
static inline size_t fdb_snappy_compress(const uint8_t *src, size_t n, uint8_t *dst) {
    uint16_t table[FDB_SNAPPY_MAX_TABLE];
    uint8_t *op = dst;
    uint64_t v = n;
    while (v >= 0x80) {
        *op++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *op++ = (uint8_t)v;
    while (n > 0) {
        size_t len = n < FDB_SNAPPY_FRAGMENT ? n : FDB_SNAPPY_FRAGMENT;
        uint32_t table_size = FDB_SNAPPY_MIN_TABLE;
        while (table_size < FDB_SNAPPY_MAX_TABLE && table_size < len)
            table_size <<= 1;
        op = fdb_snappy_fragment(src, len, op, table, table_size);
        src += len;
        n -= len;
    }
    return (size_t)(op - dst);
}

/* The length a stream says it decodes to, and where its elements start;
 * -1 if the varint is cut short or above 2**32 - 1. */
static inline int fdb_snappy_ulen(const uint8_t *src, size_t n, uint64_t *ulen,
                                  size_t *header) {
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < n && i < 5; i++) {
        v |= (uint64_t)(src[i] & 0x7f) << (7 * i);
        if (!(src[i] & 0x80)) {
            if (v > 0xffffffffu)
                return -1;
            *ulen = v;
            *header = i + 1;
            return 0;
        }
    }
    return -1;
}

/* Decodes the stream src[0:n] into dst, which must be exactly the length the
 * stream claims (fdb_snappy_ulen).  0, or -1 if the stream is malformed:
 * dst is then garbage, never overrun. */
static inline int fdb_snappy_decompress(const uint8_t *src, size_t n, uint8_t *dst,
                                        size_t dst_len) {
    uint64_t ulen, len, off;
    size_t header, op = 0;
    const uint8_t *p, *end = src + n;
    if (fdb_snappy_ulen(src, n, &ulen, &header) != 0 || ulen != dst_len)
        return -1;
    p = src + header;
    while (p < end) {
        uint8_t tag = *p++;
        switch (tag & 3) {
        case 0:
            len = (uint64_t)(tag >> 2) + 1;
            /* Most literals in a block are short: one fixed 16-byte move
             * where both buffers have the room; the bytes past len are
             * overwritten by the elements that follow. */
            if (len <= 16 && end - p >= 16 && dst_len - op >= 16) {
                memcpy(dst + op, p, 16);
                p += len;
                op += (size_t)len;
                continue;
            }
            if (len > 60) {
                size_t k = (size_t)len - 60, i;
                if ((size_t)(end - p) < k)
                    return -1;
                len = 0;
                for (i = 0; i < k; i++)
                    len |= (uint64_t)p[i] << (8 * i);
                len += 1;
                p += k;
            }
            if ((uint64_t)(end - p) < len || (uint64_t)(dst_len - op) < len)
                return -1;
            memcpy(dst + op, p, (size_t)len);
            p += len;
            op += (size_t)len;
            continue;
        case 1:
            if (end - p < 1)
                return -1;
            len = (uint64_t)((tag >> 2) & 7) + 4;
            off = ((uint64_t)(tag >> 5) << 8) | p[0];
            p += 1;
            break;
        case 2:
            if (end - p < 2)
                return -1;
            len = (uint64_t)(tag >> 2) + 1;
            off = (uint64_t)p[0] | ((uint64_t)p[1] << 8);
            p += 2;
            break;
        default:
            if (end - p < 4)
                return -1;
            len = (uint64_t)(tag >> 2) + 1;
            off = (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
                  ((uint64_t)p[3] << 24);
            p += 4;
            break;
        }
        if (off == 0 || off > op || (uint64_t)(dst_len - op) < len)
            return -1;
        {
            uint8_t *d = dst + op;
            const uint8_t *s = d - off;
            size_t m = (size_t)len, room = dst_len - op;
            /* Fixed-size moves where the room allows: the bytes written past
             * len are overwritten by the elements that follow.  A move of k
             * bytes needs off >= k so that every byte it reads was written
             * before it (a pattern copy, off < len, reads its own output). */
            if (off >= 16 && m <= 16 && room >= 16) {
                memcpy(d, s, 16);
            } else if (off >= 8 && room >= ((m + 7) & ~(size_t)7)) {
                for (;;) {
                    memcpy(d, s, 8);
                    if (m <= 8)
                        break;
                    d += 8;
                    s += 8;
                    m -= 8;
                }
            } else if (off >= len) {
                memcpy(d, s, m);
            } else {
                while (m--)
                    *d++ = *s++;
            }
            op += (size_t)len;
        }
    }
    return op == dst_len ? 0 : -1;
}

#endif /* FDB_SNAPPY_H */
