// The activation loops and the softmax row of elementwise_math.h compiled for AVX2 (-mavx2, see CMakeLists.txt).
#include "elementwise_math.h"

namespace fastlrp {
namespace cpu {

void activation_avx2(Act kind, const float* x, float* y, int64_t n) { activation_loop(kind, x, y, n); }

void softmax_row_avx2(const float* x, float* y, int64_t L) { softmax_row(x, y, L); }

}  // namespace cpu
}  // namespace fastlrp
