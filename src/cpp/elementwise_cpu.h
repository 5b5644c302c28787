// Memory-bound kernels of transformers on the CPU (portable C++, OpenMP over rows or
// chunks): GELU / SiLU forward, the per-channel affine map (an unfolded batchnorm, the
// attention's score scale), LayerNorm / RMSNorm and the softmax along the last axis with
// their relevance, and the stabilized quotient R / (f s(z)) of the Norm and matmul rules.
// One pass per row or element where the rule allows; every row (and element) is computed
// by one thread, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace fastlrp {
namespace cpu {

// Activation kinds with a kernel (backends/cpu.py maps the registry's names onto these).
enum class Act : int { Gelu = 0, GeluTanh = 1, Silu = 2 };
constexpr bool is_act(int k) { return k >= 0 && k <= 2; }

// y = f(x), n elements.
void activation_forward(Act kind, const float* x, float* y, int64_t n, int threads);

// y[o, c, i] = x[o, c, i] * scale[c] + shift[c]   (outer x C x inner)
void channel_affine(const float* x, const float* scale, const float* shift, float* y, int64_t outer, int64_t C,
                    int64_t inner, int threads);

struct LayerNormArgs {
    const float* x = nullptr;  // (rows, C)
    const float* w = nullptr;  // (C,) or null
    const float* b = nullptr;  // (C,) or null
    int64_t rows = 0, C = 0;
    float eps = 1e-5f;  // the layer's
    bool rms = false;
};

// y = (x - mean) / std * w + b (RMS: x / std * w + b), std = sqrt(mean((x - mean)^2) + eps), per row.
void layernorm_forward(const LayerNormArgs& a, float* y, float* std_out, int threads);

// The epsilon rule with std held constant: g = R / s(z) * w / std, z = y (y - b with
// zero_bias: pass b in a.b, else null), centred over the row unless rms; out = x * g.
// guard_zero: s(z) = z with exact zeros replaced by eps (iNNvestigate's safe divide).
void layernorm_relevance(const LayerNormArgs& a, const float* y, const float* std_in, const float* R, float* out,
                         float rule_eps, bool guard_zero, int threads);

// y = softmax(x) along rows of length L.
void softmax_forward(const float* x, float* y, int64_t rows, int64_t L, int threads);

// out = x * (R - y * sum_row(R))   (AttnLRP's softmax rule)
void softmax_taylor(const float* x, const float* y, const float* R, float* out, int64_t rows, int64_t L,
                    int threads);

// g = R / (s(z) * factor), n elements (the matmul rules: factor 2 for UniformEpsilon).
void stabilized_quotient(const float* R, const float* z, float* g, int64_t n, float eps, float factor,
                         int threads);

// outs[k] = xs[k] * R / s(z) for k = 0 .. count - 1, n elements each: Norm's shares of a sum
// z of same-shape inputs, R / s(z) recomputed per input from cache (one pass over memory);
// guard_zero as for layernorm_relevance.
void norm_shares(const float* R, const float* z, const float* const* xs, float* const* outs, int64_t count,
                 int64_t n, float eps, bool guard_zero, int threads);

}  // namespace cpu
}  // namespace fastlrp
