// pybind11 glue for conv_cpu.h (rule epilogues: g from the forward sums; col2im)
// and pool_cpu.h (max pooling).  Arrays must be float32 C-contiguous; shapes are checked here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "conv_cpu.h"
#include "pool_cpu.h"
#include "gemm_binding.h"

namespace fastlrp {
namespace binding {

namespace py = pybind11;

inline const float* opt_f32(const py::object& o, py::array& keep, const char* name, const char* fn, int64_t size) {
    if (o.is_none()) return nullptr;
    keep = py::reinterpret_borrow<py::array>(o);
    const float* p = f32_ptr(keep, name, fn);
    if (size >= 0 && keep.size() != size)
        throw py::value_error(std::string(fn) + ": " + name + " has " + std::to_string(keep.size()) +
                              " elements, expected " + std::to_string(size));
    return p;
}

template <class Threads>
void def_conv_functions(py::module_& m, Threads threads) {
    m.def(
        "rule_g",
        [threads](int kind, const py::array& R, const py::object& out, const py::object& psum, const py::object& bias,
                  const py::object& zc, int64_t groups, double eps, double alpha, double beta, double gamma,
                  bool zero_bias, bool flat_group_sum, bool sumdiff) {
            const char* fn = "rule_g";
            cpu::RuleGArgs a;
            if (!is_rule_kind(kind)) throw py::value_error("rule_g: unknown rule kind " + std::to_string(kind));
            a.kind = RuleKind(kind);
            a.R = f32_ptr(R, "R", fn);
            if (R.ndim() < 2) throw py::value_error("rule_g: R must be (n, O, ...)");
            a.n = R.shape(0);
            a.O = R.shape(1);
            a.P = 1;  // from the shape, not R.size() / (n * O): an empty batch has no rows to divide by
            for (py::ssize_t d = 2; d < R.ndim(); ++d) a.P *= R.shape(d);
            if (groups < 1 || a.O % groups) throw py::value_error("rule_g: O not divisible by groups");
            a.groups = groups;
            py::array ko, kp, kb, kz;
            a.out = opt_f32(out, ko, "out", fn, R.size());
            a.psum = opt_f32(psum, kp, "psum", fn, R.size());
            a.bias = opt_f32(bias, kb, "bias", fn, a.O);
            a.zc = opt_f32(zc, kz, "zc", fn, a.O * a.P);
            const auto k = a.kind;
            if ((rule_g_reads_out(k) && !a.out) || (rule_g_reads_psum(k) && !a.psum) || (rule_g_reads_zc(k) && !a.zc))
                throw py::value_error("rule_g: missing forward sums for this rule");
            a.coefs.eps = eps, a.coefs.alpha = alpha, a.coefs.beta = beta, a.coefs.gamma = gamma;
            a.zero_bias = zero_bias;
            const int64_t H = cpu::rule_g_halves(a.kind);
            a.flat_group_sum = flat_group_sum && a.kind == RuleKind::Flat;
            if (sumdiff && H != 2) throw py::value_error("rule_g: sumdiff needs a rule with two halves (AlphaBeta, Gamma)");
            a.sumdiff = sumdiff;
            py::array_t<float> g = sumdiff ? py::array_t<float>({int64_t(2), a.n, a.O, a.P})
                                           : py::array_t<float>({a.n, a.flat_group_sum ? groups : a.O * H, a.P});
            a.g = g.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::rule_g(a, t);
            return g;
        },
        py::arg("kind"), py::arg("R"), py::arg("out"), py::arg("psum"), py::arg("bias"), py::arg("zc"),
        py::arg("groups"), py::arg("eps"), py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("gamma") = 0.0,
        py::arg("zero_bias") = false, py::arg("flat_group_sum") = false, py::arg("sumdiff") = false,
        "g = R / s(z) of a rule from the kept forward sums; (n, O*halves, P), halves stacked per group; "
        "Flat with flat_group_sum: (n, groups, P), summed over each group's outputs; "
        "sumdiff (AlphaBeta, Gamma): (2, n, O, P), the halves' sum g0 + g1 and difference g0 - g1.");

    m.def(
        "col2im",
        [threads](const py::array& col, Pair chw_hw, int64_t c, Pair kernel, Pair stride, Pair pad, Pair dil,
                  Pair out_hw, int epi, const py::object& mul, const py::object& off, const py::object& y_acc,
                  int64_t col_groups) {
            const char* fn = "col2im";
            cpu::Col2ImArgs a;
            a.col = f32_ptr(col, "col", fn);
            a.n = col.ndim() ? col.shape(0) : 0;
            a.c = c, a.h = chw_hw[0], a.w = chw_hw[1];
            a.kh = kernel[0], a.kw = kernel[1], a.sh = stride[0], a.sw = stride[1], a.ph = pad[0], a.pw = pad[1];
            a.dh = dil[0], a.dw = dil[1], a.oh = out_hw[0], a.ow = out_hw[1];
            check_window(fn, kernel, stride, pad, dil, out_hw);
            if (c < 0 || a.h < 0 || a.w < 0) throw py::value_error("col2im: negative image size");
            if (col_groups < 0 || (col_groups > 0 && c % col_groups))
                throw py::value_error("col2im: col_groups must divide the channels");
            a.col_groups = col_groups;
            if (col.size() != a.n * (col_groups ? col_groups : c * a.kh * a.kw) * a.oh * a.ow)
                throw py::value_error("col2im: col has the wrong size");
            if (!is_epilogue(epi)) throw py::value_error("col2im: unknown epilogue code " + std::to_string(epi));
            a.epi = Epi(epi);
            if (epi_reads_bias(a.epi)) throw py::value_error("col2im: the bias epilogue is not supported");
            const int64_t ysz = a.n * c * a.h * a.w;
            py::array km, ko, ky;
            a.mul = opt_f32(mul, km, "mul", fn, ysz);
            a.off = opt_f32(off, ko, "off", fn, c * a.h * a.w);
            if ((epi_reads_mul(a.epi) && !a.mul) || (epi_reads_off(a.epi) && !a.off))
                throw py::value_error("col2im: the epilogue's operand is missing");
            py::array_t<float> y;
            if (!y_acc.is_none()) {
                y = py::reinterpret_borrow<py::array_t<float>>(y_acc);
                f32_ptr(y, "y", fn);
                if (y.size() != ysz) throw py::value_error("col2im: y has the wrong size");
                a.accumulate = true;
            } else {
                y = py::array_t<float>({a.n, c, a.h, a.w});
            }
            a.y = y.mutable_data();
            const int t = threads();
            py::gil_scoped_release release;
            cpu::col2im(a, t);
            return y;
        },
        py::arg("col"), py::arg("hw"), py::arg("c"), py::arg("kernel"), py::arg("stride"), py::arg("pad"),
        py::arg("dilation"), py::arg("out_hw"), py::arg("epi") = int(Epi::None), py::arg("mul") = py::none(),
        py::arg("off") = py::none(), py::arg("y") = py::none(), py::arg("col_groups") = 0,
        "Transposed-conv scatter of col (n, c*kh*kw, oh*ow) into (n, c, h, w), then the epilogue; "
        "accumulates into y when given.");

    m.def(
        "maxpool_forward",
        [threads](const py::array& x, Pair kernel, Pair stride, Pair pad, Pair dil, Pair out_hw) {
            const char* fn = "maxpool_forward";
            cpu::MaxPoolArgs a;
            a.x = f32_ptr(x, "x", fn, 4);
            a.planes = x.shape(0) * x.shape(1);
            a.h = x.shape(2), a.w = x.shape(3);
            a.kh = kernel[0], a.kw = kernel[1], a.sh = stride[0], a.sw = stride[1], a.ph = pad[0], a.pw = pad[1];
            a.dh = dil[0], a.dw = dil[1], a.oh = out_hw[0], a.ow = out_hw[1];
            check_window(fn, kernel, stride, pad, dil, out_hw);
            py::array_t<float> y({x.shape(0), x.shape(1), (py::ssize_t)a.oh, (py::ssize_t)a.ow});
            py::array_t<int32_t> idx({x.shape(0), x.shape(1), (py::ssize_t)a.oh, (py::ssize_t)a.ow});
            a.y = y.mutable_data();
            a.idx = idx.mutable_data();
            const int t = threads();
            {
                py::gil_scoped_release release;
                cpu::maxpool_forward(a, t);
            }
            return py::make_tuple(y, idx);
        },
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("pad"), py::arg("dilation"), py::arg("out_hw"),
        "Max pooling (n, c, h, w) -> (y, first arg-max flat index per window); padding never wins.");

    m.def(
        "maxpool_backward",
        [threads](const py::array& R, const py::array& idx, Pair in_hw) {
            const char* fn = "maxpool_backward";
            const float* r = f32_ptr(R, "R", fn, 4);
            if (in_hw[0] < 0 || in_hw[1] < 0) throw py::value_error("maxpool_backward: negative input size");
            if (!idx.dtype().equal(py::dtype::of<int32_t>()) || idx.size() != R.size() ||
                !(idx.flags() & py::array::c_style))
                throw py::value_error("maxpool_backward: idx must be int32, C-contiguous, shaped like R");
            const int64_t planes = R.shape(0) * R.shape(1);
            py::array_t<float> out({R.shape(0), R.shape(1), (py::ssize_t)in_hw[0], (py::ssize_t)in_hw[1]});
            const int32_t* ip = static_cast<const int32_t*>(idx.data());
            float* op = out.mutable_data();
            const int64_t osz = R.shape(2) * R.shape(3);
            const int t = threads();
            py::gil_scoped_release release;
            cpu::maxpool_backward(r, ip, op, planes, in_hw[0] * in_hw[1], osz, t);
            return out;
        },
        py::arg("R"), py::arg("idx"), py::arg("in_hw"), "Routes R to each window's arg-max (accumulating).");
}

}  // namespace binding
}  // namespace fastlrp
