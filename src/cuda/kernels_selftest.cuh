// Self-tests of the SIMT layer (simt.h): a shared-memory reversal that is only
// right if flrp_syncthreads() is a real barrier, and, for the emulator only,
// kernels that break the barrier rules (which it must report).
#pragma once

#include <vector>

#include "api_runtime.h"
#include "simt.h"

namespace fastlrp {
namespace gpu {

namespace selftest {

// y = x reversed within each block of 256: every thread reads a slot another
// thread wrote, so without a barrier (or with threads run to completion one by
// one) the result is wrong.
FLRP_GLOBAL void reverse_kernel(const float* x, float* y) {
    FLRP_SHARED float t[256];
    const unsigned i = threadIdx.x, base = blockIdx.x * 256u;
    t[i] = x[base + i];
    flrp_syncthreads();
    const float v = t[255u - i];
    flrp_syncthreads();
    t[i] = v * 2.0f;  // a second phase reusing the buffer
    flrp_syncthreads();
    y[base + i] = t[i] * 0.5f;
}

// Thread 0 leaves before the barrier the others wait at.
FLRP_GLOBAL void divergent_kernel(float* y) {
    if (threadIdx.x == 0) return;
    flrp_syncthreads();
    y[threadIdx.x] = 1.0f;
}

}  // namespace selftest

// mode 0: reversal over `blocks` blocks, returns the number of wrong elements;
// mode 1: divergent barrier; mode 2: a barrier kernel started with launch().
inline int simt_selftest(int mode, int blocks) {
    const size_t n = size_t(blocks) * 256;
    std::vector<float> hx(n), hy(n, -1.0f);
    for (size_t i = 0; i < n; ++i) hx[i] = float(i % 977) - 300.0f;
    float* x = static_cast<float*>(dev_malloc(n * sizeof(float), nullptr));
    float* y = static_cast<float*>(dev_malloc(n * sizeof(float), nullptr));
    struct Free {
        float *a, *b;
        ~Free() {
            dev_free(a, nullptr);
            dev_free(b, nullptr);
        }
    } guard{x, y};
    memcpy_htod(x, hx.data(), n * sizeof(float), nullptr, false);
    if (mode == 1) {
        launch_sync(selftest::divergent_kernel, dim3(1), dim3(64), Stream(nullptr), y);
        device_synchronize();
        return 0;
    }
    if (mode == 2) {
        launch(selftest::reverse_kernel, dim3(unsigned(blocks)), dim3(256), Stream(nullptr), (const float*)x, y);
        device_synchronize();
    } else {
        launch_sync(selftest::reverse_kernel, dim3(unsigned(blocks)), dim3(256), Stream(nullptr), (const float*)x, y);
    }
    memcpy_dtoh(hy.data(), y, n * sizeof(float), nullptr, false);
    int wrong = 0;
    for (size_t b = 0; b < size_t(blocks); ++b)
        for (size_t i = 0; i < 256; ++i) wrong += hy[b * 256 + i] != hx[b * 256 + 255 - i];
    return wrong;
}

}  // namespace gpu
}  // namespace fastlrp
