// AMX-BF16 GEMM: the opt-in reduced-precision mode (bfloat16 operands, float32
// accumulation).  Compiled with -mamx-tile -mamx-bf16 -mavx512bf16 -mavx512bw
// -mavx512f; run only for weights packed with pack_a(..., bf16 = true), which
// gemm_cpu.cpp allows once the CPU has AMX-BF16 and Linux granted the tile state.
//
// Micro-kernel: a 32 x 32 output tile = 2 x 2 AMX tiles of 16 x 16 float32 (tmm0-3);
// each K chunk of 32 adds A (tmm4, tmm5: 16 rows x 32 bf16) times B (tmm6, tmm7:
// 16 k-pairs x 16 columns x 2 bf16, "VNNI" pairs) with TDPBF16PS.  Layouts, per K
// block of kl (rounded up to kp, a multiple of 32, with zeros):
//   A panel (32 rows): [chunk kp/32][row 32][k 32] bf16 (pack_a_amx, once per model);
//   B panel (32 cols): [chunk kp/32][col half 2][k pair 16][col 16][2] bf16, converted
//   by to_vnni from the float panels of the shared im2col packer (gemm_impl.h's
//   pack_b_block: the sign split and gathers are the float path's).
//
// Driver (conv_gemm_tiles): the float driver's K-block-outer order would send every
// output tile through the sink once per K block; here the B block of ALL K is packed
// first (bf16, sized for L2), then per B micro-panel the K blocks run over the A
// panels of an M block with the partial 32 x 32 sums parked in an L1/L2 buffer
// (tile store/load, kept in float32), so the B micro-panel of one K block (kc x 32
// bf16 = 16 KiB) stays in L1 for all of them, and each output tile goes through
// the sink (the float path's: stores, split output, epilogues) once.
// Rounding to bfloat16 is round-to-nearest-even (VCVTNE2PS2BF16 for B, the same in
// scalar code for A); TDPBF16PS treats bf16 denormals as zero.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm.h"

#define FASTLRP_ISA isa_amx

