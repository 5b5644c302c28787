// Rule epilogues and col2im (portable C++, auto-vectorised loops,
// OpenMP over rows / planes).  These passes are memory-bound; the GEMMs are in
// gemm_*.cpp.
#include "conv_cpu.h"

#include <cmath>
#include <cstring>
#include <memory>

namespace fastlrp {
namespace cpu {

namespace {

inline float pos(float v) { return v > 0.0f ? v : 0.0f; }
inline float neg(float v) { return v < 0.0f ? v : 0.0f; }

// (g0, g1) -> (g0 + g1, g0 - g1) in place (RuleGArgs::sumdiff).
inline void to_sum_diff(float* __restrict g0, float* __restrict g1, int64_t len) {
    for (int64_t i = 0; i < len; ++i) rule_g_sum_diff(g0[i], g1[i]);
}

}  // namespace

int rule_g_halves(RuleKind kind) { return rule_g_num_halves(kind); }

namespace {

// rule_g of sample n of a dense layer (P == 1, one group): g[n, h*O + o].
template <bool HasBias, bool ZeroBias>
void rule_g_dense(const RuleGArgs& a, int64_t n, float e, float al, float be, float gm, int64_t H) {
    const int64_t O = a.O;
    const float* __restrict R = a.R + n * O;
    const float* __restrict out = a.out ? a.out + n * O : nullptr;
    const float* __restrict ps = a.psum ? a.psum + n * O : nullptr;
    const float* __restrict zc = a.zc;
    const float* __restrict bias = a.bias;
    float* __restrict g0 = a.g + (a.sumdiff ? n * O : n * H * O);
    float* __restrict g1 = g0 + (a.sumdiff ? a.n * O : O);
#define FASTLRP_BIAS(o) rule_g_bias(HasBias ? bias[o] : 0.0f, ZeroBias, gm)
    switch (a.kind) {
        case RuleKind::Epsilon:
            for (int64_t o = 0; o < O; ++o) g0[o] = rule_g_epsilon(R[o], out[o], FASTLRP_BIAS(o), e);
            break;
        case RuleKind::ZPlus:
            for (int64_t o = 0; o < O; ++o) g0[o] = rule_g_zplus(R[o], ps[o], FASTLRP_BIAS(o), e);
            break;
        case RuleKind::AlphaBeta:
            for (int64_t o = 0; o < O; ++o) rule_g_alphabeta(R[o], out[o], ps[o], FASTLRP_BIAS(o), e, al, be, g0 + o, g1 + o);
            break;
        case RuleKind::Gamma:
            for (int64_t o = 0; o < O; ++o) rule_g_gamma(R[o], out[o], ps[o], FASTLRP_BIAS(o), e, gm, g0 + o, g1 + o);
            break;
        case RuleKind::ZBox:
            for (int64_t o = 0; o < O; ++o) g0[o] = rule_g_zbox(R[o], out[o], zc[o], FASTLRP_BIAS(o), e);
            break;
        case RuleKind::Flat:  // (with flat_group_sum, handled before)
        case RuleKind::WSquare:
            for (int64_t o = 0; o < O; ++o) g0[o] = rule_g_const(R[o], zc[o], e);
            break;
    }
    if (a.sumdiff) to_sum_diff(g0, g1, O);
#undef FASTLRP_BIAS
}

void rule_g_dense_row(const RuleGArgs& a, int64_t n, float e, float al, float be, float gm, int64_t H) {
    // the bias's presence and zero_bias as template arguments: branch-free, vectorised inner loops
    if (!a.bias)
        rule_g_dense<false, false>(a, n, e, al, be, gm, H);
    else if (a.zero_bias)
        rule_g_dense<true, true>(a, n, e, al, be, gm, H);
    else
        rule_g_dense<true, false>(a, n, e, al, be, gm, H);
}

}  // namespace

// The per-element math is rules.h's rule_g_* (shared with the GPU kernel); the
// switch on the kind is per row, so each inner loop is one straight-line,
// vectorisable expression.
void rule_g(const RuleGArgs& a, int threads) {
    const int64_t O = a.O, P = a.P, G = a.groups, Og = O / G, H = rule_g_halves(a.kind);
    const float e = float(a.coefs.eps), al = float(a.coefs.alpha), be = float(a.coefs.beta),
                gm = float(a.coefs.gamma);
    (void)threads;
    if (a.kind == RuleKind::Flat && a.flat_group_sum) {
        const int64_t rows = a.n * G;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * Og * P > 32768)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t n = row / G, gi = row - n * G;
            float* __restrict gs = a.g + row * P;
            for (int64_t p = 0; p < P; ++p) gs[p] = 0.0f;
            for (int64_t oi = 0; oi < Og; ++oi) {
                const int64_t o = gi * Og + oi;
                const float* __restrict R = a.R + (n * O + o) * P;
                const float* __restrict zc = a.zc + o * P;
                for (int64_t p = 0; p < P; ++p) gs[p] += rule_g_const(R[p], zc[p], e);
            }
        }
        return;
    }
    if (P == 1 && G == 1) {
        // dense layers: one value per output, so the per-output constants vary along
        // the inner loop; one row per sample keeps it long and vectorisable
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && a.n * O > 32768)
        for (int64_t n = 0; n < a.n; ++n) rule_g_dense_row(a, n, e, al, be, gm, H);
        return;
    }
    const int64_t rows = a.n * O;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * P > 32768)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t n = row / O, o = row - n * O, gi = o / Og, oi = o - gi * Og;
        const RuleGBias c = rule_g_bias(a.bias ? a.bias[o] : 0.0f, a.zero_bias, gm);
        const float* __restrict R = a.R + row * P;
        const float* __restrict out = a.out ? a.out + row * P : nullptr;
        const float* __restrict ps = a.psum ? a.psum + row * P : nullptr;
        const float* __restrict zc = a.zc ? a.zc + o * P : nullptr;
        float* __restrict g0 = a.g + (a.sumdiff ? row * P : ((n * G + gi) * H * Og + oi) * P);
        float* __restrict g1 = g0 + (a.sumdiff ? a.n * O * P : Og * P);  // second half (H == 2)
        switch (a.kind) {
            case RuleKind::Epsilon:
                for (int64_t p = 0; p < P; ++p) g0[p] = rule_g_epsilon(R[p], out[p], c, e);
                break;
            case RuleKind::ZPlus:
                for (int64_t p = 0; p < P; ++p) g0[p] = rule_g_zplus(R[p], ps[p], c, e);
                break;
            case RuleKind::AlphaBeta:
                for (int64_t p = 0; p < P; ++p) rule_g_alphabeta(R[p], out[p], ps[p], c, e, al, be, g0 + p, g1 + p);
                break;
            case RuleKind::Gamma:
                for (int64_t p = 0; p < P; ++p) rule_g_gamma(R[p], out[p], ps[p], c, e, gm, g0 + p, g1 + p);
                break;
            case RuleKind::ZBox:
                for (int64_t p = 0; p < P; ++p) g0[p] = rule_g_zbox(R[p], out[p], zc[p], c, e);
                break;
            case RuleKind::Flat:
            case RuleKind::WSquare:
                for (int64_t p = 0; p < P; ++p) g0[p] = rule_g_const(R[p], zc[p], e);
                break;
        }
        if (a.sumdiff) to_sum_diff(g0, g1, P);
    }
}

