// Batched products of small matrices (attention's q k^T and A v and their relevance
// products): C[g] = A[g] @ B[g] (optionally times M[g] elementwise), g < groups, float32.
//
// Every operand is addressed through strides, so a transposed or broadcast operand is
// read in place: element (i, j) of operand X in group g is X.p[X.off[g] + i * X.rs + j * X.cs]
// (element offsets and strides; a zero offset step broadcasts a matrix over groups).
// Per (group, NR-column panel of C) one thread packs the B panel (k x NR, aligned, in L1)
// and runs the register-tiled micro-kernel down all rows of C, reading A in place (its
// row or column stride must be 1: MR values of one k step are either MR rows' elements
// or MR contiguous floats); the tile goes straight to C (and is multiplied by M there).
// No K blocking: each C element is one sum over k in order, computed by one thread, so
// results do not depend on the thread count (each thread holds one group's packed B, k x n
// rounded up to the panel width: attention's k or n is the head size).  AVX-512F, AVX2+FMA and a portable build
// (matmul_avx512.cpp, matmul_avx2.cpp, matmul_cpu.cpp), chosen by the GEMM core's ISA.
#pragma once

#include <cstdint>

namespace fastlrp {
namespace cpu {

struct MatOperand {
    const float* p = nullptr;     // null: absent (M only)
    const int64_t* off = nullptr;  // groups element offsets
    int64_t rs = 0, cs = 0;        // element strides of rows and columns
};

struct BatchedMatmulArgs {
    int64_t groups = 0, m = 0, n = 0, k = 0;
    MatOperand a;    // m x k; rs == 1 or cs == 1
    MatOperand b;    // k x n; any strides
    MatOperand mul;  // m x n or absent; any strides
    float* c = nullptr;  // (groups, m, n) row-major
};

// Validates (throws std::invalid_argument) and runs on `threads` threads with the active ISA.
void batched_matmul(const BatchedMatmulArgs& a, int threads);

namespace detail {
void batched_matmul_generic(const BatchedMatmulArgs& a, int threads);
void batched_matmul_avx2(const BatchedMatmulArgs& a, int threads);
void batched_matmul_avx512(const BatchedMatmulArgs& a, int threads);
}  // namespace detail

}  // namespace cpu
}  // namespace fastlrp
