// The per-element math of every parametric LRP rule, written once.
//
// This header compiles under the host compiler and under nvcc (FASTLRP_HD expands
// to __host__ __device__ there), so the CPU kernels, the CUDA kernels and any
// later SIMD/GEMM path share one definition of each rule.  It must not include
// Python, pybind11 or CUDA runtime headers.
//
// Every dense/conv relevance pass has the same shape: forward sums by GEMM (with
// model-constant transformed weights W, W+, [W+|W-] and the input sign split while
// a tile is loaded; |W| against |x| for Gamma), the per-output division g = R / s(z)
// from those sums (rule_g below, the one place where the rules differ per element),
// and a backward GEMM whose epilogue multiplies by x / x+ / x- / x - l / |x|.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FASTLRP_HD __host__ __device__ __forceinline__
#else
#define FASTLRP_HD inline
#endif

namespace fastlrp {

// ---------------------------------------------------------------------------------
// The codes that cross from Python into the kernels, written once: each list below
// is X(name, Enumerator), the name being the one Python uses (rules.py's `kind`,
// the backends' epilogue names) and the code the entry's position in the list.
// Every extension module exports both lists as dicts name -> code (`rule_kinds`,
// `epilogues`: code_tables.h); no other C++, CUDA or Python code spells a code.
// ---------------------------------------------------------------------------------

// The rule kinds of the dense/conv GEMM path (rule_g below).  AlphaBeta(1, 0) is
// handed over as ZPlus.
#define FASTLRP_RULE_KINDS(X) \
    X(epsilon, Epsilon)       \
    X(zplus, ZPlus)           \
    X(alphabeta, AlphaBeta)   \
    X(gamma, Gamma)           \
    X(zbox, ZBox)             \
    X(flat, Flat)             \
    X(wsquare, WSquare)

// The epilogues of the GEMM and col2im kernels, applied to the final value v of
// y[n, o, p]: none: v; bias: v + bias[o]; mulx: v * mul[n, o, p]; mulpos:
// v * max(mul, 0); mulneg: v * min(mul, 0); mulxoff: v * (mul[n, o, p] - off[o, p])
// (off is per sample, e.g. ZBox's bounds); mulabs: v * |mul[n, o, p]|.
#define FASTLRP_EPILOGUES(X) \
    X(none, None)            \
    X(bias, Bias)            \
    X(mulx, MulX)            \
    X(mulpos, MulPos)        \
    X(mulneg, MulNeg)        \
    X(mulxoff, MulXOff)      \
    X(mulabs, MulAbs)

#define FASTLRP_CODE_ENUMERATOR(name, E) E,
#define FASTLRP_CODE_NAME(name, E) #name,
#define FASTLRP_CODE_COUNT(name, E) +1
enum class RuleKind : int { FASTLRP_RULE_KINDS(FASTLRP_CODE_ENUMERATOR) };
enum class Epi : int { FASTLRP_EPILOGUES(FASTLRP_CODE_ENUMERATOR) };
constexpr int kRuleKindCount = 0 FASTLRP_RULE_KINDS(FASTLRP_CODE_COUNT);
constexpr int kEpilogueCount = 0 FASTLRP_EPILOGUES(FASTLRP_CODE_COUNT);
constexpr const char* kRuleKindNames[kRuleKindCount] = {FASTLRP_RULE_KINDS(FASTLRP_CODE_NAME)};
constexpr const char* kEpilogueNames[kEpilogueCount] = {FASTLRP_EPILOGUES(FASTLRP_CODE_NAME)};
#undef FASTLRP_CODE_ENUMERATOR
#undef FASTLRP_CODE_NAME
#undef FASTLRP_CODE_COUNT

// Whether an int from a caller is a code of the list (check before casting).
FASTLRP_HD constexpr bool is_rule_kind(int code) { return code >= 0 && code < kRuleKindCount; }
FASTLRP_HD constexpr bool is_epilogue(int code) { return code >= 0 && code < kEpilogueCount; }

// The operands an epilogue reads besides v.
FASTLRP_HD constexpr bool epi_reads_bias(Epi e) { return e == Epi::Bias; }
FASTLRP_HD constexpr bool epi_reads_mul(Epi e) {
    return e == Epi::MulX || e == Epi::MulPos || e == Epi::MulNeg || e == Epi::MulXOff || e == Epi::MulAbs;
}
FASTLRP_HD constexpr bool epi_reads_off(Epi e) { return e == Epi::MulXOff; }

// Scalar rule parameters.  eps is the rule's epsilon or stabilizer.
struct RuleCoefs {
    double eps = 1e-6;
    double alpha = 1.0;
    double beta = 0.0;
    double gamma = 0.0;
};

// s(z) = z + eps * sign(z), with sign(0) = +1 (zennit's convention).  Written as
// z + select(eps, -eps) (bitwise the same as z >= 0 ? z + eps : z - eps) so that
// the select is between two constants: GCC if-converts it and loops over s(z)
// vectorise without -fno-trapping-math.
template <class T>
FASTLRP_HD T stabilize(T z, T eps) {
    return z + (z >= T(0) ? eps : -eps);
}

template <class T>
FASTLRP_HD T pos(T v) {
    return v > T(0) ? v : T(0);
}

template <class T>
FASTLRP_HD T neg(T v) {
    return v < T(0) ? v : T(0);
}

// ---------------------------------------------------------------------------------
// rule_g: the per-output factors g = R / s(z) of the GEMM (conv / dense) path,
// from the forward sums kept by the forward pass:
//   out  = W x + b (the layer's output),  ps = W+ x+ + W- x- (the positive-part sum),
//   zc   = a model constant per output and position (ZBox's W+ l + W- h, Flat's tap
//          counts, WSquare's W^2 1 + b^2).
// Every other sum follows: W x = out - b; W- x+ + W+ x- = W x - ps; Gamma's
// zp = W x + gamma ps and zn = W x + gamma (W x - ps).  One definition for
// cpu::rule_g (conv_cpu.cpp) and the GPU rule_g kernel (src/cuda/kernels_elem.cuh).
// The functions are per element; the per-output constants come from rule_g_bias,
// so a CPU loop switches on the kind once per row and stays vectorisable.
// ---------------------------------------------------------------------------------

// Which kept forward sums a rule's g reads: the layer output (out), the positive
// part sum (psum), the model constant (zc); the others may be null.
FASTLRP_HD constexpr bool rule_g_reads_out(RuleKind k) {
    return k == RuleKind::Epsilon || k == RuleKind::AlphaBeta || k == RuleKind::Gamma || k == RuleKind::ZBox;
}
FASTLRP_HD constexpr bool rule_g_reads_psum(RuleKind k) {
    return k == RuleKind::ZPlus || k == RuleKind::AlphaBeta || k == RuleKind::Gamma;
}
FASTLRP_HD constexpr bool rule_g_reads_zc(RuleKind k) {
    return k == RuleKind::ZBox || k == RuleKind::Flat || k == RuleKind::WSquare;
}

// 2 for AlphaBeta (alpha ga, -beta gb) and Gamma (gp, gn), else 1.
FASTLRP_HD int rule_g_num_halves(RuleKind kind) {
    return (kind == RuleKind::AlphaBeta || kind == RuleKind::Gamma) ? 2 : 1;
}

// a * b rounded on its own: never contracted with a following add into an FMA
// (nvcc contracts by default, the host build does not), so rule_g's sums round the
// same on the CPU and the GPU.
FASTLRP_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

// Per-output constants from the layer's bias b (0 without a bias).
struct RuleGBias {
    float b = 0.0f;   // the bias as added to out (subtracted to get W x)
    float bz = 0.0f;  // subtracted from out for Epsilon's z and Gamma's sign test: b with zero_bias, else 0
    float bp = 0.0f, bn = 0.0f;  // pos / neg of the rule's bias bb (bb = 0 with zero_bias, else b)
    float bu = 0.0f, bd = 0.0f;  // Gamma's modified biases bb + gamma pos(bb), bb + gamma neg(bb)
};

FASTLRP_HD RuleGBias rule_g_bias(float b, bool zero_bias, float gamma) {
    RuleGBias c;
    const float bb = zero_bias ? 0.0f : b;
    c.b = b;
    c.bz = zero_bias ? b : 0.0f;
    c.bp = pos(bb);
    c.bn = neg(bb);
    c.bu = bb + mul_rn(gamma, pos(bb));
    c.bd = bb + mul_rn(gamma, neg(bb));
    return c;
}

// Epsilon: R / s(out - bz)   (out - 0 is out, bit for bit)
FASTLRP_HD float rule_g_epsilon(float R, float out, const RuleGBias& c, float e) {
    return R / stabilize(out - c.bz, e);
}

// ZPlus: R / s(ps + b+)
FASTLRP_HD float rule_g_zplus(float R, float ps, const RuleGBias& c, float e) {
    return R / stabilize(ps + c.bp, e);
}

// AlphaBeta: (alpha R / s(ps + b+), -beta R / s(W x - ps + b-))
FASTLRP_HD void rule_g_alphabeta(float R, float out, float ps, const RuleGBias& c, float e, float alpha,
                                 float beta, float* g0, float* g1) {
    const float zr = out - c.b;
    *g0 = alpha * R / stabilize(ps + c.bp, e);
    *g1 = -beta * R / stabilize(zr - ps + c.bn, e);
}

// v when keep, else +0.0f.  On the host as a bit mask: GCC would otherwise sink a
// division into the branch of `keep ? q : 0` and then not vectorise the loop
// (FP division may trap, so it is not speculated back).
FASTLRP_HD float keep_or_zero(bool keep, float v) {
#if defined(__CUDA_ARCH__)
    return keep ? v : 0.0f;
#else
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    u &= 0u - uint32_t(keep);
    std::memcpy(&v, &u, sizeof v);
    return v;
#endif
}

// Gamma: ([z > 0] R / s(zp), [z < 0] R / s(zn)), z = out - bz.  Both quotients are
// computed and then masked (no division under a condition: vectorisable).
FASTLRP_HD void rule_g_gamma(float R, float out, float ps, const RuleGBias& c, float e, float gamma, float* g0,
                             float* g1) {
    const float zr = out - c.b, z = out - c.bz;
    const float zp = zr + mul_rn(gamma, ps) + c.bu, zn = zr + mul_rn(gamma, zr - ps) + c.bd;
    const float qp = R / stabilize(zp, e), qn = R / stabilize(zn, e);
    *g0 = keep_or_zero(z > 0.0f, qp);
    *g1 = keep_or_zero(z < 0.0f, qn);
}

// ZBox: R / s(W x - zc)   (no bias)
FASTLRP_HD float rule_g_zbox(float R, float out, float zc, const RuleGBias& c, float e) {
    return R / stabilize(out - c.b - zc, e);
}

// Flat and WSquare: R / s(zc)
FASTLRP_HD float rule_g_const(float R, float zc, float e) { return R / stabilize(zc, e); }

// The two halves as their sum and difference (rule_g's sumdiff planes: Gamma's backward on
// signed inputs through W^T (g0 + g1) and |W|^T (g0 - g1)).
FASTLRP_HD void rule_g_sum_diff(float& g0, float& g1) {
    const float s = g0 + g1, d = g0 - g1;
    g0 = s;
    g1 = d;
}

// All kinds behind one runtime switch (GPU kernels: the kind is uniform over a
// launch, so the branch never diverges).  g1 is written only when halves == 2;
// unused operands may be anything (they are not read).
FASTLRP_HD void rule_g_value(RuleKind kind, float R, float out, float ps, float zc, const RuleGBias& c, float e,
                             float alpha, float beta, float gamma, float* g0, float* g1) {
    switch (kind) {
        case RuleKind::Epsilon: *g0 = rule_g_epsilon(R, out, c, e); break;
        case RuleKind::ZPlus: *g0 = rule_g_zplus(R, ps, c, e); break;
        case RuleKind::AlphaBeta: rule_g_alphabeta(R, out, ps, c, e, alpha, beta, g0, g1); break;
        case RuleKind::Gamma: rule_g_gamma(R, out, ps, c, e, gamma, g0, g1); break;
        case RuleKind::ZBox: *g0 = rule_g_zbox(R, out, zc, c, e); break;
        case RuleKind::Flat:
        case RuleKind::WSquare: *g0 = rule_g_const(R, zc, e); break;
    }
}

}  // namespace fastlrp
