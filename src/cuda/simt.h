// One kernel source for two targets: nvcc (the real GPU module fastlrp._cuda) and a
// host C++ compiler with FASTLRP_SIMT_EMU defined (fastlrp._cuda_emu, a SIMT
// emulator that runs the same kernels on the CPU so that their logic is tested on
// machines without a GPU, CI included).
//
// Kernel code uses only what this header provides:
//   FLRP_GLOBAL / FLRP_DEVICE / FLRP_HD / FLRP_SHARED / FLRP_RESTRICT,
//   threadIdx, blockIdx, blockDim, gridDim, dim3,
//   flrp_syncthreads(), flrp_atomic_add(float*, float),
// and the host launchers fastlrp::gpu::launch (kernels without barriers) and
// fastlrp::gpu::launch_sync (kernels with flrp_syncthreads()).
//
// The emulator runs the blocks of a launch one after another on the calling
// thread.  `launch` runs a block's threads in a loop; `launch_sync` runs each
// thread as a fiber (ucontext) with its own stack, and flrp_syncthreads()
// switches back to a scheduler that resumes every thread of the block up to the
// next barrier, so shared-memory tiling with barriers runs as written.  Shared
// memory is `static` storage (one block runs at a time).  Barrier divergence
// (some threads exit while others wait at a barrier) is reported as an error,
// and so are a barrier in a `launch` kernel and launch configurations a GPU
// would reject.  What the emulator cannot show: races between threads that a
// real GPU interleaves differently, warp-level timing, and speed.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastlrp {
namespace gpu {

// A failed CUDA call or launch (or, in the emulator, a launch a GPU would reject).
struct CudaError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace gpu
}  // namespace fastlrp

#if defined(__CUDACC__)

#include <cuda_runtime.h>

#define FLRP_GLOBAL __global__
#define FLRP_DEVICE __device__ __forceinline__
#define FLRP_HD __host__ __device__ __forceinline__
#define FLRP_SHARED __shared__
#define FLRP_RESTRICT __restrict__

__device__ __forceinline__ void flrp_syncthreads() { __syncthreads(); }
__device__ __forceinline__ void flrp_atomic_add(float* p, float v) { atomicAdd(p, v); }

namespace fastlrp {
namespace gpu {

using Stream = cudaStream_t;

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
    throw CudaError(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                    "): " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

#define FLRP_CHECK(expr)                                                                \
    do {                                                                                \
        cudaError_t flrp_e_ = (expr);                                                   \
        if (flrp_e_ != cudaSuccess) ::fastlrp::gpu::throw_cuda(flrp_e_, #expr, __FILE__, __LINE__); \
    } while (0)

template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, Stream s, Args&&... args) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // nothing to do
    kernel<<<grid, block, 0, s>>>(std::forward<Args>(args)...);
    FLRP_CHECK(cudaGetLastError());
}

template <class... KArgs, class... Args>
void launch_sync(void (*kernel)(KArgs...), dim3 grid, dim3 block, Stream s, Args&&... args) {
    launch(kernel, grid, block, s, std::forward<Args>(args)...);
}

}  // namespace gpu
}  // namespace fastlrp

#elif defined(FASTLRP_SIMT_EMU)

#include <cmath>
#include <exception>
#include <functional>

#define FLRP_GLOBAL
#define FLRP_DEVICE inline
#define FLRP_HD inline
#define FLRP_SHARED static
#define FLRP_RESTRICT __restrict__

struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The emulated built-in variables (read-only by convention, as on a GPU).
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace fastlrp {
namespace gpu {

using Stream = void*;

namespace emu {
// Implemented in simt_emu.cpp (the scheduler, fibers and checks).
void run_grid(dim3 grid, dim3 block, bool barriers, const std::function<void()>& body);
void barrier();
}  // namespace emu

template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, Stream, Args&&... args) {
    emu::run_grid(grid, block, false, [&] { kernel(args...); });
}

template <class... KArgs, class... Args>
void launch_sync(void (*kernel)(KArgs...), dim3 grid, dim3 block, Stream, Args&&... args) {
    emu::run_grid(grid, block, true, [&] { kernel(args...); });
}

}  // namespace gpu
}  // namespace fastlrp

inline void flrp_syncthreads() { ::fastlrp::gpu::emu::barrier(); }
inline void flrp_atomic_add(float* p, float v) { *p += v; }  // blocks and threads never run at once

#else
#error "simt.h: compile with nvcc, or define FASTLRP_SIMT_EMU for the host emulator"
#endif
