// AMX-BF16 micro-kernel: the opt-in reduced-precision mode (bfloat16 operands,
// float32 accumulation).  Compiled with -mamx-tile -mamx-bf16 -mavx512bf16
// -mavx512bw -mavx512f; run only for weights packed with pack_a(..., bf16 = true),
// which gemm_cpu.cpp allows once the CPU has AMX-BF16 and Linux granted the tile state.
//
// 32 x 32 output tile = 2 x 2 AMX tiles of 16 x 16 float32 (tmm0-3), each K chunk of
// 32 adding A (tmm4, tmm5: 16 rows x 32 bf16) times B (tmm6, tmm7: 16 k-pairs x 16
// columns x 2 bf16, "VNNI" pairs) with TDPBF16PS.  Layouts, per K block of kl
// (rounded up to kp, a multiple of 32, with zeros):
//   A panel (32 rows): [chunk kp/32][row half 2][row 16][k 32] bf16 (pack_a_amx);
//   B panel (32 cols): [chunk kp/32][col half 2][k pair 16][col 16][2] bf16, converted
//   by finish_b from the float panels of the shared im2col packer (gemm_impl.h), so
//   the sign split, the sink and the epilogues are the float path's.
// Rounding to bfloat16 is round-to-nearest-even (VCVTNE2PS2BF16 for B, the same in
// scalar code for A); TDPBF16PS treats bf16 denormals as zero.  K blocks are summed in
// float32 by the sink, as in the float kernels.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemm.h"

#define FASTLRP_ISA isa_amx
#define FASTLRP_ISA_CONVERTS_B

namespace fastlrp {
namespace cpu {
namespace isa_amx {

constexpr int MR = 32, NR = 32;
constexpr int64_t KC = 1024, MC = 256, NC = 512;  // (KC: a multiple of the 32 of a tile)
constexpr int64_t kTileK = 32;

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

inline void ukr(int64_t kc, const float* a, const float* b, float* ct) {
    const auto* A = reinterpret_cast<const uint16_t*>(a);
    const auto* B = reinterpret_cast<const uint16_t*>(b);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
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

inline int64_t b_panel_floats(int64_t kl) { return kpad(kl) * NR / 2; }

// Converts the packed float B block (np panels of kl x NR) into bf16 tile panels in a
// per-thread buffer, and loads the tile configuration: per block rather than once per
// thread, since other libraries in the process (oneDNN) configure and release the
// tiles on the same OpenMP threads between our calls.
inline const float* finish_b(const float* b, int64_t kl, int64_t nl) {
    static thread_local AlignedBuf buf;
    static thread_local size_t cap = 0;
    const int64_t np = (nl + NR - 1) / NR, kp = kpad(kl);
    const size_t need = size_t(np * b_panel_floats(kl));
    if (cap < need) buf = aligned_floats(need), cap = need;
    static const TileConfig cfg;
    _tile_loadconfig(&cfg);
    // out[2i] = low half (row 2t) [i], out[2i + 1] = high half (row 2t + 1) [i]
    alignas(64) static const uint16_t inter[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                   8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(inter);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t ip = 0; ip < np; ++ip) {
        const float* src = b + ip * kl * NR;
        __m512i* dst = reinterpret_cast<__m512i*>(buf.get()) + ip * kp * NR / 32;  // 32 bf16 per __m512i
        for (int64_t c = 0; c < kp / kTileK; ++c)
            for (int h = 0; h < 2; ++h)
                for (int t = 0; t < 16; ++t) {
                    const int64_t k = c * kTileK + 2 * t;
                    const __m512 r0 = k < kl ? _mm512_load_ps(src + k * NR + 16 * h) : zero;
                    const __m512 r1 = k + 1 < kl ? _mm512_load_ps(src + (k + 1) * NR + 16 * h) : zero;
                    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(r1, r0);
                    _mm512_store_si512(dst + (c * 2 + h) * 16 + t, _mm512_permutexvar_epi16(idx, v));
                }
    }
    return buf.get();
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

void conv_gemm_amx(const ConvGemmArgs& a, int threads) {
    isa_amx::conv_gemm_impl(a, threads);
    // Return the tile state to INIT (it keeps a core out of deep idle states and
    // enlarges its context switches) on this thread and on the pool's threads,
    // which OpenMP reuses from the kernel's parallel region.
    _tile_release();
#pragma omp parallel num_threads(threads) if (threads > 1)
    _tile_release();
}

Blocking blocking_amx() { return isa_amx::blocking(); }

}  // namespace detail
}  // namespace cpu
}  // namespace fastlrp
