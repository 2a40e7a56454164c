/* One core's peak rate of the two instructions the batched decode step is made of: the
 * ternary products' `vpdpbusd` and the F16 output product's FMA, each in 12 independent
 * chains (more than latency × throughput) on 256- and 512-bit vectors. The README's compute
 * floor for `serve` (8 sequences per step) comes from these figures.
 *
 *   gcc -O3 -march=native tools/peak/peak.c -o /tmp/peak && /tmp/peak
 *
 * Needs AVX-512 VNNI (on an AVX2-only CPU, drop the zmm and dpbusd loops). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define N 100000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    __m256 a[12];
    __m512 b[12];
    __m256i c[12];
    __m512i d[12];
    for (int i = 0; i < 12; i++) {
        a[i] = _mm256_set1_ps(i * 1e-9f);
        b[i] = _mm512_set1_ps(i * 1e-9f);
        c[i] = _mm256_set1_epi32(i);
        d[i] = _mm512_set1_epi32(i);
    }
    __m256 x = _mm256_set1_ps(1.0000001f);
    __m512 y = _mm512_set1_ps(1.0000001f);
    __m256i u = _mm256_set1_epi8(1);
    __m512i v = _mm512_set1_epi8(1);
    double t = now(), e;
    for (long n = 0; n < N; n++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, x);
    e = now() - t;
    printf("FMA ymm:      %.2f G/s = %.1f G f32 MAC/s\n", N * 12 / e / 1e9, N * 12 * 8 / e / 1e9);
    t = now();
    for (long n = 0; n < N; n++)
        for (int i = 0; i < 12; i++) b[i] = _mm512_fmadd_ps(b[i], y, y);
    e = now() - t;
    printf("FMA zmm:      %.2f G/s = %.1f G f32 MAC/s\n", N * 12 / e / 1e9, N * 12 * 16 / e / 1e9);
    t = now();
    for (long n = 0; n < N; n++)
        for (int i = 0; i < 12; i++) c[i] = _mm256_dpbusd_epi32(c[i], u, u);
    e = now() - t;
    printf("vpdpbusd ymm: %.2f G/s = %.1f G u8xi8 MAC/s\n", N * 12 / e / 1e9, N * 12 * 32 / e / 1e9);
    t = now();
    for (long n = 0; n < N; n++)
        for (int i = 0; i < 12; i++) d[i] = _mm512_dpbusd_epi32(d[i], v, v);
    e = now() - t;
    printf("vpdpbusd zmm: %.2f G/s = %.1f G u8xi8 MAC/s\n", N * 12 / e / 1e9, N * 12 * 64 / e / 1e9);
    float s = 0;
    for (int i = 0; i < 12; i++) s += a[i][0] + b[i][0] + c[i][0] + d[i][0];
    printf("(checksum %g)\n", s);
    return 0;
}
