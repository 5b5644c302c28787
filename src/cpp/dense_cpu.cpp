// Dense-layer relevance kernels, portable C++ (no ISA-specific code).
//
// Structure (kept so that a packed-GEMM/SIMD path can replace each pass alone):
//   pass 1 "forward sums": for every (sample, output) the rule's kFwd sums over the
//          inputs, then the epilogue (bias, stabilized division) writes g (N, out, kG);
//   pass 2 "backward sums": for every (sample, input) the rule's kBwd sums over the
//          outputs of t(W[o, i], g[n, o]), then the input epilogue (x+, x-, l, h).
// Each output element is produced by exactly one thread in a fixed order, so the
// result does not depend on the thread count.
//
// Precision: inputs, g and outputs are float32; forward sums accumulate in double
// (see rules.h: the division by z amplifies their error), backward sums in float.

#include "dense_cpu.h"

#include <algorithm>
#include <atomic>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastlrp {
namespace cpu {

namespace {

std::atomic<int> g_num_threads{0};  // 0: not set yet, use OpenMP's default

// Tile sizes: a tile of samples shares each weight row while it is in L1/L2
// (forward), and a block of inputs keeps its backward accumulators in L1.
constexpr int64_t kSampleTile = 8;
constexpr int64_t kOutTile = 16;
constexpr int64_t kInBlock = 256;

// Sums of one (sample, output) pair in kLanes independent partial sums: FP
// addition is not associative, so the compiler may only vectorise a reduction
// whose order we fix ourselves.  The order depends on nothing but I, so results
// are the same for any thread count.
constexpr int64_t kLanes = 8;

template <class Rule>
inline void forward_row(const float* w, const float* x, const float* low, const float* high, int64_t I,
                        const RuleCoefs& c, double* acc) {
    constexpr int K = Rule::kFwd;
    constexpr bool kBounds = Rule::kind == RuleKind::ZBox;
    double lanes[K][kLanes] = {};
    const int64_t I8 = I - I % kLanes;
    for (int64_t i = 0; i < I8; i += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
            double t[K] = {};
            Rule::fwd(t, w[i + l], Rule::kUsesX ? x[i + l] : 0.0f, kBounds ? low[i + l] : 0.0f,
                      kBounds ? high[i + l] : 0.0f, c);
            for (int k = 0; k < K; ++k) lanes[k][l] += t[k];
        }
    }
    for (int64_t i = I8; i < I; ++i) {
        double t[K] = {};
        Rule::fwd(t, w[i], Rule::kUsesX ? x[i] : 0.0f, kBounds ? low[i] : 0.0f, kBounds ? high[i] : 0.0f, c);
        for (int k = 0; k < K; ++k) lanes[k][i - I8] += t[k];
    }
    for (int k = 0; k < K; ++k) {
        double sum = 0.0;
        for (int64_t l = 0; l < kLanes; ++l) sum += lanes[k][l];
        acc[k] = sum;
    }
}

template <class Rule>
void forward_sums(const DenseArgs& a, float* g, int threads) {
    const int64_t N = a.n, I = a.in_features, O = a.out_features;
    const int64_t n_tiles = (N + kSampleTile - 1) / kSampleTile;
    const int64_t o_tiles = (O + kOutTile - 1) / kOutTile;
    const RuleCoefs c = a.coefs;
    (void)threads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t nt = 0; nt < n_tiles; ++nt) {
        for (int64_t ot = 0; ot < o_tiles; ++ot) {
            const int64_t n1 = std::min(N, (nt + 1) * kSampleTile);
            const int64_t o1 = std::min(O, (ot + 1) * kOutTile);
            for (int64_t o = ot * kOutTile; o < o1; ++o) {
                const float* w = a.W + o * I;
                const float b = a.bias ? a.bias[o] : 0.0f;
                for (int64_t n = nt * kSampleTile; n < n1; ++n) {
                    const float* x = a.x + n * I;
                    double acc[Rule::kFwd > 0 ? Rule::kFwd : 1] = {};
                    if constexpr (Rule::kFwd > 0) forward_row<Rule>(w, x, a.low, a.high, I, c, acc);
                    Rule::epilogue(acc, b, a.R[n * O + o], c, g + (n * O + o) * Rule::kG);
                }
            }
        }
    }
}

template <class Rule>
void backward_sums(const DenseArgs& a, const float* g, int threads) {
    const int64_t N = a.n, I = a.in_features, O = a.out_features;
    const int64_t n_tiles = (N + kSampleTile - 1) / kSampleTile;
    const int64_t i_blocks = (I + kInBlock - 1) / kInBlock;
    const RuleCoefs c = a.coefs;
    (void)threads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t nt = 0; nt < n_tiles; ++nt) {
        for (int64_t ib = 0; ib < i_blocks; ++ib) {
            const int64_t n0 = nt * kSampleTile, n1 = std::min(N, n0 + kSampleTile);
            const int64_t i0 = ib * kInBlock, i1 = std::min(I, i0 + kInBlock);
            const int64_t len = i1 - i0;
            // acc[(n - n0)][k][i - i0]: planar, so the update loop over i vectorises.
            float acc[kSampleTile * Rule::kBwd * kInBlock];
            std::fill(acc, acc + (n1 - n0) * Rule::kBwd * len, 0.0f);
            for (int64_t o = 0; o < O; ++o) {
                const float* w = a.W + o * I + i0;
                for (int64_t n = n0; n < n1; ++n) {
                    const float* gn = g + (n * O + o) * Rule::kG;
                    float* an = acc + (n - n0) * Rule::kBwd * len;
                    for (int64_t i = 0; i < len; ++i) {
                        float t[Rule::kBwd] = {};
                        Rule::bwd(t, w[i], gn, c);
                        for (int k = 0; k < Rule::kBwd; ++k) an[k * len + i] += t[k];
                    }
                }
            }
            for (int64_t n = n0; n < n1; ++n) {
                const float* x = a.x + n * I;
                const float* an = acc + (n - n0) * Rule::kBwd * len;
                float* out = a.r_in + n * I;
                for (int64_t i = i0; i < i1; ++i) {
                    const float l = a.low ? a.low[i] : 0.0f;
                    const float h = a.high ? a.high[i] : 0.0f;
                    float t[Rule::kBwd];
                    for (int k = 0; k < Rule::kBwd; ++k) t[k] = an[k * len + (i - i0)];
                    out[i] = Rule::input_epilogue(t, x[i], l, h);
                }
            }
        }
    }
}

template <class Rule>
void run(const DenseArgs& a) {
    if (a.n == 0 || a.in_features == 0) return;
    const int threads = get_num_threads();
    std::vector<float> g(static_cast<size_t>(a.n * a.out_features * Rule::kG));
    forward_sums<Rule>(a, g.data(), threads);
    backward_sums<Rule>(a, g.data(), threads);
}

}  // namespace

void run_dense_relevance(const DenseArgs& args) {
    FASTLRP_RULE_SWITCH(args.kind, Rule, run<Rule>(args));
}

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0); }

int get_num_threads() {
    const int n = g_num_threads.load();
    if (n > 0) return n;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

bool has_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

}  // namespace cpu
}  // namespace fastlrp
