// The GPU engine's non-GEMM kernels and their launchers (api_elem.h): the rule
// epilogue g = R / s(z) (the math is rules.h's, shared with cpu::rule_g), max and
// average pooling, elementwise ops, activations, softmax, batch norm, concat /
// permute copies and two reductions with a host result.
//
// Compiled by nvcc (kernels.cu) and by the host compiler under the SIMT emulator
// (kernels_emu.cpp), so only simt.h's portable subset is used: grid-stride loops
// launched with `launch`; the block reductions (softmax, min) use static shared
// memory and flrp_syncthreads() and are launched with `launch_sync`.
//
// Index arithmetic: kernels that divide flat indices are instantiated for int32
// and int64 indices and the launcher picks int32 whenever every array involved has
// fewer than kI32Limit elements (32-bit division is several times cheaper on a GPU).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../cpp/rules.h"
#include "api_elem.h"
#include "api_runtime.h"
#include "simt.h"

namespace fastlrp {
namespace gpu {
namespace elem {

constexpr int kThreads = 256;          // threads per block of the grid-stride kernels
constexpr int64_t kMaxBlocks = 65535;  // grid-stride: at most this many blocks
// int32 indices when every array has fewer elements than this: idx + grid stride
// (at most kMaxBlocks * 1024) then never overflows.
constexpr int64_t kI32Limit = (int64_t(1) << 31) - (int64_t(1) << 27);

inline dim3 grid_for(int64_t count, int threads = kThreads) {
    int64_t b = (count + threads - 1) / threads;
    if (b > kMaxBlocks) b = kMaxBlocks;
    if (b < 1) b = 1;
    return dim3(unsigned(b));
}

inline Stream S(void* s) { return static_cast<Stream>(s); }

template <class I>
FLRP_DEVICE I gtid() {
    return I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x);
}
template <class I>
FLRP_DEVICE I gstride() {
    return I(gridDim.x) * I(blockDim.x);
}

// NaN-propagating min / max (as NumPy's): a NaN operand wins.
FLRP_DEVICE float nan_min(float a, float b) { return (a < b || a != a) ? a : b; }
FLRP_DEVICE float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

inline bool g_force_int64 = false;  // set_force_int64_indices (tests)

#define FLRP_ELEM_INDEX_DISPATCH(SIZE, I, ...)  \
    if ((SIZE) < ::fastlrp::gpu::elem::kI32Limit && !::fastlrp::gpu::elem::g_force_int64) { \
        using I = int32_t;                      \
        __VA_ARGS__;                            \
    } else {                                    \
        using I = int64_t;                      \
        __VA_ARGS__;                            \
    }

// ===================================================================================
// rule_g
// ===================================================================================
// one thread per (n, o, p); the kind is a template argument (the switch folds away)
template <class I, RuleKind kind>
FLRP_GLOBAL void rule_g_kernel(RuleGArgs a) {
    // the operands this rule reads (the others may be null)
    constexpr bool kOut = rule_g_reads_out(kind);
    constexpr bool kPsum = rule_g_reads_psum(kind);
    constexpr bool kZc = rule_g_reads_zc(kind);
    const I P = I(a.P), O = I(a.O), G = I(a.groups), Og = O / G;
    const I H = I(rule_g_num_halves(kind));
    const I total = I(a.n) * O * P;
    const float e = float(a.coefs.eps), al = float(a.coefs.alpha), be = float(a.coefs.beta),
                gm = float(a.coefs.gamma);
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I row = idx / P, p = idx - row * P;
        const I n = row / O, o = row - n * O;
        const I gi = o / Og, oi = o - gi * Og;
        const RuleGBias c = rule_g_bias(a.bias ? a.bias[o] : 0.0f, a.zero_bias, gm);
        const float out = kOut ? a.out[idx] : 0.0f;
        const float ps = kPsum ? a.psum[idx] : 0.0f;
        const float zc = kZc ? a.zc[o * P + p] : 0.0f;
        if (H == 2 && a.sumdiff) {  // two planes (2, n, O, P): g0 + g1, g0 - g1
            float v0 = 0.0f, v1 = 0.0f;
            rule_g_value(kind, a.R[idx], out, ps, zc, c, e, al, be, gm, &v0, &v1);
            rule_g_sum_diff(v0, v1);
            a.g[idx] = v0;
            a.g[total + idx] = v1;
            continue;
        }
        float* g0 = a.g + ((n * G + gi) * H * Og + oi) * P + p;
        rule_g_value(kind, a.R[idx], out, ps, zc, c, e, al, be, gm, g0, g0 + Og * P);
    }
}

// Flat summed per group: one thread per (n, group, p), the group's outputs in order
// (the same float sum as cpu::rule_g)
template <class I>
FLRP_GLOBAL void rule_g_flat_sum_kernel(RuleGArgs a) {
    const I P = I(a.P), O = I(a.O), G = I(a.groups), Og = O / G;
    const I total = I(a.n) * G * P;
    const float e = float(a.coefs.eps);
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I row = idx / P, p = idx - row * P;
        const I n = row / G, gi = row - n * G;
        const float* R = a.R + (n * O + gi * Og) * P + p;
        const float* zc = a.zc + gi * Og * P + p;
        float s = 0.0f;
        for (I oi = 0; oi < Og; ++oi) s += rule_g_const(R[oi * P], zc[oi * P], e);
        a.g[idx] = s;
    }
}

