/*
 * fdb_crc32c.h -- CRC-32C (Castagnoli), callable without the GIL.
 *
 * Why not the crc32c package here: it is a Python function only (no C API),
 * so every block checksum of a flush or a compaction had to take the GIL,
 * and beside a thread busy in Python each take costs up to the switch
 * interval (docs/PERFORMANCE.md, "Two writer threads, and who holds the
 * GIL").  The crc32c package stays the reference the tests hold this code
 * to (tests/core/test_checksum.py).
 *
 * The checksum is the standard one (iSCSI, RFC 3720; LevelDB's and
 * RocksDB's block checksums): reflected polynomial 0x82F63B78, initial value
 * and final xor 0xFFFFFFFF, so fdb_crc32c(0, "123456789", 9) == 0xE3069283
 * and fdb_crc32c(fdb_crc32c(0, a), b) == fdb_crc32c(0, a + b), as
 * crc32c.crc32c(b, value=crc32c.crc32c(a)).
 *
 * x86-64 with SSE4.2 uses the crc32 instruction (picked at run time) on
 * three interleaved streams; everything else the slicing-by-8 table loop.  fdb_crc32c_init()
 * must run once before the first call (flowdb/_core/checksum.pyx does it at
 * import, holding the GIL).
 */
#ifndef FDB_CRC32C_H
#define FDB_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FDB_CRC32C_POLY 0x82F63B78u

static uint32_t fdb_crc32c_table[8][256];
static int fdb_crc32c_hw;

static uint32_t fdb_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = fdb_crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = fdb_crc32c_table[7][w & 0xFF] ^ fdb_crc32c_table[6][(w >> 8) & 0xFF]
            ^ fdb_crc32c_table[5][(w >> 16) & 0xFF] ^ fdb_crc32c_table[4][(w >> 24) & 0xFF]
            ^ fdb_crc32c_table[3][(w >> 32) & 0xFF] ^ fdb_crc32c_table[2][(w >> 40) & 0xFF]
            ^ fdb_crc32c_table[1][(w >> 48) & 0xFF] ^ fdb_crc32c_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = fdb_crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* The register after n zero bytes is a linear function of the register
 * before: fdb_crc32c_shift applies it for the two stream lengths the
 * hardware loop interleaves (tables built by fdb_crc32c_init). */
#define FDB_CRC32C_LONG 8192
#define FDB_CRC32C_SHORT 256
static uint32_t fdb_crc32c_long[4][256];
static uint32_t fdb_crc32c_short[4][256];

static inline uint32_t fdb_crc32c_shift(uint32_t t[4][256], uint32_t c) {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
}

static void fdb_crc32c_shift_table(uint32_t t[4][256], size_t n) {
    uint32_t basis[32];
    for (int i = 0; i < 32; i++) {
        uint32_t c = 1u << i;
        for (size_t k = 0; k < n; k++)
            c = fdb_crc32c_table[0][c & 0xFF] ^ (c >> 8);
        basis[i] = c;
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t c = 0;
            for (int bit = 0; bit < 8; bit++)
                if (b & (1u << bit))
                    c ^= basis[8 * k + bit];
            t[k][b] = c;
        }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FDB_CRC32C_HAVE_HW 1
/* Three independent streams keep the instruction's pipeline full (its
 * latency is 3 cycles, its throughput 1 per cycle); their registers are
 * joined with the shift tables.  Mark Adler's crc32c.c is the model. */
#define FDB_CRC32C_X86_STREAMS(len)                                           \
    while (n >= 3 * (len)) {                                                  \
        uint64_t c1 = 0, c2 = 0;                                              \
        const uint8_t *end = p + (len);                                       \
        do {                                                                  \
            uint64_t w0, w1, w2;                                              \
            memcpy(&w0, p, 8);                                                \
            memcpy(&w1, p + (len), 8);                                        \
            memcpy(&w2, p + 2 * (len), 8);                                    \
            c = __builtin_ia32_crc32di(c, w0);                                \
            c1 = __builtin_ia32_crc32di(c1, w1);                              \
            c2 = __builtin_ia32_crc32di(c2, w2);                              \
            p += 8;                                                           \
        } while (p < end);                                                    \
        c = fdb_crc32c_shift(FDB_CRC32C_TABLE(len), (uint32_t)c) ^ c1;        \
        c = fdb_crc32c_shift(FDB_CRC32C_TABLE(len), (uint32_t)c) ^ c2;        \
        p += 2 * (len);                                                       \
        n -= 3 * (len);                                                       \
    }
#define FDB_CRC32C_TABLE(len) ((len) == FDB_CRC32C_LONG ? fdb_crc32c_long : fdb_crc32c_short)

__attribute__((target("sse4.2")))
static uint32_t fdb_crc32c_x86(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    FDB_CRC32C_X86_STREAMS(FDB_CRC32C_LONG)
    FDB_CRC32C_X86_STREAMS(FDB_CRC32C_SHORT)
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    while (n--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

/* Fills the tables and picks the implementation: `allow_hw` 0 forces the
 * table loop (the tests check both against the reference). */
static void fdb_crc32c_init(int allow_hw) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (FDB_CRC32C_POLY & (0u - (c & 1)));
        fdb_crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            fdb_crc32c_table[t][i] = (fdb_crc32c_table[t - 1][i] >> 8)
                                     ^ fdb_crc32c_table[0][fdb_crc32c_table[t - 1][i] & 0xFF];
    fdb_crc32c_shift_table(fdb_crc32c_long, FDB_CRC32C_LONG);
    fdb_crc32c_shift_table(fdb_crc32c_short, FDB_CRC32C_SHORT);
    fdb_crc32c_hw = 0;
#ifdef FDB_CRC32C_HAVE_HW
    __builtin_cpu_init();
    fdb_crc32c_hw = allow_hw && __builtin_cpu_supports("sse4.2");
#else
    (void)allow_hw;
#endif
}

/* The CRC-32C of p[0:n] continuing from crc (0 to start). */
static inline uint32_t fdb_crc32c(uint32_t crc, const void *p, size_t n) {
#ifdef FDB_CRC32C_HAVE_HW
    if (fdb_crc32c_hw)
        return fdb_crc32c_x86(crc, (const uint8_t *)p, n);
#endif
    return fdb_crc32c_sw(crc, (const uint8_t *)p, n);
}

#endif /* FDB_CRC32C_H */
