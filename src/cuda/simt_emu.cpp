// The SIMT emulator behind simt.h (FASTLRP_SIMT_EMU): runs a kernel's grid on the
// calling CPU thread, a block at a time.  Kernels with barriers run each GPU
// thread as a ucontext fiber; flrp_syncthreads() yields to the scheduler, which
// resumes every thread of the block up to the next barrier.
#define FASTLRP_SIMT_EMU 1
#include "simt.h"

#include <ucontext.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

namespace fastlrp {
namespace gpu {
namespace emu {

namespace {

constexpr size_t kStack = 64 * 1024;  // bytes per emulated thread

enum class St { Ready, AtBarrier, Done };

struct Block {
    ucontext_t sched;
    std::vector<ucontext_t> ctx;
    std::vector<St> state;
    std::vector<uint3> idx;
    std::unique_ptr<char[]> stacks;
    size_t nstacks = 0;
    int current = -1;
    const std::function<void()>* body = nullptr;
    std::exception_ptr error;
    bool barriers = false;
};

Block g_block;  // the emulator runs one block at a time (g_mutex)
std::mutex g_mutex;

void trampoline() {
    Block& b = g_block;
    const int t = b.current;
    try {
        (*b.body)();
    } catch (...) {
        if (!b.error) b.error = std::current_exception();
    }
    b.state[t] = St::Done;
    swapcontext(&b.ctx[t], &b.sched);
}

std::string dims(dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

}  // namespace

void barrier() {
    Block& b = g_block;
    if (!b.barriers || b.current < 0)
        throw CudaError("SIMT emulator: flrp_syncthreads() in a kernel started with launch(); use launch_sync()");
    const int t = b.current;
    b.state[t] = St::AtBarrier;
    swapcontext(&b.ctx[t], &b.sched);
}

void run_grid(dim3 grid, dim3 block, bool barriers, const std::function<void()>& body) {
    const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || nthreads > 1024 || block.z > 64)
        throw CudaError("SIMT emulator: invalid block dimensions " + dims(block) + " (at most 1024 threads)");
    if (grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u)
        throw CudaError("SIMT emulator: invalid grid dimensions " + dims(grid));
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    std::lock_guard<std::mutex> lock(g_mutex);
    Block& b = g_block;
    b.body = &body;
    b.error = nullptr;
    b.barriers = barriers;
    b.current = -1;
    gridDim = grid;
    blockDim = block;
    const int nt = int(nthreads);
    if (barriers) {
        if (b.nstacks < size_t(nt)) {
            b.stacks.reset(new char[kStack * size_t(nt)]);
            b.nstacks = size_t(nt);
        }
        b.ctx.resize(nt);
        b.state.resize(nt);
        b.idx.resize(nt);
    }
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = uint3{bx, by, bz};
                if (!barriers) {
                    for (unsigned tz = 0; tz < block.z; ++tz)
                        for (unsigned ty = 0; ty < block.y; ++ty)
                            for (unsigned tx = 0; tx < block.x; ++tx) {
                                threadIdx = uint3{tx, ty, tz};
                                body();  // exceptions propagate normally
                            }
                    continue;
                }
                int t = 0;
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx, ++t) {
                            b.idx[t] = uint3{tx, ty, tz};
                            b.state[t] = St::Ready;
                            getcontext(&b.ctx[t]);
                            b.ctx[t].uc_stack.ss_sp = b.stacks.get() + kStack * size_t(t);
                            b.ctx[t].uc_stack.ss_size = kStack;
                            b.ctx[t].uc_link = nullptr;
                            makecontext(&b.ctx[t], trampoline, 0);
                        }
                for (;;) {
                    int done = 0, waiting = 0;
                    for (t = 0; t < nt; ++t) {
                        if (b.state[t] == St::Done) continue;
                        b.state[t] = St::Ready;
                        b.current = t;
                        threadIdx = b.idx[t];
                        swapcontext(&b.sched, &b.ctx[t]);
                    }
                    b.current = -1;
                    for (t = 0; t < nt; ++t) {
                        done += b.state[t] == St::Done;
                        waiting += b.state[t] == St::AtBarrier;
                    }
                    if (b.error) std::rethrow_exception(b.error);
                    if (done == nt) break;
                    if (done > 0 && waiting > 0)
                        throw CudaError("SIMT emulator: barrier divergence in block " +
                                        dims(dim3(bx, by, bz)) + ": " + std::to_string(done) +
                                        " thread(s) exited while " + std::to_string(waiting) +
                                        " wait at flrp_syncthreads()");
                }
            }
}

}  // namespace emu
}  // namespace gpu
}  // namespace fastlrp
