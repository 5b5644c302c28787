// The float32 GEMM core of the CPU backend: packed panels, register-blocked SIMD
// micro-kernels chosen at run time (AVX-512F, AVX2+FMA, portable), OpenMP threads;
// and, opt-in, bfloat16 operands with float32 sums (AMX-BF16, AVX512_BF16: gemm_bf16.cpp).
//
// Every dense and conv product of fastlrp is one "conv GEMM":
//
//     y[n, g*Mg + i, p] = epilogue( sum_k A_g[i, k] * B_g[k, (n, p)] )
//
// - A_g is model-constant (a weight matrix or a transform of it: W+, [W+ | W-],
//   Wu, W^2, the flipped transposed weights of the backward pass, ...), packed
//   once per Explainer into micro-panels (PackedA) by the ISA that will use it;
// - B_g is the im2col matrix of an input image, never materialised: its tiles are
//   gathered straight from the image into the packed panels (implicit GEMM), with
//   a fused sign transform (x, or [x+ ; x-] stacked along K, which doubles K
//   without any x+/x- array);
// - the epilogue runs on each output tile while it is in L1 (bias, or multiply by
//   x, x+, x-, x - l).  A dense layer is a conv over 1x1 images.
//
// Results do not depend on the thread count: each output element is computed by
// one thread with the same K order and the same micro-kernel, whatever the split.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#ifdef _MSC_VER
#include <malloc.h>
#endif

#include "rules.h"  // Epi, the epilogue codes

