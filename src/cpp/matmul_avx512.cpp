// batched_matmul (matmul_cpu.h) with AVX-512F (compiled with -mavx512f; run only when the
// CPU has it): 12 x 32 tiles, 24 zmm accumulators, 2 zmm of B and one broadcast.
#include <immintrin.h>

#include <cstdint>

#define FASTLRP_MM_ISA mm_avx512

namespace fastlrp {
namespace cpu {
namespace mm_avx512 {

struct Simd {
    using V = __m512;
    static constexpr int W = 16, MR = 12, NV = 2;
    static __mmask16 lanes(int n) { return __mmask16((1u << n) - 1u); }
    static V zero() { return _mm512_setzero_ps(); }
    static V bcast(const float* p) { return _mm512_set1_ps(*p); }
    static V load(const float* p) { return _mm512_load_ps(p); }
    static void store(float* p, V v) { _mm512_store_ps(p, v); }
    static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
    static void fence() { _mm_sfence(); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V load_n(const float* p, int n) { return n == W ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(lanes(n), p); }
    static void store_n(float* p, V v, int n) {
        if (n == W)
            _mm512_storeu_ps(p, v);
        else
            _mm512_mask_storeu_ps(p, lanes(n), v);
    }
};

}  // namespace mm_avx512
}  // namespace cpu
}  // namespace fastlrp

#include "matmul_impl.h"

void fastlrp::cpu::detail::batched_matmul_avx512(const BatchedMatmulArgs& a, int threads) {
    mm_avx512::batched_matmul_impl(a, threads);
}
