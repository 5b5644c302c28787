// pybind11 glue of batched_matmul (matmul_cpu.h): float32 stacks of matrices of any strides
// (transposed and broadcast views are read in place), equal leading shapes.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "matmul_cpu.h"

namespace fastlrp {
namespace binding {

namespace py = pybind11;

// X's matrices as a MatOperand: element strides of its last two axes and one offset per
// matrix of its leading axes (in C order); `off` holds the offsets.
inline void check_f32(const py::array& x, const char* name) {
    if (!x.dtype().equal(py::dtype::of<float>()))
        throw py::type_error(std::string("batched_matmul: ") + name + " must be float32, got " +
                             std::string(py::str(x.dtype())));
}

inline cpu::MatOperand mat_operand(const py::array& x, const char* name, std::vector<int64_t>& off) {
    const char* fn = "batched_matmul";
    const int nd = int(x.ndim());
    std::vector<int64_t> st(nd);
    for (int d = 0; d < nd; ++d) {
        if (x.strides(d) % int64_t(sizeof(float)))
            throw py::value_error(std::string(fn) + ": " + name + " has strides that are not whole floats");
        st[d] = x.strides(d) / int64_t(sizeof(float));
    }
    off.assign(1, 0);
    for (int d = 0; d < nd - 2; ++d) {  // C order: the last leading axis varies fastest
        std::vector<int64_t> next;
        next.reserve(off.size() * size_t(x.shape(d)));
        for (const int64_t o : off)
            for (int64_t i = 0; i < x.shape(d); ++i) next.push_back(o + i * st[d]);
        off.swap(next);
    }
    cpu::MatOperand op;
    op.p = static_cast<const float*>(x.data());
    op.off = off.data();
    op.rs = st[nd - 2];
    op.cs = st[nd - 1];
    return op;
}

inline py::array_t<float> run_batched_matmul(py::array a, const py::array& b, const py::object& mul, int threads) {
    const char* fn = "batched_matmul";
    const py::array mul_arr = mul.is_none() ? py::array() : py::reinterpret_borrow<py::array>(mul);
    if (a.ndim() < 2 || b.ndim() != a.ndim() || (!mul.is_none() && mul_arr.ndim() != a.ndim()))
        throw py::value_error(std::string(fn) + ": a, b (and mul) must be stacks of matrices with the same number "
                              "of axes (broadcast them first)");
    check_f32(a, "a");
    check_f32(b, "b");
    if (!mul.is_none()) check_f32(mul_arr, "mul");
    const int nd = int(a.ndim());
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + nd);
    const int64_t m = a.shape(nd - 2), k = a.shape(nd - 1), n = b.shape(nd - 1);
    for (int d = 0; d < nd - 2; ++d)
        if (b.shape(d) != a.shape(d) || (!mul.is_none() && mul_arr.shape(d) != a.shape(d)))
            throw py::value_error(std::string(fn) + ": the leading axes of a, b (and mul) differ");
    if (b.shape(nd - 2) != k) throw py::value_error(std::string(fn) + ": inner sizes differ");
    if (!mul.is_none() && (mul_arr.shape(nd - 2) != m || mul_arr.shape(nd - 1) != n))
        throw py::value_error(std::string(fn) + ": mul must have the product's shape");
    // the left operand is read in place by rows or by columns; anything else is copied first
    if (m > 1 && k > 1 && a.strides(nd - 1) != py::ssize_t(sizeof(float)) &&
        a.strides(nd - 2) != py::ssize_t(sizeof(float)))
        a = py::array_t<float, py::array::c_style>::ensure(a);
    std::vector<int64_t> oa, ob, om;
    cpu::BatchedMatmulArgs args;
    args.a = mat_operand(a, "a", oa);
    args.b = mat_operand(b, "b", ob);
    if (!mul.is_none()) args.mul = mat_operand(mul_arr, "mul", om);
    args.groups = int64_t(oa.size());
    args.m = m, args.n = n, args.k = k;
    shape[nd - 1] = n;
    py::array_t<float> c(shape);
    args.c = c.mutable_data();
    {
        py::gil_scoped_release release;
        try {
            cpu::batched_matmul(args, threads);
        } catch (const std::invalid_argument& e) {
            py::gil_scoped_acquire acq;
            throw py::value_error(e.what());
        }
    }
    return c;
}

template <class Threads>
void def_matmul_functions(py::module_& m, Threads threads) {
    m.def(
        "batched_matmul",
        [threads](const py::array& a, const py::array& b, const py::object& mul) {
            return run_batched_matmul(a, b, mul, threads());
        },
        py::arg("a"), py::arg("b"), py::arg("mul") = py::none(),
        "a @ b (times mul elementwise when given) of float32 stacks of matrices with equal leading axes, "
        "read in place through their strides (transposed views, zero strides of broadcast axes); "
        "C-contiguous float32 result.");
}

}  // namespace binding
}  // namespace fastlrp
