// The thread count of the CPU kernels (process-wide, set from Python).
#pragma once

namespace fastlrp {
namespace cpu {

// n <= 0 restores OpenMP's default (its max threads; 1 without OpenMP).
// More threads than this is a mistake (libgomp fails to create them and ends the process).
constexpr int kMaxThreads = 1024;

void set_num_threads(int n);
int get_num_threads();
bool has_openmp();

}  // namespace cpu
}  // namespace fastlrp
