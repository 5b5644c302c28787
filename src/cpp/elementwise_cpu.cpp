// Memory-bound transformer kernels (see elementwise_cpu.h).  The loops are written so that
// GCC and Clang vectorise them at the baseline ISA: exp and erf are branch-free float
// polynomials here (a GELU loop over libm's scalar erff took 27 ns an element on one core
// of a 2-vCPU Xeon), row reductions use `omp simd reduction`.
#include "elementwise_cpu.h"

#include <cmath>
#include <cstring>

#include "rules.h"

namespace fastlrp {
namespace cpu {

namespace {

// Elements per parallel chunk of the elementwise loops, and the smallest job worth a team.
constexpr int64_t kChunk = 1 << 14;
constexpr int64_t kParallelMin = 1 << 15;

inline float bits_to_float(int32_t i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

// e^a for a <= 88, 0 below -87 (no subnormals); at most 1.2 ulp (measured on [-87, 88]).  a = n ln2 + r with
// |r| <= ln2 / 2 (n rounded with the 1.5 * 2^23 shift: exact for |a log2 e| < 2^22),
// e^r by its Taylor polynomial to r^7 (truncation < 1e-8 relative), 2^n from the bits.
inline float exp_f(float a) {
    // (clamps and selects as unconditional statements: nested ones are not if-converted, nor
    // any without -fno-trapping-math, which CMakeLists.txt sets for this file)
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

template <class F>
void each_chunk(int64_t n, int threads, F f) {
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n >= kParallelMin)
    for (int64_t k = 0; k < chunks; ++k) {
        const int64_t s = k * kChunk;
        f(s, (n - s < kChunk) ? n - s : kChunk);
    }
}

template <class F>
void each_row(int64_t rows, int64_t len, int threads, F f) {
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * len >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) f(r);
}

}  // namespace

void activation_forward(Act kind, const float* x, float* y, int64_t n, int threads) {
    each_chunk(n, threads, [&](int64_t s, int64_t len) {
        const float* __restrict xs = x + s;
        float* __restrict ys = y + s;
        switch (kind) {
            case Act::Gelu:  // x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
#pragma omp simd
                for (int64_t i = 0; i < len; ++i)
                    ys[i] = 0.5f * xs[i] * (1.0f + erf_f(xs[i] * 0.707106781186547524f));
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
    });
}

void channel_affine(const float* x, const float* scale, const float* shift, float* y, int64_t outer, int64_t C,
                    int64_t inner, int threads) {
    each_row(outer * C, inner, threads, [&](int64_t r) {
        const float a = scale[r % C], b = shift[r % C];
        const float* __restrict xs = x + r * inner;
        float* __restrict ys = y + r * inner;
        for (int64_t i = 0; i < inner; ++i) ys[i] = xs[i] * a + b;
    });
}

void layernorm_forward(const LayerNormArgs& a, float* y, float* std_out, int threads) {
    const int64_t C = a.C;
    each_row(a.rows, C, threads, [&](int64_t r) {
        const float* __restrict x = a.x + r * C;
        float* __restrict yr = y + r * C;
        float mean = 0.0f;  // (row sums in double: the float32 sum of C = 768 terms erred by 1e-7 relative)
        if (!a.rms) {
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t j = 0; j < C; ++j) s += x[j];
            mean = float(s / double(C));
        }
        double q = 0.0;
#pragma omp simd reduction(+ : q)
        for (int64_t j = 0; j < C; ++j) q += double(x[j] - mean) * double(x[j] - mean);
        const float sd = float(std::sqrt(q / double(C) + double(a.eps)));
        std_out[r] = sd;
        for (int64_t j = 0; j < C; ++j) {
            float v = (x[j] - mean) / sd;
            if (a.w) v *= a.w[j];
            if (a.b) v += a.b[j];
            yr[j] = v;
        }
    });
}

namespace {

// One row of layernorm_relevance; the options as template flags keep the loop branch-free.
template <bool kGuardZero, bool kW, bool kB>
void layernorm_relevance_row(const LayerNormArgs& a, const float* __restrict x, const float* __restrict yr,
                             const float* __restrict Rr, float* __restrict o, float sd, float eps) {
    const int64_t C = a.C;
    const float* __restrict w = a.w;
    const float* __restrict b = a.b;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; ++j) {
        const float z = kB ? yr[j] - b[j] : yr[j];
        float g = Rr[j] / (kGuardZero ? (z == 0.0f ? eps : z) : stabilize(z, eps));
        if (kW) g *= w[j];
        g /= sd;
        o[j] = g;
        s += g;
    }
    const float m = a.rms ? 0.0f : float(s / double(C));
    for (int64_t j = 0; j < C; ++j) o[j] = x[j] * (o[j] - m);
}

template <bool kGuardZero, bool kW, bool kB>
void layernorm_relevance_rows(const LayerNormArgs& a, const float* y, const float* std_in, const float* R,
                              float* out, float eps, int threads) {
    const int64_t C = a.C;
    each_row(a.rows, C, threads, [&](int64_t r) {
        layernorm_relevance_row<kGuardZero, kW, kB>(a, a.x + r * C, y + r * C, R + r * C, out + r * C, std_in[r],
                                                     eps);
    });
}

}  // namespace

void layernorm_relevance(const LayerNormArgs& a, const float* y, const float* std_in, const float* R, float* out,
                         float rule_eps, bool guard_zero, int threads) {
    const int code = (guard_zero ? 4 : 0) | (a.w ? 2 : 0) | (a.b ? 1 : 0);
    switch (code) {
        case 0: return layernorm_relevance_rows<false, false, false>(a, y, std_in, R, out, rule_eps, threads);
        case 1: return layernorm_relevance_rows<false, false, true>(a, y, std_in, R, out, rule_eps, threads);
        case 2: return layernorm_relevance_rows<false, true, false>(a, y, std_in, R, out, rule_eps, threads);
        case 3: return layernorm_relevance_rows<false, true, true>(a, y, std_in, R, out, rule_eps, threads);
        case 4: return layernorm_relevance_rows<true, false, false>(a, y, std_in, R, out, rule_eps, threads);
        case 5: return layernorm_relevance_rows<true, false, true>(a, y, std_in, R, out, rule_eps, threads);
        case 6: return layernorm_relevance_rows<true, true, false>(a, y, std_in, R, out, rule_eps, threads);
        default: return layernorm_relevance_rows<true, true, true>(a, y, std_in, R, out, rule_eps, threads);
    }
}

void softmax_forward(const float* x, float* y, int64_t rows, int64_t L, int threads) {
    each_row(rows, L, threads, [&](int64_t r) {
        const float* __restrict xr = x + r * L;
        float* __restrict yr = y + r * L;
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < L; ++j) m = xr[j] > m ? xr[j] : m;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < L; ++j) {
            const float e = exp_f(xr[j] - m);
            yr[j] = e;
            s += e;
        }
        for (int64_t j = 0; j < L; ++j) yr[j] /= s;
    });
}