namespace fastlrp {
namespace cpu {
namespace isa_amx {

constexpr int MR = 32, NR = 32;
constexpr int64_t KC = 256, MC = 256, NC = 512;  // (KC: a multiple of the 32 of a tile)
constexpr int64_t kTileK = 32;
constexpr int64_t kBBlockBytes = 1 << 20;  // the bf16 B block of all K (in L2)

inline int64_t kpad(int64_t kl) { return (kl + kTileK - 1) / kTileK * kTileK; }

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

// ct (32 x 32 float32, row stride NR) = (accumulate ? ct : 0) + A panel x B panel (bf16
// tile panels, typed float like PackedA::panel; without accumulate the signature of
// gemm_impl.h's float driver, which this kernel does not use: conv_gemm_tiles is its own).
inline void ukr(int64_t kc, const float* a, const float* b, float* ct, bool accumulate = false) {
    const auto* A = reinterpret_cast<const uint16_t*>(a);
    const auto* B = reinterpret_cast<const uint16_t*>(b);
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
    for (int64_t c = 0; c < kpad(kc) / kTileK; ++c) {
        _tile_loadd(4, A, 64);
        _tile_loadd(5, A + 16 * kTileK, 64);
        _tile_loadd(6, B, 64);
        _tile_loadd(7, B + 16 * kTileK, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        A += 32 * kTileK;
        B += 32 * kTileK;
    }
    _tile_stored(0, ct, NR * 4);
    _tile_stored(1, ct + 16, NR * 4);
    _tile_stored(2, ct + 16 * NR, NR * 4);
    _tile_stored(3, ct + 16 * NR + 16, NR * 4);
}

// The np float panels (kl x NR each, from pack_b_block) as bf16 tile panels: panel ip
// at dst + ip * dstride (bf16 elements), K padded with zeros to a multiple of 32.
inline void to_vnni(const float* b, int64_t kl, int64_t np, uint16_t* dst, int64_t dstride) {
    // out[2i] = low half (row 2t) [i], out[2i + 1] = high half (row 2t + 1) [i]
    alignas(64) static const uint16_t inter[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                   8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(inter);
    const __m512 zero = _mm512_setzero_ps();
    const int64_t kp = kpad(kl);
    for (int64_t ip = 0; ip < np; ++ip) {
        const float* src = b + ip * kl * NR;
        auto* d = reinterpret_cast<__m512i*>(dst + ip * dstride);  // 32 bf16 per __m512i
        for (int64_t c = 0; c < kp / kTileK; ++c)
            for (int h = 0; h < 2; ++h)
                for (int t = 0; t < 16; ++t) {
                    const int64_t k = c * kTileK + 2 * t;
                    const __m512 r0 = k < kl ? _mm512_load_ps(src + k * NR + 16 * h) : zero;
                    const __m512 r1 = k + 1 < kl ? _mm512_load_ps(src + (k + 1) * NR + 16 * h) : zero;
                    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(r1, r0);
                    _mm512_store_si512(d + (c * 2 + h) * 16 + t, _mm512_permutexvar_epi16(idx, v));
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

}  // namespace isa_amx
}  // namespace cpu
}  // namespace fastlrp

#include "gemm_impl.h"

namespace fastlrp {
namespace cpu {
namespace isa_amx {

inline void conv_gemm_tiles(const ConvGemmArgs& a, int threads) {
    const PackedA& A = *a.A;  // (never raw: pack_a keeps direct-loop operands float32)
    const int64_t G = A.groups, Mg = A.m, K = A.k, O = G * Mg;
    const int64_t cg = a.c / G, Kc = cg * a.kh * a.kw, P = a.oh * a.ow, cols = a.n * P;
    const int64_t kcb = A.kc, nkb = (K + kcb - 1) / kcb;  // K blocks chosen when A was packed
    const int64_t Kp = (nkb - 1) * kcb + kpad(K - (nkb - 1) * kcb);  // K with the last block's padding
    const int64_t mpanels = (Mg + MR - 1) / MR, npanels = (cols + NR - 1) / NR;
    // column block: the bf16 B block of all K in L2
    const int64_t ncs = imax(NR, imin(NC, kBBlockBytes / (2 * Kp) / NR * NR));
    if (threads < 1 || 2.0 * double(O) * double(K) * double(cols) < 4e6) threads = 1;
    // work items (group, column block, row block), >= 4 per thread, handed out dynamically
    const int64_t want = threads > 1 ? 4 * threads : 1;
    const int64_t ncb = imin(ncs, imax(1, (npanels + want - 1) / want) * NR);
    const int64_t nci = (cols + ncb - 1) / ncb;
    const int64_t mi_per = (want + G * nci - 1) / (G * nci);  // row blocks per column block
    const int64_t mpi = imax(1, (mpanels + mi_per - 1) / mi_per);
    const int64_t nmi = (mpanels + mpi - 1) / mpi, items = G * nci * nmi;
    const int nthreads = int(imin(threads, items));

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        static thread_local ThreadBuffers tb;  // the float panels of one K block
        static thread_local AlignedBuf bbuf, cbuf;
        static thread_local size_t bcap = 0;
        float* stage = tb.get_b(size_t(kcb) * size_t(ncs));
        tb.tabs.resize(size_t(NC / NR) * size_t(a.kh * a.kw) * NR);
        if (bcap < size_t(Kp * ncs)) bbuf = aligned_floats(size_t(Kp * ncs / 2)), bcap = size_t(Kp * ncs);
        if (!cbuf) cbuf = aligned_floats(size_t(MC * NR));
        auto* bb = reinterpret_cast<uint16_t*>(bbuf.get());
        KEntry kt[2 * KC];
        const int64_t mcp = MC / MR;
        // per parallel region: nothing else runs on this thread's tiles until the release
        static const TileConfig cfg;
        _tile_loadconfig(&cfg);
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
                    to_vnni(stage, kl, np, bb + pc * NR, Kp * NR);
                }
                for (int64_t ic = p0; ic < p1; ic += mcp) {
                    const int64_t ice = imin(p1, ic + mcp);
                    for (int64_t jr = 0; jr < np; ++jr) {
                        for (int64_t pc = 0; pc < K; pc += kcb) {
                            const int64_t kl = imin(kcb, K - pc);
                            const auto* bp = reinterpret_cast<const float*>(bb + jr * Kp * NR + pc * NR);
                            for (int64_t ir = ic; ir < ice; ++ir)
                                ukr(kl, A.panel(g, pc, kl, ir), bp, cbuf.get() + (ir - ic) * MR * NR, pc > 0);
                        }
                        const int64_t j = jc + jr * NR;
                        const int nr = int(imin(NR, jc + nl - j));
                        for (int64_t ir = ic; ir < ice; ++ir)
                            sink(a, O, P, g * Mg + ir * MR, int(imin(MR, Mg - ir * MR)), j, nr,
                                 cbuf.get() + (ir - ic) * MR * NR, true, true);
                    }
                }
            }
        }
        // back to the INIT state (it keeps a core out of deep idle states and enlarges
        // its context switches); other libraries configure the tiles for themselves
        _tile_release();
    }
}

}  // namespace isa_amx

namespace detail {

void pack_a_amx(PackedA& P, const float* A) {
    using namespace isa_amx;
    const int64_t m = P.m, k = P.k;
    for (int64_t g = 0; g < P.groups; ++g) {
        const float* Ag = A + g * m * k;
        for (int64_t k0 = 0; k0 < k; k0 += P.kc) {
            const int64_t kl = imin(P.kc, k - k0), kp = kpad(kl);
            for (int64_t ip = 0; ip * MR < m; ++ip) {
                auto* dst = reinterpret_cast<uint16_t*>(const_cast<float*>(P.panel(g, k0, kl, ip)));
                for (int64_t c = 0; c < kp / kTileK; ++c)
                    for (int r = 0; r < MR; ++r)
                        for (int64_t kk = 0; kk < kTileK; ++kk) {
                            const int64_t row = ip * MR + r, kabs = k0 + c * kTileK + kk;
                            const float v = row < m && kabs < k0 + kl ? Ag[row * k + kabs] : 0.0f;
                            // [chunk][row half][row][k]: row r is half r / 16, row r % 16
                            dst[c * MR * kTileK + r * kTileK + kk] = to_bf16(v);
                        }
            }
        }
    }
}

void conv_gemm_amx(const ConvGemmArgs& a, int threads) { isa_amx::conv_gemm_tiles(a, threads); }

Blocking blocking_amx() { return isa_amx::blocking(); }

}  // namespace detail
}  // namespace cpu
}  // namespace fastlrp
