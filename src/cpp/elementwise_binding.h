// pybind11 glue for elementwise_cpu.h (activations, per-channel affine, LayerNorm,
// softmax, stabilized quotient).  Arrays must be float32 C-contiguous; every output has
// its input's shape; sizes are checked here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "conv_binding.h"
#include "elementwise_cpu.h"
#include "gemm_binding.h"

namespace fastlrp {
namespace binding {

namespace py = pybind11;

inline py::array_t<float> like(const py::array& a) {
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    return py::array_t<float>(shape);
}

inline void same_size(const py::array& a, const py::array& b, const char* name, const char* fn) {
    if (a.size() != b.size())
        throw py::value_error(std::string(fn) + ": " + name + " has " + std::to_string(b.size()) +
                              " elements, expected " + std::to_string(a.size()));
}

inline int64_t last_axis(const py::array& x, const char* fn) {
    if (x.ndim() < 1) throw py::value_error(std::string(fn) + ": x needs at least one axis");
    return x.shape(x.ndim() - 1);
}

// The rows of a LayerNorm: x's size over C features; weight / bias of C values or None.
inline cpu::LayerNormArgs layernorm_args(const py::array& x, int64_t C, const py::object& weight,
                                         const py::object& bias, double eps, bool rms, py::array& kw, py::array& kb,
                                         const char* fn) {
    cpu::LayerNormArgs a;
    a.x = f32_ptr(x, "x", fn);
    if (C < 1 || x.size() % C) throw py::value_error(std::string(fn) + ": C must divide the size of x");
    a.C = C;
    a.rows = x.size() / C;
    a.w = opt_f32(weight, kw, "weight", fn, C);
    a.b = opt_f32(bias, kb, "bias", fn, C);
    a.eps = float(eps);
    a.rms = rms;
    return a;
}

template <class Threads>
void def_elementwise_functions(py::module_& m, Threads threads) {
    m.attr("activation_kinds") = py::make_tuple("gelu", "gelu_tanh", "silu");  // the codes of cpu::Act

    m.def(
        "activation",
        [threads](int kind, const py::array& x) {
            if (!cpu::is_act(kind)) throw py::value_error("activation: unknown kind " + std::to_string(kind));
            const float* xp = f32_ptr(x, "x", "activation");
            auto y = like(x);
            float* yp = y.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::activation_forward(cpu::Act(kind), xp, yp, x.size(), t);
            return y;
        },
        py::arg("kind"), py::arg("x"), "y = f(x) for the kinds of activation_kinds (their index).");

    m.def(
        "channel_affine",
        [threads](const py::array& x, const py::array& scale, const py::array& shift) {
            const char* fn = "channel_affine";
            const float* xp = f32_ptr(x, "x", fn);
            if (x.ndim() < 2) throw py::value_error("channel_affine: x must be (n, C, ...)");
            const int64_t C = x.shape(1);
            py::array ks, kt;
            const float* sp = opt_f32(scale, ks, "scale", fn, C);
            const float* tp = opt_f32(shift, kt, "shift", fn, C);
            auto y = like(x);
            float* yp = y.mutable_data();
            int64_t inner = 1;
            for (py::ssize_t d = 2; d < x.ndim(); ++d) inner *= x.shape(d);
            const int t = threads();
            py::gil_scoped_release release;
            cpu::channel_affine(xp, sp, tp, yp, x.shape(0), C, inner, t);
            return y;
        },
        py::arg("x"), py::arg("scale"), py::arg("shift"), "y = x * scale[c] + shift[c] along axis 1 of x.");

    m.def(
        "layernorm_forward",
        [threads](const py::array& x, int64_t C, const py::object& weight, const py::object& bias, double eps,
                  bool rms) {
            py::array kw, kb;
            auto a = layernorm_args(x, C, weight, bias, eps, rms, kw, kb, "layernorm_forward");
            auto y = like(x);
            py::array_t<float> sd({(py::ssize_t)a.rows});
            float* yp = y.mutable_data();
            float* sp = sd.mutable_data();
            const int t = threads();
            {
                py::gil_scoped_release release;
                cpu::layernorm_forward(a, yp, sp, t);
            }
            return py::make_tuple(y, sd);
        },
        py::arg("x"), py::arg("C"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("rms"),
        "(y, std) of a LayerNorm (RMSNorm with rms) over rows of C features; std has one value per row.");

    m.def(
        "layernorm_relevance",
        [threads](const py::array& x, const py::array& y, const py::array& sd, const py::object& weight,
                  const py::object& zero_bias, const py::array& R, int64_t C, double eps, bool guard_zero,
                  bool rms) {
            const char* fn = "layernorm_relevance";
            py::array kw, kb;
            auto a = layernorm_args(x, C, weight, zero_bias, 0.0, rms, kw, kb, fn);
            const float* yp = f32_ptr(y, "y", fn);
            const float* sp = f32_ptr(sd, "std", fn);
            const float* rp = f32_ptr(R, "R", fn);
            same_size(x, y, "y", fn);
            same_size(x, R, "R", fn);
            if (sd.size() != a.rows) throw py::value_error("layernorm_relevance: std needs one value per row");
            auto out = like(x);
            float* op = out.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::layernorm_relevance(a, yp, sp, rp, op, float(eps), guard_zero, t);
            return out;
        },
        py::arg("x"), py::arg("y"), py::arg("std"), py::arg("weight"), py::arg("zero_bias"), py::arg("R"),
        py::arg("C"), py::arg("eps"), py::arg("guard_zero") = false, py::arg("rms") = false,
        "x * J^T [R / s(z)] of a LayerNorm with std held constant; z = y, or y - zero_bias (the bias) when given.");

    m.def(
        "softmax_forward",
        [threads](const py::array& x) {
            const float* xp = f32_ptr(x, "x", "softmax_forward");
            const int64_t L = last_axis(x, "softmax_forward");
            auto y = like(x);
            float* yp = y.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::softmax_forward(xp, yp, L ? x.size() / L : 0, L, t);
            return y;
        },
        py::arg("x"), "Softmax along the last axis.");

    m.def(
        "softmax_taylor",
        [threads](const py::array& x, const py::array& y, const py::array& R) {
            const char* fn = "softmax_taylor";
            const float* xp = f32_ptr(x, "x", fn);
            const float* yp = f32_ptr(y, "y", fn);
            const float* rp = f32_ptr(R, "R", fn);
            same_size(x, y, "y", fn);
            same_size(x, R, "R", fn);
            const int64_t L = last_axis(x, fn);
            auto out = like(x);
            float* op = out.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::softmax_taylor(xp, yp, rp, op, L ? x.size() / L : 0, L, t);
            return out;
        },
        py::arg("x"), py::arg("y"), py::arg("R"), "x * (R - y * sum(R)) along the last axis (AttnLRP's softmax rule).");

    m.def(
        "stabilized_quotient",
        [threads](const py::array& R, const py::array& z, double eps, double factor) {
            const char* fn = "stabilized_quotient";
            const float* rp = f32_ptr(R, "R", fn);
            const float* zp = f32_ptr(z, "z", fn);
            same_size(R, z, "z", fn);
            auto g = like(R);
            float* gp = g.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::stabilized_quotient(rp, zp, gp, R.size(), float(eps), float(factor), t);
            return g;
        },
        py::arg("R"), py::arg("z"), py::arg("eps"), py::arg("factor") = 1.0, "R / (s(z) * factor).");

    m.def(
        "norm_shares",
        [threads](const py::array& R, const py::array& z, const py::list& xs, double eps, bool guard_zero) {
            const char* fn = "norm_shares";
            const float* rp = f32_ptr(R, "R", fn);
            const float* zp = f32_ptr(z, "z", fn);
            same_size(R, z, "z", fn);
            std::vector<py::array> keep;
            std::vector<const float*> xp;
            std::vector<float*> op;
            py::list outs;
            for (const auto& item : xs) {
                keep.push_back(py::reinterpret_borrow<py::array>(item));
                xp.push_back(f32_ptr(keep.back(), "an input", fn));
                same_size(R, keep.back(), "an input", fn);
                auto o = like(R);
                op.push_back(o.mutable_data());
                outs.append(o);
            }
            const int t = threads();
            {
                py::gil_scoped_release release;
                cpu::norm_shares(rp, zp, xp.data(), op.data(), int64_t(xp.size()), R.size(), float(eps), guard_zero, t);
            }
            return outs;
        },
        py::arg("R"), py::arg("z"), py::arg("xs"), py::arg("eps"), py::arg("guard_zero") = false,
        "[x * R / s(z) for x in xs]: Norm's shares of the sum z; guard_zero: s(z) is z with exact zeros "
        "replaced by eps.");
}

}  // namespace binding
}  // namespace fastlrp
