// The blocked GEMM driver, the im2col B packer, the A packer and the epilogue
// sink, written once and compiled once per ISA.
//
// Included by gemm_generic.cpp / gemm_avx2.cpp / gemm_avx512.cpp, each compiled
// with its own -m flags, after defining FASTLRP_ISA (a namespace name: the
// templates below must not be shared between translation units built for
// different ISAs) and, inside fastlrp::cpu::FASTLRP_ISA:
//     constexpr int MR, NR;  constexpr int64_t KC, MC, NC;
//     void ukr(int64_t kc, const float* a, const float* b, float* ct);
// where ukr computes the MR x NR tile ct (row-major, stride NR) of the product of
// an A micro-panel (kc x MR) and a B micro-panel (kc x NR).
//
// Loop nest (BLIS order, A already packed once per model):
//   threads split output columns (or rows when there are few columns)
//   for group g, for column block jc (NC), for K block pc (KC):
//       gather B[pc, jc] from the image into micro-panels (sign split here)
//       for row block ic (MC), for B micro-panel jr (stays in L1),
//           for A micro-panel ir (stays in L2): ukr, then the sink adds the tile
//           to y (first K block: stores) and, after the last K block, applies the
//           epilogue while the tile is still in L1.
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"
#include "threads.h"

namespace fastlrp {
namespace cpu {
namespace FASTLRP_ISA {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// A.kc may reach 2 * KC for operands with few rows (see pack_a).
static_assert(KC % 8 == 0 && NC % NR == 0 && MC % MR == 0, "inconsistent blocking");

inline Blocking blocking() { return Blocking{MR, NR, KC, MC, NC}; }

// Panels of W rows each (MR for the A operand of conv GEMMs; NR for weights packed for
// sample rows, which are the micro-kernel's B operand: see rows_gemm_impl), written in
// order (kk outer: W contiguous floats per kk) from W rows read side by side; (group,
// K block, panel) items on the kernels' threads, since operands packed per call
// (attention's activations) can be tens of MB.
template <int W>
inline void pack_panels(PackedA& P, const float* A, int threads) {
    const int64_t m = P.m, k = P.k, nkb = (k + P.kc - 1) / P.kc, npan = (m + W - 1) / W;
    const int64_t items = P.groups * nkb * npan;
    if (threads < 1 || P.groups * m * k < (int64_t(1) << 18)) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t g = it / (nkb * npan), rem = it - g * nkb * npan, kb = rem / npan, ip = rem - kb * npan;
        const int64_t k0 = kb * P.kc, kl = imin(P.kc, k - k0);
        float* __restrict dst = P.data.get() + g * P.gstride + k0 * P.mp + ip * W * kl;
        const float* src[W];
        for (int r = 0; r < W; ++r) {
            const int64_t row = ip * W + r;
            src[r] = row < m ? A + (g * m + row) * k + k0 : nullptr;
        }
        for (int64_t kk = 0; kk < kl; ++kk)
            for (int r = 0; r < W; ++r) dst[kk * W + r] = src[r] ? src[r][kk] : 0.0f;
    }
}

inline void pack_a_impl(PackedA& P, const float* A, int threads) {
    if (P.rows)
        pack_panels<NR>(P, A, threads);
    else
        pack_panels<MR>(P, A, threads);
}

// One row of K in the current block: where its tap reads the image.
struct KEntry {
    int64_t choff;  // channel offset within the group's first channel (ci * h * w)
    int64_t dy, dx; // kh * dh, kw * dw
    int mode;       // 0: x, 1: x+, 2: x-, 3: |x| (sign_mode)
    int tap;        // kh * kw_size + kw
};

// Per micro-panel: either "fast" (one run of NR columns on one output row whose
// every tap stays inside the image columns: a contiguous or strided copy after a
// row check), or a gather table: for each kernel tap, the image offset of each
// column (-1 outside the image).  The table depends only on the tap, not on the
// channel, so it is built once per block and reused by all Cg channels.
struct PanelInfo {
    bool fast;          // every tap inside the image columns
    bool row;           // one run of NR columns on one output row (edge taps use tab)
    const float* src0;  // row: image address of column 0 for tap (0, 0)
    int64_t ih0, iw0;
    const int64_t* tab; // gather: KK x NR offsets from a.x (channel 0 of the group)
};

// The sign transform of a K entry's mode: 0 x, 1 x+, 2 x-, 3 |x|.
template <int Mode>
inline float tf(float v) {
    return Mode == 0 ? v : (Mode == 1 ? (v > 0.0f ? v : 0.0f) : (Mode == 2 ? (v < 0.0f ? v : 0.0f) : std::fabs(v)));
}

// The mode of K entry k of a block (Kc = K per sign half): the Sign's transform.
inline int sign_mode(Sign s, int64_t half) {
    return s == Sign::Id ? 0 : (s == Sign::Abs ? 3 : (half == 0 ? 1 : 2));
}

// f(std::integral_constant<int, mode>{}): a run-time mode as the template argument of tf.
template <class F>
inline void with_mode(int mode, F&& f) {
    switch (mode) {
        case 0: f(std::integral_constant<int, 0>{}); break;
        case 1: f(std::integral_constant<int, 1>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        default: f(std::integral_constant<int, 3>{}); break;
    }
}

// f(mode constant, k0, k1) for each run kt[k0 .. k1) of one sign mode in a K block of kl
// entries: x (Id), x+ then x- (PosNeg), |x| (Abs); the packers' inner loops per mode.
template <class F>
inline void for_mode_runs(const KEntry* kt, int64_t kl, F&& f) {
    for (int64_t kk = 0; kk < kl;) {
        int64_t ke = kk;
        while (ke < kl && kt[ke].mode == kt[kk].mode) ++ke;
        with_mode(kt[kk].mode, [&](auto m) { f(m, kk, ke); });
        kk = ke;
    }
}

template <int Mode>
inline void pack_rows(const ConvGemmArgs& a, const KEntry* kt, int64_t k0, int64_t k1, int64_t kl, int64_t np,
                      const PanelInfo* pinfo, float* dst) {
    const int64_t sw = a.sw;
    for (int64_t kk = k0; kk < k1; ++kk) {
        const KEntry e = kt[kk];
        const int64_t koff = e.choff + e.dy * a.w + e.dx;
        const float* __restrict xc = a.x + e.choff;
        for (int64_t ip = 0; ip < np; ++ip) {
            float* __restrict dk = dst + ip * kl * NR + kk * NR;
            const PanelInfo& pi = pinfo[ip];
            if (pi.fast || (pi.row && pi.iw0 + e.dx >= 0 && pi.iw0 + e.dx + (NR - 1) * sw < a.w)) {
                const int64_t ih = pi.ih0 + e.dy;
                if (ih >= 0 && ih < a.h) {
                    const float* __restrict src = pi.src0 + koff;
                    if (sw == 1 && Mode == 0) {
                        std::memcpy(dk, src, sizeof(float) * NR);
                    } else if (sw == 1) {
                        // fixed-size copies through a local tile: always vector moves
                        float t[NR];
                        std::memcpy(t, src, sizeof(t));
                        for (int c = 0; c < NR; ++c) t[c] = tf<Mode>(t[c]);
                        std::memcpy(dk, t, sizeof(t));
                    } else {
                        for (int c = 0; c < NR; ++c) dk[c] = tf<Mode>(src[c * sw]);
                    }
                } else {
                    for (int c = 0; c < NR; ++c) dk[c] = 0.0f;
                }
                continue;
            }
            const int64_t* __restrict o = pi.tab + int64_t(e.tap) * NR;
            for (int c = 0; c < NR; ++c) dk[c] = o[c] >= 0 ? tf<Mode>(xc[o[c]]) : 0.0f;
        }
    }
}

// Rows of features (a dense layer over S samples or tokens: S images of 1x1, 1x1 kernel):
// B[k, j] = T(x[j, g*cg + k]), a transpose of x's rows into micro-panels. k outer so
// that the NR rows read stay in L1 while their next features are copied.
inline bool rows_layout(const ConvGemmArgs& a) {
    return a.h == 1 && a.w == 1 && a.kh == 1 && a.kw == 1 && a.oh == 1 && a.ow == 1 && a.ph == 0 && a.pw == 0;
}

template <int Mode>
inline void pack_feature_rows(const ConvGemmArgs& a, int64_t cg, int64_t g, const KEntry* kt, int64_t k0,
                              int64_t k1, int64_t kl, int64_t j0, int64_t nl, float* dst) {
    const int64_t np = (nl + NR - 1) / NR;
    for (int64_t ip = 0; ip < np; ++ip) {
        const int64_t jb = j0 + ip * NR, ncol = imin(NR, j0 + nl - jb);
        const float* __restrict xr = a.x + jb * a.c + g * cg;
        float* __restrict d = dst + ip * kl * NR;
        for (int64_t kk = k0; kk < k1; ++kk) {
            const float* __restrict xk = xr + kt[kk].choff;
            float* __restrict dk = d + kk * NR;
            for (int64_t c = 0; c < ncol; ++c) dk[c] = tf<Mode>(xk[c * a.c]);
            for (int64_t c = ncol; c < NR; ++c) dk[c] = 0.0f;
        }
    }
}

// Gathers B[k in block, columns j0 .. j0+nl) of group g into micro-panels of NR
// columns (kl x NR each, zero padded): the implicit im2col.  K is the outer loop
// so that, for one tap, consecutive panels read consecutive image addresses (a
// panel-outer order would stride through kl channel planes per panel and defeat
// the hardware prefetcher).  The sign transform is a template parameter of the
// copy loops: [x+ ; x-] along K costs the same as x.
inline void pack_b_block(const ConvGemmArgs& a, int64_t cg, int64_t g, const KEntry* kt, int64_t kl, int64_t j0,
                         int64_t nl, float* dst, PanelInfo* pinfo, int64_t* tabs) {
    const int64_t P = a.oh * a.ow, HW = a.h * a.w, KK = a.kh * a.kw;
    const int64_t np = (nl + NR - 1) / NR;
    const int64_t dxmax = (a.kw - 1) * a.dw;
    const bool rows = rows_layout(a);
    for (int64_t ip = 0; ip < np && !rows; ++ip) {
        PanelInfo& pi = pinfo[ip];
        const int64_t jb = j0 + ip * NR, ncol = imin(NR, j0 + nl - jb);
        const int64_t n = jb / P, r = jb - n * P, oh = r / a.ow, ow = r - oh * a.ow;
        const int64_t cbase = (n * a.c + g * cg) * HW;
        pi.ih0 = oh * a.sh - a.ph;
        const int64_t iw0 = ow * a.sw - a.pw;
        pi.src0 = a.x + cbase + pi.ih0 * a.w + iw0;
        pi.iw0 = iw0;
        pi.row = ncol == NR && ow + NR <= a.ow;
        pi.fast = pi.row && iw0 >= 0 && iw0 + dxmax + (NR - 1) * a.sw < a.w;
        if (pi.fast) continue;
        int64_t* tab = tabs + ip * KK * NR;
        pi.tab = tab;
        int64_t colb[NR], colh[NR], colw[NR];
        for (int64_t c = 0; c < NR; ++c) {
            if (c < ncol) {
                const int64_t jj = jb + c, nn = jj / P, rr = jj - nn * P, hh = rr / a.ow, ww = rr - hh * a.ow;
                colb[c] = (nn * a.c + g * cg) * HW;
                colh[c] = hh * a.sh - a.ph;
                colw[c] = ww * a.sw - a.pw;
            } else {
                colb[c] = -1, colh[c] = 0, colw[c] = 0;
            }
        }
        for (int64_t t = 0; t < KK; ++t) {
            const int64_t dy = (t / a.kw) * a.dh, dx = (t % a.kw) * a.dw;
            for (int64_t c = 0; c < NR; ++c) {
                const int64_t ih = colh[c] + dy, iw = colw[c] + dx;
                tab[t * NR + c] = (colb[c] >= 0 && ih >= 0 && ih < a.h && iw >= 0 && iw < a.w)
                                      ? colb[c] + ih * a.w + iw : -1;
            }
        }
    }
    for_mode_runs(kt, kl, [&](auto m, int64_t k0, int64_t k1) {
        if (rows)
            pack_feature_rows<decltype(m)::value>(a, cg, g, kt, k0, k1, kl, j0, nl, dst);
        else
            pack_rows<decltype(m)::value>(a, kt, k0, k1, kl, np, pinfo, dst);
    });
}

// The epilogue on len outputs yp: y at flat index off (mul's index), off's index (one
// sample) loff.  Along one row o of an image (Rows false: yp[q] is position q of output
// o), or along the features o, o+1, ... of one sample (Rows: P == 1).
template <bool Rows = false>
inline void apply_epilogue(const ConvGemmArgs& a, int64_t o, int64_t off, int64_t loff, float* __restrict yp,
                           int64_t len) {
    const float* __restrict m = a.mul + off;
    switch (a.epi) {
        case Epi::None:
            break;
        case Epi::Bias: {
            const float* __restrict b = a.bias + o;
            if (Rows) {
                for (int64_t q = 0; q < len; ++q) yp[q] += b[q];
            } else {
                const float b0 = b[0];
                for (int64_t q = 0; q < len; ++q) yp[q] += b0;
            }
            break;
        }
        case Epi::MulX:
            for (int64_t q = 0; q < len; ++q) yp[q] *= m[q];
            break;
        case Epi::MulPos:
            for (int64_t q = 0; q < len; ++q) yp[q] *= (m[q] > 0.0f ? m[q] : 0.0f);
            break;
        case Epi::MulNeg:
            for (int64_t q = 0; q < len; ++q) yp[q] *= (m[q] < 0.0f ? m[q] : 0.0f);
            break;
        case Epi::MulXOff: {
            const float* __restrict l = a.off + loff;
            for (int64_t q = 0; q < len; ++q) yp[q] *= (m[q] - l[q]);
            break;
        }
        case Epi::MulAbs:
            for (int64_t q = 0; q < len; ++q) yp[q] *= std::fabs(m[q]);
            break;
    }
}

// sink for outputs of one position (P == 1): column c of the tile is sample j + c, its
// mr rows are mr consecutive features of y (rows past split go raw to y2).
inline void sink_features(const ConvGemmArgs& a, int64_t O, int64_t row0, int mr, int64_t j, int nr,
                          const float* ct, bool first, bool last) {
    const int64_t Oy = a.y2 ? a.split : O;
    const int ry = a.y2 ? int(imax(0, imin(mr, a.split - row0))) : mr;  // rows that go to y
    for (int c = 0; c < nr; ++c) {
        const int64_t n = j + c;
        const float* __restrict t = ct + c;
        if (ry > 0) {
            const int64_t off = n * Oy + row0;
            float* __restrict yp = a.y + off;
            if (first) {
                for (int r = 0; r < ry; ++r) yp[r] = t[r * NR];
            } else {
                for (int r = 0; r < ry; ++r) yp[r] += t[r * NR];
            }
            if (last) apply_epilogue<true>(a, row0, off, row0, yp, ry);
        }
        if (ry < mr) {
            float* __restrict y2 = a.y2 + n * (O - a.split) + row0 + ry - a.split;
            if (first) {
                for (int r = ry; r < mr; ++r) y2[r - ry] = t[r * NR];
            } else {
                for (int r = ry; r < mr; ++r) y2[r - ry] += t[r * NR];
            }
        }
    }
}

// Adds a finished micro-tile to y; after the last K block applies the epilogue.
inline void sink(const ConvGemmArgs& a, int64_t O, int64_t P, int64_t row0, int mr, int64_t j, int nr,
                 const float* ct, bool first, bool last) {
    if (P == 1) {
        sink_features(a, O, row0, mr, j, nr, ct, first, last);
        return;
    }
    int c = 0;
    while (c < nr) {
        const int64_t n = (j + c) / P, p = (j + c) - n * P;
        const int len = int(imin(nr - c, P - p));
        for (int r = 0; r < mr; ++r) {
            const int64_t o = row0 + r;
            const bool second = a.y2 && o >= a.split;  // rows past split go raw to y2
            const int64_t off = second ? (n * (O - a.split) + o - a.split) * P + p
                                       : (n * (a.y2 ? a.split : O) + o) * P + p;
            float* __restrict yp = (second ? a.y2 : a.y) + off;
            const float* __restrict t = ct + r * NR + c;
            if (first) {
                for (int q = 0; q < len; ++q) yp[q] = t[q];
            } else {
                for (int q = 0; q < len; ++q) yp[q] += t[q];
            }
            if (!last || second) continue;
            apply_epilogue(a, o, off, o * P + p, yp, len);
        }
        c += len;
    }
}

struct ThreadBuffers {
    AlignedBuf b;
    size_t b_size = 0;
    PanelInfo pinfo[NC / NR];
    std::vector<int64_t> tabs;
    float* get_b(size_t n) {
        if (n > b_size) {
            b = aligned_floats(n);
            b_size = n;
        }
        return b.get();
    }
};

// y_row[lo..hi) += w * T(x_row[ow * sw + iw0]).
template <int Mode>
inline void accumulate_tap(float* __restrict yr, const float* __restrict xr, float w, int64_t lo, int64_t hi,
                           int64_t sw, int64_t iw0) {
    if (sw == 1) {
        const float* __restrict xs = xr + iw0;
        for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += w * tf<Mode>(xs[ow]);
    } else {
        for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += w * tf<Mode>(xr[ow * sw + iw0]);
    }
}

// A grouped conv GEMM with few rows and a short K per group (A.raw kept: depthwise
// convs, their backward products), as direct loops: per (sample, group) plane and
// output row, the taps in K order, each a vectorised pass along the output row.
// The taps are summed in the micro-kernel's K order (taps outside the image add
// nothing here, zeros there); the compiler's contraction into FMAs differs, so the
// results agree with the panel path to about 1e-7 relative, not bit for bit.
inline void grouped_direct_impl(const ConvGemmArgs& a, int threads) {
    const PackedA& A = *a.A;
    const int64_t G = A.groups, Mg = A.m, K = A.k, O = G * Mg;
    const int64_t KK = a.kh * a.kw, cg = a.c / G, Kc = cg * KK;
    const int64_t P = a.oh * a.ow, HW = a.h * a.w, planes = a.n * G;
    if (threads < 1 || double(planes) * double(O / G) * double(K) * double(P) < 2e5) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t pl = 0; pl < planes; ++pl) {
        const int64_t n = pl / G, g = pl - n * G;
        for (int64_t i = 0; i < Mg; ++i) {
            const int64_t o = g * Mg + i;
            const float* __restrict wrow = A.raw.get() + o * K;
            float* __restrict yo = a.y + (n * O + o) * P;
            for (int64_t oh = 0; oh < a.oh; ++oh) {
                float* __restrict yr = yo + oh * a.ow;
                for (int64_t q = 0; q < a.ow; ++q) yr[q] = 0.0f;
                for (int64_t k = 0; k < K; ++k) {
                    const int64_t half = k / Kc, kr = k - half * Kc, ci = kr / KK, t = kr - ci * KK;
                    const int64_t ih = oh * a.sh - a.ph + (t / a.kw) * a.dh;
                    if (ih < 0 || ih >= a.h) continue;
                    const int64_t iw0 = (t % a.kw) * a.dw - a.pw;
                    // output columns whose tap lies inside the image: 0 <= ow * sw + iw0 < w
                    const int64_t lo = iw0 >= 0 ? 0 : (-iw0 + a.sw - 1) / a.sw;
                    const int64_t hi = iw0 < a.w ? imin(a.ow, (a.w - 1 - iw0) / a.sw + 1) : 0;
                    if (lo >= hi) continue;
                    const float* __restrict xr = a.x + (n * a.c + g * cg + ci) * HW + ih * a.w;
                    const float wk = wrow[k];
                    with_mode(sign_mode(a.sign, half),
                              [&](auto m) { accumulate_tap<decltype(m)::value>(yr, xr, wk, lo, hi, a.sw, iw0); });
                }
                apply_epilogue(a, o, (n * O + o) * P + oh * a.ow, o * P + oh * a.ow, yr, a.ow);
            }
        }
    }
}

// The K entries kt[0 .. kl) of the K block starting at pc (Kc = K per sign half).
inline void k_entries(const ConvGemmArgs& a, int64_t Kc, int64_t pc, int64_t kl, KEntry* kt) {
    const int64_t KKs = a.kh * a.kw, HW = a.h * a.w;
    for (int64_t kk = 0; kk < kl; ++kk) {
        const int64_t kabs = pc + kk, half = kabs / Kc, kr = kabs - half * Kc;
        const int64_t ci2 = kr / KKs, rr = kr - ci2 * KKs, khh = rr / a.kw, kww = rr - khh * a.kw;
        kt[kk] = KEntry{ci2 * HW, khh * a.dh, kww * a.dw, sign_mode(a.sign, half), int(rr)};
    }
}

// A micro-panel of B with one real column (a dense layer at batch 1, the last column of
// a product): that column alone, vectorised over the MR rows, where ukr would compute
// all NR (31 of 32 padding).  Measured on a 1024 x 784 layer at batch 1 (AVX-512, one
// thread: memory-bound on A): 0.34 ms against 0.43 ms; from 2 columns on, ukr is faster.
// The same sums in the same K order as ukr, fused where ukr uses FMA: the results equal
// ukr's bit for bit, so a sample's relevance does not depend on the batch it is in.
inline void ukr_column(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict ct) {
    float acc[MR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const float* __restrict ak = a + k * MR;
        const float bk = b[k * NR];
        for (int r = 0; r < MR; ++r) {
#if defined(__FMA__) || defined(__AVX512F__)  // fused, as the SIMD micro-kernels' FMAs
            acc[r] = __builtin_fmaf(ak[r], bk, acc[r]);
#else
            acc[r] += ak[r] * bk;
#endif
        }
    }
    for (int r = 0; r < MR; ++r) ct[r * NR] = acc[r];
}

// How a conv GEMM is split over threads: work items (group, column block of ncb columns,
// row block of mpi micro-panels), handed out dynamically so a core that is busy with
// something else does not hold the other one at a barrier.  Aim for >= 4 items per
// thread; column blocks first (each item packs only its own B), row blocks when there are
// few columns.  One thread when the product is not worth a fork.  ncs: the largest column
// block the driver packs at once.
struct WorkItems {
    int64_t ncb, nci, mpi, nmi, items;
    int threads;
};

// The threads for the product of a: one where it is not worth a fork, unless streaming A
// alone is (a dense layer at batch 1: memory-bound).
inline int fork_threads(const ConvGemmArgs& a, int threads) {
    const double flops = 2.0 * double(a.A->groups * a.A->m) * double(a.A->k) * double(a.n * a.oh * a.ow);
    return threads < 1 || flops < 4e6 ? 1 : threads;
}

inline WorkItems split_work(const ConvGemmArgs& a, int64_t mpanels, int64_t ncs, int threads) {
    const PackedA& A = *a.A;
    const int64_t G = A.groups, cols = a.n * a.oh * a.ow, npanels = (cols + NR - 1) / NR;
    threads = fork_threads(a, threads);
    const int64_t want = threads > 1 ? 4 * threads : 1;
    int64_t ncb = ncs, mpi = mpanels;
    if (threads > 1) {
        const int64_t per = (npanels + want - 1) / want;  // B panels per item
        ncb = imin(ncs, imax(1, per) * NR);
        const int64_t ncitems = G * ((cols + ncb - 1) / ncb);
        if (ncitems < want) {
            const int64_t mi = (want + ncitems - 1) / ncitems;
            mpi = imax(1, (mpanels + mi - 1) / mi);
        }
    }
    const int64_t nci = (cols + ncb - 1) / ncb, nmi = (mpanels + mpi - 1) / mpi, items = G * nci * nmi;
    return WorkItems{ncb, nci, mpi, nmi, items, int(imin(threads, items))};
}

// ---- Sample rows: weights packed with rows = true (a dense layer over S samples or tokens) ----
// y[s, o] = epilogue(sum_k T(x[s, k]) A[o, k]) with the roles of the conv GEMM swapped:
// a tile is MR samples x NR features, so the weights are the micro-kernel's B operand,
// packed once as panels of A^T (pack_panels<NR>), and the samples its A operand, packed
// per call from x's rows (MR rows side by side, the sign transform fused; each packed
// element then serves O features).  Each tile row is a run of NR features of one output
// row: stored, accumulated and given its epilogue with unit stride.  Against the
// conv-GEMM orientation this drops the transpose of x into B panels and the transposing
// sink, and pads a batch of S samples to MR (12 on AVX-512) instead of NR (32).

// Samples s0 .. s0 + ns of x (rows of a.c floats) for the K entries kt[k0 .. k1) of a block
// of kl: MR-row micro-panels dst + ip * kl * MR, [kk][r] (rows past ns zero).
template <int Mode>
inline void pack_sample_rows(const ConvGemmArgs& a, const KEntry* kt, int64_t k0, int64_t k1, int64_t kl,
                             int64_t s0, int64_t ns, float* dst) {
    for (int64_t ip = 0; ip * MR < ns; ++ip) {
        const float* src[MR];
        for (int r = 0; r < MR; ++r) src[r] = ip * MR + r < ns ? a.x + (s0 + ip * MR + r) * a.c : nullptr;
        float* __restrict d = dst + ip * kl * MR;
        for (int64_t kk = k0; kk < k1; ++kk) {
            const int64_t ch = kt[kk].choff;
            for (int r = 0; r < MR; ++r) d[kk * MR + r] = src[r] ? tf<Mode>(src[r][ch]) : 0.0f;
        }
    }
}

// Element i (input feature ch) of the fused Epsilon quotient x / s(qz - qb)
// (ConvGemmArgs::qz): rules.h's rule_g_epsilon, so bit for bit what rule_g gives.
inline float fused_quotient(const ConvGemmArgs& a, int64_t i, int64_t ch) {
    RuleGBias c;
    c.bz = a.qb ? a.qb[ch] : 0.0f;
    return rule_g_epsilon(a.x[i], a.qz[i], c, a.qeps);
}

// The same panels of the fused Epsilon quotient.
inline void pack_sample_quotients(const ConvGemmArgs& a, const KEntry* kt, int64_t kl, int64_t s0, int64_t ns,
                                  float* dst) {
    for (int64_t ip = 0; ip * MR < ns; ++ip) {
        float* __restrict d = dst + ip * kl * MR;
        for (int r = 0; r < MR; ++r) {
            const int64_t s = s0 + ip * MR + r;
            for (int64_t kk = 0; kk < kl; ++kk) {
                const int64_t ch = kt[kk].choff;
                d[kk * MR + r] = ip * MR + r < ns ? fused_quotient(a, s * a.c + ch, ch) : 0.0f;
            }
        }
    }
}

inline void pack_sample_block(const ConvGemmArgs& a, const KEntry* kt, int64_t kl, int64_t s0, int64_t ns,
                              float* dst) {
    if (a.qz) {
        pack_sample_quotients(a, kt, kl, s0, ns, dst);
        return;
    }
    for_mode_runs(kt, kl, [&](auto m, int64_t k0, int64_t k1) {
        pack_sample_rows<decltype(m)::value>(a, kt, k0, k1, kl, s0, ns, dst);
    });
}

// A tile of mr samples (s0 ..) x nr features (f0 ..) into y's rows (features past split
// go raw to y2); after the last K block the epilogue, along the row.
inline void sink_rows(const ConvGemmArgs& a, int64_t O, int64_t s0, int mr, int64_t f0, int nr, const float* ct,
                      bool first, bool last) {
    const int64_t Oy = a.y2 ? a.split : O;
    const int ny = int(imax(0, imin(nr, Oy - f0)));  // features that go to y
    for (int r = 0; r < mr; ++r) {
        const float* __restrict t = ct + r * NR;
        if (ny > 0) {
            const int64_t off = (s0 + r) * Oy + f0;
            float* __restrict yp = a.y + off;
            if (first) {
                for (int c = 0; c < ny; ++c) yp[c] = t[c];
            } else {
                for (int c = 0; c < ny; ++c) yp[c] += t[c];
            }
            if (last) apply_epilogue<true>(a, f0, off, f0, yp, ny);
        }
        if (ny < nr) {
            float* __restrict y2 = a.y2 + (s0 + r) * (O - a.split) + f0 + ny - a.split;
            if (first) {
                for (int c = ny; c < nr; ++c) y2[c - ny] = t[c];
            } else {
                for (int c = ny; c < nr; ++c) y2[c - ny] += t[c];
            }
        }
    }
}

// An A micro-panel with one real row (batch 1; a batch's last sample): that row alone,
// vectorised over the NR features, where ukr would compute all MR rows.  The same sums
// in the same K order as ukr, fused where ukr uses FMA: bit for bit ukr's row, so a
// sample's relevance does not depend on the batch it is in.
inline void ukr_row(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict ct) {
    float acc[NR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const float ak = a[k * MR];
        const float* __restrict bk = b + k * NR;
        for (int c = 0; c < NR; ++c) {
#if defined(__FMA__) || defined(__AVX512F__)  // fused, as the SIMD micro-kernels' FMAs
            acc[c] = __builtin_fmaf(ak, bk[c], acc[c]);
#else
            acc[c] += ak * bk[c];
#endif
        }
    }
    for (int c = 0; c < NR; ++c) ct[c] = acc[c];
}

// How the sample-rows drivers split their work: items (block of ms samples, block of fpb
// feature panels of NR), feature blocks only where there are too few sample blocks for
// the threads (small batches); one thread where the product is not worth a fork.
struct RowsItems {
    int64_t fpanels, fpb, fblocks, items;
    int threads;
};

inline RowsItems split_rows(const ConvGemmArgs& a, int64_t ms, int threads) {
    const int64_t O = a.A->m, S = a.n;
    const int64_t fpanels = (O + NR - 1) / NR, sblocks = (S + ms - 1) / ms;
    threads = fork_threads(a, threads);
    const int64_t want = threads > 1 ? 4 * threads : 1;
    const int64_t fsplit = sblocks >= want ? 1 : imin(fpanels, (want + sblocks - 1) / sblocks);
    const int64_t fpb = (fpanels + fsplit - 1) / fsplit, fblocks = (fpanels + fpb - 1) / fpb;
    return RowsItems{fpanels, fpb, fblocks, sblocks * fblocks, int(imin(threads, sblocks * fblocks))};
}

// Each item packs its samples once per block of NC features and K block; a B micro-panel
// (kc x NR of A^T) stays in L1 while the item's sample panels (an MC x kc block in L2)
// pass it.
inline void rows_gemm_impl(const ConvGemmArgs& a, int threads) {
    const PackedA& A = *a.A;
    const int64_t O = A.m, K = A.k, S = a.n, kcb = A.kc;
    const RowsItems wi = split_rows(a, MC, threads);
    const int64_t fpanels = wi.fpanels, fpb = wi.fpb, fblocks = wi.fblocks, items = wi.items;

#pragma omp parallel num_threads(wi.threads) if (wi.threads > 1)
    {
        static thread_local ThreadBuffers tb;
        float* abuf = tb.get_b(size_t(kcb) * size_t(MC));
        KEntry kt[2 * KC];
        alignas(64) float ct[MR * NR];
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t sb = it / fblocks, fb = it - sb * fblocks;
            const int64_t s0 = sb * MC, ns = imin(MC, S - s0);
            const int64_t p0 = fb * fpb, p1 = imin(fpanels, p0 + fpb);
            // NC features at a time: their rows of y (MC x NC) stay in L2 over the K blocks
            for (int64_t f0 = p0; f0 < p1; f0 += NC / NR)
            for (int64_t pc = 0; pc < K; pc += kcb) {
                const int64_t kl = imin(kcb, K - pc);
                k_entries(a, a.c, pc, kl, kt);
                pack_sample_block(a, kt, kl, s0, ns, abuf);
                const bool first = pc == 0, last = pc + kl >= K;
                for (int64_t jr = f0; jr < imin(p1, f0 + NC / NR); ++jr) {
                    const float* bp = A.panel(0, pc, kl, jr);
                    const int nr = int(imin(NR, O - jr * NR));
                    for (int64_t ir = 0; ir * MR < ns; ++ir) {
                        const int mr = int(imin(MR, ns - ir * MR));
                        if (mr == 1)
                            ukr_row(kl, abuf + ir * kl * MR, bp, ct);
                        else
                            ukr(kl, abuf + ir * kl * MR, bp, ct);
                        sink_rows(a, O, s0 + ir * MR, mr, jr * NR, nr, ct, first, last);
                    }
                }
            }
        }
    }
}

inline void conv_gemm_impl(const ConvGemmArgs& a, int threads) {
    if (a.A->rows) {  // (groups == 1, a rows layout: checked by conv_gemm)
        rows_gemm_impl(a, threads);
        return;
    }
    if (a.A->raw) {  // (no panels; a split output needs groups == 1)
        grouped_direct_impl(a, threads);
        return;
    }
    const PackedA& A = *a.A;
    const int64_t G = A.groups, Mg = A.m, K = A.k, O = G * Mg;
    const int64_t cg = a.c / G, Kc = cg * a.kh * a.kw;
    const int64_t P = a.oh * a.ow, cols = a.n * P;
    const int64_t kcb = A.kc;  // K block chosen when A was packed (<= 2 KC)
    const int64_t mpanels = (Mg + MR - 1) / MR;
    // Column block: NC, or for few rows (one M block) small enough that the packed
    // B block (kc x nc) stays in L2 next to the A block: with few rows each packed
    // B element is used only m times, so it must not take a round trip to L3.
    int64_t ncs = NC;
    if (mpanels * MR <= MC) ncs = imax(NR, imin(NC, (int64_t(256 * 1024) / (kcb * 4)) / NR * NR));
    const WorkItems wi = split_work(a, mpanels, ncs, threads);
    const int64_t ncb = wi.ncb, mpi = wi.mpi, nci = wi.nci, nmi = wi.nmi, items = wi.items;
    const int nthreads = wi.threads;

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        static thread_local ThreadBuffers tb;
        float* bbuf = tb.get_b(size_t(kcb) * size_t(ncs));
        tb.tabs.resize(size_t(NC / NR) * size_t(a.kh * a.kw) * NR);
        KEntry kt[2 * KC];
        alignas(64) float ct[MR * NR];
        const int64_t mcp = MC / MR;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t g = it / (nci * nmi), rem = it - g * nci * nmi, ci = rem / nmi, mi = rem - ci * nmi;
            const int64_t jb = ci * ncb, je = imin(cols, jb + ncb);
            const int64_t p0 = mi * mpi, p1 = imin(mpanels, p0 + mpi);
            for (int64_t jc = jb; jc < je; jc += ncs) {
                const int64_t nl = imin(ncs, je - jc);
                for (int64_t pc = 0; pc < K; pc += kcb) {
                    const int64_t kl = imin(kcb, K - pc);
                    k_entries(a, Kc, pc, kl, kt);
                    pack_b_block(a, cg, g, kt, kl, jc, nl, bbuf, tb.pinfo, tb.tabs.data());
                    const bool first = pc == 0, last = pc + kl >= K;
                    for (int64_t ic = p0; ic < p1; ic += mcp) {
                        const int64_t ice = imin(p1, ic + mcp);
                        for (int64_t jr = 0; jr * NR < nl; ++jr) {
                            const float* bp = bbuf + jr * kl * NR;
                            const int64_t j = jc + jr * NR;
                            const int nr = int(imin(NR, jc + nl - j));
                            for (int64_t ir = ic; ir < ice; ++ir) {
                                if (nr == 1)
                                    ukr_column(kl, A.panel(g, pc, kl, ir), bp, ct);
                                else
                                    ukr(kl, A.panel(g, pc, kl, ir), bp, ct);
                                const int mr = int(imin(MR, Mg - ir * MR));
                                sink(a, O, P, g * Mg + ir * MR, mr, j, nr, ct, first, last);
                            }
                        }
                    }
                }
            }
        }
    }
}

}  // namespace FASTLRP_ISA
}  // namespace cpu
}  // namespace fastlrp
