// pybind11 glue for the GPU conv GEMM (api_gemm.h): device pointers as Python
// ints, sizes as ints, the stream last.  Host C++ only (no CUDA headers).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "api_gemm.h"

namespace fastlrp {
namespace gpu {

inline void bind_gemm(pybind11::module_& m) {
    namespace py = pybind11;
    m.def(
        "conv_gemm",
        [](uintptr_t x, uintptr_t A, uintptr_t y, int64_t n, int64_t c, int64_t h, int64_t w, int64_t groups,
           int64_t mm, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, int64_t oh, int64_t ow, int sign, bool transposed, int epi, uintptr_t bias, uintptr_t mul,
           uintptr_t off, bool accumulate, uintptr_t y2, int64_t split, int tile, bool dry_run, uintptr_t stream) {
            ConvGemmGpuArgs a;
            a.x = reinterpret_cast<const float*>(x);
            a.A = reinterpret_cast<const float*>(A);
            a.y = reinterpret_cast<float*>(y);
            a.n = n, a.c = c, a.h = h, a.w = w, a.groups = groups, a.m = mm;
            a.kh = kh, a.kw = kw, a.sh = sh, a.sw = sw, a.ph = ph, a.pw = pw, a.dh = dh, a.dw = dw;
            a.oh = oh, a.ow = ow;
            a.sign = sign, a.transposed = transposed, a.epi = Epi(epi);  // checked by conv_gemm
            a.bias = reinterpret_cast<const float*>(bias);
            a.mul = reinterpret_cast<const float*>(mul);
            a.off = reinterpret_cast<const float*>(off);
            a.accumulate = accumulate;
            a.y2 = reinterpret_cast<float*>(y2);
            a.split = split;
            a.tile = tile;
            a.stream = reinterpret_cast<void*>(stream);
            if (dry_run) return conv_gemm_tile(a);
            py::gil_scoped_release release;  // the emulator runs the kernel right here
            conv_gemm(a);
            return conv_gemm_tile(a);
        },
        py::arg("x"), py::arg("A"), py::arg("y"), py::kw_only(), py::arg("n"), py::arg("c"), py::arg("h"),
        py::arg("w"), py::arg("groups"), py::arg("m"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
        py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("oh"), py::arg("ow"),
        py::arg("sign") = 0, py::arg("transposed") = false, py::arg("epi") = int(Epi::None), py::arg("bias") = 0,
        py::arg("mul") = 0, py::arg("off") = 0, py::arg("accumulate") = false, py::arg("y2") = 0,
        py::arg("split") = 0, py::arg("tile") = -1, py::arg("dry_run") = false, py::arg("stream") = 0,
        "Implicit-GEMM conv on device pointers: y[n, g*m+i, p] = epi(sum_k A[g*m+i, k] B_g[k, (n, p)]).\n"
        "A: (groups*m) x Kt row-major; B_g gathered from x (n, c, h, w): the conv's im2col (sign=1: [x+; x-] "
        "along K; sign=2: |x|) or, transposed=True, the transposed conv (backward pass, any stride) with y (n, groups*m, oh, "
        "ow).  epi: a code of `epilogues` (none, bias: +bias[o], mulx: *mul, mulpos: *max(mul,0), mulneg: "
        "*min(mul,0), mulxoff: *(mul-off[o,p]), mulabs: *|mul|); accumulate: "
        "y += v; split>0 (groups 1): rows >= split raw into y2.  tile: -1 auto, 0 direct (m <= 8), 1 128x128, "
        "2 128x64, 3 64x128, 4 64x64.  Returns the tile configuration used; dry_run: validate and return it "
        "without launching.  Asynchronous on `stream` (a real GPU).");
}

}  // namespace gpu
}  // namespace fastlrp
