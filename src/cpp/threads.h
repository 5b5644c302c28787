// The thread count of the CPU kernels (process-wide, set from Python).
#pragma once

namespace fastlrp {
namespace cpu {

// n <= 0 restores OpenMP's default (its max threads; 1 without OpenMP).
void set_num_threads(int n);
int get_num_threads();
bool has_openmp();

}  // namespace cpu
}  // namespace fastlrp
