// Memory-bound transformer kernels (see elementwise_cpu.h).  The loops are written so that
// GCC and Clang vectorise them at the baseline ISA (exp and erf: elementwise_math.h; the
// activations and the softmax, compute-bound, also run at AVX2 / AVX-512), row reductions use
// `omp simd reduction`.
#include "elementwise_cpu.h"

#include <cmath>

#include "elementwise_math.h"
#include "gemm.h"
#include "rules.h"

namespace fastlrp {
namespace cpu {

namespace {

// Elements per parallel chunk of the elementwise loops, and the smallest job worth a team.
constexpr int64_t kChunk = 1 << 14;
constexpr int64_t kParallelMin = 1 << 15;

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
    const Isa isa = active_isa();
    (void)isa;
    each_chunk(n, threads, [&](int64_t s, int64_t len) {
#ifdef FASTLRP_HAVE_AVX512
        if (isa == Isa::Avx512) return activation_avx512(kind, x + s, y + s, len);
#endif
#ifdef FASTLRP_HAVE_AVX2
        if (isa == Isa::Avx2) return activation_avx2(kind, x + s, y + s, len);
#endif
        activation_loop(kind, x + s, y + s, len);
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
    const Isa isa = active_isa();
    (void)isa;
    each_row(rows, L, threads, [&](int64_t r) {
#ifdef FASTLRP_HAVE_AVX512
        if (isa == Isa::Avx512) return softmax_row_avx512(x + r * L, y + r * L, L);
#endif
#ifdef FASTLRP_HAVE_AVX2
        if (isa == Isa::Avx2) return softmax_row_avx2(x + r * L, y + r * L, L);
#endif
        softmax_row(x + r * L, y + r * L, L);
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