void softmax_taylor(const float* x, const float* y, const float* R, float* out, int64_t rows, int64_t L,
                    int threads) {
    each_row(rows, L, threads, [&](int64_t r) {
        const float* __restrict xr = x + r * L;
        const float* __restrict yr = y + r * L;
        const float* __restrict Rr = R + r * L;
        float* __restrict o = out + r * L;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < L; ++j) s += Rr[j];
        for (int64_t j = 0; j < L; ++j) o[j] = xr[j] * (Rr[j] - yr[j] * s);
    });
}

void stabilized_quotient(const float* R, const float* z, float* g, int64_t n, float eps, float factor,
                         int threads) {
    each_chunk(n, threads, [&](int64_t s, int64_t len) {
        const float* __restrict Rs = R + s;
        const float* __restrict zs = z + s;
        float* __restrict gs = g + s;
        for (int64_t i = 0; i < len; ++i) gs[i] = Rs[i] / (stabilize(zs[i], eps) * factor);
    });
}

void norm_shares(const float* R, const float* z, const float* const* xs, float* const* outs, int64_t count,
                 int64_t n, float eps, bool guard_zero, int threads) {
    each_chunk(n, threads, [&](int64_t s, int64_t len) {
        const float* __restrict Rs = R + s;
        const float* __restrict zs = z + s;
        for (int64_t k = 0; k < count; ++k) {
            const float* __restrict x = xs[k] + s;
            float* __restrict o = outs[k] + s;
            if (guard_zero)
                for (int64_t i = 0; i < len; ++i) o[i] = x[i] * (Rs[i] / (zs[i] == 0.0f ? eps : zs[i]));
            else
                for (int64_t i = 0; i < len; ++i) o[i] = x[i] * (Rs[i] / stabilize(zs[i], eps));
        }
    });
}

}  // namespace cpu
}  // namespace fastlrp
