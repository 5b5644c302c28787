// Dense-layer LRP relevance on the CPU (float32 in/out).
#pragma once

#include "rules.h"

namespace fastlrp {
namespace cpu {

// Computes args.r_in for args.kind.  Threads: OpenMP, num_threads() of them.
// Does not touch Python; safe to call without the GIL.
void run_dense_relevance(const DenseArgs& args);

// Thread count used by the kernels (defaults to OpenMP's max threads, 1 without OpenMP).
void set_num_threads(int n);
int get_num_threads();
bool has_openmp();

}  // namespace cpu
}  // namespace fastlrp
