// GEMM entry points: argument checks and the run-time choice of micro-kernel.
//
// The ISA is chosen once from the CPU's features (__builtin_cpu_supports) and the
// build (FASTLRP_HAVE_AVX2 / FASTLRP_HAVE_AVX512 are defined by CMake when the
// compiler can build those translation units).  Packed weights carry the ISA and
// blocking they were packed for, so a later set_isa() cannot mix layouts.
#include "gemm.h"

#if !defined(_MSC_VER)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <cerrno>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastlrp {
namespace cpu {

namespace {

bool cpu_has(Isa isa) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    switch (isa) {
        case Isa::Generic:
            return true;
        case Isa::Avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case Isa::Avx512:
            return __builtin_cpu_supports("avx512f");
#ifdef FASTLRP_HAVE_BF16  // (a compiler with these flags knows these feature names)
        case Isa::AmxBf16:
            return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                   __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
        case Isa::Avx512Bf16:
            return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512f");
#else
        case Isa::AmxBf16:
        case Isa::Avx512Bf16:
            return false;
#endif
    }
    return false;
#else
    return isa == Isa::Generic;
#endif
}

Isa detect() {
    // FASTLRP_ISA=generic|avx2|avx512 picks a kernel (if this CPU and build have it)
    if (const char* env = std::getenv("FASTLRP_ISA")) {
        const std::string e(env);
        for (int i = 0; i < 3; ++i)
            if (e == isa_name(Isa(i)) && isa_supported(Isa(i))) return Isa(i);
    }
#ifdef FASTLRP_HAVE_AVX512
    if (cpu_has(Isa::Avx512)) return Isa::Avx512;
#endif
#ifdef FASTLRP_HAVE_AVX2
    if (cpu_has(Isa::Avx2)) return Isa::Avx2;
#endif
    return Isa::Generic;
}

std::atomic<int> g_forced{-1};

}  // namespace

bool isa_compiled(Isa isa) {
    switch (isa) {
        case Isa::Generic:
            return true;
        case Isa::Avx2:
#ifdef FASTLRP_HAVE_AVX2
            return true;
#else
            return false;
#endif
        case Isa::Avx512:
#ifdef FASTLRP_HAVE_AVX512
            return true;
#else
            return false;
#endif
        case Isa::AmxBf16:
        case Isa::Avx512Bf16:
#ifdef FASTLRP_HAVE_BF16
            return true;
#else
            return false;
#endif
    }
    return false;
}

// Linux keeps the AMX tile state off until a process asks for it (once, for all threads).
static std::string request_tile_state() {
#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
        return std::string("Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: ") +
               std::strerror(errno) + "; AMX needs Linux 5.16 or later)";
    return "";
#else
    return "the AMX tile state is requested from Linux only (arch_prctl); this is another OS";
#endif
}

static const std::string& tile_state() {
    static const std::string why = request_tile_state();
    return why;
}

static bool bf16_runs(Isa isa) {
    return isa_compiled(isa) && cpu_has(isa) && (isa != Isa::AmxBf16 || tile_state().empty());
}

static std::atomic<int> g_bf16_forced{-1};

Isa bf16_isa() {
    const int f = g_bf16_forced.load();
    if (f >= 0) return Isa(f);
    return bf16_runs(Isa::AmxBf16) ? Isa::AmxBf16 : Isa::Avx512Bf16;
}

bool set_bf16_isa(int isa) {
    if (isa < 0) {
        g_bf16_forced.store(-1);
        return true;
    }
    if ((isa != int(Isa::AmxBf16) && isa != int(Isa::Avx512Bf16)) || !bf16_runs(Isa(isa))) return false;
    g_bf16_forced.store(isa);
    return true;
}

std::string bf16_unavailable() {
    if (!isa_compiled(Isa::AmxBf16))
        return "this build of fastlrp._core has no bfloat16 kernels (the compiler lacks -mamx-tile -mamx-bf16 "
               "-mavx512bf16, or the target is not x86-64)";
    if (bf16_runs(Isa::AmxBf16) || bf16_runs(Isa::Avx512Bf16)) return "";
    if (cpu_has(Isa::AmxBf16)) return tile_state();
    return "this CPU has neither AMX-BF16 nor AVX512_BF16 with AVX512BW (the bfloat16 mode's kernels: "
           "Intel Sapphire Rapids or later, Cooper Lake, AMD Zen 4 or later)";
}

bool isa_supported(Isa isa) { return isa_compiled(isa) && cpu_has(isa); }

Isa active_isa() {
    static const Isa best = detect();
    const int f = g_forced.load();
    return f >= 0 ? Isa(f) : best;
}

