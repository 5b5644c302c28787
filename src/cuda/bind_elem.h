// pybind11 glue for the GPU engine's non-GEMM kernels (api_elem.h): device
// pointers as Python ints (0 = none), sizes as ints, the stream (an int, 0 = the
// default stream) last.  Host C++ only (no CUDA headers).  Arguments are checked
// here: a bad one raises ValueError naming the function.  Every call is
// asynchronous on `stream` (a real GPU) except min_value and nonfinite_rows.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "api_elem.h"

namespace fastlrp {
namespace gpu {

namespace bind_elem_detail {

namespace py = pybind11;

[[noreturn]] inline void fail(const char* fn, const std::string& msg) {
    throw py::value_error(std::string(fn) + ": " + msg);
}
inline void require(bool ok, const char* fn, const std::string& msg) {
    if (!ok) fail(fn, msg);
}
inline void nonneg(const char* fn, const char* name, int64_t v) {
    if (v < 0) fail(fn, std::string(name) + " must be >= 0, got " + std::to_string(v));
}
inline void positive(const char* fn, const char* name, int64_t v) {
    if (v < 1) fail(fn, std::string(name) + " must be >= 1, got " + std::to_string(v));
}
// a pointer that must be given (non-zero) when `needed`
inline void ptr(const char* fn, const char* name, uintptr_t p, bool needed = true) {
    if (needed && p == 0) fail(fn, std::string(name) + " is a null pointer");
}
template <class T = float>
T* P(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}
inline void* S(uintptr_t s) { return reinterpret_cast<void*>(s); }

constexpr const char* kActNames[kActCount] = {"identity", "relu", "leaky_relu", "elu",     "tanh",
                                              "sigmoid",  "gelu", "silu",       "softplus"};

inline int activation_kind(const py::object& kind, const char* fn) {
    if (py::isinstance<py::str>(kind)) {
        const std::string s = kind.cast<std::string>();
        for (int k = 0; k < kActCount; ++k)
            if (s == kActNames[k]) return k;
        fail(fn, "unknown activation '" + s + "'");
    }
    int k = -1;
    try {
        k = kind.cast<int>();
    } catch (const py::cast_error&) {
        fail(fn, "kind must be an activation name or its number");
    }
    if (k < 0 || k >= kActCount) fail(fn, "unknown activation kind " + std::to_string(k));
    return k;
}

}  // namespace bind_elem_detail

inline void bind_elem(pybind11::module_& m) {
    namespace py = pybind11;
    using namespace bind_elem_detail;

    m.def("_set_force_int64_indices", &set_force_int64_indices, py::arg("on"),
          "Tests: use the int64-index kernels for every size (process-wide).");

    // ---- rule_g -----------------------------------------------------------------------
    m.def(
        "rule_g",
        [](int kind, uintptr_t R, uintptr_t out, uintptr_t psum, uintptr_t bias, uintptr_t zc, uintptr_t g,
           int64_t n, int64_t O, int64_t Pn, int64_t groups, double eps, double alpha, double beta, double gamma,
           bool zero_bias, bool flat_group_sum, bool sumdiff, uintptr_t stream) {
            const char* fn = "rule_g";
            require(is_rule_kind(kind), fn, "unknown rule kind " + std::to_string(kind));
            nonneg(fn, "n", n), nonneg(fn, "O", O), nonneg(fn, "P", Pn), positive(fn, "groups", groups);
            require(O % groups == 0, fn, "O (" + std::to_string(O) + ") not divisible by groups (" +
                                             std::to_string(groups) + ")");
            const bool any = n * O * Pn > 0;
            ptr(fn, "R", R, any), ptr(fn, "g", g, any);
            const RuleKind k = RuleKind(kind);
            if (any && ((rule_g_reads_out(k) && !out) || (rule_g_reads_psum(k) && !psum) ||
                        (rule_g_reads_zc(k) && !zc)))
                fail(fn, "missing forward sums for this rule (out, psum or zc)");
            RuleGArgs a;
            a.kind = k;
            a.R = P<const float>(R), a.out = P<const float>(out), a.psum = P<const float>(psum);
            a.bias = P<const float>(bias), a.zc = P<const float>(zc), a.g = P(g);
            a.n = n, a.O = O, a.P = Pn, a.groups = groups;
            a.coefs.eps = eps, a.coefs.alpha = alpha, a.coefs.beta = beta, a.coefs.gamma = gamma;
            a.zero_bias = zero_bias;
            a.flat_group_sum = flat_group_sum && k == RuleKind::Flat;
            require(!sumdiff || rule_g_num_halves(k) == 2, fn, "sumdiff needs a rule with two halves (AlphaBeta, Gamma)");
            a.sumdiff = sumdiff;
            if (!any) return;
            py::gil_scoped_release release;
            rule_g(a, S(stream));
        },
        py::arg("kind"), py::arg("R"), py::arg("out"), py::arg("psum"), py::arg("bias"), py::arg("zc"), py::arg("g"),
        py::kw_only(), py::arg("n"), py::arg("O"), py::arg("P"), py::arg("groups"), py::arg("eps"),
        py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("gamma") = 0.0, py::arg("zero_bias") = false,
        py::arg("flat_group_sum") = false, py::arg("sumdiff") = false, py::arg("stream") = 0,
        "g = R / s(z) of a rule from the kept forward sums (fastlrp._core.rule_g's semantics): R, out, psum "
        "(n, O, P); bias (O) or 0; zc (O, P) or 0; g (n, groups, halves, O/groups, P), halves 2 for AlphaBeta "
        "and Gamma; Flat with flat_group_sum: g (n, groups, P); sumdiff (AlphaBeta, Gamma): g (2, n, O, P), the "
        "halves' sum g0 + g1 and difference g0 - g1.");

    // ---- max pooling ----------------------------------------------------------------------
    m.def(
        "maxpool_forward",
        [](uintptr_t x, uintptr_t y, uintptr_t idx, int64_t planes, int64_t h, int64_t w, int64_t kh, int64_t kw,
           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
           uintptr_t stream) {
            const char* fn = "maxpool_forward";
            nonneg(fn, "planes", planes), nonneg(fn, "h", h), nonneg(fn, "w", w);
            positive(fn, "kh", kh), positive(fn, "kw", kw), positive(fn, "sh", sh), positive(fn, "sw", sw);
            positive(fn, "dh", dh), positive(fn, "dw", dw);
            nonneg(fn, "ph", ph), nonneg(fn, "pw", pw), nonneg(fn, "oh", oh), nonneg(fn, "ow", ow);
            require(h * w < (int64_t(1) << 31), fn, "planes of 2^31 or more elements (int32 indices)");
            const bool any = planes * oh * ow > 0;
            ptr(fn, "x", x, any && h * w > 0), ptr(fn, "y", y, any), ptr(fn, "idx", idx, any);
            if (!any) return;
            MaxPoolArgs a;
            a.x = P<const float>(x), a.y = P(y), a.idx = P<int32_t>(idx);
            a.planes = planes, a.h = h, a.w = w, a.kh = kh, a.kw = kw, a.sh = sh, a.sw = sw, a.ph = ph, a.pw = pw;
            a.dh = dh, a.dw = dw, a.oh = oh, a.ow = ow;
            py::gil_scoped_release release;
            maxpool_forward(a, S(stream));
        },
        py::arg("x"), py::arg("y"), py::arg("idx"), py::kw_only(), py::arg("planes"), py::arg("h"), py::arg("w"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"),
        py::arg("dw"), py::arg("oh"), py::arg("ow"), py::arg("stream") = 0,
        "Max pooling of (planes, h, w) into y (planes, oh, ow) and idx (int32, the first arg-max's in-plane "
        "flat index; NaN wins, padding never; -1 for an all-padding window).");

    m.def(
        "maxpool_backward",
        [](uintptr_t R, uintptr_t idx, uintptr_t r_in, int64_t planes, int64_t in_size, int64_t out_size,
           uintptr_t stream) {
            const char* fn = "maxpool_backward";
            nonneg(fn, "planes", planes), nonneg(fn, "in_size", in_size), nonneg(fn, "out_size", out_size);
            require(in_size < (int64_t(1) << 31), fn, "in_size of 2^31 or more (int32 indices)");
            const bool any_out = planes * out_size > 0 && in_size > 0;
            ptr(fn, "R", R, any_out), ptr(fn, "idx", idx, any_out), ptr(fn, "r_in", r_in, planes * in_size > 0);
            if (planes * in_size == 0) return;
            py::gil_scoped_release release;
            maxpool_backward(P<const float>(R), P<const int32_t>(idx), P(r_in), planes, in_size,
                             any_out ? out_size : 0, S(stream));
        },
        py::arg("R"), py::arg("idx"), py::arg("r_in"), py::kw_only(), py::arg("planes"), py::arg("in_size"),
        py::arg("out_size"), py::arg("stream") = 0,
        "r_in (planes, in_size) = 0, then r_in[pl, idx[pl, o]] += R[pl, o] (overlapping windows accumulate; "
        "idx < 0 skipped).");

    // ---- average pooling ------------------------------------------------------------------
    m.def(
        "avgpool_bands",
        [](const py::array_t<float, py::array::c_style | py::array::forcecast>& mat) {
            const char* fn = "avgpool_bands";
            require(mat.ndim() == 2, fn, "the matrix must be 2-d (out, in)");
            const int64_t rows = mat.shape(0), cols = mat.shape(1);
            py::array_t<int32_t> out_band({py::ssize_t(rows), py::ssize_t(2)});
            py::array_t<int32_t> in_band({py::ssize_t(cols), py::ssize_t(2)});
            avgpool_bands(mat.data(), rows, cols, out_band.mutable_data(), in_band.mutable_data());
            return py::make_tuple(out_band, in_band);
        },
        py::arg("m"),
        "Band tables (int32) of a pooling matrix m (out, in): (out_band (out, 2): per output row the [lo, hi) "
        "of its nonzero columns, in_band (in, 2): per input column the [lo, hi) of the rows that read it).");

    auto avg_params = [](const char* fn, uintptr_t mh, uintptr_t mw, uintptr_t bh_out, uintptr_t bh_in,
                         uintptr_t bw_out, uintptr_t bw_in, int64_t planes, int64_t h, int64_t w, int64_t oh,
                         int64_t ow, bool any) {
        nonneg(fn, "planes", planes), nonneg(fn, "h", h), nonneg(fn, "w", w), nonneg(fn, "oh", oh);
        nonneg(fn, "ow", ow);
        ptr(fn, "mh", mh, any), ptr(fn, "mw", mw, any);
        ptr(fn, "bh_out", bh_out, any), ptr(fn, "bh_in", bh_in, any), ptr(fn, "bw_out", bw_out, any);
        ptr(fn, "bw_in", bw_in, any);
        AvgPoolParams a;
        a.mh = P<const float>(mh), a.mw = P<const float>(mw);
        a.bh_out = P<const int32_t>(bh_out), a.bh_in = P<const int32_t>(bh_in);
        a.bw_out = P<const int32_t>(bw_out), a.bw_in = P<const int32_t>(bw_in);
        a.planes = planes, a.h = h, a.w = w, a.oh = oh, a.ow = ow;
        return a;
    };

    m.def(
        "avgpool_forward",
        [avg_params](uintptr_t x, uintptr_t y, uintptr_t mh, uintptr_t mw, uintptr_t bh_out, uintptr_t bh_in,
                     uintptr_t bw_out, uintptr_t bw_in, int64_t planes, int64_t h, int64_t w, int64_t oh,
                     int64_t ow, uintptr_t stream) {
            const char* fn = "avgpool_forward";
            const bool any = planes * oh * ow > 0;
            const AvgPoolParams a = avg_params(fn, mh, mw, bh_out, bh_in, bw_out, bw_in, planes, h, w, oh, ow, any);
            ptr(fn, "x", x, any && h * w > 0), ptr(fn, "y", y, any);
            if (!any) return;
            py::gil_scoped_release release;
            avgpool_forward(P<const float>(x), P(y), a, S(stream));
        },
        py::arg("x"), py::arg("y"), py::arg("mh"), py::arg("mw"), py::arg("bh_out"), py::arg("bh_in"),
        py::arg("bw_out"), py::arg("bw_in"), py::kw_only(), py::arg("planes"), py::arg("h"), py::arg("w"),
        py::arg("oh"), py::arg("ow"), py::arg("stream") = 0,
        "y[pl, i, j] = sum_{p, q} mh[i, p] mw[j, q] x[pl, p, q]: mh (oh, h), mw (ow, w) float32 device "
        "matrices, bh_* / bw_* their avgpool_bands tables (int32) on the device.");

    m.def(
        "avgpool_relevance",
        [avg_params](uintptr_t R, uintptr_t den, uintptr_t x, uintptr_t r_in, uintptr_t mh, uintptr_t mw,
                     uintptr_t bh_out, uintptr_t bh_in, uintptr_t bw_out, uintptr_t bw_in, int64_t planes,
                     int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t channels, bool den_per_sample,
                     uintptr_t stream) {
            const char* fn = "avgpool_relevance";
            const bool any = planes * h * w > 0;
            const bool any_out = any && oh * ow > 0;
            const AvgPoolParams a = avg_params(fn, mh, mw, bh_out, bh_in, bw_out, bw_in, planes, h, w, oh, ow, any);
            if (!den_per_sample) {
                positive(fn, "channels", channels);
                require(planes % channels == 0, fn, "planes must be a multiple of channels");
            }
            ptr(fn, "r_in", r_in, any), ptr(fn, "R", R, any_out), ptr(fn, "den", den, any_out);
            if (!any) return;
            py::gil_scoped_release release;
            avgpool_relevance(P<const float>(R), P<const float>(den), P<const float>(x), P(r_in), a,
                              den_per_sample ? 1 : channels, den_per_sample, S(stream));
        },
        py::arg("R"), py::arg("den"), py::arg("x"), py::arg("r_in"), py::arg("mh"), py::arg("mw"),
        py::arg("bh_out"), py::arg("bh_in"), py::arg("bw_out"), py::arg("bw_in"), py::kw_only(), py::arg("planes"),
        py::arg("h"), py::arg("w"), py::arg("oh"), py::arg("ow"), py::arg("channels") = 1,
        py::arg("den_per_sample") = true, py::arg("stream") = 0,
        "r_in[pl, p, q] = x[pl, p, q] * sum_{i, j} mh[i, p] mw[j, q] R[pl, i, j] / den[...] (Norm; den the "
        "stabilized forward output, like R).  x = 0: without the x factor (Flat: den (channels, oh, ow) shared "
        "by the samples, den_per_sample=False, indexed by plane % channels).");

    // ---- elementwise ----------------------------------------------------------------------
    m.def(
        "stabilize",
        [](uintptr_t z, uintptr_t s, int64_t count, double eps, uintptr_t stream) {
            const char* fn = "stabilize";
            nonneg(fn, "count", count), ptr(fn, "z", z, count > 0), ptr(fn, "s", s, count > 0);
            if (!count) return;
            py::gil_scoped_release release;
            stabilize(P<const float>(z), P(s), count, float(eps), S(stream));
        },
        py::arg("z"), py::arg("s"), py::arg("count"), py::arg("eps"), py::arg("stream") = 0,
        "s = z + eps * sign(z), sign(0) = +1 (s may be z).");

    m.def(
        "add_inplace",
        [](uintptr_t y, uintptr_t x, int64_t count, uintptr_t stream) {
            const char* fn = "add_inplace";
            nonneg(fn, "count", count), ptr(fn, "y", y, count > 0), ptr(fn, "x", x, count > 0);
            if (!count) return;
            py::gil_scoped_release release;
            add_inplace(P(y), P<const float>(x), count, S(stream));
        },
        py::arg("y"), py::arg("x"), py::arg("count"), py::arg("stream") = 0, "y += x.");

    m.def(
        "add_relevance",
        [](uintptr_t x, uintptr_t R, uintptr_t s, uintptr_t r, int64_t count, uintptr_t stream) {
            const char* fn = "add_relevance";
            nonneg(fn, "count", count);
            ptr(fn, "x", x, count > 0), ptr(fn, "R", R, count > 0), ptr(fn, "s", s, count > 0);
            ptr(fn, "r", r, count > 0);
            if (!count) return;
            py::gil_scoped_release release;
            add_relevance(P<const float>(x), P<const float>(R), P<const float>(s), P(r), count, S(stream));
        },
        py::arg("x"), py::arg("R"), py::arg("s"), py::arg("r"), py::arg("count"), py::arg("stream") = 0,
        "r = x * (R / s): one summand's share of a residual add (Norm rule).");

    m.def(
        "scale",
        [](uintptr_t x, uintptr_t y, int64_t count, double a, uintptr_t stream) {
            const char* fn = "scale";
            nonneg(fn, "count", count), ptr(fn, "x", x, count > 0), ptr(fn, "y", y, count > 0);
            if (!count) return;
            py::gil_scoped_release release;
            scale(P<const float>(x), P(y), count, float(a), S(stream));
        },
        py::arg("x"), py::arg("y"), py::arg("count"), py::arg("a"), py::arg("stream") = 0,
        "y = x * a (y may be x).");

    m.def(
        "fill",
        [](uintptr_t y, double value, int64_t count, uintptr_t stream) {
            const char* fn = "fill";
            nonneg(fn, "count", count), ptr(fn, "y", y, count > 0);
            if (!count) return;
            py::gil_scoped_release release;
            fill(P(y), float(value), count, S(stream));
        },
        py::arg("y"), py::arg("value"), py::arg("count"), py::arg("stream") = 0, "y[:count] = value.");

    m.def(
        "copy_block",
        [](uintptr_t src, uintptr_t dst, int64_t n, int64_t src_row, int64_t dst_row, int64_t dst_offset,
           int64_t count_per_row, uintptr_t stream) {
            const char* fn = "copy_block";
            nonneg(fn, "n", n), nonneg(fn, "src_row", src_row), nonneg(fn, "dst_row", dst_row);
            nonneg(fn, "dst_offset", dst_offset), nonneg(fn, "count_per_row", count_per_row);
            require(count_per_row <= src_row, fn, "count_per_row exceeds src_row");
            require(dst_offset + count_per_row <= dst_row, fn, "dst_offset + count_per_row exceeds dst_row");
            const bool any = n * count_per_row > 0;
            ptr(fn, "src", src, any), ptr(fn, "dst", dst, any);
            if (!any) return;
            py::gil_scoped_release release;
            copy_rows(P<const float>(src), P(dst), n, src_row, 0, dst_row, dst_offset, count_per_row, S(stream));
        },
        py::arg("src"), py::arg("dst"), py::arg("n"), py::arg("src_row"), py::arg("dst_row"), py::arg("dst_offset"),
        py::arg("count_per_row"), py::arg("stream") = 0,
        "dst[i, dst_offset + j] = src[i, j] for n rows (row lengths src_row, dst_row; j < count_per_row): "
        "one input's block of a concat.");

    m.def(
        "slice_block",
        [](uintptr_t src, uintptr_t dst, int64_t n, int64_t src_row, int64_t dst_row, int64_t src_offset,
           int64_t count_per_row, uintptr_t stream) {
            const char* fn = "slice_block";
            nonneg(fn, "n", n), nonneg(fn, "src_row", src_row), nonneg(fn, "dst_row", dst_row);
            nonneg(fn, "src_offset", src_offset), nonneg(fn, "count_per_row", count_per_row);
            require(src_offset + count_per_row <= src_row, fn, "src_offset + count_per_row exceeds src_row");
            require(count_per_row <= dst_row, fn, "count_per_row exceeds dst_row");
            const bool any = n * count_per_row > 0;
            ptr(fn, "src", src, any), ptr(fn, "dst", dst, any);
            if (!any) return;
            py::gil_scoped_release release;
            copy_rows(P<const float>(src), P(dst), n, src_row, src_offset, dst_row, 0, count_per_row, S(stream));
        },
        py::arg("src"), py::arg("dst"), py::arg("n"), py::arg("src_row"), py::arg("dst_row"), py::arg("src_offset"),
        py::arg("count_per_row"), py::arg("stream") = 0,
        "dst[i, j] = src[i, src_offset + j] for n rows (row lengths src_row, dst_row; j < count_per_row): the "
        "inverse of copy_block (a concat's relevance split).");

    m.def(
        "permute",
        [](uintptr_t src, uintptr_t dst, const std::vector<int64_t>& shape, const std::vector<int>& perm,
           uintptr_t stream) {
            const char* fn = "permute";
            require(shape.size() == perm.size(), fn, "shape and perm differ in length");
            require(shape.size() <= 64, fn, "too many dimensions");
            const int nd = int(shape.size());
            std::vector<char> seen(size_t(nd), 0);
            int64_t total = 1;
            for (int k = 0; k < nd; ++k) {
                nonneg(fn, "a dimension", shape[size_t(k)]);
                total *= shape[size_t(k)];
                const int p = perm[size_t(k)];
                if (p < 0 || p >= nd || seen[size_t(p)]) fail(fn, "perm is not a permutation of the axes");
                seen[size_t(p)] = 1;
            }
            ptr(fn, "src", src, total > 0), ptr(fn, "dst", dst, total > 0);
            bool ok;
            {
                py::gil_scoped_release release;
                ok = permute(P<const float>(src), P(dst), nd, shape.data(), perm.data(), S(stream));
            }
            if (!ok) fail(fn, "more than 6 dimensions remain after merging adjacent ones");
        },
        py::arg("src"), py::arg("dst"), py::arg("shape"), py::arg("perm"), py::arg("stream") = 0,
        "dst = src.transpose(perm) (NumPy semantics) for a C-contiguous src of the given shape; dims of size 1 "
        "and runs that stay adjacent are merged first (at most 6 may remain).");

    py::dict acts;
    for (int k = 0; k < kActCount; ++k) acts[py::str(kActNames[k])] = k;
    m.attr("ACTIVATIONS") = acts;
    m.def(
        "activation_forward",
        [](const py::object& kind, uintptr_t x, uintptr_t y, int64_t count, double param, uintptr_t stream) {
            const char* fn = "activation_forward";
            const int k = activation_kind(kind, fn);
            nonneg(fn, "count", count), ptr(fn, "x", x, count > 0), ptr(fn, "y", y, count > 0);
            if (!count) return;
            py::gil_scoped_release release;
            activation_forward(k, P<const float>(x), P(y), count, float(param), S(stream));
        },
        py::arg("kind"), py::arg("x"), py::arg("y"), py::arg("count"), py::arg("param") = 0.0,
        py::arg("stream") = 0,
        "y = act(x) (y may be x).  kind: a name or number of ACTIVATIONS (0 identity, 1 relu, 2 leaky_relu "
        "[param = negative_slope], 3 elu [param = alpha], 4 tanh, 5 sigmoid, 6 gelu (erf), 7 silu, 8 softplus).");

    auto def_softmax = [&m](const char* name, bool log) {
        m.def(
            name,
            [name, log](uintptr_t x, uintptr_t y, int64_t rows, int64_t cols, uintptr_t stream) {
                nonneg(name, "rows", rows), nonneg(name, "cols", cols);
                const bool any = rows * cols > 0;
                ptr(name, "x", x, any), ptr(name, "y", y, any);
                if (!any) return;
                py::gil_scoped_release release;
                softmax(P<const float>(x), P(y), rows, cols, log, S(stream));
            },
            py::arg("x"), py::arg("y"), py::arg("rows"), py::arg("cols"), py::arg("stream") = 0,
            log ? "y = log_softmax over the last axis of (rows, cols): (x - max) - log(sum exp(x - max))."
                : "y = softmax over the last axis of (rows, cols).");
    };
    def_softmax("softmax", false);
    def_softmax("log_softmax", true);

    m.def(
        "batchnorm_forward",
        [](uintptr_t x, uintptr_t y, uintptr_t scale_, uintptr_t shift, int64_t n, int64_t c, int64_t inner,
           uintptr_t stream) {
            const char* fn = "batchnorm_forward";
            nonneg(fn, "n", n), nonneg(fn, "c", c), nonneg(fn, "inner", inner);
            const bool any = n * c * inner > 0;
            ptr(fn, "x", x, any), ptr(fn, "y", y, any), ptr(fn, "scale", scale_, any), ptr(fn, "shift", shift, any);
            if (!any) return;
            py::gil_scoped_release release;
            batchnorm_forward(P<const float>(x), P(y), P<const float>(scale_), P<const float>(shift), n, c, inner,
                              S(stream));
        },
        py::arg("x"), py::arg("y"), py::arg("scale"), py::arg("shift"), py::arg("n"), py::arg("c"), py::arg("inner"),
        py::arg("stream") = 0, "y = x * scale[c] + shift[c] over x (n, c, inner) (y may be x).");

    // ---- reductions -----------------------------------------------------------------------
    m.def(
        "min_value",
        [](uintptr_t x, int64_t count, uintptr_t stream) {
            const char* fn = "min_value";
            nonneg(fn, "count", count), ptr(fn, "x", x, count > 0);
            py::gil_scoped_release release;
            return double(min_value(P<const float>(x), count, S(stream)));
        },
        py::arg("x"), py::arg("count"), py::arg("stream") = 0,
        "The minimum of count floats (NaN if any is NaN, inf for count 0); synchronises the stream.");

    m.def(
        "nonfinite_rows",
        [](uintptr_t x, int64_t rows, int64_t cols, uintptr_t stream) {
            const char* fn = "nonfinite_rows";
            nonneg(fn, "rows", rows), nonneg(fn, "cols", cols), ptr(fn, "x", x, rows * cols > 0);
            py::array_t<bool> flags(py::ssize_t{rows});
            auto* out = reinterpret_cast<uint8_t*>(flags.mutable_data());
            {
                py::gil_scoped_release release;
                nonfinite_rows(P<const float>(x), rows, cols, out, S(stream));
            }
            return flags;
        },
        py::arg("x"), py::arg("rows"), py::arg("cols"), py::arg("stream") = 0,
        "Per row of (rows, cols): True where it holds a NaN or an infinity (numpy bool array); synchronises "
        "the stream.");
}

}  // namespace gpu
}  // namespace fastlrp
