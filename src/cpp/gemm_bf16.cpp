// bfloat16 GEMM kernels: the opt-in reduced-precision mode (bfloat16 operands,
// float32 accumulation).  Compiled with -mamx-tile -mamx-bf16 -mavx512bf16
// -mavx512bw -mavx512f; run only for weights packed with pack_a(..., bf16 = true),
// which gemm_cpu.cpp allows on a CPU with one of the two kernels:
//
// - Amx (AMX-BF16, Sapphire Rapids on; Linux must grant the tile state): a 32 x 32
//   output tile = 2 x 2 AMX tiles of 16 x 16 float32 (tmm0-3); each K chunk of 32
//   adds A (tmm4, tmm5: 16 rows x 32 bf16) times B (tmm6, tmm7: 16 k-pairs x 16
//   columns x 2 bf16, "VNNI" pairs) with TDPBF16PS.
// - Avx512Bf16 (AVX512_BF16 without AMX: Zen 4, Cooper Lake): 12 x 32, 24 zmm
//   accumulators, per k-pair one VDPBF16PS per row and column half, A's pair broadcast.
//
// Layouts, per K block of kl rounded up to kp (a multiple of the kernel's KQ, zeros):
//   A panel (MR rows, pack_a_bf16 once per model): Amx [chunk kp/32][row 32][k 32],
//     Avx512Bf16 [k pair][row 12][2];
//   B panel (32 columns): [k pair][column][2] pairs, stored as units of 16 columns
//     (b_slot), converted by to_vnni from the float panels of the shared im2col
//     packer (gemm_impl.h's pack_b_block: the sign split and gathers are the float path's).
//
// Driver (conv_gemm_bf16): the float driver's K-block-outer order would send every
// output tile through the sink once per K block; here the B block of ALL K is packed
// first (bf16, sized for L2), then per B micro-panel the K blocks run over the A
// panels of an M block with the partial MR x 32 sums parked in a float32 buffer, so
// the B micro-panel of one K block (256 x 32 bf16 = 16 KiB) stays in L1 for all of
// them, and each output tile goes through the sink (the float path's: stores, split
// output, epilogues) once.  Each output element is summed by one thread in a fixed
// order: results do not depend on the thread count.
// Rounding to bfloat16 is round-to-nearest-even (VCVTNE2PS2BF16 for B, the same in
// scalar code for A); TDPBF16PS and VDPBF16PS treat bf16 denormals as zero.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm.h"

#define FASTLRP_ISA isa_bf16

namespace fastlrp {
namespace cpu {
namespace isa_bf16 {

// gemm_impl.h's shared parts (B packer, sink) use NR, KC and NC; MR and MC are the
// kernels' own (below), these two only satisfy the header's float driver, which this
// translation unit does not run (its ukr is declared, never defined).
constexpr int MR = 32, NR = 32;
constexpr int64_t KC = 256, MC = 256, NC = 512;
void ukr(int64_t kc, const float* a, const float* b, float* ct);
constexpr int64_t kBBlockBytes = 1 << 20;  // the bf16 B block of all K (in L2)

inline int64_t round_up(int64_t v, int64_t q) { return (v + q - 1) / q * q; }

// Tile configuration: palette 1, tmm0-7 all 16 rows x 64 bytes.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
    TileConfig() {
        for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
    }
};

struct Amx {
    static constexpr int MR = 32;
    static constexpr int64_t MC = 256, KQ = 32;
    // where A's element (row r, k) of a panel goes; where B's pair T, column half h goes
    // (in units of 32 bf16: 16 columns x 2)
    static int64_t a_at(int r, int64_t k) { return (k / 32) * MR * 32 + r * 32 + k % 32; }
    static int64_t b_slot(int64_t T, int h) { return ((T / 16) * 2 + h) * 16 + T % 16; }
    // per parallel region: nothing else runs on this thread's tiles until the release
    static void begin() {
        static const TileConfig cfg;
        _tile_loadconfig(&cfg);
    }
    // back to the INIT state (it keeps a core out of deep idle states and enlarges its
    // context switches); other libraries configure the tiles for themselves
    static void end() { _tile_release(); }

