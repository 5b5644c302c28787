// Python bindings of the GPU engine's kernels and runtime.  The same file builds
// two modules (FASTLRP_GPU_MODULE): fastlrp._cuda (nvcc kernels, the CUDA
// runtime) and fastlrp._cuda_emu (the same kernels under the host SIMT emulator).
// Device pointers cross as Python ints; fastlrp.backends.cuda owns them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "api_runtime.h"
#include "code_tables.h"
#include "bind_elem.h"
#include "bind_gemm.h"

#ifndef FASTLRP_GPU_MODULE
#error "define FASTLRP_GPU_MODULE (_cuda or _cuda_emu)"
#endif

namespace py = pybind11;
namespace gpu = fastlrp::gpu;

namespace {

void* P(uintptr_t p) { return reinterpret_cast<void*>(p); }
uintptr_t I(const void* p) { return reinterpret_cast<uintptr_t>(p); }

py::buffer_info host_buffer(const py::array& a, bool writable, const char* fn) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) + ": the host array must be C-contiguous");
    if (writable && !a.writeable()) throw py::value_error(std::string(fn) + ": the host array is read-only");
    return a.request(writable);
}

void bind_runtime(py::module_& m) {
    static py::exception<gpu::OutOfMemory> oom(m, "OutOfMemoryError", PyExc_MemoryError);
    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const gpu::OutOfMemory& e) {
            py::object exc = py::handle(oom.ptr())(e.what());
            exc.attr("requested") = e.requested;
            exc.attr("free") = e.free_bytes;
            exc.attr("total") = e.total_bytes;
            PyErr_SetObject(oom.ptr(), exc.ptr());
        }
    });
    m.attr("emulated") = gpu::emulated();
    m.def("available", [] { return gpu::device_count() > 0; }, "True when a device can run the kernels.");
    m.def("why_unavailable", &gpu::why_unavailable);
    m.def("runtime_version", &gpu::runtime_version);
    m.def("driver_version", &gpu::driver_version);
    m.def("device_count", &gpu::device_count);
    m.def("device_name", &gpu::device_name, py::arg("device") = 0);
    m.def("set_device", &gpu::set_device, py::arg("device"));
    m.def("get_device", &gpu::get_device);
    m.def("mem_get_info", [] {
        size_t f = 0, t = 0;
        gpu::mem_get_info(&f, &t);
        return py::make_tuple(f, t);
    }, "(free, total) bytes of the current device.");
    m.def("pointer_device", [](uintptr_t p) { return gpu::pointer_device(P(p)); }, py::arg("ptr"),
          "The device holding this pointer's memory, -1 for host memory.");
    m.def("malloc", [](size_t n, uintptr_t s) { return I(gpu::dev_malloc(n, P(s))); }, py::arg("nbytes"),
          py::arg("stream") = 0, "Stream-ordered device allocation; raises OutOfMemoryError with the sizes.");
    m.def("free", [](uintptr_t p, uintptr_t s) { gpu::dev_free(P(p), P(s)); }, py::arg("ptr"), py::arg("stream") = 0);
    m.def("bytes_in_use", &gpu::bytes_in_use);
    m.def("peak_bytes", &gpu::peak_bytes);
    m.def("reset_peak", &gpu::reset_peak);
    m.def("set_memory_limit", &gpu::set_memory_limit, py::arg("nbytes"),
          "Emulator only: allocations beyond nbytes raise OutOfMemoryError (0: no limit).");
    m.def("pinned_empty", [](size_t n) {
        void* p = gpu::host_alloc_pinned(n);
        py::capsule owner(p, [](void* q) { gpu::host_free_pinned(q); });
        return py::array_t<uint8_t>({py::ssize_t(n)}, {py::ssize_t(1)}, static_cast<uint8_t*>(p), owner);
    }, py::arg("nbytes"), "A page-locked host buffer (uint8 array) for asynchronous copies.");
    m.def("memcpy_htod", [](uintptr_t dst, const py::array& src, uintptr_t s, bool async) {
        auto b = host_buffer(src, false, "memcpy_htod");
        const size_t n = size_t(b.size) * size_t(b.itemsize);
        if (async) {
            gpu::memcpy_htod(P(dst), b.ptr, n, P(s), true);
        } else {
            py::gil_scoped_release r;
            gpu::memcpy_htod(P(dst), b.ptr, n, P(s), false);
        }
    }, py::arg("dst"), py::arg("src"), py::arg("stream") = 0, py::arg("async_") = false,
       "Copy a C-contiguous host array to device memory (async_ needs a pinned source kept alive).");
    m.def("memcpy_dtoh", [](py::array& dst, uintptr_t src, uintptr_t s, bool async) {
        auto b = host_buffer(dst, true, "memcpy_dtoh");
        const size_t n = size_t(b.size) * size_t(b.itemsize);
        if (async) {
            gpu::memcpy_dtoh(b.ptr, P(src), n, P(s), true);
        } else {
            py::gil_scoped_release r;
            gpu::memcpy_dtoh(b.ptr, P(src), n, P(s), false);
        }
    }, py::arg("dst"), py::arg("src"), py::arg("stream") = 0, py::arg("async_") = false);
    m.def("memcpy_dtod", [](uintptr_t d, uintptr_t src, size_t n, uintptr_t s) { gpu::memcpy_dtod(P(d), P(src), n, P(s)); },
          py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("stream") = 0);
    m.def("memset", [](uintptr_t d, int byte, size_t n, uintptr_t s) { gpu::memset_d(P(d), byte, n, P(s)); },
          py::arg("dst"), py::arg("byte"), py::arg("nbytes"), py::arg("stream") = 0);
    m.def("stream_create", [] { return I(gpu::stream_create()); });
    m.def("stream_destroy", [](uintptr_t s) { gpu::stream_destroy(P(s)); });
    m.def("stream_synchronize", [](uintptr_t s) {
        py::gil_scoped_release r;
        gpu::stream_synchronize(P(s));
    }, py::arg("stream") = 0);
    m.def("synchronize", [] {
        py::gil_scoped_release r;
        gpu::device_synchronize();
    });
    m.def("event_create", [] { return I(gpu::event_create()); });
    m.def("event_destroy", [](uintptr_t e) { gpu::event_destroy(P(e)); });
    m.def("event_record", [](uintptr_t e, uintptr_t s) { gpu::event_record(P(e), P(s)); }, py::arg("event"),
          py::arg("stream") = 0);
    m.def("stream_wait_event", [](uintptr_t s, uintptr_t e) { gpu::stream_wait_event(P(s), P(e)); });
    m.def("simt_selftest", [](int mode, int blocks) {
        if (mode < 0 || mode > 2 || blocks < 1) throw py::value_error("simt_selftest: mode 0..2, blocks >= 1");
        if (mode > 0 && !gpu::emulated())
            throw py::value_error("simt_selftest: modes 1 and 2 break the barrier rules; emulator only");
        return gpu::run_simt_selftest(mode, blocks);
    }, py::arg("mode"), py::arg("blocks") = 3);
    m.def("event_synchronize", [](uintptr_t e) {
        py::gil_scoped_release r;
        gpu::event_synchronize(P(e));
    });
    m.def("event_elapsed_ms", [](uintptr_t a, uintptr_t b) { return gpu::event_elapsed_ms(P(a), P(b)); });
}

}  // namespace

PYBIND11_MODULE(FASTLRP_GPU_MODULE, m) {
    m.doc() = "fastlrp GPU kernels and device runtime (pointer-level; use fastlrp.backends.cuda)";
    bind_runtime(m);
    fastlrp::binding::def_code_tables(m);
    fastlrp::gpu::bind_gemm(m);
    fastlrp::gpu::bind_elem(m);
}