template <class I>
void rule_g_launch(const RuleGArgs& a, Stream s) {
    const dim3 block(kThreads);
    if (a.kind == RuleKind::Flat && a.flat_group_sum) {
        launch(rule_g_flat_sum_kernel<I>, grid_for(a.n * a.groups * a.P), block, s, a);
        return;
    }
    const dim3 grid = grid_for(a.n * a.O * a.P);
    switch (a.kind) {
#define FASTLRP_RULE_G_LAUNCH(name, E) \
    case RuleKind::E: launch(rule_g_kernel<I, RuleKind::E>, grid, block, s, a); break;
        FASTLRP_RULE_KINDS(FASTLRP_RULE_G_LAUNCH)
#undef FASTLRP_RULE_G_LAUNCH
        default: throw CudaError("rule_g: unknown rule kind " + std::to_string(int(a.kind)));
    }
}

// ===================================================================================
// max pooling
// ===================================================================================
// one thread per output; the same scan as cpu::maxpool_forward's general path
template <class I>
FLRP_GLOBAL void maxpool_forward_kernel(MaxPoolArgs a) {
    const I OW = I(a.ow), OP = I(a.oh) * OW, HW = I(a.h) * I(a.w);
    const I total = I(a.planes) * OP;
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I pl = idx / OP, r = idx - pl * OP;
        const I oh = r / OW, ow = r - oh * OW;
        const float* x = a.x + pl * HW;
        float best = -INFINITY;
        I bi = -1;
        for (I kh = 0; kh < I(a.kh); ++kh) {
            const I ih = oh * I(a.sh) - I(a.ph) + kh * I(a.dh);
            if (ih < 0 || ih >= I(a.h)) continue;
            for (I kw = 0; kw < I(a.kw); ++kw) {
                const I iw = ow * I(a.sw) - I(a.pw) + kw * I(a.dw);
                if (iw < 0 || iw >= I(a.w)) continue;
                const float v = x[ih * I(a.w) + iw];
                if (bi < 0 || v > best || (v != v && best == best)) {
                    best = v;
                    bi = ih * I(a.w) + iw;
                }
            }
        }
        a.y[idx] = best;
        a.idx[idx] = int32_t(bi);
    }
}

FLRP_GLOBAL void fill_kernel(float* FLRP_RESTRICT y, float v, int64_t count) {
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) y[i] = v;
}

template <class I>
FLRP_GLOBAL void maxpool_scatter_kernel(const float* FLRP_RESTRICT R, const int32_t* FLRP_RESTRICT idx, float* r_in,
                                        int64_t planes, int64_t in_size, int64_t out_size) {
    const I total = I(planes) * I(out_size);
    for (I i = gtid<I>(); i < total; i += gstride<I>()) {
        const int32_t t = idx[i];
        if (t < 0) continue;
        const I pl = i / I(out_size);
        flrp_atomic_add(r_in + pl * I(in_size) + I(t), R[i]);
    }
}

