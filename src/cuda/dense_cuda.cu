// Straightforward CUDA dense relevance kernels, sharing the rule math of rules.h.
// One thread per (sample, output) for the forward sums, one per (sample, input)
// for the backward sums.  Correct and simple; the fast GPU engine is a later issue.

#include <cuda_runtime.h>

#include <string>

#include "dense_cuda.h"

namespace fastlrp {
namespace cuda {

namespace {

template <class Rule>
__global__ void forward_sums_kernel(DenseArgs a, float* g) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= a.n * a.out_features) return;
    const int64_t n = idx / a.out_features, o = idx % a.out_features;
    const int64_t I = a.in_features;
    const float* w = a.W + o * I;
    const float* x = a.x + n * I;
    double acc[Rule::kFwd > 0 ? Rule::kFwd : 1] = {};
    if (Rule::kFwd > 0) {
        for (int64_t i = 0; i < I; ++i) {
            Rule::fwd(acc, w[i], x[i], a.low ? a.low[i] : 0.0f, a.high ? a.high[i] : 0.0f, a.coefs);
        }
    }
    Rule::epilogue(acc, a.bias ? a.bias[o] : 0.0f, a.R[idx], a.coefs, g + idx * Rule::kG);
}

template <class Rule>
__global__ void backward_sums_kernel(DenseArgs a, const float* g) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= a.n * a.in_features) return;
    const int64_t n = idx / a.in_features, i = idx % a.in_features;
    const int64_t I = a.in_features, O = a.out_features;
    float acc[Rule::kBwd] = {};
    for (int64_t o = 0; o < O; ++o) Rule::bwd(acc, a.W[o * I + i], g + (n * O + o) * Rule::kG, a.coefs);
    a.r_in[idx] = Rule::input_epilogue(acc, a.x[idx], a.low ? a.low[i] : 0.0f, a.high ? a.high[i] : 0.0f);
}

// Owns device buffers for one call; frees them on every exit path.
struct DeviceBuffers {
    float* ptrs[8] = {};
    int count = 0;
    ~DeviceBuffers() {
        for (int k = 0; k < count; ++k) cudaFree(ptrs[k]);
    }
    cudaError_t alloc(float** p, size_t n_floats) {
        cudaError_t e = cudaMalloc(reinterpret_cast<void**>(p), (n_floats ? n_floats : 1) * sizeof(float));
        if (e == cudaSuccess) ptrs[count++] = *p;
        return e;
    }
};

cudaError_t upload(DeviceBuffers& bufs, const float* host, size_t n, const float** dev) {
    if (!host) {
        *dev = nullptr;
        return cudaSuccess;
    }
    float* d = nullptr;
    cudaError_t e = bufs.alloc(&d, n);
    if (e != cudaSuccess) return e;
    *dev = d;
    return cudaMemcpy(d, host, n * sizeof(float), cudaMemcpyHostToDevice);
}

template <class Rule>
void launch(const DenseArgs& d, float* g) {
    constexpr int kThreads = 256;
    const int64_t fwd = d.n * d.out_features, bwd = d.n * d.in_features;
    if (fwd > 0) forward_sums_kernel<Rule><<<unsigned((fwd + kThreads - 1) / kThreads), kThreads>>>(d, g);
    if (bwd > 0) backward_sums_kernel<Rule><<<unsigned((bwd + kThreads - 1) / kThreads), kThreads>>>(d, g);
}

}  // namespace

int device_count(std::string* why) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        if (why) *why = cudaGetErrorString(e);
        cudaGetLastError();  // reset the last-error state so a later call does not report this one
        return 0;
    }
    if (count == 0 && why) *why = "no CUDA device found";
    return count;
}

std::string runtime_version() {
    return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
}

std::string run_dense_relevance_host(const DenseArgs& h) {
    const size_t N = size_t(h.n), I = size_t(h.in_features), O = size_t(h.out_features);
    DeviceBuffers bufs;
    DenseArgs d = h;
    float* r_in = nullptr;
    float* g = nullptr;
    int kG = 1;
    FASTLRP_RULE_SWITCH(h.kind, Rule, kG = Rule::kG);
    cudaError_t e = cudaSuccess;
#define FASTLRP_CU_TRY(expr)                          \
    do {                                              \
        e = (expr);                                   \
        if (e != cudaSuccess) return cudaGetErrorString(e); \
    } while (0)
    FASTLRP_CU_TRY(upload(bufs, h.W, O * I, &d.W));
    FASTLRP_CU_TRY(upload(bufs, h.bias, O, &d.bias));
    FASTLRP_CU_TRY(upload(bufs, h.x, N * I, &d.x));
    FASTLRP_CU_TRY(upload(bufs, h.R, N * O, &d.R));
    FASTLRP_CU_TRY(upload(bufs, h.low, I, &d.low));
    FASTLRP_CU_TRY(upload(bufs, h.high, I, &d.high));
    FASTLRP_CU_TRY(bufs.alloc(&r_in, N * I));
    FASTLRP_CU_TRY(bufs.alloc(&g, N * O * size_t(kG)));
    d.r_in = r_in;
    FASTLRP_RULE_SWITCH(h.kind, Rule, launch<Rule>(d, g));
    FASTLRP_CU_TRY(cudaGetLastError());
    FASTLRP_CU_TRY(cudaMemcpy(h.r_in, r_in, N * I * sizeof(float), cudaMemcpyDeviceToHost));
#undef FASTLRP_CU_TRY
    return "";
}

}  // namespace cuda
}  // namespace fastlrp
