// Portable micro-kernel (baseline ISA, auto-vectorised): the fallback on CPUs
// without AVX2+FMA and the reference path for the ISA-specific kernels' tests.
#include <cstdint>

#define FASTLRP_ISA isa_generic

namespace fastlrp {
namespace cpu {
namespace isa_generic {

// 6 x 8: 12 SSE accumulators, fits the 16 xmm registers of baseline x86-64.
constexpr int MR = 6, NR = 8;
constexpr int64_t KC = 256, MC = 120, NC = 512;  // not tuned on a machine with this ISA

inline void ukr(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict ct) {
    float acc[MR][NR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        for (int r = 0; r < MR; ++r) {
            const float ar = a[r];
            for (int c = 0; c < NR; ++c) acc[r][c] += ar * b[c];
        }
        a += MR;
        b += NR;
    }
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NR; ++c) ct[r * NR + c] = acc[r][c];
}

}  // namespace isa_generic
}  // namespace cpu
}  // namespace fastlrp

#include "gemm_impl.h"

namespace fastlrp {
namespace cpu {
namespace detail {
void pack_a_generic(PackedA& P, const float* A) { isa_generic::pack_a_impl(P, A, get_num_threads()); }
void conv_gemm_generic(const ConvGemmArgs& a, int threads) { isa_generic::conv_gemm_impl(a, threads); }
Blocking blocking_generic() { return isa_generic::blocking(); }
}  // namespace detail
}  // namespace cpu
}  // namespace fastlrp
