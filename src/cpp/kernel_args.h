// Argument blocks shared by the CPU kernels (src/cpp) and the GPU kernels
// (src/cuda): plain C++, pointers and sizes only, so that one struct describes
// one kernel call on either device.
#pragma once

#include <cstdint>

#include "rules.h"

namespace fastlrp {

// Per-output factors g of a dense/conv rule from target-independent sums:
//   out = W x + b (the layer's output), psum = W+ x+ + W- x- (or null),
//   zc   = a per-sample constant (O, P): ZBox's W+ l + W- h, Flat's tap counts,
//          WSquare's W^2 1 + b^2 (or null).
// R, out, psum: (n, O, P).  g: (n, groups, halves, O/groups, P) with halves = 2 for
// AlphaBeta (alpha ga, -beta gb) and Gamma (gp, gn), else 1: the layout that the
// backward GEMM reads as an image with doubled K per group.  Which of out, psum,
// zc a rule reads: rule_g_reads_out / _psum / _zc in rules.h.
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
    // Two-half kinds only: g as two planes (2, n, O, P), the sum g0 + g1 and the
    // difference g0 - g1 of the halves, for a backward pass of two products with
    // W^T and |W|^T (Gamma on signed inputs, docs/design.md 3.4).
    bool sumdiff = false;
};

// Max pooling over (n*c) planes of h x w; idx gets the flat in-plane index of
// each window's first maximum (padding never wins).
struct MaxPoolArgs {
    const float* x = nullptr;
    float* y = nullptr;
    int32_t* idx = nullptr;
    int64_t planes = 0, h = 1, w = 1, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, oh = 1, ow = 1;
};

}  // namespace fastlrp
