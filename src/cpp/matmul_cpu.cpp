// batched_matmul (matmul_cpu.h): argument checks, the choice of ISA (the GEMM core's:
// active_isa, forced by set_isa) and the portable build of the driver (baseline ISA:
// 6 x 8 tiles of 4-float vectors the compiler maps onto SSE registers).
#include "matmul_cpu.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "gemm.h"

#define FASTLRP_MM_ISA mm_generic

namespace fastlrp {
namespace cpu {
namespace mm_generic {

struct Simd {
    struct V {
        float v[4];
    };
    static constexpr int W = 4, MR = 6, NV = 2;
    static V zero() { return V{{0.0f, 0.0f, 0.0f, 0.0f}}; }
    static V bcast(const float* p) { return V{{*p, *p, *p, *p}}; }
    static V load(const float* p) { return V{{p[0], p[1], p[2], p[3]}}; }
    static void store(float* p, V x) {
        for (int i = 0; i < W; ++i) p[i] = x.v[i];
    }
    static void stream(float* p, V x) { store(p, x); }  // (plain stores: no fence needed)
    static void fence() {}
    static V fma(V a, V b, V c) {
        for (int i = 0; i < W; ++i) c.v[i] += a.v[i] * b.v[i];
        return c;
    }
    static V mul(V a, V b) {
        for (int i = 0; i < W; ++i) a.v[i] *= b.v[i];
        return a;
    }
    static V load_n(const float* p, int n) {
        V x = zero();
        for (int i = 0; i < n; ++i) x.v[i] = p[i];
        return x;
    }
    static void store_n(float* p, V x, int n) {
        for (int i = 0; i < n; ++i) p[i] = x.v[i];
    }
};

}  // namespace mm_generic
}  // namespace cpu
}  // namespace fastlrp

#include "matmul_impl.h"

namespace fastlrp {
namespace cpu {

void detail::batched_matmul_generic(const BatchedMatmulArgs& a, int threads) {
    mm_generic::batched_matmul_impl(a, threads);
}

void batched_matmul(const BatchedMatmulArgs& a, int threads) {
    if (a.groups < 0 || a.m < 0 || a.n < 0 || a.k < 0) throw std::invalid_argument("batched_matmul: negative size");
    if (a.groups == 0 || a.m == 0 || a.n == 0) return;
    if (!a.a.p || !a.a.off || !a.b.p || !a.b.off || !a.c || (a.mul.p && !a.mul.off))
        throw std::invalid_argument("batched_matmul: null operand");
    if (!(a.m == 1 || a.k <= 1 || a.a.rs == 1 || a.a.cs == 1))
        throw std::invalid_argument("batched_matmul: the left operand needs a row or column stride of 1, got " +
                                    std::to_string(a.a.rs) + " and " + std::to_string(a.a.cs));
    switch (active_isa()) {
#ifdef FASTLRP_HAVE_AVX512
        case Isa::Avx512:
            return detail::batched_matmul_avx512(a, threads);
#endif
#ifdef FASTLRP_HAVE_AVX2
        case Isa::Avx2:
            return detail::batched_matmul_avx2(a, threads);
#endif
        default:
            return detail::batched_matmul_generic(a, threads);
    }
}

}  // namespace cpu
}  // namespace fastlrp