// ===================================================================================
// average pooling
// ===================================================================================
template <class I>
FLRP_GLOBAL void avgpool_forward_kernel(const float* FLRP_RESTRICT x, float* FLRP_RESTRICT y, AvgPoolParams a) {
    const I h = I(a.h), w = I(a.w), oh = I(a.oh), ow = I(a.ow), OP = oh * ow, HW = h * w;
    const I total = I(a.planes) * OP;
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I pl = idx / OP, r = idx - pl * OP;
        const I i = r / ow, j = r - i * ow;
        const I plo = a.bh_out[2 * i], phi = a.bh_out[2 * i + 1];
        const I qlo = a.bw_out[2 * j], qhi = a.bw_out[2 * j + 1];
        const float* xp = x + pl * HW;
        const float* mh = a.mh + i * h;
        const float* mw = a.mw + j * w;
        float acc = 0.0f;
        for (I p = plo; p < phi; ++p) {
            const float* xr = xp + p * w;
            float racc = 0.0f;
            for (I q = qlo; q < qhi; ++q) racc += mw[q] * xr[q];
            acc += mh[p] * racc;
        }
        y[idx] = acc;
    }
}

template <class I>
FLRP_GLOBAL void avgpool_relevance_kernel(const float* FLRP_RESTRICT R, const float* FLRP_RESTRICT den,
                                          const float* FLRP_RESTRICT x, float* FLRP_RESTRICT r_in, AvgPoolParams a,
                                          int64_t channels, bool den_per_sample) {
    const I h = I(a.h), w = I(a.w), oh = I(a.oh), ow = I(a.ow), OP = oh * ow, HW = h * w;
    const I total = I(a.planes) * HW;
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I pl = idx / HW, r = idx - pl * HW;
        const I p = r / w, q = r - p * w;
        const I ilo = a.bh_in[2 * p], ihi = a.bh_in[2 * p + 1];
        const I jlo = a.bw_in[2 * q], jhi = a.bw_in[2 * q + 1];
        const float* Rp = R + pl * OP;
        const float* dp = den + (den_per_sample ? pl : pl % I(channels)) * OP;
        float acc = 0.0f;
        for (I i = ilo; i < ihi; ++i) {
            float racc = 0.0f;
            for (I j = jlo; j < jhi; ++j) racc += a.mw[j * w + q] * (Rp[i * ow + j] / dp[i * ow + j]);
            acc += a.mh[i * h + p] * racc;
        }
        r_in[idx] = x ? x[idx] * acc : acc;
    }
}

// ===================================================================================
// elementwise
// ===================================================================================
FLRP_GLOBAL void stabilize_kernel(const float* FLRP_RESTRICT z, float* FLRP_RESTRICT s, int64_t count, float eps) {
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) s[i] = ::fastlrp::stabilize(z[i], eps);
}

FLRP_GLOBAL void add_inplace_kernel(float* FLRP_RESTRICT y, const float* FLRP_RESTRICT x, int64_t count) {
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) y[i] += x[i];
}

FLRP_GLOBAL void add_relevance_kernel(const float* FLRP_RESTRICT x, const float* FLRP_RESTRICT R,
                                      const float* FLRP_RESTRICT s, float* FLRP_RESTRICT r, int64_t count) {
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) r[i] = x[i] * (R[i] / s[i]);
}

// y may equal x (no restrict)
FLRP_GLOBAL void scale_kernel(const float* x, float* y, int64_t count, float a) {
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) y[i] = x[i] * a;
}

template <class I>
FLRP_GLOBAL void copy_rows_kernel(const float* FLRP_RESTRICT src, float* FLRP_RESTRICT dst, int64_t n,
                                  int64_t src_row, int64_t src_offset, int64_t dst_row, int64_t dst_offset,
                                  int64_t count_per_row) {
    const I cpr = I(count_per_row), total = I(n) * cpr;
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I i = idx / cpr, j = idx - i * cpr;
        dst[i * I(dst_row) + I(dst_offset) + j] = src[i * I(src_row) + I(src_offset) + j];
    }
}

constexpr int kMaxPermDims = 6;
struct PermuteDims {
    int nd = 1;
    int64_t out_shape[kMaxPermDims] = {1, 1, 1, 1, 1, 1};   // dst dims
    int64_t src_stride[kMaxPermDims] = {0, 0, 0, 0, 0, 0};  // src element stride of each dst dim
    int64_t total = 0;
};

