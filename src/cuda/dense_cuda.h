// Dense-layer LRP relevance on a CUDA GPU: plain C++ interface (no CUDA, Python or
// pybind11 types), so the bindings compile with the host compiler.
#pragma once

#include <string>

#include "../cpp/rules.h"

namespace fastlrp {
namespace cuda {

// Number of usable GPUs; 0 (and a reason in *why) when no driver/GPU is present.
int device_count(std::string* why);

// CUDA runtime version this module was built against, e.g. "13.0".
std::string runtime_version();

// args holds HOST pointers: inputs are copied to the current device, the kernels
// run, r_in is copied back.  Returns "" on success, else the CUDA error text.
// (A later issue adds device-pointer entry points via DLPack.)
std::string run_dense_relevance_host(const DenseArgs& args);

}  // namespace cuda
}  // namespace fastlrp