    // ct (32 x 32 float32, row stride NR) = (accumulate ? ct : 0) + A panel x B panel.  A's
    // rows are lda elements apart and its chunks of 32 k astep apart: a packed panel (32,
    // 32 * 32, also the sample rows driver's, sample_panels_bf16), or rows of a row-major matrix.
    static void ukr(int64_t kc, const uint16_t* A, const uint16_t* B, float* ct, bool accumulate,
                    int64_t lda = 32, int64_t astep = 32 * 32) {
        if (accumulate) {
            _tile_loadd(0, ct, NR * 4);
            _tile_loadd(1, ct + 16, NR * 4);
            _tile_loadd(2, ct + 16 * NR, NR * 4);
            _tile_loadd(3, ct + 16 * NR + 16, NR * 4);
        } else {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        }
        for (int64_t c = 0; c < round_up(kc, KQ) / KQ; ++c) {
            _tile_loadd(4, A, lda * 2);
            _tile_loadd(5, A + 16 * lda, lda * 2);
            _tile_loadd(6, B, 64);
            _tile_loadd(7, B + 16 * 32, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            A += astep;
            B += 32 * 32;
        }
        _tile_stored(0, ct, NR * 4);
        _tile_stored(1, ct + 16, NR * 4);
        _tile_stored(2, ct + 16 * NR, NR * 4);
        _tile_stored(3, ct + 16 * NR + 16, NR * 4);
    }
};

struct Avx512Bf16 {
    static constexpr int MR = 12;
    static constexpr int64_t MC = 144, KQ = 2;
    static int64_t a_at(int r, int64_t k) { return (k / 2) * MR * 2 + r * 2 + k % 2; }
    static int64_t b_slot(int64_t T, int h) { return T * 2 + h; }
    static void begin() {}
    static void end() {}

    static void ukr(int64_t kc, const uint16_t* A, const uint16_t* B, float* ct, bool accumulate) {
        __m512 c[MR][2];
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            c[r][0] = accumulate ? _mm512_load_ps(ct + r * NR) : _mm512_setzero_ps();
            c[r][1] = accumulate ? _mm512_load_ps(ct + r * NR + 16) : _mm512_setzero_ps();
        }
        for (int64_t t = 0; t < round_up(kc, KQ) / 2; ++t) {
            const __m512bh b0 = (__m512bh)_mm512_load_si512(B), b1 = (__m512bh)_mm512_load_si512(B + 32);
#pragma GCC unroll 12
            for (int r = 0; r < MR; ++r) {
                int32_t pair;
                std::memcpy(&pair, A + 2 * r, 4);
                const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
                c[r][0] = _mm512_dpbf16_ps(c[r][0], av, b0);
                c[r][1] = _mm512_dpbf16_ps(c[r][1], av, b1);
            }
            A += 2 * MR;
            B += 64;
        }
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            _mm512_store_ps(ct + r * NR, c[r][0]);
            _mm512_store_ps(ct + r * NR + 16, c[r][1]);
        }
    }
};

// The np float panels (kl x NR each, from pack_b_block) as the kernel's bf16 B panels:
// panel ip at dst + ip * dstride (bf16 elements), K padded with zeros to KQ.
template <class Kn>
inline void to_vnni(const float* b, int64_t kl, int64_t np, uint16_t* dst, int64_t dstride) {
    // out[2i] = low half (row 2T) [i], out[2i + 1] = high half (row 2T + 1) [i]
    alignas(64) static const uint16_t inter[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                   8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(inter);
    const __m512 zero = _mm512_setzero_ps();
    const int64_t pairs = round_up(kl, Kn::KQ) / 2;
    for (int64_t ip = 0; ip < np; ++ip) {
        const float* src = b + ip * kl * NR;
        auto* d = reinterpret_cast<__m512i*>(dst + ip * dstride);  // 32 bf16 per __m512i
        for (int64_t T = 0; T < pairs; ++T)
            for (int h = 0; h < 2; ++h) {
                const int64_t k = 2 * T;
                const __m512 r0 = k < kl ? _mm512_load_ps(src + k * NR + 16 * h) : zero;
                const __m512 r1 = k + 1 < kl ? _mm512_load_ps(src + (k + 1) * NR + 16 * h) : zero;
                const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(r1, r0);
                _mm512_store_si512(d + Kn::b_slot(T, h), _mm512_permutexvar_epi16(idx, v));
            }
    }
}

// float32 -> bfloat16, round to nearest even (NaN stays a quiet NaN).
inline uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace isa_bf16
}  // namespace cpu
}  // namespace fastlrp

#include "gemm_impl.h"