bool set_isa(int isa) {
    if (isa < 0) {
        g_forced.store(-1);
        return true;
    }
    if (isa > 2 || !isa_supported(Isa(isa))) return false;
    g_forced.store(isa);
    return true;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Generic:
            return "generic";
        case Isa::Avx2:
            return "avx2";
        case Isa::Avx512:
            return "avx512";
        case Isa::AmxBf16:
            return "amx_bf16";
        case Isa::Avx512Bf16:
            return "avx512_bf16";
    }
    return "?";
}

Blocking blocking_of(Isa isa) {
    switch (isa) {
#ifdef FASTLRP_HAVE_AVX2
        case Isa::Avx2:
            return detail::blocking_avx2();
#endif
#ifdef FASTLRP_HAVE_AVX512
        case Isa::Avx512:
            return detail::blocking_avx512();
#endif
#ifdef FASTLRP_HAVE_BF16
        case Isa::AmxBf16:
            return detail::blocking_amx();
        case Isa::Avx512Bf16:
            return detail::blocking_avx512bf16();
#endif
        default:
            return detail::blocking_generic();
    }
}

AlignedBuf aligned_floats(size_t n) {
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64 + 64;
#ifdef _MSC_VER
    void* p = _aligned_malloc(bytes, 64);
#else
    // Large buffers (operands packed per call, e.g. attention matrices of tens of MB) on
    // transparent huge pages where the kernel offers them: first-touch faults of 4 KiB
    // pages cost more than the packing itself.
    constexpr size_t kHuge = size_t(2) << 20;
    const bool huge = bytes >= 2 * kHuge;
    if (huge) bytes = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(huge ? kHuge : 64, bytes);
#ifdef MADV_HUGEPAGE
    if (p && huge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
#endif
    if (!p) throw std::bad_alloc();
    return AlignedBuf(static_cast<float*>(p));
}

std::shared_ptr<PackedA> pack_a(const float* A, int64_t groups, int64_t m, int64_t k, bool bf16, bool rows) {
    if (groups < 1 || m < 0 || k < 0) throw std::invalid_argument("pack_a: bad sizes");
    auto P = std::make_shared<PackedA>();
    const bool direct = groups > 1 && m <= kDirectMaxM && k <= kDirectMaxK;
    if (bf16 && !direct) {
        const std::string why = bf16_unavailable();
        if (!why.empty()) throw std::runtime_error("bfloat16 GEMM unavailable: " + why);
    }
    const Isa isa = bf16 && !direct ? bf16_isa() : active_isa();
    const bool bf16_kernel = isa == Isa::AmxBf16 || isa == Isa::Avx512Bf16;
    const Blocking b = blocking_of(isa);
    P->isa = isa;
    P->rows = rows && groups == 1 && !direct && isa != Isa::Avx512Bf16;
    P->mr = P->rows ? b.nr : b.mr;
    if (bf16_kernel) P->kq = isa == Isa::AmxBf16 ? 32 : 2, P->ebytes = 2;
    // Balanced K blocks (576 = 2 x 288, not 256 + 256 + 64): fewer passes of the
    // output tile through the sink, no short last block.
    // With one M block (m <= mc) each K block costs a pass of the output tiles
    // through the sink; allow K blocks up to 2 kc there (the B micro-panel then
    // streams from L2, which the 11 or fewer A panels per B panel tolerate).
    // (The bf16 driver sums K blocks in a buffer of its own: no sink pass to save there.
    // Float sample rows: the tile's pass through the sink is a unit-stride add, K blocks stay
    // kc.  AMX sample rows: up to 2 kc, half the passes of the partial sums through their
    // buffer; 10-20% more GFLOP/s on ViT-B/16's token products, 2-vCPU Xeon.)
    const bool wide = (m <= b.mc && !bf16_kernel && !P->rows) || (P->rows && isa == Isa::AmxBf16);
    const int64_t kcmax = wide ? 2 * b.kc : b.kc;
    const int64_t nkb = std::max<int64_t>(1, (k + kcmax - 1) / kcmax);
    P->kc = std::max<int64_t>(1, (k + nkb - 1) / nkb);
    P->kc = (P->kc + P->kq - 1) / P->kq * P->kq;  // (every block but the last: whole tiles)
    P->groups = groups;
    P->m = m;
    P->k = k;
    P->mp = (m + P->mr - 1) / P->mr * P->mr;
    if (direct) {
        // run by conv_gemm's direct loops only (a split output needs groups == 1): no panels
        P->raw = aligned_floats(size_t(std::max<int64_t>(1, groups * m * k)));
        std::copy(A, A + groups * m * k, P->raw.get());
        return P;
    }
    const int64_t kpanels = (k + P->kc - 1) / P->kc * P->kc;  // K with each block's padding (kq > 1)
    P->gstride = (P->mp * (P->kq > 1 ? kpanels : k) * P->ebytes / 4 + 15) / 16 * 16;
    P->data = aligned_floats(size_t(std::max<int64_t>(1, groups * P->gstride)));
    switch (isa) {
#ifdef FASTLRP_HAVE_BF16
        case Isa::AmxBf16:
            detail::pack_a_amx(*P, A);
            break;
        case Isa::Avx512Bf16:
            detail::pack_a_avx512bf16(*P, A);
            break;
#endif
#ifdef FASTLRP_HAVE_AVX2
        case Isa::Avx2:
            detail::pack_a_avx2(*P, A);
            break;
#endif
#ifdef FASTLRP_HAVE_AVX512
        case Isa::Avx512:
            detail::pack_a_avx512(*P, A);
            break;
#endif
        default:
            detail::pack_a_generic(*P, A);
    }
    return P;
}

void conv_gemm(const ConvGemmArgs& a, int threads) {
    if (!a.A || !a.x || !a.y) throw std::invalid_argument("conv_gemm: null operand");
    const PackedA& A = *a.A;
    const int64_t halves = a.sign == Sign::PosNeg ? 2 : 1;
    if (a.c % A.groups != 0)
        throw std::invalid_argument("conv_gemm: " + std::to_string(a.c) + " input channels are not divisible by " +
                                    std::to_string(A.groups) + " groups");
    const int64_t want_k = (a.c / A.groups) * a.kh * a.kw * halves;
    if (A.k != want_k)
        throw std::invalid_argument("conv_gemm: packed weights have K = " + std::to_string(A.k) + ", expected " +
                                    std::to_string(want_k) + " (channels/group x kernel taps x sign halves)");
    if (a.sh < 1 || a.sw < 1 || a.dh < 1 || a.dw < 1 || a.kh < 1 || a.kw < 1)
        throw std::invalid_argument("conv_gemm: strides, dilations and kernel sizes must be >= 1");
    if (!is_epilogue(int(a.epi))) throw std::invalid_argument("conv_gemm: unknown epilogue code " + std::to_string(int(a.epi)));
    if ((epi_reads_bias(a.epi) && !a.bias) || (epi_reads_mul(a.epi) && !a.mul) || (epi_reads_off(a.epi) && !a.off))
        throw std::invalid_argument("conv_gemm: the epilogue's operand is missing");
    if (A.rows && !(a.h == 1 && a.w == 1 && a.kh == 1 && a.kw == 1 && a.oh == 1 && a.ow == 1 && a.ph == 0 &&
                    a.pw == 0))
        throw std::invalid_argument("conv_gemm: weights packed for sample rows need S images of 1x1, a 1x1 "
                                    "kernel and no padding (a dense layer)");
    if (a.qz && (!A.rows || a.sign != Sign::Id))
        throw std::invalid_argument("conv_gemm: the fused quotient needs weights packed for sample rows and no "
                                    "sign split");
    if (a.y2 && (A.groups != 1 || a.split <= 0 || a.split >= A.m))
        throw std::invalid_argument("conv_gemm: a split output needs groups == 1 and 0 < split < rows");
    const int64_t O = A.groups * A.m, P = a.oh * a.ow;
    if (a.n == 0 || O == 0 || P == 0) return;
    if (A.k == 0) {  // empty sum: the epilogue of 0
        for (int64_t n = 0; n < a.n; ++n)
            for (int64_t o = 0; o < O; ++o)
                for (int64_t p = 0; p < P; ++p) {
                    if (a.y2 && o >= a.split)
                        a.y2[(n * (O - a.split) + o - a.split) * P + p] = 0.0f;
                    else
                        a.y[(n * (a.y2 ? a.split : O) + o) * P + p] = a.epi == Epi::Bias ? a.bias[o] : 0.0f;
                }
        return;
    }
    switch (A.isa) {
#ifdef FASTLRP_HAVE_AVX2
        case Isa::Avx2:
            detail::conv_gemm_avx2(a, threads);
            return;
#endif
#ifdef FASTLRP_HAVE_AVX512
        case Isa::Avx512:
            detail::conv_gemm_avx512(a, threads);
            return;
#endif
#ifdef FASTLRP_HAVE_BF16
        case Isa::AmxBf16:
            detail::conv_gemm_amx(a, threads);
            return;
        case Isa::Avx512Bf16:
            detail::conv_gemm_avx512bf16(a, threads);
            return;
#endif
        default:
            detail::conv_gemm_generic(a, threads);
    }
}

void gemm_f32(const float* A, const float* B, float* C, int64_t m, int64_t n, int64_t k, int threads) {
    auto P = pack_a(A, 1, m, k);
    // B (k x n) row-major is a 1x1 image with k channels and n "pixels" in one sample.
    ConvGemmArgs a;
    a.x = B;
    a.n = 1;
    a.c = k;
    a.h = 1;
    a.w = n;
    a.oh = 1;
    a.ow = n;
    a.A = P.get();
    a.y = C;
    conv_gemm(a, threads);
}

}  // namespace cpu
}  // namespace fastlrp
