// api_runtime.h for nvcc (CUDA runtime, stream-ordered memory pool) and for the
// SIMT emulator (host memory; copies are memcpy; streams and events are no-ops).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "api_runtime.h"
#include "simt.h"

namespace fastlrp {
namespace gpu {

namespace {

struct Tracker {
    std::mutex mu;
    std::unordered_map<void*, size_t> sizes;
    size_t in_use = 0, peak = 0, limit = 0;
    void add(void* p, size_t n) {
        std::lock_guard<std::mutex> l(mu);
        sizes[p] = n;
        in_use += n;
        if (in_use > peak) peak = in_use;
    }
    void remove(void* p) {
        std::lock_guard<std::mutex> l(mu);
        auto it = sizes.find(p);
        if (it == sizes.end()) return;
        in_use -= it->second;
        sizes.erase(it);
    }
};
Tracker& tracker() {
    static Tracker t;
    return t;
}

std::string mib(size_t n) {
    char buf[64];
    if (n < (size_t(1) << 20))
        std::snprintf(buf, sizeof buf, "%zu bytes", n);
    else
        std::snprintf(buf, sizeof buf, "%.1f MiB", double(n) / (1024.0 * 1024.0));
    return buf;
}

[[noreturn]] void throw_oom(size_t req, size_t fr, size_t tot) {
    throw OutOfMemory(req, fr, tot,
                      "out of GPU memory: asked for " + mib(req) + " with " + mib(fr) + " free of " + mib(tot) +
                          " (" + mib(tracker().in_use) + " held by fastlrp)");
}

}  // namespace

size_t bytes_in_use() { return tracker().in_use; }
size_t peak_bytes() { return tracker().peak; }
void reset_peak() {
    std::lock_guard<std::mutex> l(tracker().mu);
    tracker().peak = tracker().in_use;
}

#if defined(__CUDACC__)

namespace {
cudaStream_t S(void* s) { return static_cast<cudaStream_t>(s); }
}  // namespace

bool emulated() { return false; }
int runtime_version() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
}
int driver_version() {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return v;
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

std::string why_unavailable() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    }
    return n > 0 ? "" : "no CUDA device found";
}

std::string device_name(int dev) {
    cudaDeviceProp p;
    FLRP_CHECK(cudaGetDeviceProperties(&p, dev));
    return p.name;
}

void set_device(int dev) {
    FLRP_CHECK(cudaSetDevice(dev));
    // keep freed blocks in the stream-ordered pool instead of returning them to the driver
    cudaMemPool_t pool;
    FLRP_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t threshold = UINT64_MAX;
    FLRP_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
}

int get_device() {
    int d = 0;
    FLRP_CHECK(cudaGetDevice(&d));
    return d;
}

void mem_get_info(size_t* fr, size_t* tot) { FLRP_CHECK(cudaMemGetInfo(fr, tot)); }

int pointer_device(const void* p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) ? a.device : -1;
}

void* dev_malloc(size_t n, void* s) {
    void* p = nullptr;
    const size_t req = n ? n : 1;
    cudaError_t e = cudaMallocAsync(&p, req, S(s));
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        throw_oom(req, fr, tot);
    }
    FLRP_CHECK(e);
    tracker().add(p, req);
    return p;
}

void dev_free(void* p, void* s) {
    if (!p) return;
    tracker().remove(p);
    FLRP_CHECK(cudaFreeAsync(p, S(s)));
}

void set_memory_limit(size_t) { throw CudaError("set_memory_limit is only available in the SIMT emulator"); }

void* host_alloc_pinned(size_t n) {
    void* p = nullptr;
    FLRP_CHECK(cudaHostAlloc(&p, n ? n : 1, cudaHostAllocDefault));
    return p;
}
void host_free_pinned(void* p) {
    if (p) FLRP_CHECK(cudaFreeHost(p));
}

void memcpy_htod(void* d, const void* h, size_t n, void* s, bool async) {
    if (!n) return;
    FLRP_CHECK(cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, S(s)));
    if (!async) FLRP_CHECK(cudaStreamSynchronize(S(s)));
}
void memcpy_dtoh(void* h, const void* d, size_t n, void* s, bool async) {
    if (!n) return;
    FLRP_CHECK(cudaMemcpyAsync(h, d, n, cudaMemcpyDeviceToHost, S(s)));
    if (!async) FLRP_CHECK(cudaStreamSynchronize(S(s)));
}
void memcpy_dtod(void* d, const void* src, size_t n, void* s) {
    if (n) FLRP_CHECK(cudaMemcpyAsync(d, src, n, cudaMemcpyDeviceToDevice, S(s)));
}
void memset_d(void* d, int byte, size_t n, void* s) {
    if (n) FLRP_CHECK(cudaMemsetAsync(d, byte, n, S(s)));
}

