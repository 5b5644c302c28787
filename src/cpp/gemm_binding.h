// pybind11 glue for the GEMM core (fastlrp._core): packed weights, the conv GEMM
// and a plain GEMM.  Validates shapes/dtypes, fills ConvGemmArgs, releases the GIL.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <memory>
#include <string>

#include "gemm.h"

namespace fastlrp {
namespace binding {

namespace py = pybind11;
using cpu::PackedA;

inline const float* f32_ptr(const py::array& a, const char* name, const char* fn, int ndim = -1) {
    if (!a.dtype().equal(py::dtype::of<float>()))
        throw py::type_error(std::string(fn) + ": " + name + " must be float32, got " + std::string(py::str(a.dtype())));
    if (ndim >= 0 && a.ndim() != ndim)
        throw py::value_error(std::string(fn) + ": " + name + " must have " + std::to_string(ndim) + " dimensions, got " +
                              std::to_string(a.ndim()));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous");
    return static_cast<const float*>(a.data());
}


// Image geometry of a conv GEMM: (kh, kw), (sh, sw), (ph, pw) before, (dh, dw), (oh, ow).
using Pair = std::array<int64_t, 2>;

// Window geometry from Python: kernel sizes, strides and dilations >= 1, output sizes >= 0 and
// paddings >= 0 unless crop (conv_gemm: the implicit backward of a conv padded by more than
// its kernel's reach crops; every tap is bounds-checked, so any padding is memory-safe there).
inline void check_window(const char* fn, Pair kernel, Pair stride, Pair pad, Pair dil, Pair out_hw,
                         bool crop = false) {
    for (int i = 0; i < 2; ++i) {
        if (kernel[i] < 1 || stride[i] < 1 || dil[i] < 1)
            throw py::value_error(std::string(fn) + ": kernel sizes, strides and dilations must be >= 1");
        if (pad[i] < 0 && !crop) throw py::value_error(std::string(fn) + ": paddings must be >= 0");
        if (out_hw[i] < 0) throw py::value_error(std::string(fn) + ": negative output size");
    }
}

inline py::object run_conv_gemm(const py::array& x, const PackedA& A, Pair kernel, Pair stride, Pair pad,
                                Pair dil, Pair out_hw, int sign, int epi, const py::object& bias,
                                const py::object& mul, const py::object& off, int threads, int64_t split = 0,
                                const py::object& qz = py::none(), const py::object& qb = py::none(),
                                float qeps = 0.0f) {
    const char* fn = "conv_gemm";
    cpu::ConvGemmArgs a;
    a.x = f32_ptr(x, "x", fn, 4);
    a.n = x.shape(0);
    a.c = x.shape(1);
    a.h = x.shape(2);
    a.w = x.shape(3);
    a.kh = kernel[0], a.kw = kernel[1], a.sh = stride[0], a.sw = stride[1];
    a.ph = pad[0], a.pw = pad[1], a.dh = dil[0], a.dw = dil[1], a.oh = out_hw[0], a.ow = out_hw[1];
    check_window(fn, kernel, stride, pad, dil, out_hw, /*crop=*/true);
    if (sign < 0 || sign > 2) throw py::value_error("conv_gemm: sign must be 0 (x), 1 ([x+; x-]) or 2 (|x|)");
    a.sign = cpu::Sign(sign);
    a.A = &A;
    a.epi = Epi(epi);  // checked by cpu::conv_gemm
    const int64_t O = A.groups * A.m;
    if (split < 0 || split >= O || (split > 0 && A.groups != 1))
        throw py::value_error("conv_gemm: split must be 0 or in (0, rows) with groups == 1");
    py::array_t<float> y({a.n, split ? split : O, a.oh, a.ow});
    py::array_t<float> y2;
    if (split) {
        y2 = py::array_t<float>({a.n, O - split, a.oh, a.ow});
        a.y2 = y2.mutable_data();
        a.split = split;
    }
    py::array b_arr, m_arr, o_arr;
    if (!bias.is_none()) {
        b_arr = py::reinterpret_borrow<py::array>(bias);
        a.bias = f32_ptr(b_arr, "bias", fn, 1);
        if (b_arr.shape(0) != (split ? split : O))
            throw py::value_error("conv_gemm: bias must have one value per output channel");
    }
    if (!mul.is_none()) {
        m_arr = py::reinterpret_borrow<py::array>(mul);
        a.mul = f32_ptr(m_arr, "mul", fn);
        if (split || m_arr.size() != y.size()) throw py::value_error("conv_gemm: mul must have the output's size");
    }
    if (!off.is_none()) {
        o_arr = py::reinterpret_borrow<py::array>(off);
        a.off = f32_ptr(o_arr, "off", fn);
        if (split || (a.n && o_arr.size() != y.size() / a.n))
            throw py::value_error("conv_gemm: off must have one sample's size");
    }
    py::array qz_arr, qb_arr;
    if (!qz.is_none()) {
        qz_arr = py::reinterpret_borrow<py::array>(qz);
        a.qz = f32_ptr(qz_arr, "qz", fn);
        if (qz_arr.size() != x.size()) throw py::value_error("conv_gemm: qz must have x's size");
        a.qeps = qeps;
        if (!qb.is_none()) {
            qb_arr = py::reinterpret_borrow<py::array>(qb);
            a.qb = f32_ptr(qb_arr, "qb", fn, 1);
            if (qb_arr.shape(0) != a.c) throw py::value_error("conv_gemm: qb must have one value per input channel");
        }
    }
    a.y = y.mutable_data();
    {
        py::gil_scoped_release release;
        try {
            cpu::conv_gemm(a, threads);
        } catch (const std::invalid_argument& e) {
            py::gil_scoped_acquire acq;
            throw py::value_error(e.what());
        }
    }
    if (split) return py::make_tuple(y, y2);
    return std::move(y);
}

template <class Threads>
void def_gemm_functions(py::module_& m, Threads threads) {
    py::class_<PackedA, std::shared_ptr<PackedA>>(m, "PackedWeights",
                                                   "Model-constant left operand packed into micro-panels")
        .def_property_readonly("groups", [](const PackedA& p) { return p.groups; })
        .def_property_readonly("m", [](const PackedA& p) { return p.m; })
        .def_property_readonly("k", [](const PackedA& p) { return p.k; })
        .def_property_readonly("isa", [](const PackedA& p) { return std::string(cpu::isa_name(p.isa)); })
        .def_property_readonly("rows", [](const PackedA& p) { return p.rows; })
        .def_property_readonly("nbytes", [](const PackedA& p) {
            return (p.raw ? p.groups * p.m * p.k : p.groups * p.gstride) * 4;
        });

    m.def(
        "pack_weights",
        [](const py::array& A, int64_t groups, const std::string& precision, bool rows) {
            const float* p = f32_ptr(A, "A", "pack_weights", 2);
            if (groups < 1 || A.shape(0) % groups != 0)
                throw py::value_error("pack_weights: rows must be divisible by groups");
            if (precision != "float32" && precision != "bf16")
                throw py::value_error("pack_weights: precision must be 'float32' or 'bf16', got '" + precision + "'");
            const int64_t m = A.shape(0) / groups, k = A.shape(1);
            py::gil_scoped_release release;
            return cpu::pack_a(p, groups, m, k, precision == "bf16", rows);
        },
        py::arg("A"), py::arg("groups") = 1, py::arg("precision") = "float32", py::arg("rows") = false,
        "Packs A ((groups * m) x k, float32) for the active micro-kernel; precision 'bf16': for the "
        "AMX-BF16 kernel (A and B rounded to bfloat16, float32 sums; RuntimeError where unavailable). "
        "rows: for conv_gemm on S images of 1x1 with a 1x1 kernel only (a dense layer; tiles of samples x "
        "features), where the kernel has that driver (groups 1); .rows tells.");

    m.def(
        "conv_gemm",
        [threads](const py::array& x, const PackedA& A, Pair kernel, Pair stride, Pair pad, Pair dil, Pair out_hw,
                  int sign, int epi, const py::object& bias, const py::object& mul, const py::object& off,
                  int64_t split, const py::object& qz, const py::object& qb, float qeps) {
            return run_conv_gemm(x, A, kernel, stride, pad, dil, out_hw, sign, epi, bias, mul, off, threads(), split,
                                 qz, qb, qeps);
        },
        py::arg("x"), py::arg("A"), py::arg("kernel"), py::arg("stride"), py::arg("pad"), py::arg("dilation"),
        py::arg("out_hw"), py::arg("sign") = 0, py::arg("epi") = int(Epi::None), py::arg("bias") = py::none(),
        py::arg("mul") = py::none(), py::arg("off") = py::none(), py::arg("split") = 0, py::arg("qz") = py::none(),
        py::arg("qb") = py::none(), py::arg("qeps") = 0.0f,
        "y[n, g*m+i, p] = epi(sum_k A_g[i,k] im2col(T(x))_g[k, (n,p)]); sign 1 packs [x+; x-] along K, sign 2 packs |x|. "
        "split > 0 returns (rows < split with the epilogue, rows >= split raw) from one GEMM. "
        "qz (weights packed with rows=True): the product of the Epsilon quotient x / s(qz - qb) instead of x.");

    m.def(
        "gemm",
        [threads](const py::array& A, const py::array& B) {
            const float* pa = f32_ptr(A, "A", "gemm", 2);
            const float* pb = f32_ptr(B, "B", "gemm", 2);
            if (A.shape(1) != B.shape(0)) throw py::value_error("gemm: inner dimensions differ");
            const int64_t M = A.shape(0), K = A.shape(1), N = B.shape(1);
            py::array_t<float> C({M, N});
            float* pc = C.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::gemm_f32(pa, pb, pc, M, N, K, t);
            return C;
        },
        py::arg("A"), py::arg("B"), "C = A @ B in float32 with the packed GEMM (A packed on each call).");

    m.def(
        "gemm_packed",
        [threads](const PackedA& A, const py::array& B) {
            const float* pb = f32_ptr(B, "B", "gemm_packed", 2);
            if (A.groups != 1 || A.k != B.shape(0)) throw py::value_error("gemm_packed: inner dimensions differ");
            const int64_t N = B.shape(1);
            py::array_t<float> C({A.m, N});
            cpu::ConvGemmArgs a;
            a.x = pb, a.n = 1, a.c = A.k, a.h = 1, a.w = N, a.oh = 1, a.ow = N, a.A = &A, a.y = C.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::conv_gemm(a, t);
            return C;
        },
        py::arg("A"), py::arg("B"), "C = A @ B with A already packed (the timing of the kernels proper).");

    m.def("set_isa", [](int isa) { return cpu::set_isa(isa); }, py::arg("isa"),
          "Force the micro-kernel (0 generic, 1 avx2, 2 avx512, -1 automatic); False if unavailable.");
    m.def("active_isa", []() { return std::string(cpu::isa_name(cpu::active_isa())); });
    m.def("bf16_unavailable", &cpu::bf16_unavailable,
          "'' when the bfloat16 GEMM (AMX-BF16 or AVX512_BF16) can run here, else why not; asks Linux for the "
          "AMX tile state.");
    m.def(
        "set_bf16_kernel",
        [](const std::string& name) {
            if (name.empty()) return cpu::set_bf16_isa(-1);
            for (const auto isa : {cpu::Isa::AmxBf16, cpu::Isa::Avx512Bf16})
                if (name == cpu::isa_name(isa)) return cpu::set_bf16_isa(int(isa));
            throw py::value_error("set_bf16_kernel: '" + name + "' is not amx_bf16, avx512_bf16 or ''");
        },
        py::arg("name"),
        "Force the kernel of precision 'bf16' packs ('amx_bf16', 'avx512_bf16'; '': automatic); False if it "
        "cannot run here.");
    m.def("bf16_kernel", []() { return std::string(cpu::isa_name(cpu::bf16_isa())); },
          "The kernel precision 'bf16' packs for (meaningful where bf16_unavailable() is '').");
    m.def("gemm_info", []() {
        py::dict d;
        py::list compiled, supported;
        for (int i = 0; i < 3; ++i) {
            if (cpu::isa_compiled(cpu::Isa(i))) compiled.append(cpu::isa_name(cpu::Isa(i)));
            if (cpu::isa_supported(cpu::Isa(i))) supported.append(cpu::isa_name(cpu::Isa(i)));
        }
        d["compiled"] = compiled;
        d["supported"] = supported;
        d["active"] = cpu::isa_name(cpu::active_isa());
        d["bf16"] = cpu::bf16_unavailable().empty() ? cpu::isa_name(cpu::bf16_isa()) : "";  // precision 'bf16'
        const auto b = cpu::blocking_of(cpu::active_isa());
        d["mr"] = b.mr, d["nr"] = b.nr, d["kc"] = b.kc, d["mc"] = b.mc, d["nc"] = b.nc;
        return d;
    });
}

}  // namespace binding
}  // namespace fastlrp
