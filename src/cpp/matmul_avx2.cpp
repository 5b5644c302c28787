// batched_matmul (matmul_cpu.h) with AVX2 + FMA (compiled with -mavx2 -mfma; run only when
// the CPU has both): 6 x 16 tiles, 12 ymm accumulators, 2 ymm of B and one broadcast.
#include <immintrin.h>

#include <cstdint>

#define FASTLRP_MM_ISA mm_avx2

namespace fastlrp {
namespace cpu {
namespace mm_avx2 {

struct Simd {
    using V = __m256;
    static constexpr int W = 8, MR = 6, NV = 2;
    static __m256i lanes(int n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static V zero() { return _mm256_setzero_ps(); }
    static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
    static V load(const float* p) { return _mm256_load_ps(p); }
    static void store(float* p, V v) { _mm256_store_ps(p, v); }
    static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
    static void fence() { _mm_sfence(); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V load_n(const float* p, int n) { return n == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n)); }
    static void store_n(float* p, V v, int n) {
        if (n == W)
            _mm256_storeu_ps(p, v);
        else
            _mm256_maskstore_ps(p, lanes(n), v);
    }
};

}  // namespace mm_avx2
}  // namespace cpu
}  // namespace fastlrp

#include "matmul_impl.h"

void fastlrp::cpu::detail::batched_matmul_avx2(const BatchedMatmulArgs& a, int threads) {
    mm_avx2::batched_matmul_impl(a, threads);
}