template <class I>
FLRP_GLOBAL void permute_kernel(const float* FLRP_RESTRICT src, float* FLRP_RESTRICT dst, PermuteDims d) {
    const I total = I(d.total);
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        I rem = idx, off = 0;
        // unrolled over the fixed maximum so that d's arrays are indexed by constants
        // (kernel parameters, not a local-memory copy)
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int k = kMaxPermDims - 1; k > 0; --k) {
            if (k >= d.nd) continue;
            const I ext = I(d.out_shape[k]);
            const I q = rem / ext;
            off += (rem - q * ext) * I(d.src_stride[k]);
            rem = q;
        }
        off += rem * I(d.src_stride[0]);
        dst[idx] = src[off];
    }
}

// ---- activations --------------------------------------------------------------------
// The reference's formulas (float64 there) in forms without cancellation in float:
//   sigmoid 0.5 (1 + tanh(x/2)) = 1 / (1 + e^-x)           (e^x / (1 + e^x) for x < 0)
//   silu    x sigmoid(x)
//   gelu    0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)
//   softplus logaddexp(0, x) = max(x, 0) + log1p(e^-|x|)
//   elu     x > 0 ? x : alpha expm1(x)
// A NaN input gives NaN for every kind (relu included, as np.maximum does).
FLRP_DEVICE float sigmoidf_stable(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float t = expf(x);
    return t / (1.0f + t);
}

template <int K>
FLRP_DEVICE float act(float x, float param) {
    if (K == kActRelu) return x < 0.0f ? 0.0f : x;
    if (K == kActLeakyRelu) return x >= 0.0f ? x : x * param;
    if (K == kActElu) return x > 0.0f ? x : param * expm1f(x);
    if (K == kActTanh) return tanhf(x);
    if (K == kActSigmoid) return sigmoidf_stable(x);
    if (K == kActGelu) return 0.5f * x * erfcf(-x * 0.70710678118654752440f);
    if (K == kActSilu) return x * sigmoidf_stable(x);
    if (K == kActSoftplus) return (x > 0.0f ? x : 0.0f) + log1pf(expf(-fabsf(x)));
    return x;  // identity
}

template <int K>
FLRP_GLOBAL void activation_kernel(const float* x, float* y, int64_t count, float param) {
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) y[i] = act<K>(x[i], param);
}

template <class I>
FLRP_GLOBAL void batchnorm_kernel(const float* FLRP_RESTRICT x, float* FLRP_RESTRICT y,
                                  const float* FLRP_RESTRICT scale, const float* FLRP_RESTRICT shift, int64_t n,
                                  int64_t c, int64_t inner) {
    const I C = I(c), IN = I(inner), total = I(n) * C * IN;
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        const I ci = (idx / IN) % C;
        y[idx] = ::fastlrp::mul_rn(x[idx], scale[ci]) + shift[ci];  // as NumPy rounds it (no FMA)
    }
}

template <class I>
FLRP_GLOBAL void nonfinite_kernel(const float* FLRP_RESTRICT x, int64_t rows, int64_t cols,
                                  uint8_t* FLRP_RESTRICT flags) {
    const I C = I(cols), total = I(rows) * C;
    for (I idx = gtid<I>(); idx < total; idx += gstride<I>()) {
        // !(|v| <= FLT_MAX): true for +-inf and NaN.  Every writer stores 1: no race.
        if (!(fabsf(x[idx]) <= 3.40282347e38f)) flags[idx / C] = 1;
    }
}

// ===================================================================================
// block reductions (launch_sync; blockDim.x a power of two <= kThreads)
// ===================================================================================
template <class Op>
FLRP_DEVICE float block_reduce(float* red, float v, Op op) {
    const unsigned t = threadIdx.x;
    red[t] = v;
    flrp_syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) red[t] = op(red[t], red[t + s]);
        flrp_syncthreads();
    }
    const float r = red[0];
    flrp_syncthreads();  // red is reused by the next reduction
    return r;
}

struct MaxOp {
    FLRP_DEVICE float operator()(float a, float b) const { return nan_max(a, b); }
};
struct MinOp {
    FLRP_DEVICE float operator()(float a, float b) const { return nan_min(a, b); }
};
struct SumOp {
    FLRP_DEVICE float operator()(float a, float b) const { return a + b; }
};

// one block per row (grid-stride over rows: every thread of a block runs the same
// rows, so the barriers are uniform)
template <bool LOG>
FLRP_GLOBAL void softmax_kernel(const float* FLRP_RESTRICT x, float* FLRP_RESTRICT y, int64_t rows, int64_t cols) {
    FLRP_SHARED float red[kThreads];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * cols;
        float* yr = y + row * cols;
        float m = -INFINITY;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = nan_max(m, xr[c]);
        m = block_reduce(red, m, MaxOp());
        float s = 0.0f;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf(xr[c] - m);
        s = block_reduce(red, s, SumOp());
        if (LOG) {
            const float ls = logf(s);
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = (xr[c] - m) - ls;
        } else {
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = expf(xr[c] - m) / s;
        }
    }
}

