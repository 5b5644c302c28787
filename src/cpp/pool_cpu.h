// Max pooling on the CPU: forward with arg-max indices, relevance routed to them.
// (Average pooling is a separable linear map; backends/cpu.py runs it as float32
// matmuls, see there.)
#pragma once

#include <cstdint>

namespace fastlrp {
namespace cpu {

// Max pooling over (n*c) planes of h x w; idx gets the flat in-plane index of
// each window's first maximum (padding never wins).
struct MaxPoolArgs {
    const float* x = nullptr;
    float* y = nullptr;
    int32_t* idx = nullptr;
    int64_t planes = 0, h = 1, w = 1, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, oh = 1, ow = 1;
};
void maxpool_forward(const MaxPoolArgs& a, int threads);
// r_in[plane, idx] += R[plane, o]  (overlapping windows accumulate)
void maxpool_backward(const float* R, const int32_t* idx, float* r_in, int64_t planes, int64_t in_size,
                      int64_t out_size, int threads);

}  // namespace cpu
}  // namespace fastlrp
