// Max pooling (portable C++, OpenMP over planes).  The first maximum of each
// window in (kh, kw) order wins, as PyTorch's gradient and np.argmax pick it;
// padded positions are never candidates.
#include "pool_cpu.h"

#include <cstring>
#include <limits>

namespace fastlrp {
namespace cpu {

void maxpool_forward(const MaxPoolArgs& a, int threads) {
    const int64_t HW = a.h * a.w, OP = a.oh * a.ow;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && a.planes * OP > 16384)
    for (int64_t pl = 0; pl < a.planes; ++pl) {
        const float* __restrict x = a.x + pl * HW;
        float* __restrict y = a.y + pl * OP;
        int32_t* __restrict idx = a.idx + pl * OP;
        if (a.kh == 2 && a.kw == 2 && a.sh == 2 && a.sw == 2 && a.ph == 0 && a.pw == 0 && a.dh == 1 && a.dw == 1 &&
            2 * a.oh <= a.h && 2 * a.ow <= a.w) {
            // the VGG/ResNet case: 2x2 windows, stride 2, no padding, all in bounds
            for (int64_t oh = 0; oh < a.oh; ++oh) {
                const float* __restrict r0 = x + 2 * oh * a.w;
                const float* __restrict r1 = r0 + a.w;
                for (int64_t ow = 0; ow < a.ow; ++ow) {
                    const int64_t c = 2 * ow;
                    float best = r0[c];
                    int64_t bi = 2 * oh * a.w + c;
                    if (r0[c + 1] > best) best = r0[c + 1], bi = 2 * oh * a.w + c + 1;
                    if (r1[c] > best) best = r1[c], bi = (2 * oh + 1) * a.w + c;
                    if (r1[c + 1] > best) best = r1[c + 1], bi = (2 * oh + 1) * a.w + c + 1;
                    y[oh * a.ow + ow] = best;
                    idx[oh * a.ow + ow] = int32_t(bi);
                }
            }
            continue;
        }
        for (int64_t oh = 0; oh < a.oh; ++oh) {
            for (int64_t ow = 0; ow < a.ow; ++ow) {
                float best = -std::numeric_limits<float>::infinity();
                int64_t bi = -1;
                for (int64_t kh = 0; kh < a.kh; ++kh) {
                    const int64_t ih = oh * a.sh - a.ph + kh * a.dh;
                    if (ih < 0 || ih >= a.h) continue;
                    for (int64_t kw = 0; kw < a.kw; ++kw) {
                        const int64_t iw = ow * a.sw - a.pw + kw * a.dw;
                        if (iw < 0 || iw >= a.w) continue;
                        const float v = x[ih * a.w + iw];
                        if (bi < 0 || v > best || (v != v && best == best)) {
                            best = v;
                            bi = ih * a.w + iw;
                        }
                    }
                }
                y[oh * a.ow + ow] = best;
                idx[oh * a.ow + ow] = int32_t(bi);
            }
        }
    }
}

void maxpool_backward(const float* R, const int32_t* idx, float* r_in, int64_t planes, int64_t in_size,
                      int64_t out_size, int threads) {
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && planes * in_size > 16384)
    for (int64_t pl = 0; pl < planes; ++pl) {
        float* __restrict ri = r_in + pl * in_size;
        std::memset(ri, 0, sizeof(float) * size_t(in_size));
        const float* __restrict r = R + pl * out_size;
        const int32_t* __restrict id = idx + pl * out_size;
        for (int64_t o = 0; o < out_size; ++o)
            if (id[o] >= 0 && id[o] < in_size) ri[id[o]] += r[o];  // (padding never wins: -1)
    }
}

}  // namespace cpu
}  // namespace fastlrp
