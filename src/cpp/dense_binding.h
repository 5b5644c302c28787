// Shared pybind11 glue for dense relevance entry points (host compiler only).
//
// Both fastlrp._core and fastlrp._cuda register the same dense_* functions with
// the same validation; only the runner that executes a filled DenseArgs differs.
// Arrays must already be float32 and C-contiguous: the binding never converts
// silently (the Python backend does that, visibly); a wrong array raises
// TypeError/ValueError naming the function and the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "rules.h"

namespace fastlrp {
namespace binding {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        s += std::to_string(a.shape(d));
        if (d + 1 < a.ndim() || a.ndim() == 1) s += ",";
        if (d + 1 < a.ndim()) s += " ";
    }
    return s + ")";
}

inline const float* check_f32(const py::array& a, const char* name, const char* fn, int ndim) {
    if (!a.dtype().equal(py::dtype::of<float>())) {
        throw py::type_error(std::string(fn) + ": " + name + " must be a float32 array, got dtype " +
                             std::string(py::str(a.dtype())));
    }
    if (a.ndim() != ndim) {
        throw py::value_error(std::string(fn) + ": " + name + " must have " + std::to_string(ndim) +
                              " dimension(s), got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(fn) + ": " + name +
                              " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    return static_cast<const float*>(a.data());
}

inline double check_eps(double v, const char* name, const char* fn) {
    if (!(v >= 0.0) || v > 1e300) {
        throw py::value_error(std::string(fn) + ": " + name + " must be a finite number >= 0");
    }
    return v;
}

// Common part of every dense_* entry point: x (N, in), W (out, in), b (out,) or
// None, R (N, out).  Returns a freshly allocated R_in (N, in).  runner(args) runs
// without the GIL.
template <class Runner>
py::array_t<float> run_dense(const Runner& runner, const char* fn, RuleKind kind, const py::array& x, const py::array& W,
                             const py::object& bias, const py::array& R, RuleCoefs coefs,
                             const py::object& low = py::none(), const py::object& high = py::none()) {
    DenseArgs args;
    args.kind = kind;
    args.x = check_f32(x, "x", fn, 2);
    args.W = check_f32(W, "W", fn, 2);
    args.R = check_f32(R, "R", fn, 2);
    const int64_t N = x.shape(0), I = x.shape(1), O = W.shape(0);
    if (W.shape(1) != I) {
        throw py::value_error(std::string(fn) + ": W has shape " + shape_str(W) + " but x has shape " +
                              shape_str(x) + "; expected W of shape (out, " + std::to_string(I) + ")");
    }
    if (R.shape(0) != N || R.shape(1) != O) {
        throw py::value_error(std::string(fn) + ": R has shape " + shape_str(R) + ", expected (" +
                              std::to_string(N) + ", " + std::to_string(O) + ") = (batch, out_features)");
    }
    py::array b_arr, l_arr, h_arr;  // keep references alive while the GIL is released
    if (!bias.is_none()) {
        if (!py::isinstance<py::array>(bias)) {
            throw py::type_error(std::string(fn) + ": b must be a float32 numpy array or None");
        }
        b_arr = py::reinterpret_borrow<py::array>(bias);
        args.bias = check_f32(b_arr, "b", fn, 1);
        if (b_arr.shape(0) != O) {
            throw py::value_error(std::string(fn) + ": b has shape " + shape_str(b_arr) + ", expected (" +
                                  std::to_string(O) + ",)");
        }
    }
    if (kind == RuleKind::ZBox) {
        if (!py::isinstance<py::array>(low) || !py::isinstance<py::array>(high)) {
            throw py::type_error(std::string(fn) + ": low and high must be float32 arrays of shape (in,)");
        }
        l_arr = py::reinterpret_borrow<py::array>(low);
        h_arr = py::reinterpret_borrow<py::array>(high);
        args.low = check_f32(l_arr, "low", fn, 1);
        args.high = check_f32(h_arr, "high", fn, 1);
        if (l_arr.shape(0) != I || h_arr.shape(0) != I) {
            throw py::value_error(std::string(fn) + ": low/high have shapes " + shape_str(l_arr) + "/" +
                                  shape_str(h_arr) + ", expected (" + std::to_string(I) +
                                  ",); broadcast them before the call");
        }
    }
    coefs.n_flat = double(I);
    args.coefs = coefs;
    args.n = N;
    args.in_features = I;
    args.out_features = O;
    py::array_t<float> out({N, I});
    args.r_in = out.mutable_data();
    {
        py::gil_scoped_release release;
        runner(args);
    }
    return out;
}

inline RuleCoefs coefs_eps(double eps) {
    RuleCoefs c;
    c.eps = eps;
    return c;
}

inline py::object maybe_bias(const py::object& b, bool zero_bias) { return zero_bias ? py::none() : b; }

// Registers dense_epsilon, dense_zplus, ... on m, all executed by runner.
template <class Runner>
void def_dense_functions(py::module_& m, Runner runner) {
    m.def(
        "dense_epsilon",
        [runner](const py::array& x, const py::array& W, const py::object& b, const py::array& R, double epsilon,
           bool zero_bias) {
            return run_dense(runner, "dense_epsilon", RuleKind::Epsilon, x, W, maybe_bias(b, zero_bias), R,
                             coefs_eps(check_eps(epsilon, "epsilon", "dense_epsilon")));
        },
        py::arg("x"), py::arg("W"), py::arg("b"), py::arg("R"), py::arg("epsilon") = 1e-6,
        py::arg("zero_bias") = false, "R_in = x * W^T [R / s(W x + b)]");

    m.def(
        "dense_zplus",
        [runner](const py::array& x, const py::array& W, const py::object& b, const py::array& R, double stabilizer,
           bool zero_bias) {
            return run_dense(runner, "dense_zplus", RuleKind::ZPlus, x, W, maybe_bias(b, zero_bias), R,
                             coefs_eps(check_eps(stabilizer, "stabilizer", "dense_zplus")));
        },
        py::arg("x"), py::arg("W"), py::arg("b"), py::arg("R"), py::arg("stabilizer") = 1e-6,
        py::arg("zero_bias") = false, "z+ = W+x+ + W-x- + b+; R_in = x+ W+^T g + x- W-^T g, g = R / s(z+)");

    m.def(
        "dense_alphabeta",
        [runner](const py::array& x, const py::array& W, const py::object& b, const py::array& R, double alpha,
           double beta, double stabilizer, bool zero_bias) {
            auto c = coefs_eps(check_eps(stabilizer, "stabilizer", "dense_alphabeta"));
            c.alpha = check_eps(alpha, "alpha", "dense_alphabeta");
            c.beta = check_eps(beta, "beta", "dense_alphabeta");
            return run_dense(runner, "dense_alphabeta", RuleKind::AlphaBeta, x, W, maybe_bias(b, zero_bias), R, c);
        },
        py::arg("x"), py::arg("W"), py::arg("b"), py::arg("R"), py::arg("alpha") = 2.0, py::arg("beta") = 1.0,
        py::arg("stabilizer") = 1e-6, py::arg("zero_bias") = false,
        "R_in = a (x+ W+^T ga + x- W-^T ga) - b (x+ W-^T gb + x- W+^T gb)");

    m.def(
        "dense_gamma",
        [runner](const py::array& x, const py::array& W, const py::object& b, const py::array& R, double gamma,
           double stabilizer, bool zero_bias) {
            auto c = coefs_eps(check_eps(stabilizer, "stabilizer", "dense_gamma"));
            c.gamma = check_eps(gamma, "gamma", "dense_gamma");
            return run_dense(runner, "dense_gamma", RuleKind::Gamma, x, W, maybe_bias(b, zero_bias), R, c);
        },
        py::arg("x"), py::arg("W"), py::arg("b"), py::arg("R"), py::arg("gamma") = 0.25,
        py::arg("stabilizer") = 1e-6, py::arg("zero_bias") = false, "Gamma rule with zennit's sign handling");

    m.def(
        "dense_zbox",
        [runner](const py::array& x, const py::array& W, const py::array& R, const py::object& low,
           const py::object& high, double stabilizer) {
            return run_dense(runner, "dense_zbox", RuleKind::ZBox, x, W, py::none(), R,
                             coefs_eps(check_eps(stabilizer, "stabilizer", "dense_zbox")), low, high);
        },
        py::arg("x"), py::arg("W"), py::arg("R"), py::arg("low"), py::arg("high"), py::arg("stabilizer") = 1e-6,
        "zB = Wx - W+ l - W- h; R_in = x W^T g - l W+^T g - h W-^T g, g = R / s(zB); low/high of shape (in,)");

    m.def(
        "dense_flat",
        [runner](const py::array& x, const py::array& W, const py::array& R, double stabilizer) {
            return run_dense(runner, "dense_flat", RuleKind::Flat, x, W, py::none(), R,
                             coefs_eps(check_eps(stabilizer, "stabilizer", "dense_flat")));
        },
        py::arg("x"), py::arg("W"), py::arg("R"), py::arg("stabilizer") = 1e-6,
        "R_in = 1^T [R / s(in_features)]; x only gives the shape");

    m.def(
        "dense_wsquare",
        [runner](const py::array& x, const py::array& W, const py::object& b, const py::array& R, double stabilizer,
           bool zero_bias) {
            return run_dense(runner, "dense_wsquare", RuleKind::WSquare, x, W, maybe_bias(b, zero_bias), R,
                             coefs_eps(check_eps(stabilizer, "stabilizer", "dense_wsquare")));
        },
        py::arg("x"), py::arg("W"), py::arg("b"), py::arg("R"), py::arg("stabilizer") = 1e-6,
        py::arg("zero_bias") = false, "R_in = (W^2)^T [R / s(W^2 1 + b^2)]; x only gives the shape");
}

}  // namespace binding
}  // namespace fastlrp