// pass 1: block b reduces its grid-stride share into part[b]; pass 2 (one block):
// part[0..n) -> part[n]
FLRP_GLOBAL void min_kernel(const float* FLRP_RESTRICT x, int64_t count, float* FLRP_RESTRICT part) {
    FLRP_SHARED float red[kThreads];
    float m = INFINITY;
    for (int64_t i = gtid<int64_t>(); i < count; i += gstride<int64_t>()) m = nan_min(m, x[i]);
    m = block_reduce(red, m, MinOp());
    if (threadIdx.x == 0) part[blockIdx.x] = m;
}

inline unsigned pow2_block(int64_t cols) {
    unsigned b = 32;
    while (b < unsigned(kThreads) && int64_t(b) < cols) b <<= 1;
    return b;
}

// a device buffer freed on every exit path (stream-ordered)
struct DevBuf {
    void* p = nullptr;
    void* s = nullptr;
    DevBuf(size_t n, void* stream) : p(dev_malloc(n, stream)), s(stream) {}
    ~DevBuf() {
        try {
            dev_free(p, s);
        } catch (...) {
        }
    }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
};

}  // namespace elem

// ===================================================================================
// launchers (api_elem.h)
// ===================================================================================
void set_force_int64_indices(bool on) { elem::g_force_int64 = on; }

void rule_g(const RuleGArgs& a, void* stream) {
    const int64_t H = rule_g_num_halves(a.kind);
    const int64_t biggest = a.n * a.O * a.P * H;
    FLRP_ELEM_INDEX_DISPATCH(biggest, I, elem::rule_g_launch<I>(a, elem::S(stream)))
}

void maxpool_forward(const MaxPoolArgs& a, void* stream) {
    const int64_t in = a.planes * a.h * a.w, out = a.planes * a.oh * a.ow;
    const int64_t total = a.planes * a.oh * a.ow;
    FLRP_ELEM_INDEX_DISPATCH(in > out ? in : out, I,
                             launch(elem::maxpool_forward_kernel<I>, elem::grid_for(total), dim3(elem::kThreads),
                                    elem::S(stream), a))
}

void maxpool_backward(const float* R, const int32_t* idx, float* r_in, int64_t planes, int64_t in_size,
                      int64_t out_size, void* stream) {
    const int64_t in = planes * in_size, out = planes * out_size;
    launch(elem::fill_kernel, elem::grid_for(in), dim3(elem::kThreads), elem::S(stream), r_in, 0.0f, in);
    FLRP_ELEM_INDEX_DISPATCH(in > out ? in : out, I,
                             launch(elem::maxpool_scatter_kernel<I>, elem::grid_for(out), dim3(elem::kThreads),
                                    elem::S(stream), R, idx, r_in, planes, in_size, out_size))
}

void avgpool_bands(const float* m, int64_t rows, int64_t cols, int32_t* out_band, int32_t* in_band) {
    for (int64_t c = 0; c < 2 * cols; ++c) in_band[c] = 0;
    for (int64_t r = 0; r < rows; ++r) {
        int32_t lo = 0, hi = 0;
        bool any = false;
        for (int64_t c = 0; c < cols; ++c) {
            if (m[r * cols + c] == 0.0f) continue;
            if (!any) lo = int32_t(c);
            hi = int32_t(c + 1);
            if (in_band[2 * c + 1] == 0) in_band[2 * c] = int32_t(r);  // the first row reading column c
            in_band[2 * c + 1] = int32_t(r + 1);
            any = true;
        }
        out_band[2 * r] = lo;
        out_band[2 * r + 1] = hi;
    }
}

namespace elem {
// the largest flat index an average-pool kernel forms (inputs, outputs, matrices)
inline int64_t avgpool_extent(const AvgPoolParams& a) {
    int64_t m = a.planes * a.h * a.w;
    const int64_t v[3] = {a.planes * a.oh * a.ow, a.oh * a.h, a.ow * a.w};
    for (int64_t t : v) m = t > m ? t : m;
    return m;
}
}  // namespace elem