void* stream_create() {
    cudaStream_t s;
    FLRP_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
}
void stream_destroy(void* s) {
    if (s) FLRP_CHECK(cudaStreamDestroy(S(s)));
}
void stream_synchronize(void* s) { FLRP_CHECK(cudaStreamSynchronize(S(s))); }
void device_synchronize() { FLRP_CHECK(cudaDeviceSynchronize()); }
void* event_create() {
    cudaEvent_t e;
    FLRP_CHECK(cudaEventCreate(&e));
    return e;
}
void event_destroy(void* e) {
    if (e) FLRP_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(e)));
}
void event_record(void* e, void* s) { FLRP_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), S(s))); }
void stream_wait_event(void* s, void* e) { FLRP_CHECK(cudaStreamWaitEvent(S(s), static_cast<cudaEvent_t>(e), 0)); }
void event_synchronize(void* e) { FLRP_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e))); }
float event_elapsed_ms(void* a, void* b) {
    float ms = 0;
    FLRP_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b)));
    return ms;
}

#else  // SIMT emulator: "device" memory is host memory

bool emulated() { return true; }
int runtime_version() { return 0; }
int driver_version() { return 0; }
int device_count() { return 1; }
std::string why_unavailable() { return ""; }
std::string device_name(int) { return "fastlrp SIMT emulator (CPU)"; }
void set_device(int dev) {
    if (dev != 0) throw CudaError("SIMT emulator: only device 0 exists");
}
int get_device() { return 0; }
namespace {
constexpr size_t kEmuTotal = size_t(1) << 34;  // what mem_get_info reports without a limit
}
void mem_get_info(size_t* fr, size_t* tot) {
    const size_t total = tracker().limit ? tracker().limit : kEmuTotal;
    *tot = total;
    *fr = total > tracker().in_use ? total - tracker().in_use : 0;
}

int pointer_device(const void*) { return 0; }  // every pointer is "device" memory here

void* dev_malloc(size_t n, void*) {
    const size_t req = n ? n : 1;
    if (tracker().limit && tracker().in_use + req > tracker().limit) {
        size_t fr, tot;
        mem_get_info(&fr, &tot);
        throw_oom(req, fr, tot);
    }
    void* p = std::aligned_alloc(256, (req + 255) / 256 * 256);
    if (!p) throw_oom(req, 0, kEmuTotal);
    tracker().add(p, req);
    return p;
}
void dev_free(void* p, void*) {
    if (!p) return;
    tracker().remove(p);
    std::free(p);
}
void set_memory_limit(size_t n) { tracker().limit = n; }

void* host_alloc_pinned(size_t n) {
    void* p = std::aligned_alloc(256, ((n ? n : 1) + 255) / 256 * 256);
    if (!p) throw std::bad_alloc();
    return p;
}
void host_free_pinned(void* p) { std::free(p); }

void memcpy_htod(void* d, const void* h, size_t n, void*, bool) {
    if (n) std::memcpy(d, h, n);
}
void memcpy_dtoh(void* h, const void* d, size_t n, void*, bool) {
    if (n) std::memcpy(h, d, n);
}
void memcpy_dtod(void* d, const void* s, size_t n, void*) {
    if (n) std::memmove(d, s, n);
}
void memset_d(void* d, int byte, size_t n, void*) {
    if (n) std::memset(d, byte, n);
}

void* stream_create() { return new int(0); }
void stream_destroy(void* s) { delete static_cast<int*>(s); }
void stream_synchronize(void*) {}
void device_synchronize() {}
void* event_create() { return new int(0); }
void event_destroy(void* e) { delete static_cast<int*>(e); }
void event_record(void*, void*) {}
void stream_wait_event(void*, void*) {}
void event_synchronize(void*) {}
float event_elapsed_ms(void*, void*) { return 0.0f; }

#endif

}  // namespace gpu
}  // namespace fastlrp
