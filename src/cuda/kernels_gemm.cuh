// The GPU conv GEMM: an implicit-GEMM FP32 kernel (CUDA cores, no tensor cores)
// for every dense and conv product of fastlrp, forward and backward.  The
// semantics are in api_gemm.h.  Included once, by kernels.cu (nvcc and the SIMT
// emulator build).
//
// Tiled kernel (M > 8): a block of 256 threads computes a BM x BN tile of one
// group's C = A_g B_g (BM, BN in {64, 128}); each thread an 8x8 / 8x4 / 4x8 /
// 4x4 register tile made of 4x4 quads 64 apart (so that the shared-memory reads
// are float4 and conflict-free).  K advances by BK = 8 with double-buffered
// shared tiles: the loads of tile k+1 (global -> registers) are issued before
// the FMAs on tile k and stored to the other buffer after them, one barrier per
// K step.  A is read row-major and stored transposed (As[k][m]); B is gathered
// from the image at load time: each thread owns BN/32 columns whose (n, oy, ox)
// image offsets are computed once per block, and decodes one k (-> channel, tap,
// sign half) per K step with multiply-shift divisions by constants.
//
// The transposed (backward) mode is split into stride phases: the output pixels
// with (yy mod sh, xx mod sw) = (py, px) only see the taps ky with
// (py + ph - ky*dh) divisible by sh, an arithmetic sequence, for which the input
// row is qy + ty(ky) with yy = py + sh*qy.  Each block handles one phase, so a
// strided backward does no multiply-by-zero work and its gather is the same
// unit-stride access as a forward conv.  Blocks of one phase enumerate
// (n, qy, qx) over ceil(oh/sh) x ceil(ow/sw) (masking the pixels past oh / ow),
// which keeps the column divisors the same for all phases.
//
// Direct kernel (M <= 8: depthwise convs, 1-row heads): one thread per output
// column computes all M rows, looping over the taps; no barriers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "api_gemm.h"
#include "simt.h"

#if defined(__CUDACC__)
#define FLRP_GEMM_UNROLL _Pragma("unroll")
#define FLRP_GEMM_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
#else
#define FLRP_GEMM_UNROLL
#define FLRP_GEMM_BOUNDS(threads, blocks)
#endif

namespace fastlrp {
namespace gpu {
namespace gemm_detail {

// n / d for 0 <= n < 2^31, 1 <= d < 2^31, by a multiply-high and a shift.
struct FastDiv {
    uint32_t mul = 0, shift = 0;
};

FLRP_HD FastDiv make_fastdiv(uint32_t d) {
    uint32_t l = 0;
    while (l < 31 && (uint32_t(1) << l) < d) ++l;
    FastDiv f;
    f.mul = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << l) - d)) / d + 1);
    f.shift = l;
    return f;
}

FLRP_HD uint32_t umulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

FLRP_HD int fdiv(int n, const FastDiv& f) { return int((umulhi32(uint32_t(n), f.mul) + uint32_t(n)) >> f.shift); }

constexpr int kThreads = 256;
constexpr int kBK = 8;
constexpr int kDirectThreads = 256;
constexpr int kDirectMaxM = 8;
constexpr int kFar = -(1 << 30);  // image row of a masked column: every tap falls outside

// Everything the kernels need, by value (one kernel parameter).
struct Params {
    const float* x;
    const float* A;
    float* y;
    float* y2;
    const float* bias;
    const float* mul;
    const float* off;
    int64_t x_nstride;   // c*h*w
    int64_t HW;          // h*w
    int64_t P;           // oh*ow
    int64_t y_nstride;   // (split ? split : groups*M) * P
    int64_t y2_nstride;  // (M - split) * P
    int H, W, cg, M, Kt, K, KK, KH, KW;
    int sh, sw, ph, pw, dh, dw, OH, OW;
    int Q, QX;           // columns of one phase: (n, qy, qx) over N x QY x QX, Q = QY*QX
    int ncols;           // N*QY*QX
    FastDiv div_Q, div_QX, div_KK, div_KW;
    int split;
    int mtiles;          // ceil(M / BM) (tiled kernels)
    int ctiles;          // column tiles per phase
    int nblk;            // groups * mtiles: blocks along grid y*z
    Epi epi;
    int sign, accumulate;
};