void avgpool_forward(const float* x, float* y, const AvgPoolParams& a, void* stream) {
    const int64_t out = a.planes * a.oh * a.ow;
    FLRP_ELEM_INDEX_DISPATCH(elem::avgpool_extent(a), I,
                             launch(elem::avgpool_forward_kernel<I>, elem::grid_for(out), dim3(elem::kThreads),
                                    elem::S(stream), x, y, a))
}

void avgpool_relevance(const float* R, const float* den, const float* x, float* r_in, const AvgPoolParams& a,
                       int64_t channels, bool den_per_sample, void* stream) {
    const int64_t in = a.planes * a.h * a.w;
    FLRP_ELEM_INDEX_DISPATCH(elem::avgpool_extent(a), I,
                             launch(elem::avgpool_relevance_kernel<I>, elem::grid_for(in), dim3(elem::kThreads),
                                    elem::S(stream), R, den, x, r_in, a, channels, den_per_sample))
}

void stabilize(const float* z, float* s, int64_t count, float eps, void* stream) {
    launch(elem::stabilize_kernel, elem::grid_for(count), dim3(elem::kThreads), elem::S(stream), z, s, count, eps);
}

void add_inplace(float* y, const float* x, int64_t count, void* stream) {
    launch(elem::add_inplace_kernel, elem::grid_for(count), dim3(elem::kThreads), elem::S(stream), y, x, count);
}

void add_relevance(const float* x, const float* R, const float* s, float* r, int64_t count, void* stream) {
    launch(elem::add_relevance_kernel, elem::grid_for(count), dim3(elem::kThreads), elem::S(stream), x, R, s, r,
           count);
}

void scale(const float* x, float* y, int64_t count, float a, void* stream) {
    launch(elem::scale_kernel, elem::grid_for(count), dim3(elem::kThreads), elem::S(stream), x, y, count, a);
}

void fill(float* y, float value, int64_t count, void* stream) {
    launch(elem::fill_kernel, elem::grid_for(count), dim3(elem::kThreads), elem::S(stream), y, value, count);
}

void copy_rows(const float* src, float* dst, int64_t n, int64_t src_row, int64_t src_offset, int64_t dst_row,
               int64_t dst_offset, int64_t count_per_row, void* stream) {
    const int64_t total = n * count_per_row;
    const int64_t s_end = n * src_row, d_end = n * dst_row;
    const int64_t biggest = s_end > d_end ? s_end : d_end;
    FLRP_ELEM_INDEX_DISPATCH(biggest > total ? biggest : total, I,
                             launch(elem::copy_rows_kernel<I>, elem::grid_for(total), dim3(elem::kThreads),
                                    elem::S(stream), src, dst, n, src_row, src_offset, dst_row, dst_offset,
                                    count_per_row))
}

bool permute(const float* src, float* dst, int ndim, const int64_t* shape, const int* perm, void* stream) {
    // drop size-1 dims (renumbering the rest), then merge runs of dst dims that are
    // consecutive src dims into one dim
    if (ndim > 64) return false;
    int64_t total = 1;
    for (int k = 0; k < ndim; ++k) total *= shape[k];
    int64_t sstride[64];
    int rank[64];
    int64_t st = 1;
    for (int k = ndim - 1; k >= 0; --k) {
        sstride[k] = st;
        st *= shape[k];
    }
    for (int k = 0, r = 0; k < ndim; ++k) rank[k] = shape[k] == 1 ? -1 : r++;
    elem::PermuteDims d;
    d.total = total;
    int nd = 0, prev = -2;
    for (int k = 0; k < ndim; ++k) {
        const int sk = perm[k];
        if (rank[sk] < 0) continue;
        if (nd > 0 && rank[sk] == prev + 1) {  // continues the previous dst dim in src order
            d.out_shape[nd - 1] *= shape[sk];
            d.src_stride[nd - 1] = sstride[sk];
        } else {
            if (nd == elem::kMaxPermDims) return false;
            d.out_shape[nd] = shape[sk];
            d.src_stride[nd] = sstride[sk];
            ++nd;
        }
        prev = rank[sk];
    }
    if (nd == 0) {  // every dim has size 1 (or there are none)
        nd = 1;
        d.out_shape[0] = total;
        d.src_stride[0] = 1;
    }
    d.nd = nd;
    if (total == 0) return true;
    FLRP_ELEM_INDEX_DISPATCH(total, I,
                             launch(elem::permute_kernel<I>, elem::grid_for(total), dim3(elem::kThreads),
                                    elem::S(stream), src, dst, d))
    return true;
}

