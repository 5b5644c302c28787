// Every GPU kernel and the device runtime, in one translation unit.  Compiled by
// nvcc for fastlrp._cuda, and by the host compiler (kernels_emu.cpp, with
// FASTLRP_SIMT_EMU) for fastlrp._cuda_emu, the SIMT emulator build that tests
// the same kernel code on machines without a GPU.
#include "simt.h"

#include "runtime.cuh"
#include "kernels_gemm.cuh"
#include "kernels_elem.cuh"
#include "kernels_selftest.cuh"

namespace fastlrp {
namespace gpu {
int run_simt_selftest(int mode, int blocks) { return simt_selftest(mode, blocks); }
}  // namespace gpu
}  // namespace fastlrp
