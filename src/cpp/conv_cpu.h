// The non-GEMM parts of dense/conv relevance on the CPU: the per-output rule
// epilogue (stabilized division, from the forward sums kept in ctx) and col2im
// for the backward pass of strided convolutions.  Pooling: pool_cpu.h.
#pragma once

#include <cstdint>

#include "gemm.h"
#include "rules.h"

namespace fastlrp {
namespace cpu {

// Per-output factors g of a dense/conv rule from target-independent sums:
//   out = W x + b (the layer's output), psum = W+ x+ + W- x- (or null),
//   zc   = a per-sample constant (O, P): ZBox's W+ l + W- h, Flat's tap counts,
//          WSquare's W^2 1 + b^2 (or null).
// R, out, psum: (n, O, P).  g: (n, groups, halves, O/groups, P) with halves = 2 for
// AlphaBeta (alpha ga, -beta gb) and Gamma (gp, gn), else 1: the layout that the
// backward GEMM reads as an image with doubled K per group.
struct RuleGArgs {
    RuleKind kind = RuleKind::Epsilon;
    RuleCoefs coefs;
    bool zero_bias = false;
    const float* R = nullptr;
    const float* out = nullptr;
    const float* psum = nullptr;
    const float* bias = nullptr;
    const float* zc = nullptr;
    float* g = nullptr;
    int64_t n = 0, O = 0, P = 0, groups = 1;
    // Flat only: g[n, group, p] = sum over the group's outputs (the backward of
    // Flat is 1^T g, so only the group sums are ever needed).
    bool flat_group_sum = false;
};
int rule_g_halves(RuleKind kind);
void rule_g(const RuleGArgs& a, int threads);

// y[n, c, h, w] = epi( sum over taps of col[n, c*KK + kh*KW + kw, oh, ow] ) where
// (h, w) = (oh*sh - ph + kh*dh, ow*sw - pw + kw*dw): the transposed conv's scatter.
struct Col2ImArgs {
    const float* col = nullptr;
    float* y = nullptr;
    int64_t n = 0, c = 0, h = 1, w = 1;
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, oh = 1, ow = 1;
    Epi epi = Epi::None;  // None, MulX, MulPos, MulNeg, MulXOff (as in conv_gemm)
    const float* mul = nullptr;
    const float* off = nullptr;
    bool accumulate = false;  // y += result instead of y = result
    // > 0: col is (n, col_groups, oh*ow), the same for every channel and tap of a
    // group (Flat's 1^T g: no col matrix at all).
    int64_t col_groups = 0;
};
void col2im(const Col2ImArgs& a, int threads);

}  // namespace cpu
}  // namespace fastlrp
