// Max pooling on the CPU: forward with arg-max indices, relevance routed to them.
// (Average pooling is a separable linear map; backends/cpu.py runs it as float32
// matmuls, see there.)
#pragma once

#include <cstdint>

#include "kernel_args.h"

namespace fastlrp {
namespace cpu {

using ::fastlrp::MaxPoolArgs;  // kernel_args.h, shared with the GPU kernels
void maxpool_forward(const MaxPoolArgs& a, int threads);
// r_in[plane, idx] += R[plane, o]  (overlapping windows accumulate)
void maxpool_backward(const float* R, const int32_t* idx, float* r_in, int64_t planes, int64_t in_size,
                      int64_t out_size, int threads);

}  // namespace cpu
}  // namespace fastlrp
