// The per-element math of every parametric LRP rule, written once.
//
// This header compiles under the host compiler and under nvcc (FASTLRP_HD expands
// to __host__ __device__ there), so the CPU kernels, the CUDA kernels and any
// later SIMD/GEMM path share one definition of each rule.  It must not include
// Python, pybind11 or CUDA runtime headers.
//
// Every dense/conv relevance kernel has the same two-pass shape:
//   1. forward sums: per output o, kFwd accumulators of terms f(w_oi, x_i, l_i, h_i),
//      then an epilogue that adds the (rule-transformed) bias and does the
//      stabilized division, producing kG values g_k(o);
//   2. backward sums: per input i, kBwd accumulators of terms t(w_oi, g(o)),
//      then an input epilogue that multiplies by x+ / x- / l / h.
// A rule is a policy struct with those four static functions.  Sign splits of
// weights and inputs happen inside the terms (i.e. while a tile is loaded), so
// no W+, W-, x+, x- arrays ever exist.
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

enum class RuleKind : int {
    Epsilon = 0,
    ZPlus = 1,
    AlphaBeta = 2,
    Gamma = 3,
    ZBox = 4,
    Flat = 5,
    WSquare = 6,
};

// Scalar rule parameters.  eps is the rule's epsilon or stabilizer.
struct RuleCoefs {
    double eps = 1e-6;
    double alpha = 1.0;
    double beta = 0.0;
    double gamma = 0.0;
    double n_flat = 1.0;  // taps per output for Flat (in_features for dense)
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

// max(p, 0) and min(p, 0) for a double product of two floats, written without a
// select (GCC does not if-convert double compares here, which stops the forward
// loops from vectorising): p + |p| is exactly 2p or 0, and a NaN stays NaN.
FASTLRP_HD double pos_exact(double p) { return 0.5 * (p + ::fabs(p)); }
FASTLRP_HD double neg_exact(double p) { return 0.5 * (p - ::fabs(p)); }

// Gamma-modified weights: Wu = W + g W+, Wd = W + g W-.
template <class T>
FASTLRP_HD T gamma_up(T w, T g) {
    return w + g * pos(w);
}

template <class T>
FASTLRP_HD T gamma_down(T w, T g) {
    return w + g * neg(w);
}

// Forward accumulators are double: the stabilized division amplifies the
// cancellation error of z by sum|terms| / |z|, which for Epsilon/Gamma/ZBox with
// signed inputs is unbounded; double sums keep g accurate to float32 rounding.
// Backward accumulators are float (A = float): no division follows them.
//
// Sign-split forward terms use an exact identity: W+x+ + W-x- = max(wx, 0) and
// W-x+ + W+x- = min(wx, 0) per term (the product of two floats is exact in
// double), so ZPlus/AlphaBeta/Gamma need one product and a max/min per term,
// with no data-dependent selects that would stop vectorisation.

struct EpsilonRule {
    static constexpr RuleKind kind = RuleKind::Epsilon;
    static constexpr int kFwd = 1, kG = 1, kBwd = 1;
    static constexpr bool kUsesX = true;
    template <class A>
    FASTLRP_HD static void fwd(A* acc, float w, float x, float, float, const RuleCoefs&) {
        acc[0] += A(w) * A(x);
    }
    template <class A>
    FASTLRP_HD static void epilogue(const A* acc, float b, float R, const RuleCoefs& c, float* g) {
        g[0] = float(A(R) / stabilize(acc[0] + A(b), A(c.eps)));
    }
    FASTLRP_HD static void bwd(float* acc, float w, const float* g, const RuleCoefs&) {
        acc[0] += w * g[0];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float x, float, float) {
        return x * acc[0];
    }
};

// ZPlus: z+ = W+x+ + W-x- + b+; R_in = x+ W+^T g + x- W-^T g.
struct ZPlusRule {
    static constexpr RuleKind kind = RuleKind::ZPlus;
    static constexpr int kFwd = 1, kG = 1, kBwd = 2;
    static constexpr bool kUsesX = true;
    template <class A>
    FASTLRP_HD static void fwd(A* acc, float w, float x, float, float, const RuleCoefs&) {
        acc[0] += pos_exact(double(w) * double(x));
    }
    template <class A>
    FASTLRP_HD static void epilogue(const A* acc, float b, float R, const RuleCoefs& c, float* g) {
        g[0] = float(A(R) / stabilize(acc[0] + A(pos(b)), A(c.eps)));
    }
    FASTLRP_HD static void bwd(float* acc, float w, const float* g, const RuleCoefs&) {
        acc[0] += pos(w) * g[0];
        acc[1] += neg(w) * g[0];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float x, float, float) {
        return pos(x) * acc[0] + neg(x) * acc[1];
    }
};

// AlphaBeta: g holds (alpha * ga, beta * gb) so the backward needs two sums:
// acc0 = W+^T a ga - W-^T b gb (multiplies x+), acc1 = W-^T a ga - W+^T b gb (x-).
struct AlphaBetaRule {
    static constexpr RuleKind kind = RuleKind::AlphaBeta;
    static constexpr int kFwd = 2, kG = 2, kBwd = 2;
    static constexpr bool kUsesX = true;
    template <class A>
    FASTLRP_HD static void fwd(A* acc, float w, float x, float, float, const RuleCoefs&) {
        const double p = double(w) * double(x);
        acc[0] += pos_exact(p);
        acc[1] += neg_exact(p);
    }
    template <class A>
    FASTLRP_HD static void epilogue(const A* acc, float b, float R, const RuleCoefs& c, float* g) {
        const A e = A(c.eps);
        g[0] = float(A(c.alpha) * A(R) / stabilize(acc[0] + A(pos(b)), e));
        g[1] = float(A(c.beta) * A(R) / stabilize(acc[1] + A(neg(b)), e));
    }
    FASTLRP_HD static void bwd(float* acc, float w, const float* g, const RuleCoefs&) {
        const float wp = pos(w), wn = neg(w);
        acc[0] += wp * g[0] - wn * g[1];
        acc[1] += wn * g[0] - wp * g[1];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float x, float, float) {
        return pos(x) * acc[0] + neg(x) * acc[1];
    }
};

// Gamma: forward sums (zp, zn, z) without bias; g = ([z>0] R/s(zp), [z<0] R/s(zn)).
// acc0 = Wu^T gp + Wd^T gn (multiplies x+), acc1 = Wd^T gp + Wu^T gn (x-).
struct GammaRule {
    static constexpr RuleKind kind = RuleKind::Gamma;
    static constexpr int kFwd = 3, kG = 2, kBwd = 2;
    static constexpr bool kUsesX = true;
    template <class A>
    FASTLRP_HD static void fwd(A* acc, float w, float x, float, float, const RuleCoefs& c) {
        // Wu x+ + Wd x- = wx + g max(wx, 0); Wd x+ + Wu x- = wx + g min(wx, 0).
        const double gm = c.gamma;
        const double p = double(w) * double(x);
        acc[0] += p + gm * pos_exact(p);
        acc[1] += p + gm * neg_exact(p);
        acc[2] += p;
    }
    template <class A>
    FASTLRP_HD static void epilogue(const A* acc, float b, float R, const RuleCoefs& c, float* g) {
        const A e = A(c.eps), gm = A(c.gamma);
        const A z = acc[2] + A(b);
        const A zp = acc[0] + gamma_up(A(b), gm);
        const A zn = acc[1] + gamma_down(A(b), gm);
        g[0] = z > A(0) ? float(A(R) / stabilize(zp, e)) : 0.0f;
        g[1] = z < A(0) ? float(A(R) / stabilize(zn, e)) : 0.0f;
    }
    FASTLRP_HD static void bwd(float* acc, float w, const float* g, const RuleCoefs& c) {
        const float gm = float(c.gamma);
        const float wu = gamma_up(w, gm), wd = gamma_down(w, gm);
        acc[0] += wu * g[0] + wd * g[1];
        acc[1] += wd * g[0] + wu * g[1];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float x, float, float) {
        return pos(x) * acc[0] + neg(x) * acc[1];
    }
};

// ZBox: zB = Wx - W+ l - W- h (no bias); R_in = (x - l) W+^T g + (x - h) W-^T g,
// which equals x W^T g - l W+^T g - h W-^T g since W = W+ + W-.
struct ZBoxRule {
    static constexpr RuleKind kind = RuleKind::ZBox;
    static constexpr int kFwd = 1, kG = 1, kBwd = 2;
    static constexpr bool kUsesX = true;
    template <class A>
    FASTLRP_HD static void fwd(A* acc, float w, float x, float l, float h, const RuleCoefs&) {
        // W+ l + W- h = w * (w > 0 ? l : h); the select is on float operands.
        acc[0] += double(w) * (double(x) - double(w > 0.0f ? l : h));
    }
    template <class A>
    FASTLRP_HD static void epilogue(const A* acc, float, float R, const RuleCoefs& c, float* g) {
        g[0] = float(A(R) / stabilize(acc[0], A(c.eps)));
    }
    FASTLRP_HD static void bwd(float* acc, float w, const float* g, const RuleCoefs&) {
        acc[0] += pos(w) * g[0];
        acc[1] += neg(w) * g[0];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float x, float l, float h) {
        return (x - l) * acc[0] + (x - h) * acc[1];
    }
};

// Flat: every tap counts 1; the denominator is the tap count.
struct FlatRule {
    static constexpr RuleKind kind = RuleKind::Flat;
    static constexpr int kFwd = 0, kG = 1, kBwd = 1;
    static constexpr bool kUsesX = false;
    template <class A>
    FASTLRP_HD static void fwd(A*, float, float, float, float, const RuleCoefs&) {}
    template <class A>
    FASTLRP_HD static void epilogue(const A*, float, float R, const RuleCoefs& c, float* g) {
        g[0] = float(A(R) / stabilize(A(c.n_flat), A(c.eps)));
    }
    FASTLRP_HD static void bwd(float* acc, float, const float* g, const RuleCoefs&) {
        acc[0] += g[0];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float, float, float) {
        return acc[0];
    }
};

// WSquare: z = W^2 1 + b^2 (zennit squares the bias); R_in = (W^2)^T g.
struct WSquareRule {
    static constexpr RuleKind kind = RuleKind::WSquare;
    static constexpr int kFwd = 1, kG = 1, kBwd = 1;
    static constexpr bool kUsesX = false;
    template <class A>
    FASTLRP_HD static void fwd(A* acc, float w, float, float, float, const RuleCoefs&) {
        acc[0] += A(w) * A(w);
    }
    template <class A>
    FASTLRP_HD static void epilogue(const A* acc, float b, float R, const RuleCoefs& c, float* g) {
        g[0] = float(A(R) / stabilize(acc[0] + A(b) * A(b), A(c.eps)));
    }
    FASTLRP_HD static void bwd(float* acc, float w, const float* g, const RuleCoefs&) {
        acc[0] += w * w * g[0];
    }
    FASTLRP_HD static float input_epilogue(const float* acc, float, float, float) {
        return acc[0];
    }
};

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

// Turns a runtime RuleKind into a compile-time policy in one place:
//   FASTLRP_RULE_SWITCH(kind, Rule, { run<Rule>(...); });
#define FASTLRP_RULE_SWITCH(KIND, RULE, ...)                                       \
    switch (KIND) {                                                                \
        case ::fastlrp::RuleKind::Epsilon: { using RULE = ::fastlrp::EpsilonRule; __VA_ARGS__; } break;     \
        case ::fastlrp::RuleKind::ZPlus: { using RULE = ::fastlrp::ZPlusRule; __VA_ARGS__; } break;         \
        case ::fastlrp::RuleKind::AlphaBeta: { using RULE = ::fastlrp::AlphaBetaRule; __VA_ARGS__; } break; \
        case ::fastlrp::RuleKind::Gamma: { using RULE = ::fastlrp::GammaRule; __VA_ARGS__; } break;         \
        case ::fastlrp::RuleKind::ZBox: { using RULE = ::fastlrp::ZBoxRule; __VA_ARGS__; } break;           \
        case ::fastlrp::RuleKind::Flat: { using RULE = ::fastlrp::FlatRule; __VA_ARGS__; } break;           \
        case ::fastlrp::RuleKind::WSquare: { using RULE = ::fastlrp::WSquareRule; __VA_ARGS__; } break;     \
    }

// Plain parameter block for a dense relevance call: pointers and sizes only, so
// the same struct drives the CPU and CUDA kernels.  All arrays are C-contiguous
// float32: W (out, in), bias (out) or null, x (N, in), R (N, out),
// low/high (in) or null (ZBox only), r_in (N, in).
struct DenseArgs {
    const float* W = nullptr;
    const float* bias = nullptr;
    const float* x = nullptr;
    const float* R = nullptr;
    const float* low = nullptr;
    const float* high = nullptr;
    float* r_in = nullptr;
    int64_t n = 0;
    int64_t in_features = 0;
    int64_t out_features = 0;
    RuleKind kind = RuleKind::Epsilon;
    RuleCoefs coefs;
};

}  // namespace fastlrp
