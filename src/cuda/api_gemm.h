// The GPU conv GEMM (implicit GEMM, FP32): plain C++ declarations, no CUDA types,
// implemented in kernels_gemm.cuh (nvcc for fastlrp._cuda, the SIMT emulator for
// fastlrp._cuda_emu).  Every pointer is a device pointer.
//
//   y[n, g*M + m, p] = epi( sum_k A[g*M + m, k] * B_g[k, (n, p)] )
//
// A: row-major (groups*M) x Kt on the device.  B_g is never materialised: its
// tiles are gathered from the image x (n, c, h, w) while they are loaded.
// - forward (transposed = false): k = (ci, ky, kx) over K = (c/groups)*kh*kw,
//   B[k, (n, oy, ox)] = x[n, g*cg + ci, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw]
//   (0 outside); sign = 1: Kt = 2K, rows k < K read max(x, 0), rows k >= K read
//   min(x, 0) of tap k - K (CPU Sign::PosNeg); sign = 2: Kt = K, B reads |x| (CPU
//   Sign::Abs); sign = 0: Kt = K.
// - transposed (the backward pass of a conv, any stride): x is the output-side
//   tensor (n, c, h, w) of a forward conv with the given kernel/stride/padding/
//   dilation, y (n, groups*M, oh, ow) its input side; Kt = (c/groups)*kh*kw,
//   k = (oi, ky, kx), B[k, (n, yy, xx)] = x[n, g*cg + oi, (yy + ph - ky*dh)/sh,
//   (xx + pw - kx*dw)/sw] where both divisions are exact and in range, else 0.
//   A[g*M + ci, (oi, ky, kx)] = W[g*cg + oi, ci, ky, kx] (not flipped).  sign = 0.
// Epilogue (rules.h's FASTLRP_EPILOGUES) on the final v of y[n, o, p] (o = g*M + m,
//   p = oy*ow + ox).  accumulate: y += v (and y2 += v) instead of =.
// split > 0 (groups == 1, 0 < split < M): rows o >= split go raw (no epilogue)
// to y2[n, o - split, p]; y then has `split` channels (bias/mul/off index o < split).
#pragma once

#include <cstdint>

#include "rules.h"  // Epi

namespace fastlrp {
namespace gpu {

// Tile configurations of conv_gemm (ConvGemmGpuArgs::tile).
enum ConvGemmTile : int {
    kTileAuto = -1,
    kTileDirect = 0,  // one thread per output column, all M rows (M <= 8: depthwise, tiny heads)
    kTile128x128 = 1,
    kTile128x64 = 2,  // BM x BN
    kTile64x128 = 3,
    kTile64x64 = 4,
};

struct ConvGemmGpuArgs {
    const float* x = nullptr;
    const float* A = nullptr;
    float* y = nullptr;
    int64_t n = 0, c = 0, h = 0, w = 0, groups = 1, m = 0;
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, oh = 0, ow = 0;
    int sign = 0;
    bool transposed = false;
    Epi epi = Epi::None;
    const float* bias = nullptr;
    const float* mul = nullptr;
    const float* off = nullptr;
    bool accumulate = false;
    float* y2 = nullptr;
    int64_t split = 0;
    int tile = kTileAuto;  // force a configuration (tests, benchmarks)
    void* stream = nullptr;
};

// Validates (std::invalid_argument "conv_gemm: ...") and enqueues the kernel on
// a.stream.  n == 0 or oh*ow == 0: nothing to do.
void conv_gemm(const ConvGemmGpuArgs& a);

// The configuration conv_gemm picks for these arguments (after validation).
int conv_gemm_tile(const ConvGemmGpuArgs& a);

}  // namespace gpu
}  // namespace fastlrp
