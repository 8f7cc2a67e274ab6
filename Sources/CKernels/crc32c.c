// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of log
// records and snapshots. Table-driven one byte at a time is about 1 byte per
// few cycles, which made checksumming a 100 MB snapshot a good part of the
// pause it causes; SSE4.2's crc32 instruction computes the same function 8
// bytes per instruction. Chosen at run time; both give identical results.
#include "perennial_kernels.h"
#include <string.h>

static uint32_t crc_table[256];

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t pk_crc32c_plain(uint32_t seed, const void *data, size_t n) {
    const unsigned char *p = data;
    uint32_t c = ~seed;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t seed, const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t c = ~seed;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n > 0; n--, p++) c32 = _mm_crc32_u8(c32, *p);
    return ~c32;
}

static int has_sse42 = 0;

__attribute__((constructor)) static void crc32c_init(void) {
    build_table();
    __builtin_cpu_init();
    has_sse42 = __builtin_cpu_supports("sse4.2");
}

uint32_t pk_crc32c(uint32_t seed, const void *data, size_t n) {
    return has_sse42 ? crc32c_sse42(seed, data, n) : pk_crc32c_plain(seed, data, n);
}
#else
__attribute__((constructor)) static void crc32c_init(void) { build_table(); }

uint32_t pk_crc32c(uint32_t seed, const void *data, size_t n) { return pk_crc32c_plain(seed, data, n); }
#endif