namespace fastlrp {
namespace cpu {
namespace isa_bf16 {

// Weights for sample rows (AMX): per K block, per panel of 32 features, A^T in the B
// panels' VNNI layout (b_slot): element (k, feature c) at b_slot(k / 2, c / 16) * 32 +
// (c % 16) * 2 + k % 2.
inline void pack_rows_amx(PackedA& P, const float* A) {
    const int64_t m = P.m, k = P.k;
    for (int64_t k0 = 0; k0 < k; k0 += P.kc) {
        const int64_t kl = imin(P.kc, k - k0), kp = round_up(kl, Amx::KQ);
        for (int64_t jp = 0; jp * NR < m; ++jp) {
            auto* dst = reinterpret_cast<uint16_t*>(const_cast<float*>(P.panel(0, k0, kl, jp)));
            for (int64_t kk = 0; kk < kp; ++kk)
                for (int c = 0; c < NR; ++c) {
                    const int64_t row = jp * NR + c;
                    dst[Amx::b_slot(kk / 2, c / 16) * 32 + (c % 16) * 2 + kk % 2] =
                        to_bf16(row < m && kk < kl ? A[row * k + k0 + kk] : 0.0f);
                }
        }
    }
}

template <class Kn>
void pack_a_bf16(PackedA& P, const float* A) {
    if (P.rows) {  // (AMX only: pack_a makes no rows packs for the other kernel)
        pack_rows_amx(P, A);
        return;
    }
    const int64_t m = P.m, k = P.k;
    for (int64_t g = 0; g < P.groups; ++g) {
        const float* Ag = A + g * m * k;
        for (int64_t k0 = 0; k0 < k; k0 += P.kc) {
            const int64_t kl = imin(P.kc, k - k0), kp = round_up(kl, Kn::KQ);
            for (int64_t ip = 0; ip * Kn::MR < m; ++ip) {
                auto* dst = reinterpret_cast<uint16_t*>(const_cast<float*>(P.panel(g, k0, kl, ip)));
                for (int r = 0; r < Kn::MR; ++r) {
                    const int64_t row = ip * Kn::MR + r;
                    for (int64_t kk = 0; kk < kp; ++kk)
                        dst[Kn::a_at(r, kk)] = to_bf16(row < m && kk < kl ? Ag[row * k + k0 + kk] : 0.0f);
                }
            }
        }
    }
}

// 32 consecutive K entries k0 .. k0 + 32 of sample row xr (global index i0 of its first
// element, for the fused quotient) as float32, the sign transform or the fused quotient
// applied (gemm_impl.h's tf and fused_quotient), entries at or past k (or of a missing
// row) zero: what the AMX A tiles hold.  One mode per loop where the entries lie on one
// side of the sign split, so that the loops vectorise.
inline void sample_chunk(const ConvGemmArgs& a, const float* xr, int64_t i0, int64_t k0, int64_t k,
                         float* __restrict t) {
    const int64_t C = a.c, nv = xr ? imax(0, imin(32, k - k0)) : 0;  // valid entries
    const bool split = a.sign == Sign::PosNeg;
    for (int q = 0; q < 32; ++q) t[q] = 0.0f;
    if (a.qz) {
        for (int64_t q = 0; q < nv; ++q) t[q] = fused_quotient(a, i0 + k0 + q, k0 + q);
    } else if (split && k0 < C && k0 + nv > C) {  // straddles x+ | x-
        for (int64_t q = 0; q < nv; ++q) t[q] = k0 + q < C ? tf<1>(xr[k0 + q]) : tf<2>(xr[k0 + q - C]);
    } else {
        const float* __restrict src = xr + (split && k0 >= C ? k0 - C : k0);
        const int mode = split ? (k0 < C ? 1 : 2) : sign_mode(a.sign, 0);
        with_mode(mode, [&](auto m) {
            for (int64_t q = 0; q < nv; ++q) t[q] = tf<decltype(m)::value>(src[q]);
        });
    }
}

// x's rows s0 .. s0 + ns as the A tiles of the sample rows driver, bfloat16: per 32-row
// panel p and K chunk c of 32 (K blocks of kcb each start a chunk; kq = kcb rounded up
// to 32), the 16 x 64-byte rows of two tiles, contiguous: element (row r, block b, entry
// kk) at p * 32 * Kq + ((b * kq + kk) / 32) * 1024 + (r % 32) * 32 + kk % 32, K past k,
// chunk padding and rows past ns zero (Kq: all blocks' padded lengths).  Contiguous
// tiles are what the hardware prefetcher streams (rows of x Kp apart it did not).
inline void sample_panels_bf16(const ConvGemmArgs& a, int64_t k, int64_t kcb, int64_t Kq, int64_t s0, int64_t ns,
                               uint16_t* dst) {
    const int64_t C = a.c, rows = round_up(ns, 32), kq = round_up(kcb, 32);
    alignas(64) float t[32];
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = r < ns ? a.x + (s0 + r) * C : nullptr;
        uint16_t* d = dst + (r / 32) * 32 * Kq + (r % 32) * 32;
        for (int64_t b = 0; b * kcb < k; ++b) {
            const int64_t pc = b * kcb, kl = imin(kcb, k - pc);
            for (int64_t c0 = 0; c0 < kl; c0 += 32) {
                sample_chunk(a, xr, (s0 + r) * C, pc + c0, pc + kl, t);
                _mm512_store_si512(reinterpret_cast<__m512i*>(d + (b * kq + c0) * 32),
                                   (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(t + 16), _mm512_load_ps(t)));
            }
        }
    }
}

// Sample rows (weights packed with rows: a dense layer over S samples or tokens) on AMX:
// tiles of 32 samples x 32 features, A tiles from x's rows converted per item into
// contiguous bfloat16 tiles (sample_panels_bf16), B the weights' VNNI panels of A^T; per B micro-panel of one K block (16 KiB,
// in L1) the item's sample panels pass with their partial sums parked in a float32
// buffer, and each finished tile goes once through the rows sink (unit stride, the
// epilogue along the row).  Items: gemm_impl.h's split_rows.
inline void rows_gemm_amx(const ConvGemmArgs& a, int threads) {
    constexpr int64_t MS = 256;  // samples per item (the partial sums: 32 KiB; 128 and 512 measured no better)
    const PackedA& A = *a.A;
    const int64_t O = A.m, K = A.k, S = a.n, kcb = A.kc, nkb = (K + kcb - 1) / kcb, kq = round_up(kcb, 32);
    const int64_t Kp = (nkb - 1) * kq + round_up(K - (nkb - 1) * kcb, Amx::KQ);  // sample_panels_bf16's Kq
    const RowsItems wi = split_rows(a, MS, threads);
    const int64_t fpanels = wi.fpanels, fpb = wi.fpb, fblocks = wi.fblocks, items = wi.items;

#pragma omp parallel num_threads(wi.threads) if (wi.threads > 1)
    {
        static thread_local AlignedBuf xbuf, cbuf;
        static thread_local size_t xcap = 0;
        if (xcap < size_t(MS * Kp)) xbuf = aligned_floats(size_t(MS * Kp / 2 + 16)), xcap = size_t(MS * Kp);
        if (!cbuf) cbuf = aligned_floats(size_t(MS * NR));
        auto* xb = reinterpret_cast<uint16_t*>(xbuf.get());
        float* cb = cbuf.get();
        Amx::begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t sb = it / fblocks, fb = it - sb * fblocks;
            const int64_t s0 = sb * MS, ns = imin(MS, S - s0), spanels = (ns + 31) / 32;
            const int64_t p0 = fb * fpb, p1 = imin(fpanels, p0 + fpb);
            sample_panels_bf16(a, K, kcb, Kp, s0, ns, xb);
            for (int64_t jr = p0; jr < p1; ++jr) {
                for (int64_t pc = 0, b = 0; pc < K; pc += kcb, ++b) {
                    const int64_t kl = imin(kcb, K - pc);
                    const auto* bp = reinterpret_cast<const uint16_t*>(A.panel(0, pc, kl, jr));
                    for (int64_t ir = 0; ir < spanels; ++ir)
                        Amx::ukr(kl, xb + ir * 32 * Kp + b * kq * 32, bp, cb + ir * 32 * NR, pc > 0);
                }
                const int nr = int(imin(NR, O - jr * NR));
                for (int64_t ir = 0; ir < spanels; ++ir)
                    sink_rows(a, O, s0 + ir * 32, int(imin(32, ns - ir * 32)), jr * NR, nr, cb + ir * 32 * NR,
                              true, true);
            }
        }
        Amx::end();
    }
}

template <class Kn>
void conv_gemm_bf16(const ConvGemmArgs& a, int threads) {
    constexpr int KMR = Kn::MR;
    const PackedA& A = *a.A;  // (never raw: pack_a keeps direct-loop operands float32)
    const int64_t G = A.groups, Mg = A.m, K = A.k, O = G * Mg;
    const int64_t cg = a.c / G, Kc = cg * a.kh * a.kw, P = a.oh * a.ow, cols = a.n * P;
    const int64_t kcb = A.kc, nkb = (K + kcb - 1) / kcb;  // K blocks chosen when A was packed
    const int64_t Kp = (nkb - 1) * kcb + round_up(K - (nkb - 1) * kcb, Kn::KQ);  // with the last block's padding
    const int64_t mpanels = (Mg + KMR - 1) / KMR;
    // column block: the bf16 B block of all K in L2
    const int64_t ncs = imax(NR, imin(NC, kBBlockBytes / (2 * Kp) / NR * NR));
    const WorkItems wi = split_work(a, mpanels, ncs, threads);  // (the float driver's split)
    const int64_t ncb = wi.ncb, mpi = wi.mpi, nci = wi.nci, nmi = wi.nmi, items = wi.items;
    const int nthreads = wi.threads;

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        static thread_local ThreadBuffers tb;  // the float panels of one K block
        static thread_local AlignedBuf bbuf, cbuf;
        static thread_local size_t bcap = 0;
        float* stage = tb.get_b(size_t(kcb) * size_t(ncs));
        tb.tabs.resize(size_t(NC / NR) * size_t(a.kh * a.kw) * NR);
        if (bcap < size_t(Kp * ncs)) bbuf = aligned_floats(size_t(Kp * ncs / 2)), bcap = size_t(Kp * ncs);
        if (!cbuf) cbuf = aligned_floats(size_t(MC * NR));  // (MC >= every kernel's)
        auto* bb = reinterpret_cast<uint16_t*>(bbuf.get());
        KEntry kt[2 * KC];
        const int64_t mcp = Kn::MC / KMR;
        Kn::begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t g = it / (nci * nmi), rem = it - g * nci * nmi, ci = rem / nmi, mi = rem - ci * nmi;
            const int64_t jb = ci * ncb, je = imin(cols, jb + ncb);
            const int64_t p0 = mi * mpi, p1 = imin(mpanels, p0 + mpi);
            for (int64_t jc = jb; jc < je; jc += ncs) {
                const int64_t nl = imin(ncs, je - jc), np = (nl + NR - 1) / NR;
                for (int64_t pc = 0; pc < K; pc += kcb) {  // B[all K, jc .. jc + nl): panels of Kp x NR
                    const int64_t kl = imin(kcb, K - pc);
                    k_entries(a, Kc, pc, kl, kt);
                    pack_b_block(a, cg, g, kt, kl, jc, nl, stage, tb.pinfo, tb.tabs.data());
                    to_vnni<Kn>(stage, kl, np, bb + pc * NR, Kp * NR);
                }
                for (int64_t ic = p0; ic < p1; ic += mcp) {
                    const int64_t ice = imin(p1, ic + mcp);
                    for (int64_t jr = 0; jr < np; ++jr) {
                        for (int64_t pc = 0; pc < K; pc += kcb) {
                            const int64_t kl = imin(kcb, K - pc);
                            const uint16_t* bp = bb + jr * Kp * NR + pc * NR;
                            for (int64_t ir = ic; ir < ice; ++ir)
                                Kn::ukr(kl, reinterpret_cast<const uint16_t*>(A.panel(g, pc, kl, ir)), bp,
                                        cbuf.get() + (ir - ic) * KMR * NR, pc > 0);
                        }
                        const int64_t j = jc + jr * NR;
                        const int nr = int(imin(NR, jc + nl - j));
                        for (int64_t ir = ic; ir < ice; ++ir)
                            sink(a, O, P, g * Mg + ir * KMR, int(imin(KMR, Mg - ir * KMR)), j, nr,
                                 cbuf.get() + (ir - ic) * KMR * NR, true, true);
                    }
                }
            }
        }
        Kn::end();
    }
}

template <class Kn>
Blocking blocking_of() {
    return Blocking{Kn::MR, NR, KC, Kn::MC, NC};
}

}  // namespace isa_bf16

namespace detail {
void pack_a_amx(PackedA& P, const float* A) { isa_bf16::pack_a_bf16<isa_bf16::Amx>(P, A); }
void conv_gemm_amx(const ConvGemmArgs& a, int threads) {
    if (a.A->rows)
        isa_bf16::rows_gemm_amx(a, threads);
    else
        isa_bf16::conv_gemm_bf16<isa_bf16::Amx>(a, threads);
}
Blocking blocking_amx() { return isa_bf16::blocking_of<isa_bf16::Amx>(); }
void pack_a_avx512bf16(PackedA& P, const float* A) { isa_bf16::pack_a_bf16<isa_bf16::Avx512Bf16>(P, A); }
void conv_gemm_avx512bf16(const ConvGemmArgs& a, int threads) {
    isa_bf16::conv_gemm_bf16<isa_bf16::Avx512Bf16>(a, threads);
}
Blocking blocking_avx512bf16() { return isa_bf16::blocking_of<isa_bf16::Avx512Bf16>(); }
}  // namespace detail
}  // namespace cpu
}  // namespace fastlrp
