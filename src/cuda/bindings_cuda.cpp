// pybind11 module fastlrp._cuda, compiled by the host compiler: the .cu files
// never see Python.  Importing must succeed without a GPU or driver (the CUDA
// runtime is linked statically and only looks for the driver on first use), so
// nothing here touches the device at import time.

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "../cpp/dense_binding.h"
#include "dense_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "fastlrp CUDA kernels (simple dense-layer LRP relevance; host arrays in/out).";

    m.def(
        "device_count", []() { return fastlrp::cuda::device_count(nullptr); },
        "Number of usable CUDA devices (0 without driver or GPU).");
    m.def(
        "available", []() { return fastlrp::cuda::device_count(nullptr) > 0; },
        "True when a CUDA device can be used.");
    m.def(
        "why_unavailable",
        []() {
            std::string why;
            return fastlrp::cuda::device_count(&why) > 0 ? std::string() : why;
        },
        "Reason no device is usable ('' when one is).");
    m.def("runtime_version", &fastlrp::cuda::runtime_version, "CUDA runtime version built against.");

    fastlrp::binding::def_dense_functions(m, [](const fastlrp::DenseArgs& args) {
        const std::string err = fastlrp::cuda::run_dense_relevance_host(args);
        if (!err.empty()) throw std::runtime_error("fastlrp._cuda: " + err);
    });
}
