// The per-element math of elementwise_cpu.cpp: exp and erf as branch-free float
// polynomials (a GELU loop over libm's scalar erff took 27 ns an element on one core of a
// 2-vCPU Xeon), the activation loops and the softmax row, included by the generic translation unit and by
// the AVX2 / AVX-512 ones (elementwise_avx2.cpp, elementwise_avx512.cpp; chosen at run time
// with the GEMM's ISA, cpu::active_isa).  All of them are built with -fno-trapping-math
// (the clamps are if-converted, so the loops vectorise; no value changes) and
// -ffp-contract=off (no FMA contraction): every ISA computes the same bits per element
// (a row sum's order follows the vector width).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "elementwise_cpu.h"

namespace fastlrp {
namespace cpu {

// activation_loop and softmax_row below, built for AVX2 and AVX-512 (one thread each).
void activation_avx2(Act kind, const float* x, float* y, int64_t n);
void activation_avx512(Act kind, const float* x, float* y, int64_t n);
void softmax_row_avx2(const float* x, float* y, int64_t L);
void softmax_row_avx512(const float* x, float* y, int64_t L);

namespace {  // one copy per translation unit (each is compiled for its own ISA)

inline float bits_to_float(int32_t i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

// e^a for a <= 88, 0 below -87 (no subnormals); at most 1.2 ulp (measured on [-87, 88]).
// a = n ln2 + r with |r| <= ln2 / 2 (n rounded with the 1.5 * 2^23 shift: exact for
// |a log2 e| < 2^22), e^r by its Taylor polynomial to r^7 (truncation < 1e-8 relative),
// 2^n from the bits.
inline float exp_f(float a) {
    // (clamps and selects as unconditional statements: nested ones are not if-converted)
    float c = a < -87.0f ? -87.0f : a;
    c = c > 88.0f ? 88.0f : c;
    const float shift = 12582912.0f;  // 1.5 * 2^23
    const float n = (c * 1.44269504088896341f + shift) - shift;
    const float r = (c - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 = hi + lo
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const float e = p * bits_to_float((int32_t(n) + 127) << 23);
    return a < -87.0f ? 0.0f : e;
}

// erf(x) = x P(t) / Q(t), t = x^2 / 16, on |x| <= 4 (clamped outside: erf(4) rounds to 1
// in float32); a rational least-squares fit, max |error| 3.5e-7 in float32 arithmetic.
inline float erf_f(float x) {
    float c = x > 4.0f ? 4.0f : x;
    c = c < -4.0f ? -4.0f : c;
    const float t = c * c * 0.0625f;
    float p = 2.070827007293701f;
    p = p * t + 18.87629508972168f;
    p = p * t + 16.396770477294922f;
    p = p * t + 13.687222480773926f;
    p = p * t + 3.139787435531616f;
    p = p * t + 1.128378987312317f;
    float q = 39.3016471862793f;
    q = q * t + 79.7071762084961f;
    q = q * t + 63.25580596923828f;
    q = q * t + 29.816638946533203f;
    q = q * t + 8.115862846374512f;
    q = q * t + 1.0f;
    float e = c * p / q;
    e = e > 1.0f ? 1.0f : e;
    return e < -1.0f ? -1.0f : e;
}

inline void activation_loop(Act kind, const float* __restrict xs, float* __restrict ys, int64_t len) {
    switch (kind) {
        case Act::Gelu:  // x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) ys[i] = 0.5f * xs[i] * (1.0f + erf_f(xs[i] * 0.707106781186547524f));
            break;
        case Act::GeluTanh:  // x (1 + tanh u) / 2 = x / (1 + e^{-2u}), u = sqrt(2/pi) (x + 0.044715 x^3)
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) {
                const float v = xs[i];
                const float u = 0.797884560802865356f * (v + 0.044715f * v * v * v);
                ys[i] = v / (1.0f + exp_f(-2.0f * u));
            }
            break;
        case Act::Silu:
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) ys[i] = xs[i] / (1.0f + exp_f(-xs[i]));
            break;
    }
}

// y = softmax(x) over one row of L values.
inline void softmax_row(const float* __restrict x, float* __restrict y, int64_t L) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < L; ++j) m = x[j] > m ? x[j] : m;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < L; ++j) {
        const float e = exp_f(x[j] - m);
        y[j] = e;
        s += e;
    }
    for (int64_t j = 0; j < L; ++j) y[j] /= s;
}

}  // namespace
}  // namespace cpu
}  // namespace fastlrp
