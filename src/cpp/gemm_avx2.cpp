// AVX2 + FMA micro-kernel (compiled with -mavx2 -mfma; run only when the CPU has
// both, see gemm_cpu.cpp).  6 x 16 tile: 12 ymm accumulators, 2 ymm of B and one
// broadcast per row, i.e. 12 FMAs per 2 loads + 6 broadcasts, which keeps both
// FMA pipes of Zen 2/3 and Haswell..Alder Lake busy.
#include <immintrin.h>

#include <cstdint>

#define FASTLRP_ISA isa_avx2

namespace fastlrp {
namespace cpu {
namespace isa_avx2 {

constexpr int MR = 6, NR = 16;
// KC: a B micro-panel (KC x 16 floats = 24 KiB) stays in L1 while the A block
// (MC x KC = 216 KiB) stays in L2 (512 KiB on Zen 3).  NC = 512 measured best
// of 256..2048 on the VGG-16 / ResNet-18 layers (B block in L2/L3).  pack_a
// balances the K blocks (576 = 2 x 288) and lets few-row operands use 2 KC.
constexpr int64_t KC = 384, MC = 144, NC = 512;

inline void ukr(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict ct) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#define FASTLRP_STEP(K)                                                                  \
    {                                                                                    \
        const __m256 b0 = _mm256_load_ps(b + (K) * 16), b1 = _mm256_load_ps(b + (K) * 16 + 8); \
        __m256 av = _mm256_broadcast_ss(a + (K) * 6 + 0);                                \
        c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);         \
        av = _mm256_broadcast_ss(a + (K) * 6 + 1);                                       \
        c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);         \
        av = _mm256_broadcast_ss(a + (K) * 6 + 2);                                       \
        c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);         \
        av = _mm256_broadcast_ss(a + (K) * 6 + 3);                                       \
        c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);         \
        av = _mm256_broadcast_ss(a + (K) * 6 + 4);                                       \
        c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);         \
        av = _mm256_broadcast_ss(a + (K) * 6 + 5);                                       \
        c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);         \
    }
    // One k step per iteration: unrolling lets GCC interleave steps and spill
    // accumulators (measured: 68% of peak unrolled x4, see the report).
#pragma GCC unroll 1
    for (int64_t k = 0; k < kc; ++k) {
        FASTLRP_STEP(0)
        a += 6;
        b += 16;
    }
#undef FASTLRP_STEP
    _mm256_store_ps(ct + 0, c00); _mm256_store_ps(ct + 8, c01);
    _mm256_store_ps(ct + 16, c10); _mm256_store_ps(ct + 24, c11);
    _mm256_store_ps(ct + 32, c20); _mm256_store_ps(ct + 40, c21);
    _mm256_store_ps(ct + 48, c30); _mm256_store_ps(ct + 56, c31);
    _mm256_store_ps(ct + 64, c40); _mm256_store_ps(ct + 72, c41);
    _mm256_store_ps(ct + 80, c50); _mm256_store_ps(ct + 88, c51);
}

}  // namespace isa_avx2
}  // namespace cpu
}  // namespace fastlrp

#include "gemm_impl.h"

namespace fastlrp {
namespace cpu {
namespace detail {
void pack_a_avx2(PackedA& P, const float* A) { isa_avx2::pack_a_impl(P, A, get_num_threads()); }
void conv_gemm_avx2(const ConvGemmArgs& a, int threads) { isa_avx2::conv_gemm_impl(a, threads); }
Blocking blocking_avx2() { return isa_avx2::blocking(); }
}  // namespace detail
}  // namespace cpu
}  // namespace fastlrp
