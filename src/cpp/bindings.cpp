// pybind11 module fastlrp._core: the CPU kernels plus build/thread information.
// Validation and argument filling live in dense_binding.h (shared with _cuda).

#include <pybind11/pybind11.h>

#include <string>

#include "dense_binding.h"
#include "dense_cpu.h"

namespace py = pybind11;

namespace {

std::string compiler_string() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    return "msvc " + std::to_string(_MSC_VER);
#else
    return "unknown";
#endif
}

py::dict build_info() {
    py::dict d;
    d["compiler"] = compiler_string();
    d["openmp"] = fastlrp::cpu::has_openmp();
#ifdef _OPENMP
    d["openmp_version"] = int(_OPENMP);
#else
    d["openmp_version"] = py::none();
#endif
    py::list simd;
    simd.append("generic");  // portable C++ path, auto-vectorised for the baseline ISA
    d["simd_paths"] = simd;
    py::dict cpu;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    cpu["avx2"] = bool(__builtin_cpu_supports("avx2"));
    cpu["fma"] = bool(__builtin_cpu_supports("fma"));
    cpu["avx512f"] = bool(__builtin_cpu_supports("avx512f"));
#endif
    d["cpu_features"] = cpu;
    d["num_threads"] = fastlrp::cpu::get_num_threads();
    d["accumulation"] = "forward sums float64, backward sums float32";
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastlrp compiled CPU kernels (dense-layer LRP relevance).";

    m.def("build_info", &build_info, "Compiler, OpenMP, SIMD paths and thread count of this build.");
    m.def("set_num_threads", &fastlrp::cpu::set_num_threads, py::arg("n"),
          "Threads used by the kernels; n <= 0 restores OpenMP's default.");
    m.def("get_num_threads", &fastlrp::cpu::get_num_threads);

    fastlrp::binding::def_dense_functions(m, [](const fastlrp::DenseArgs& args) {
        fastlrp::cpu::run_dense_relevance(args);
    });
}
