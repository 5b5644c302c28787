// The non-GEMM parts of dense/conv relevance on the CPU: the per-output rule
// epilogue (stabilized division, from the forward sums kept in ctx) and col2im
// for the backward pass of strided convolutions.  Pooling: pool_cpu.h.
#pragma once

#include <cstdint>

#include "gemm.h"
#include "kernel_args.h"
#include "rules.h"

namespace fastlrp {
namespace cpu {

using ::fastlrp::RuleGArgs;  // kernel_args.h, shared with the GPU kernels
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