void activation_forward(int kind, const float* x, float* y, int64_t count, float param, void* stream) {
    const dim3 grid = elem::grid_for(count), block(elem::kThreads);
    const Stream s = elem::S(stream);
    switch (kind) {
        case kActRelu: launch(elem::activation_kernel<kActRelu>, grid, block, s, x, y, count, param); break;
        case kActLeakyRelu: launch(elem::activation_kernel<kActLeakyRelu>, grid, block, s, x, y, count, param); break;
        case kActElu: launch(elem::activation_kernel<kActElu>, grid, block, s, x, y, count, param); break;
        case kActTanh: launch(elem::activation_kernel<kActTanh>, grid, block, s, x, y, count, param); break;
        case kActSigmoid: launch(elem::activation_kernel<kActSigmoid>, grid, block, s, x, y, count, param); break;
        case kActGelu: launch(elem::activation_kernel<kActGelu>, grid, block, s, x, y, count, param); break;
        case kActSilu: launch(elem::activation_kernel<kActSilu>, grid, block, s, x, y, count, param); break;
        case kActSoftplus: launch(elem::activation_kernel<kActSoftplus>, grid, block, s, x, y, count, param); break;
        case kActIdentity: launch(elem::activation_kernel<kActIdentity>, grid, block, s, x, y, count, param); break;
        default: throw CudaError("activation_forward: unknown activation kind " + std::to_string(kind));
    }
}

void softmax(const float* x, float* y, int64_t rows, int64_t cols, bool log, void* stream) {
    if (rows <= 0 || cols <= 0) return;
    const dim3 grid(unsigned(rows < elem::kMaxBlocks ? rows : elem::kMaxBlocks));
    const dim3 block(elem::pow2_block(cols));
    if (log)
        launch_sync(elem::softmax_kernel<true>, grid, block, elem::S(stream), x, y, rows, cols);
    else
        launch_sync(elem::softmax_kernel<false>, grid, block, elem::S(stream), x, y, rows, cols);
}

void batchnorm_forward(const float* x, float* y, const float* scale, const float* shift, int64_t n, int64_t c,
                       int64_t inner, void* stream) {
    const int64_t total = n * c * inner;
    FLRP_ELEM_INDEX_DISPATCH(total, I,
                             launch(elem::batchnorm_kernel<I>, elem::grid_for(total), dim3(elem::kThreads),
                                    elem::S(stream), x, y, scale, shift, n, c, inner))
}

float min_value(const float* x, int64_t count, void* stream) {
    if (count <= 0) return INFINITY;
    // enough blocks to fill a GPU, few enough that pass 2 is one block's work
    int64_t nb = (count + elem::kThreads * 8 - 1) / (elem::kThreads * 8);
    if (nb > 1024) nb = 1024;
    elem::DevBuf part(size_t(nb + 1) * sizeof(float), stream);
    float* pp = static_cast<float*>(part.p);
    launch_sync(elem::min_kernel, dim3(unsigned(nb)), dim3(elem::kThreads), elem::S(stream), x, count, pp);
    launch_sync(elem::min_kernel, dim3(1), dim3(elem::kThreads), elem::S(stream), static_cast<const float*>(pp), nb,
                pp + nb);
    float out = 0.0f;
    memcpy_dtoh(&out, pp + nb, sizeof(float), stream, false);
    return out;
}

void nonfinite_rows(const float* x, int64_t rows, int64_t cols, uint8_t* host_flags, void* stream) {
    if (rows <= 0) return;
    elem::DevBuf flags(size_t(rows), stream);
    uint8_t* fp = static_cast<uint8_t*>(flags.p);
    memset_d(fp, 0, size_t(rows), stream);
    const int64_t total = rows * cols;
    if (total > 0) {
        FLRP_ELEM_INDEX_DISPATCH(total, I,
                                 launch(elem::nonfinite_kernel<I>, elem::grid_for(total), dim3(elem::kThreads),
                                        elem::S(stream), x, rows, cols, fp))
    }
    memcpy_dtoh(host_flags, fp, size_t(rows), stream, false);
}

}  // namespace gpu
}  // namespace fastlrp
