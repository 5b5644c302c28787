// AVX-512F micro-kernel (compiled with -mavx512f; run only when the CPU has it).
// 12 x 32 tile: 24 zmm accumulators, 2 zmm of B and one broadcast.
#include <immintrin.h>

#include <cstdint>

#define FASTLRP_ISA isa_avx512

namespace fastlrp {
namespace cpu {
namespace isa_avx512 {

constexpr int MR = 12, NR = 32;
constexpr int64_t KC = 256, MC = 144, NC = 512;  // not tuned on a machine with this ISA

inline void ukr(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict ct) {
    __m512 c[MR][2];
    for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const __m512 av = _mm512_set1_ps(a[r]);
            c[r][0] = _mm512_fmadd_ps(av, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(av, b1, c[r][1]);
        }
        a += MR;
        b += NR;
    }
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
        _mm512_store_ps(ct + r * NR, c[r][0]);
        _mm512_store_ps(ct + r * NR + 16, c[r][1]);
    }
}

}  // namespace isa_avx512
}  // namespace cpu
}  // namespace fastlrp

#include "gemm_impl.h"

namespace fastlrp {
namespace cpu {
namespace detail {
void pack_a_avx512(PackedA& P, const float* A) { isa_avx512::pack_a_impl(P, A, get_num_threads()); }
void conv_gemm_avx512(const ConvGemmArgs& a, int threads) { isa_avx512::conv_gemm_impl(a, threads); }
Blocking blocking_avx512() { return isa_avx512::blocking(); }
}  // namespace detail
}  // namespace cpu
}  // namespace fastlrp
