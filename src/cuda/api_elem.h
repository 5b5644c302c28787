// The GPU engine's non-GEMM kernels: plain C++ declarations (no CUDA types), so
// bind_elem.h is host C++ only.  Implemented (kernels and launchers) in
// kernels_elem.cuh, compiled by nvcc for fastlrp._cuda and by the host compiler
// under the SIMT emulator for fastlrp._cuda_emu.
//
// Every pointer is device memory (float32 unless stated, C-contiguous); streams
// are cudaStream_t passed as void* (nullptr: the default stream).  Launchers
// return as soon as the work is queued, except min_value and nonfinite_rows,
// which copy a small result back and synchronise the stream.  Launchers do not
// check their arguments: bind_elem.h does.
#pragma once

#include <cstdint>

#include "kernel_args.h"

namespace fastlrp {
namespace gpu {

// ---- dense / conv rule epilogue (same semantics and layout as cpu::rule_g) -------
// R, out, psum: (n, O, P); bias: (O) or null; zc: (O, P) or null.
// g: (n, groups, halves, O/groups, P), halves = 2 for AlphaBeta and Gamma;
// Flat with flat_group_sum: (n, groups, P), summed over each group's outputs;
// sumdiff (AlphaBeta, Gamma): (2, n, O, P), the halves' sum g0 + g1 and difference g0 - g1.
// eps, alpha, beta, gamma are rounded to float as the CPU kernel rounds them.
void rule_g(const RuleGArgs& a, void* stream);  // RuleGArgs: src/cpp/kernel_args.h

// ---- max pooling (same semantics as cpu::maxpool_forward / maxpool_backward) ------
// x: (planes, h, w); y, idx: (planes, oh, ow); idx (int32) = in-plane flat index of
// each window's first maximum (NaN wins, padding never does; -1 and y = -inf for a
// window entirely in padding).
void maxpool_forward(const MaxPoolArgs& a, void* stream);  // MaxPoolArgs: src/cpp/kernel_args.h
// r_in (planes, in_size) = 0, then r_in[pl, idx[pl, o]] += R[pl, o] (atomics; idx < 0 skipped)
void maxpool_backward(const float* R, const int32_t* idx, float* r_in, int64_t planes, int64_t in_size,
                      int64_t out_size, void* stream);

// ---- average pooling as separable per-axis matrices ------------------------------
// mh: (oh, h) and mw: (ow, w) float32 (reference._avg_matrix divided by the window
// sizes, or _adaptive_matrix; a 1-d pool has h = oh = 1, mh = [[1]]).
// Band tables (int32, avgpool_bands; the same as backends/cuda.py's _band_tables):
// for a matrix M (rows, cols), out_band (rows, 2) holds per row r the [lo, hi) of
// its nonzero columns, in_band (cols, 2) per column c the [lo, hi) of the rows with
// M[r, c] != 0 ([0, 0) when empty).  Every output then loops only over its window
// and every input only over the outputs that read it.
struct AvgPoolParams {
    const float* mh = nullptr;
    const float* mw = nullptr;
    const int32_t* bh_out = nullptr;  // (oh, 2) of mh
    const int32_t* bh_in = nullptr;   // (h, 2) of mh
    const int32_t* bw_out = nullptr;  // (ow, 2) of mw
    const int32_t* bw_in = nullptr;   // (w, 2) of mw
    int64_t planes = 0, h = 1, w = 1, oh = 1, ow = 1;
};
// host helper: the band tables of a host matrix m (rows, cols): out_band (rows, 2),
// in_band (cols, 2)
void avgpool_bands(const float* m, int64_t rows, int64_t cols, int32_t* out_band, int32_t* in_band);
// y[pl, i, j] = sum_{p, q} mh[i, p] mw[j, q] x[pl, p, q]
void avgpool_forward(const float* x, float* y, const AvgPoolParams& a, void* stream);
// r_in[pl, p, q] = x[pl, p, q] * sum_{i, j} mh[i, p] mw[j, q] R[pl, i, j] / den[...]
// (x null: without the x factor).  den_per_sample: den is (planes, oh, ow) (Norm: the
// stabilized forward output); otherwise (channels, oh, ow), shared by the samples and
// indexed by plane % channels (Flat).
void avgpool_relevance(const float* R, const float* den, const float* x, float* r_in, const AvgPoolParams& a,
                       int64_t channels, bool den_per_sample, void* stream);

// ---- elementwise ------------------------------------------------------------------
void stabilize(const float* z, float* s, int64_t count, float eps, void* stream);  // s = z + eps sign(z)
void add_inplace(float* y, const float* x, int64_t count, void* stream);            // y += x
void add_relevance(const float* x, const float* R, const float* s, float* r, int64_t count,
                   void* stream);                                                  // r = x * (R / s)
void scale(const float* x, float* y, int64_t count, float a, void* stream);        // y = x * a (y may be x)
void fill(float* y, float value, int64_t count, void* stream);
// dst[i * dst_row + dst_offset + j] = src[i * src_row + src_offset + j], i < n, j < count_per_row
// (concat: the block of one input; its inverse, the slice of relevance)
void copy_rows(const float* src, float* dst, int64_t n, int64_t src_row, int64_t src_offset, int64_t dst_row,
               int64_t dst_offset, int64_t count_per_row, void* stream);
// dst = src.transpose(perm) (NumPy semantics) for a C-contiguous src of shape
// shape[0..ndim); dims are merged on the host first, at most 6 may remain.
// Returns false (nothing launched) when more than 6 merged dims remain.
bool permute(const float* src, float* dst, int ndim, const int64_t* shape, const int* perm, void* stream);

// activations: the reference backend's _ACT formulas, evaluated in float in a
// cancellation-free form (see kernels_elem.cuh); numbered as backends/cuda.py's
// _ACT_KINDS
enum ActKind : int {
    kActIdentity = 0,
    kActRelu = 1,
    kActLeakyRelu = 2,  // param: negative_slope
    kActElu = 3,        // param: alpha
    kActTanh = 4,
    kActSigmoid = 5,
    kActGelu = 6,       // exact (erf) GELU
    kActSilu = 7,
    kActSoftplus = 8,   // log(1 + e^x), no beta / threshold
};
constexpr int kActCount = 9;
void activation_forward(int kind, const float* x, float* y, int64_t count, float param, void* stream);
// over the last axis of (rows, cols): softmax, or log_softmax = (x - max) - log(sum e^(x - max))
void softmax(const float* x, float* y, int64_t rows, int64_t cols, bool log, void* stream);
// y[(ni, ci, k)] = x * scale[ci] + shift[ci], x: (n, c, inner)
void batchnorm_forward(const float* x, float* y, const float* scale, const float* shift, int64_t n, int64_t c,
                       int64_t inner, void* stream);

// ---- reductions with a host result ------------------------------------------------
// min over count floats (NaN if any is NaN; +inf for count 0); synchronises the stream
float min_value(const float* x, int64_t count, void* stream);
// host_flags[r] = 1 if row r of (rows, cols) holds a NaN or an infinity, else 0;
// synchronises the stream
void nonfinite_rows(const float* x, int64_t rows, int64_t cols, uint8_t* host_flags, void* stream);

// Tests: run the int64-index instantiation of every kernel whatever the sizes
// (normally only arrays of 2^31 - 2^27 elements or more use it).  Process-wide.
void set_force_int64_indices(bool on);

}  // namespace gpu
}  // namespace fastlrp