namespace fastlrp {
namespace cpu {

// The bfloat16 kernels (AmxBf16, Avx512Bf16: the opt-in reduced-precision mode,
// gemm_bf16.cpp) are never chosen automatically: only pack_a(..., bf16 = true) packs for one.
enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2, AmxBf16 = 3, Avx512Bf16 = 4 };

// The best micro-kernel this CPU can run (or the one forced by set_isa).
Isa active_isa();
const char* isa_name(Isa isa);
// Forces an ISA for tests and benchmarks (-1: automatic).  Returns false if the
// CPU or the build lacks it.  Packed weights remember the ISA they were packed for.
bool set_isa(int isa);
bool isa_compiled(Isa isa);
bool isa_supported(Isa isa);

struct Blocking {
    int mr, nr;       // micro-tile
    int64_t kc, mc;   // K block (B micro-panel in L1), M block (A block in L2)
    int64_t nc;       // N block (B block in L2/L3)
};
Blocking blocking_of(Isa isa);

struct AlignedFree {
    void operator()(float* p) const {
#ifdef _MSC_VER
        _aligned_free(p);
#else
        std::free(p);
#endif
    }
};
using AlignedBuf = std::unique_ptr<float[], AlignedFree>;
AlignedBuf aligned_floats(size_t n);

// Empty when the bfloat16 mode (bfloat16 operands, float32 accumulation) can run
// here; otherwise why not (no bf16 kernels in this build, a CPU without AMX-BF16 or
// AVX512_BF16, the OS refused the AMX tile state).  The first call asks Linux for
// the tile state.
std::string bf16_unavailable();
// The bf16 kernel pack_a(..., bf16 = true) packs for: AmxBf16 where it runs, else
// Avx512Bf16, or the one forced by set_bf16_isa (tests, benchmarks; -1: automatic;
// false if it cannot run here).
Isa bf16_isa();
bool set_bf16_isa(int isa);

// A left operand for `groups` independent GEMMs, each m x k, packed as:
// per group, per K block (kc wide), per micro-panel of mr rows: kc x mr elements
// (float32; bfloat16 in the bf16 kernels' own layouts, see gemm_bf16.cpp).
struct PackedA {
    Isa isa = Isa::Generic;
    int mr = 1;
    int kq = 1;      // each K block's panels hold its K rounded up to kq (bf16: 32 or 2)
    int ebytes = 4;  // bytes per element: 4 (float32) or 2 (bfloat16)
    // Packed for sample rows (pack_a's rows): panels of A^T, mr = the kernel's NR features
    // wide, the micro-kernel's B operand; conv_gemm then needs a rows layout (S images of
    // 1x1, a 1x1 kernel, no padding): a dense layer over S samples or tokens.
    bool rows = false;
    int64_t kc = 1;
    int64_t groups = 0, m = 0, k = 0;
    int64_t mp = 0;       // m rounded up to mr
    int64_t gstride = 0;  // floats between groups
    AlignedBuf data;
    // Grouped operands with few rows and a short K per group (depthwise convs and
    // their backward products) keep A row-major instead of panels (data is then empty):
    // conv_gemm runs them as direct loops, since micro-panels of mr rows would be
    // mostly padding.
    AlignedBuf raw;
    const float* panel(int64_t g, int64_t k0, int64_t kl, int64_t ip) const {
        const int64_t klp = (kl + kq - 1) / kq * kq;
        return data.get() + g * gstride + (k0 * mp + ip * mr * klp) * ebytes / 4;
    }
};

// The grouped GEMMs that run as direct loops (PackedA::raw): groups > 1, m and k at most these.
constexpr int64_t kDirectMaxM = 16, kDirectMaxK = 64;

// A: (groups * m) x k row-major; packs for the active ISA, or with bf16 for the
// bf16_isa() kernel (A and every B rounded to bfloat16, products summed in float32;
// throws std::runtime_error with bf16_unavailable() where it cannot run).  Operands
// of conv_gemm's direct loops (PackedA::raw) stay float32 in either mode.  rows: for
// sample rows (PackedA::rows) where the kernel has that driver (groups == 1; float32
// and AMX-BF16), else the conv layout (PackedA::rows tells which was made).
std::shared_ptr<PackedA> pack_a(const float* A, int64_t groups, int64_t m, int64_t k, bool bf16 = false,
                                bool rows = false);

// Id: B from x; PosNeg: K doubled, x+ then x-; Abs: B from |x| (Gamma's |W| |x|).
enum class Sign : int { Id = 0, PosNeg = 1, Abs = 2 };

// One conv GEMM.  x: (n, c, h, w) image; y: (n, groups * A.m, oh, ow).
// B_g[k, (n, oh, ow)] = T(x[n, g*cg + ci, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw])
// with k = (ci, kh, kw) (and the sign half first for Sign::PosNeg); zero outside.
struct ConvGemmArgs {
    const float* x = nullptr;
    int64_t n = 0, c = 0, h = 1, w = 1;
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
    int64_t oh = 1, ow = 1;
    Sign sign = Sign::Id;
    const PackedA* A = nullptr;
    float* y = nullptr;
    Epi epi = Epi::None;  // rules.h's FASTLRP_EPILOGUES
    const float* bias = nullptr;
    const float* mul = nullptr;
    const float* off = nullptr;
    // Optional second output: rows o >= split of y (groups == 1 only) go to
    // y2[n, o - split, p] without epilogue, so one GEMM (one B packing) can give
    // the layer output and a second sum, e.g. A = [W ; W+] -> (W x + b, W+ x).
    float* y2 = nullptr;
    int64_t split = 0;
    // Optional, weights packed for sample rows only: the product's B is the Epsilon rule's
    // quotient x / s(qz - qb) (qb per input feature, may be null), computed as it is packed,
    // bit for bit what rule_g gives (a dense layer's relevance pass without its g array).
    const float* qz = nullptr;
    const float* qb = nullptr;
    float qeps = 0.0f;
};

// Validates the sizes (throws std::invalid_argument) and runs on `threads` threads.
void conv_gemm(const ConvGemmArgs& args, int threads);

// Plain C = A B (row-major, A: m x k, B: k x n), for tests and the GFLOP/s bench:
// A is packed by pack_a, B goes through the im2col packer as a 1x1 image.
void gemm_f32(const float* A, const float* B, float* C, int64_t m, int64_t n, int64_t k, int threads);

namespace detail {
// Implemented once per ISA translation unit (gemm_generic.cpp, gemm_avx2.cpp, ...).
void pack_a_generic(PackedA& P, const float* A);
void conv_gemm_generic(const ConvGemmArgs& a, int threads);
void pack_a_avx2(PackedA& P, const float* A);
void conv_gemm_avx2(const ConvGemmArgs& a, int threads);
void pack_a_avx512(PackedA& P, const float* A);
void conv_gemm_avx512(const ConvGemmArgs& a, int threads);
#ifdef FASTLRP_HAVE_BF16
void pack_a_amx(PackedA& P, const float* A);
void conv_gemm_amx(const ConvGemmArgs& a, int threads);
Blocking blocking_amx();
void pack_a_avx512bf16(PackedA& P, const float* A);
void conv_gemm_avx512bf16(const ConvGemmArgs& a, int threads);
Blocking blocking_avx512bf16();
#endif
Blocking blocking_generic();
Blocking blocking_avx2();
Blocking blocking_avx512();
}  // namespace detail

}  // namespace cpu
}  // namespace fastlrp