// The K range of one block: for the forward mode all of Kt; for the transposed
// mode the taps of the block's stride phase.
struct Taps {
    int keff;
    int nkk, nky, nkx, ky0, kx0, stepy, stepx, ty0, tx0, dyq, dxq;
    FastDiv div_nkk, div_nkx;
};

// One k of B: offset from the column's image base, tap shift, A column, sign mode.
struct Tap {
    int64_t koff;
    int dy, dx, acol, mode;
};

FLRP_HD int gcd_int(int a, int b) {
    while (b) {
        const int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

// First tap k0 in [0, ks) with (q + pad - k0*dil) divisible by s, the step of the
// sequence, its length, the image offset t0 = (q + pad - k0*dil)/s of its first
// tap and the offset decrement per step.  q is the phase (0 <= q < s).
FLRP_DEVICE void phase_taps(int q, int s, int pad, int dil, int ks, int& k0, int& step, int& count, int& t0,
                            int& dt) {
    const int gg = gcd_int(s, dil);
    step = s / gg;
    dt = dil / gg;
    k0 = -1;
    for (int k = 0; k < ks && k < step; ++k) {
        int r = (q + pad - k * dil) % s;
        if (r == 0) {
            k0 = k;
            break;
        }
    }
    if (k0 < 0) {
        k0 = 0, count = 0, t0 = 0;
        return;
    }
    count = (ks - k0 + step - 1) / step;
    t0 = (q + pad - k0 * dil) / s;  // exact
}

template <bool TRANS>
FLRP_DEVICE Taps block_taps(const Params& p, int phase) {
    Taps t;
    if (!TRANS) {
        t.keff = p.Kt;
        t.nkk = t.nky = t.nkx = t.ky0 = t.kx0 = t.stepy = t.stepx = t.ty0 = t.tx0 = t.dyq = t.dxq = 0;
        return t;
    }
    const int py = phase / p.sw, px = phase - (phase / p.sw) * p.sw;
    int nky, nkx;
    phase_taps(py, p.sh, p.ph, p.dh, p.KH, t.ky0, t.stepy, nky, t.ty0, t.dyq);
    phase_taps(px, p.sw, p.pw, p.dw, p.KW, t.kx0, t.stepx, nkx, t.tx0, t.dxq);
    t.nky = nky;
    t.nkx = nkx;
    t.nkk = nky * nkx;
    t.keff = p.cg * t.nkk;
    t.div_nkk = make_fastdiv(uint32_t(t.nkk > 0 ? t.nkk : 1));
    t.div_nkx = make_fastdiv(uint32_t(nkx > 0 ? nkx : 1));
    return t;
}

template <bool TRANS>
FLRP_DEVICE Tap decode_tap(const Params& p, const Taps& t, int k) {
    Tap r;
    if (!TRANS) {
        int kr = k, mode = p.sign == 2 ? 3 : 0;
        if (p.sign == 1) {
            mode = 1;
            if (k >= p.K) kr = k - p.K, mode = 2;
        }
        const int ci = fdiv(kr, p.div_KK), tap = kr - ci * p.KK;
        const int ky = fdiv(tap, p.div_KW), kx = tap - ky * p.KW;
        r.dy = ky * p.dh;
        r.dx = kx * p.dw;
        r.koff = int64_t(ci) * p.HW + int64_t(r.dy) * p.W + r.dx;
        r.acol = k;
        r.mode = mode;
    } else {
        const int oi = fdiv(k, t.div_nkk), rem = k - oi * t.nkk;
        const int kyi = fdiv(rem, t.div_nkx), kxi = rem - kyi * t.nkx;
        const int ky = t.ky0 + kyi * t.stepy, kx = t.kx0 + kxi * t.stepx;
        r.dy = t.ty0 - kyi * t.dyq;
        r.dx = t.tx0 - kxi * t.dxq;
        r.koff = int64_t(oi) * p.HW + int64_t(r.dy) * p.W + r.dx;
        r.acol = oi * p.KK + ky * p.KW + kx;
        r.mode = 0;
    }
    return r;
}


// Image geometry of column c of a block's phase (py, px): the image row/col of
// tap (0, 0) (kFar when the column is masked), the image offset of that pixel
// in channel g*cg of sample n, and the output pixel.  n = -1: masked.
struct Col {
    int iy, ix, n, pix;
    int64_t xoff;
};

template <bool TRANS>
FLRP_DEVICE Col decode_col(const Params& p, int g, int py, int px, int c) {
    Col r;
    r.iy = kFar, r.ix = kFar, r.n = -1, r.pix = 0, r.xoff = 0;
    if (c >= p.ncols) return r;
    const int n = fdiv(c, p.div_Q), rem = c - n * p.Q;
    const int qy = fdiv(rem, p.div_QX), qx = rem - qy * p.QX;
    int oy, ox;
    if (!TRANS) {
        oy = qy, ox = qx;
        r.iy = qy * p.sh - p.ph;
        r.ix = qx * p.sw - p.pw;
    } else {
        oy = py + p.sh * qy, ox = px + p.sw * qx;
        if (oy >= p.OH || ox >= p.OW) return r;
        r.iy = qy, r.ix = qx;
    }
    r.n = n;
    r.pix = oy * p.OW + ox;
    r.xoff = int64_t(n) * p.x_nstride + int64_t(g) * p.cg * p.HW + int64_t(r.iy) * p.W + r.ix;
    return r;
}

// A read-only global load (the non-coherent cache path on the GPU).
FLRP_DEVICE float ldg(const float* q) {
#if defined(__CUDA_ARCH__)
    return __ldg(q);
#else
    return *q;
#endif
}

// A column's gather geometry as the tiled kernel keeps it in shared memory.
struct alignas(16) ColInfo {
    int64_t xoff;
    int iy, ix;
};

// The epilogue and the store of one output value.
FLRP_DEVICE void store_out(const Params& p, int o, int n, int pix, float v) {
    float* dst;
    int64_t idx;
    if (p.split > 0 && o >= p.split) {  // the raw second output
        dst = p.y2;
        idx = int64_t(n) * p.y2_nstride + int64_t(o - p.split) * p.P + pix;
    } else {
        dst = p.y;
        idx = int64_t(n) * p.y_nstride + int64_t(o) * p.P + pix;
        switch (p.epi) {
            case Epi::Bias:
                v += ldg(p.bias + o);
                break;
            case Epi::MulX:
                v *= ldg(p.mul + idx);
                break;
            case Epi::MulPos: {
                const float q = ldg(p.mul + idx);
                v *= q > 0.0f ? q : 0.0f;
                break;
            }
            case Epi::MulNeg: {
                const float q = ldg(p.mul + idx);
                v *= q < 0.0f ? q : 0.0f;
                break;
            }
            case Epi::MulXOff:
                v *= ldg(p.mul + idx) - ldg(p.off + int64_t(o) * p.P + pix);
                break;
            case Epi::MulAbs:
                v *= fabsf(ldg(p.mul + idx));
                break;
            case Epi::None:
                break;
        }
    }
    if (p.accumulate)
        dst[idx] += v;
    else
        dst[idx] = v;
}

// mode 0: x, 1: max(x, 0), 2: min(x, 0), 3: |x| (the CPU's tf<Mode>)
FLRP_DEVICE float sign_mode(float v, int mode) {
    if (mode == 1) return v > 0.0f ? v : 0.0f;
    if (mode == 2) return v < 0.0f ? v : 0.0f;
    if (mode == 3) return fabsf(v);
    return v;
}

// Four consecutive floats of shared memory (16-byte aligned) into registers.
FLRP_DEVICE void ld4(const float* s, float* r) {
#if defined(__CUDA_ARCH__)
    const float4 v = *reinterpret_cast<const float4*>(s);
    r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
#else
    r[0] = s[0], r[1] = s[1], r[2] = s[2], r[3] = s[3];
#endif
}

// The tiled kernel.  grid.x: phases x column tiles; grid.y*z: groups x row tiles.
template <int BM, int BN, bool TRANS>
FLRP_GLOBAL void FLRP_GEMM_BOUNDS(kThreads, (BM * BN >= 128 * 128 ? 2 : 3)) conv_gemm_tiled(Params p) {
    static_assert((BM == 64 || BM == 128) && (BN == 64 || BN == 128), "tile sizes");
    constexpr int TM = BM / 16, TN = BN / 16;  // register tile: TM x TN (quads 64 apart)
    constexpr int AR = BM / 32, BR = BN / 32;  // A and B elements each thread loads per K step
    alignas(16) FLRP_SHARED float As[2][kBK][BM + 4];  // As[k][m]: A transposed; +4 spreads the stores
    alignas(16) FLRP_SHARED float Bs[2][kBK][BN];
    FLRP_SHARED ColInfo cols[BN];

    const int tid = int(threadIdx.x);
    const int bi = int(blockIdx.z * gridDim.y + blockIdx.y);
    if (bi >= p.nblk) return;  // the whole block (grid y*z rounded up)
    const int g = bi / p.mtiles, m0 = (bi - g * p.mtiles) * BM;
    const int phase = int(blockIdx.x) / p.ctiles, c0 = (int(blockIdx.x) - phase * p.ctiles) * BN;
    const int py = phase / p.sw, px = phase - py * p.sw;
    const Taps taps = block_taps<TRANS>(p, phase);
    const int nk = (taps.keff + kBK - 1) / kBK;

    // B: this thread gathers row k0 + tid/32 of columns c0 + tid%32 + 32 r, whose
    // image geometry is tabulated once per block (registers are short here)
    for (int j = tid; j < BN; j += kThreads) {
        const Col c = decode_col<TRANS>(p, g, py, px, c0 + j);
        ColInfo ci;
        ci.xoff = c.xoff, ci.iy = c.iy, ci.ix = c.ix;
        cols[j] = ci;
    }
    flrp_syncthreads();
    // A: this thread loads column k0 + tid%8 of rows m0 + tid/8 + 32 r
    const int arow0 = m0 + (tid >> 3);
    const float* FLRP_RESTRICT abase = p.A + (int64_t(g) * p.M + arow0) * p.Kt;
    float areg[AR], breg[BR];

    auto load = [&](int k0) {
        const int ka = k0 + (tid & 7);
        if (ka < taps.keff) {
            const int acol = TRANS ? decode_tap<TRANS>(p, taps, ka).acol : ka;
            FLRP_GEMM_UNROLL
            for (int r = 0; r < AR; ++r)
                areg[r] = arow0 + 32 * r < p.M ? ldg(abase + int64_t(32 * r) * p.Kt + acol) : 0.0f;
        } else {
            FLRP_GEMM_UNROLL
            for (int r = 0; r < AR; ++r) areg[r] = 0.0f;
        }
        const int kb = k0 + (tid >> 5);
        if (kb < taps.keff) {
            const Tap t = decode_tap<TRANS>(p, taps, kb);
            FLRP_GEMM_UNROLL
            for (int r = 0; r < BR; ++r) {
                const ColInfo ci = cols[(tid & 31) + 32 * r];
                const int iy = ci.iy + t.dy, ix = ci.ix + t.dx;
                float v = 0.0f;
                if (unsigned(iy) < unsigned(p.H) && unsigned(ix) < unsigned(p.W)) v = ldg(p.x + ci.xoff + t.koff);
                breg[r] = sign_mode(v, t.mode);
            }
        } else {
            FLRP_GEMM_UNROLL
            for (int r = 0; r < BR; ++r) breg[r] = 0.0f;
        }
    };
    auto store = [&](int buf) {
        FLRP_GEMM_UNROLL
        for (int r = 0; r < AR; ++r) As[buf][tid & 7][(tid >> 3) + 32 * r] = areg[r];
        FLRP_GEMM_UNROLL
        for (int r = 0; r < BR; ++r) Bs[buf][tid >> 5][(tid & 31) + 32 * r] = breg[r];
    };

    float acc[TM][TN];
    FLRP_GEMM_UNROLL
    for (int i = 0; i < TM; ++i) {
        FLRP_GEMM_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    }
    if (nk > 0) {
        load(0);
        store(0);
    }
    flrp_syncthreads();
    const int tx = tid & 15, ty = tid >> 4;
    for (int kt = 0; kt < nk; ++kt) {
        const int cur = kt & 1;
        if (kt + 1 < nk) load((kt + 1) * kBK);  // in flight during the FMAs below
        FLRP_GEMM_UNROLL
        for (int kk = 0; kk < kBK; ++kk) {
            float a[TM], b[TN];
            ld4(&As[cur][kk][ty * 4], a);
            if constexpr (TM == 8) ld4(&As[cur][kk][64 + ty * 4], a + 4);
            ld4(&Bs[cur][kk][tx * 4], b);
            if constexpr (TN == 8) ld4(&Bs[cur][kk][64 + tx * 4], b + 4);
            FLRP_GEMM_UNROLL
            for (int i = 0; i < TM; ++i) {
                FLRP_GEMM_UNROLL
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        if (kt + 1 < nk) store(cur ^ 1);  // the other buffer: last read before the previous barrier
        flrp_syncthreads();
    }

    int cn[TN], cpix[TN];
    FLRP_GEMM_UNROLL
    for (int j = 0; j < TN; ++j) {
        const Col c = decode_col<TRANS>(p, g, py, px, c0 + tx * 4 + (j & 3) + (j >> 2) * 64);
        cn[j] = c.n, cpix[j] = c.pix;
    }
    FLRP_GEMM_UNROLL
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + ty * 4 + (i & 3) + (i >> 2) * 64;
        if (m >= p.M) continue;
        const int o = g * p.M + m;
        FLRP_GEMM_UNROLL
        for (int j = 0; j < TN; ++j)
            if (cn[j] >= 0) store_out(p, o, cn[j], cpix[j], acc[i][j]);
    }
}

// The direct kernel (M <= kDirectMaxM): one thread per column, every row.
// grid.x: phases x column tiles of kDirectThreads; grid.y*z: groups.
template <bool TRANS>
FLRP_GLOBAL void FLRP_GEMM_BOUNDS(kDirectThreads, 1) conv_gemm_direct(Params p) {
    const int g = int(blockIdx.z * gridDim.y + blockIdx.y);
    if (g >= p.nblk) return;
    const int phase = int(blockIdx.x) / p.ctiles, ct = int(blockIdx.x) - phase * p.ctiles;
    const int py = phase / p.sw, px = phase - py * p.sw;
    const Col col = decode_col<TRANS>(p, g, py, px, ct * kDirectThreads + int(threadIdx.x));
    if (col.n < 0) return;
    const int M = p.M;
    const int64_t Kt = p.Kt;
    const float* FLRP_RESTRICT Ag = p.A + int64_t(g) * M * Kt;
    const float* FLRP_RESTRICT x = p.x;
    float acc[kDirectMaxM];
    FLRP_GEMM_UNROLL
    for (int m = 0; m < kDirectMaxM; ++m) acc[m] = 0.0f;
    if (!TRANS) {
        const int halves = p.sign == 1 ? 2 : 1;
        for (int h = 0; h < halves; ++h) {
            const int mode = p.sign == 1 ? 1 + h : (p.sign == 2 ? 3 : 0);
            for (int ci = 0; ci < p.cg; ++ci) {
                const int64_t xc = col.xoff + int64_t(ci) * p.HW;
                for (int ky = 0; ky < p.KH; ++ky) {
                    const int dy = ky * p.dh;
                    if (unsigned(col.iy + dy) >= unsigned(p.H)) continue;
                    for (int kx = 0; kx < p.KW; ++kx) {
                        const int dx = kx * p.dw;
                        if (unsigned(col.ix + dx) >= unsigned(p.W)) continue;
                        const float v = sign_mode(ldg(x + xc + int64_t(dy) * p.W + dx), mode);
                        const int64_t acol = int64_t(h) * p.K + (ci * p.KH + ky) * p.KW + kx;
                        FLRP_GEMM_UNROLL
                        for (int m = 0; m < kDirectMaxM; ++m)
                            if (m < M) acc[m] = fmaf(ldg(Ag + m * Kt + acol), v, acc[m]);
                    }
                }
            }
        }
    } else {
        const Taps t = block_taps<true>(p, phase);
        for (int oi = 0; oi < p.cg; ++oi) {
            const int64_t xc = col.xoff + int64_t(oi) * p.HW;
            for (int kyi = 0; kyi < t.nky; ++kyi) {
                const int dy = t.ty0 - kyi * t.dyq;
                if (unsigned(col.iy + dy) >= unsigned(p.H)) continue;
                const int ky = t.ky0 + kyi * t.stepy;
                for (int kxi = 0; kxi < t.nkx; ++kxi) {
                    const int dx = t.tx0 - kxi * t.dxq;
                    if (unsigned(col.ix + dx) >= unsigned(p.W)) continue;
                    const int kx = t.kx0 + kxi * t.stepx;
                    const float v = ldg(x + xc + int64_t(dy) * p.W + dx);
                    const int64_t acol = int64_t(oi) * p.KK + ky * p.KW + kx;
                    FLRP_GEMM_UNROLL
                    for (int m = 0; m < kDirectMaxM; ++m)
                        if (m < M) acc[m] = fmaf(ldg(Ag + m * Kt + acol), v, acc[m]);
                }
            }
        }
    }
    FLRP_GEMM_UNROLL
    for (int m = 0; m < kDirectMaxM; ++m)
        if (m < M) store_out(p, g * M + m, col.n, col.pix, acc[m]);
}

// ------------------------------------------------------------------ host side

[[noreturn]] inline void bad(const std::string& what) { throw std::invalid_argument("conv_gemm: " + what); }

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int sm_count() {
#if defined(__CUDACC__)
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) {
        cudaGetLastError();
        return 132;
    }
    return n;
#else
    return 132;  // the emulator picks tiles as an H100 would
#endif
}

struct Plan {
    Params p;
    int tile = kTileAuto;
    bool empty = false;
    int64_t nphase = 1;
};

struct TileShape {
    int bm, bn;
    double eff;  // relative FMA efficiency of the configuration
};
constexpr TileShape kShapes[5] = {{0, 0, 0.0}, {128, 128, 1.0}, {128, 64, 0.8}, {64, 128, 0.8}, {64, 64, 0.6}};

inline Plan make_plan(const ConvGemmGpuArgs& a) {
    const int64_t lim = int64_t(1) << 30;
    auto need_size = [&](int64_t v, const char* name, int64_t lo) {
        if (v < lo) bad(std::string(name) + " must be >= " + std::to_string(lo) + ", got " + std::to_string(v));
        if (v >= lim) bad(std::string(name) + " = " + std::to_string(v) + " is too large");
    };
    need_size(a.n, "n", 0);
    need_size(a.c, "c", 1);
    need_size(a.h, "h", 1);
    need_size(a.w, "w", 1);
    need_size(a.groups, "groups", 1);
    need_size(a.m, "m", 1);
    need_size(a.kh, "kh", 1);
    need_size(a.kw, "kw", 1);
    need_size(a.sh, "sh", 1);
    need_size(a.sw, "sw", 1);
    need_size(a.dh, "dh", 1);
    need_size(a.dw, "dw", 1);
    need_size(a.oh, "oh", 0);
    need_size(a.ow, "ow", 0);
    const int64_t glim = int64_t(1) << 28;  // image coordinates stay far from int overflow
    if (a.ph <= -glim || a.ph >= glim || a.pw <= -glim || a.pw >= glim) bad("padding out of range");
    if (a.c % a.groups)
        bad(std::to_string(a.c) + " channels are not divisible by " + std::to_string(a.groups) + " groups");
    if (a.sign < 0 || a.sign > 2)
        bad("sign must be 0 (x), 1 ([x+; x-] along K) or 2 (|x|), got " + std::to_string(a.sign));
    if (a.transposed && a.sign) bad("the transposed mode takes sign = 0");
    if (!is_epilogue(int(a.epi))) bad("epi " + std::to_string(int(a.epi)) + " is not an epilogue code");
    const std::string epi = "epi " + std::to_string(int(a.epi)) + " (" + kEpilogueNames[int(a.epi)] + ")";
    if (epi_reads_bias(a.epi) && !a.bias) bad(epi + " needs bias");
    if (epi_reads_mul(a.epi) && !a.mul) bad(epi + " needs mul");
    if (epi_reads_off(a.epi) && !a.off) bad(epi + " needs off");
    if (a.split < 0) bad("split must be >= 0");
    if (a.split > 0) {
        if (a.groups != 1) bad("split needs groups == 1");
        if (a.split >= a.m) bad("split must be < m (" + std::to_string(a.m) + "), got " + std::to_string(a.split));
        if (!a.y2) bad("split needs y2");
    } else if (a.y2) {
        bad("y2 needs split > 0");
    }
    if (a.tile < kTileAuto || a.tile > kTile64x64) bad("tile must be in -1..4, got " + std::to_string(a.tile));
    if (a.tile == kTileDirect && a.m > kDirectMaxM)
        bad("the direct kernel (tile 0) takes m <= " + std::to_string(kDirectMaxM));
    const int64_t cg = a.c / a.groups, KK = a.kh * a.kw, K = cg * KK, Kt = a.sign == 1 ? 2 * K : K;
    const int64_t rows = a.groups * a.m, P = a.oh * a.ow;
    if (KK >= lim || K >= lim || rows >= lim) bad("K or the row count is too large");
    if (a.kh * a.dh >= glim || a.kw * a.dw >= glim || a.oh * a.sh >= glim || a.ow * a.sw >= glim ||
        a.h * a.w >= (int64_t(1) << 31) || P >= (int64_t(1) << 31))
        bad("the image geometry is too large");
    const int64_t nphase = a.transposed ? a.sh * a.sw : 1;
    if (nphase >= lim) bad("strides too large");
    const int64_t QY = a.transposed ? cdiv(a.oh, a.sh) : a.oh, QX = a.transposed ? cdiv(a.ow, a.sw) : a.ow;
    const int64_t ncols = a.n * QY * QX;
    if (ncols >= (int64_t(1) << 31) - 256) bad("too many output pixels (n*oh*ow); split the batch");

    Plan pl;
    pl.nphase = nphase;
    Params& p = pl.p;
    p.x = a.x, p.A = a.A, p.y = a.y, p.y2 = a.y2, p.bias = a.bias, p.mul = a.mul, p.off = a.off;
    p.HW = a.h * a.w;
    p.x_nstride = a.c * p.HW;
    p.P = P;
    p.y_nstride = (a.split ? a.split : rows) * P;
    p.y2_nstride = (a.split ? rows - a.split : 0) * P;
    p.H = int(a.h), p.W = int(a.w), p.cg = int(cg), p.M = int(a.m), p.Kt = int(Kt), p.K = int(K), p.KK = int(KK);
    p.KH = int(a.kh), p.KW = int(a.kw);
    p.sh = int(a.sh), p.sw = int(a.sw), p.ph = int(a.ph), p.pw = int(a.pw), p.dh = int(a.dh), p.dw = int(a.dw);
    p.OH = int(a.oh), p.OW = int(a.ow);
    p.Q = int(QY * QX), p.QX = int(QX);
    p.ncols = int(ncols);
    p.div_Q = make_fastdiv(uint32_t(p.Q > 0 ? p.Q : 1));
    p.div_QX = make_fastdiv(uint32_t(QX > 0 ? QX : 1));
    p.div_KK = make_fastdiv(uint32_t(KK));
    p.div_KW = make_fastdiv(uint32_t(a.kw));
    p.split = int(a.split);
    p.epi = a.epi, p.sign = a.sign, p.accumulate = a.accumulate ? 1 : 0;
    pl.empty = ncols == 0;
    if (!pl.empty && (!a.x || !a.A || !a.y)) bad("x, A and y must be device pointers (got 0)");

    int tile = a.tile;
    if (tile == kTileAuto) {
        if (a.m <= kDirectMaxM) {
            tile = kTileDirect;
        } else {
            const double sms = sm_count();
            double best = 0.0;
            for (int t = kTile128x128; t <= kTile64x64; ++t) {
                const TileShape s = kShapes[t];
                const double blocks = double(a.groups) * double(cdiv(a.m, s.bm)) * double(nphase) *
                                      double(cdiv(ncols > 0 ? ncols : 1, s.bn));
                // the busiest SM runs ceil(blocks / sms) blocks of bm*bn outputs each
                const double cost = double(int64_t((blocks + sms - 1) / sms)) * s.bm * s.bn / s.eff;
                if (t == kTile128x128 || cost < best) best = cost, tile = t;
            }
        }
    }
    pl.tile = tile;
    const int64_t bm = tile == kTileDirect ? a.m : kShapes[tile].bm;
    const int64_t bn = tile == kTileDirect ? kDirectThreads : kShapes[tile].bn;
    const int64_t mtiles = cdiv(a.m, bm), ctiles = cdiv(ncols > 0 ? ncols : 1, bn);
    if (nphase * ctiles > 2147483647 || a.groups * mtiles > int64_t(65535) * 65535)
        bad("the grid is too large");
    p.mtiles = int(mtiles);
    p.ctiles = int(ctiles);
    p.nblk = int(a.groups * mtiles);
    return pl;
}

template <class Kernel>
void run_plan(Kernel kernel, const Plan& pl, bool barriers, unsigned threads, void* stream) {
    const int64_t gy = pl.p.nblk < 65535 ? pl.p.nblk : 65535;
    const dim3 grid(unsigned(pl.nphase * pl.p.ctiles), unsigned(gy), unsigned(cdiv(pl.p.nblk, gy)));
    const Stream s = static_cast<Stream>(stream);
    if (barriers)
        launch_sync(kernel, grid, dim3(threads), s, pl.p);
    else
        launch(kernel, grid, dim3(threads), s, pl.p);
}

}  // namespace gemm_detail

int conv_gemm_tile(const ConvGemmGpuArgs& a) { return gemm_detail::make_plan(a).tile; }

void conv_gemm(const ConvGemmGpuArgs& a) {
    using namespace gemm_detail;
    const Plan pl = make_plan(a);
    if (pl.empty) return;
    void* s = a.stream;
    if (a.transposed) {
        switch (pl.tile) {
            case kTileDirect: return run_plan(conv_gemm_direct<true>, pl, false, kDirectThreads, s);
            case kTile128x128: return run_plan(conv_gemm_tiled<128, 128, true>, pl, true, kThreads, s);
            case kTile128x64: return run_plan(conv_gemm_tiled<128, 64, true>, pl, true, kThreads, s);
            case kTile64x128: return run_plan(conv_gemm_tiled<64, 128, true>, pl, true, kThreads, s);
            default: return run_plan(conv_gemm_tiled<64, 64, true>, pl, true, kThreads, s);
        }
    }
    switch (pl.tile) {
        case kTileDirect: return run_plan(conv_gemm_direct<false>, pl, false, kDirectThreads, s);
        case kTile128x128: return run_plan(conv_gemm_tiled<128, 128, false>, pl, true, kThreads, s);
        case kTile128x64: return run_plan(conv_gemm_tiled<128, 64, false>, pl, true, kThreads, s);
        case kTile64x128: return run_plan(conv_gemm_tiled<64, 128, false>, pl, true, kThreads, s);
        default: return run_plan(conv_gemm_tiled<64, 64, false>, pl, true, kThreads, s);
    }
}

}  // namespace gpu
}  // namespace fastlrp