void col2im(const Col2ImArgs& a, int threads) {
    const int64_t KK = a.kh * a.kw, HW = a.h * a.w, OP = a.oh * a.ow, planes = a.n * a.c;
    (void)threads;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::unique_ptr<float[]> tmp(new float[size_t(HW > 0 ? HW : 1)]);
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < planes; ++pl) {
            float* __restrict t = tmp.get();
            std::memset(t, 0, sizeof(float) * size_t(HW));
            for (int64_t kh = 0; kh < a.kh; ++kh) {
                for (int64_t kw = 0; kw < a.kw; ++kw) {
                    const float* __restrict cp =
                        a.col_groups > 0
                            ? a.col + ((pl / a.c) * a.col_groups + (pl % a.c) / (a.c / a.col_groups)) * OP
                            : a.col + (pl * KK + kh * a.kw + kw) * OP;
                    for (int64_t oh = 0; oh < a.oh; ++oh) {
                        const int64_t ih = oh * a.sh - a.ph + kh * a.dh;
                        if (ih < 0 || ih >= a.h) continue;
                        float* __restrict trow = t + ih * a.w;
                        const float* __restrict crow = cp + oh * a.ow;
                        const int64_t iw0 = kw * a.dw - a.pw;
                        for (int64_t ow = 0; ow < a.ow; ++ow) {
                            const int64_t iw = iw0 + ow * a.sw;
                            if (iw >= 0 && iw < a.w) trow[iw] += crow[ow];
                        }
                    }
                }
            }
            float* __restrict y = a.y + pl * HW;
            const float* __restrict m = a.mul ? a.mul + pl * HW : nullptr;
            const float* __restrict l = a.off ? a.off + (pl % a.c) * HW : nullptr;
            for (int64_t i = 0; i < HW; ++i) {
                float v = t[i];
                switch (a.epi) {
                    case Epi::MulX: v *= m[i]; break;
                    case Epi::MulPos: v *= pos(m[i]); break;
                    case Epi::MulNeg: v *= neg(m[i]); break;
                    case Epi::MulXOff: v *= (m[i] - l[i]); break;
                    case Epi::MulAbs: v *= std::fabs(m[i]); break;
                    default: break;
                }
                y[i] = a.accumulate ? y[i] + v : v;
            }
        }
    }
}

}  // namespace cpu
}  // namespace fastlrp
