// pybind11 module fastlrp._core: the CPU kernels plus build/thread information.

#include <pybind11/pybind11.h>

#include <string>

#include "code_tables.h"
#include "conv_binding.h"
#include "elementwise_binding.h"
#include "threads.h"
#include "gemm.h"
#include "gemm_binding.h"
#include "matmul_binding.h"

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
    for (int i = 0; i < 3; ++i)
        if (fastlrp::cpu::isa_compiled(fastlrp::cpu::Isa(i))) simd.append(fastlrp::cpu::isa_name(fastlrp::cpu::Isa(i)));
    d["simd_paths"] = simd;  // GEMM micro-kernels built into this module
    d["gemm_kernel"] = fastlrp::cpu::isa_name(fastlrp::cpu::active_isa());  // the one this CPU runs
    py::dict cpu;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    cpu["avx2"] = bool(__builtin_cpu_supports("avx2"));
    cpu["fma"] = bool(__builtin_cpu_supports("fma"));
    cpu["avx512f"] = bool(__builtin_cpu_supports("avx512f"));
#endif
    d["cpu_features"] = cpu;
    d["num_threads"] = fastlrp::cpu::get_num_threads();
    d["accumulation"] = "float32 (GEMM core)";
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastlrp compiled CPU kernels: GEMM core, conv/dense relevance epilogues, pooling, transformer elementwise ops.";

    m.def("build_info", &build_info, "Compiler, OpenMP, SIMD paths and thread count of this build.");
    m.def(
        "set_num_threads",
        [](int n) {
            if (n > fastlrp::cpu::kMaxThreads)
                throw py::value_error("set_num_threads: " + std::to_string(n) + " threads is more than the " +
                                      std::to_string(fastlrp::cpu::kMaxThreads) + " the kernels allow");
            fastlrp::cpu::set_num_threads(n);
        },
        py::arg("n"), "Threads used by the kernels (at most kMaxThreads); n <= 0 restores OpenMP's default.");
    m.def("get_num_threads", &fastlrp::cpu::get_num_threads);
    fastlrp::binding::def_code_tables(m);

    // The GEMM core and the conv/pool kernels behind backends/cpu.py.
    const auto threads = []() { return fastlrp::cpu::get_num_threads(); };
    fastlrp::binding::def_gemm_functions(m, threads);
    fastlrp::binding::def_conv_functions(m, threads);
    fastlrp::binding::def_elementwise_functions(m, threads);
    fastlrp::binding::def_matmul_functions(m, threads);
}
