// Device memory, copies, streams and events for the GPU engine: plain C++
// declarations (no CUDA types), implemented in runtime.cuh for nvcc and for the
// SIMT emulator (host memory), so bindings_gpu.cpp is the same for both modules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastlrp {
namespace gpu {

// A device allocation that did not fit: how much was asked for and what was free.
struct OutOfMemory : std::runtime_error {
    size_t requested, free_bytes, total_bytes;
    OutOfMemory(size_t req, size_t fr, size_t tot, const std::string& msg)
        : std::runtime_error(msg), requested(req), free_bytes(fr), total_bytes(tot) {}
};

bool emulated();
int runtime_version();  // CUDA runtime version (e.g. 13000), 0 in the emulator
int driver_version();   // 0 when no driver
int device_count();          // 0 when no driver / no device (never throws)
std::string why_unavailable();  // "" when a device is usable
std::string device_name(int dev);
void set_device(int dev);
int get_device();
void mem_get_info(size_t* free_bytes, size_t* total_bytes);
// The device a pointer's memory lives on, or -1 for host / unknown memory.
int pointer_device(const void* p);

void* dev_malloc(size_t nbytes, void* stream);  // throws OutOfMemory
void dev_free(void* p, void* stream);
size_t bytes_in_use();
size_t peak_bytes();
void reset_peak();
void set_memory_limit(size_t nbytes);  // emulator only: 0 = none (for OOM tests)

void* host_alloc_pinned(size_t nbytes);
void host_free_pinned(void* p);

void memcpy_htod(void* dst, const void* src, size_t nbytes, void* stream, bool async);
void memcpy_dtoh(void* dst, const void* src, size_t nbytes, void* stream, bool async);
void memcpy_dtod(void* dst, const void* src, size_t nbytes, void* stream);
void memset_d(void* dst, int byte, size_t nbytes, void* stream);

void* stream_create();
void stream_destroy(void* s);
void stream_synchronize(void* s);
void device_synchronize();
void* event_create();
void event_destroy(void* e);
void event_record(void* e, void* s);
void stream_wait_event(void* s, void* e);
void event_synchronize(void* e);
float event_elapsed_ms(void* start, void* end);

// SIMT layer self-test (kernels_selftest.cuh): mode 0 returns the number of wrong
// elements of a barrier-dependent shared-memory reversal; modes 1 and 2 break the
// barrier rules and must raise CudaError (emulator only).
int run_simt_selftest(int mode, int blocks);

}  // namespace gpu
}  // namespace fastlrp
