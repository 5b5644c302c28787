// The GPU kernels compiled for the host SIMT emulator (fastlrp._cuda_emu): same
// source as the nvcc build, see simt.h.
#define FASTLRP_SIMT_EMU 1
#include "kernels.cu"
